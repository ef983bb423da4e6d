"""Triton device helpers for counter-based random numbers (Philox-4x32-10).

Every random number of the project is a pure function of ``(seed, element index,
iteration, stream)``: the 64-bit key is ``seed`` (read from a device tensor, see
``_common.philox_seed``), the 128-bit counter is ``(index_lo, iteration, stream,
index_hi)``. ``stream`` separates the independent uses inside one kernel (shot noise,
read noise, row noise, ...); ``iteration`` numbers the Philox calls of a rejection loop
(the Poisson sampler: call 0 gives the inversion uniform and PTRS trials 0 and 1, call c
trials 2c and 2c + 1). So results do not depend on block sizes, launch configurations
or launch order, and two uses never overlap. ``sample_index`` puts a sample number in
``index_hi`` and an int32 index within the sample in ``index_lo``: no 64-bit arithmetic
per element.

One call gives four independent 32-bit words; callers use all they need of it (e.g.
``synthesize_noise``: a Box-Muller pair, a Tukey-lambda uniform and a quantisation
uniform from one call on ``STREAM_GAUSS``).
"""
import triton
import triton.language as tl

from ._fastmath import fast_cos, fast_log2, fast_sin

# Stream identifiers: one per independent use of randomness inside a kernel.
# tl.constexpr so that @triton.jit code may read them as globals. (Streams 2 and 4, the
# Tukey-lambda and quantisation draws until session 4, now come from STREAM_GAUSS's words.)
STREAM_POISSON = tl.constexpr(0)
STREAM_GAUSS = tl.constexpr(1)
STREAM_ROW = tl.constexpr(3)


# Philox-4x32 constants (Salmon et al., "Random123", SC 2011; as triton.language.random).
PHILOX_ROUND_A = tl.constexpr(0xD2511F53)
PHILOX_ROUND_B = tl.constexpr(0xCD9E8D57)
PHILOX_KEY_A = tl.constexpr(0x9E3779B9)
PHILOX_KEY_B = tl.constexpr(0xBB67AE85)
PHILOX_ROUNDS = tl.constexpr(10)


@triton.jit
def _mulhilo(x, M: tl.constexpr):
    """(high, low) 32-bit words of the 64-bit product M * x (one IMAD.WIDE.U32, where
    ``umulhi`` and ``*`` compile to two multiplies)."""
    p = x.to(tl.uint64) * M
    return (p >> 32).to(tl.uint32), p.to(tl.uint32)


@triton.jit
def philox4(seed, index, iteration, stream):
    """Four uint32 blocks for counter ``(index, iteration, stream)`` under key ``seed``.

    seed: int64 scalar. index: int32/int64 block. iteration, stream: int scalars.
    Philox-4x32-10, bit for bit ``tl.random.philox(seed, index_lo, iteration, stream,
    index_hi)`` (``tests/test_philox.py``), with each round's two multiplies as 32 x 32 -> 64
    bit products and the counter words that are the same for the whole block kept scalar.
    """
    zero = (index * 0).to(tl.uint32)
    c0 = index.to(tl.uint32)
    if tl.constexpr(index.dtype.primitive_bitwidth > 32):
        c3 = (index >> 32).to(tl.uint32)
    else:
        c3 = zero
    scalar_zero = tl.full([], 0, tl.uint32)
    c1 = scalar_zero + iteration
    c2 = scalar_zero + stream
    key = seed.to(tl.uint64)
    k0 = key.to(tl.uint32)
    k1 = (key >> 32).to(tl.uint32)
    for _ in tl.static_range(PHILOX_ROUNDS):
        hi_a, lo_a = _mulhilo(c0, PHILOX_ROUND_A)
        hi_b, lo_b = _mulhilo(c2, PHILOX_ROUND_B)
        c0 = hi_b ^ c1 ^ k0
        c1 = lo_b
        c2 = hi_a ^ c3 ^ k1
        c3 = lo_a
        k0 = k0 + PHILOX_KEY_A
        k1 = k1 + PHILOX_KEY_B
    return c0 + zero, c1 + zero, c2 + zero, c3 + zero


@triton.jit
def philox4_triton(seed, index, iteration, stream):
    """``philox4`` through ``tl.random.philox`` (Triton's own rounds: the 2026-11-30 code's;
    bench/legacy_poisson.py keeps it so that the old sampler is timed as it was)."""
    zero = (index * 0).to(tl.uint32)
    lo = index.to(tl.uint32)
    if tl.constexpr(index.dtype.primitive_bitwidth > 32):
        hi = (index >> 32).to(tl.uint32)
    else:
        hi = zero
    c1 = zero + iteration
    c2 = zero + stream
    return tl.random.philox(seed, lo, c1, c2, hi)


@triton.jit
def open_unit(bits):
    """uint32 -> float32 uniform on the open interval (0, 1), 23-bit resolution.

    The value ``(m + 0.5) * 2**-23`` with ``m = bits >> 9`` is exact in fp32 and never
    0 or 1, so ``log(u)`` and ``u ** lam`` with negative ``lam`` stay finite.
    """
    m = (bits >> 9).to(tl.float32)
    return (m + 0.5) * 1.1920928955078125e-07


@triton.jit
def open_unit_and_complement(bits):
    """Like ``open_unit`` but also returns ``1 - u`` computed exactly (no cancellation)."""
    m = bits >> 9
    u = (m.to(tl.float32) + 0.5) * 1.1920928955078125e-07
    v = ((8388607 - m).to(tl.float32) + 0.5) * 1.1920928955078125e-07
    return u, v


@triton.jit
def sample_index(b, index):
    """int64 Philox index of element ``index`` (int32 block, 0 <= index < 2**31) of sample
    ``b`` (int32 scalar): ``b * 2**32 + index``, i.e. counter words index_lo = index and
    index_hi = b, which ``philox4`` takes apart again without 64-bit arithmetic."""
    return (b.to(tl.int64) << 32) | index.to(tl.int64)


@triton.jit
def box_muller(bits_a, bits_b):
    """Two independent standard normals (float32 blocks) from two uint32 blocks.

    ``r = sqrt(2 E)``, ``E = -ln u`` ~ Exp(1), angle ``2 pi (t - 1/2)`` in (-pi, pi), with the
    fast functions of ``_fastmath`` (one MUFU.LG2, MUFU.SQRT, MUFU.SIN, MUFU.COS). Accuracy:
    for u <= 1 - 2**-6, E = -ln 2 log2(u) has a relative error below 2.4e-7 (log2's 2 ulp, or
    its absolute 2**-22 over |log2 u| >= 0.0227); nearer 1, where that absolute error would
    be large relative to E, E is the series v + v^2/2 + v^3/3 + v^4/4 of v = 1 - u (exact),
    truncation < 1.2e-8 relative. So r has a relative error below 2.5e-7 (with the square
    root's), i.e. at most 1.5e-6 for r <= 5.8 (the largest radius on the 2**-23 grid); sin
    and cos add 4.2e-7 r <= 2.4e-6, the angle's fp32 rounding the rest: each normal is
    within 5e-6 of the exact transform of the same two uniforms (tests/test_noise.py
    measures 3.9e-6 with every fast function's error at its bound), so its distribution
    function moves by at most 0.4 * 5e-6 = 2e-6.
    """
    u, v = open_unit_and_complement(bits_a)
    e_series = v * (1.0 + v * (0.5 + v * (0.3333333333333333 + v * 0.25)))
    e_log = -0.6931471805599453 * fast_log2(u)
    radius = tl.sqrt(2.0 * tl.where(v < 0.015625, e_series, e_log))
    theta = 6.283185307179586 * (open_unit(bits_b) - 0.5)
    return radius * fast_cos(theta), radius * fast_sin(theta)
