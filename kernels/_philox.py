"""Triton device helpers for counter-based random numbers (Philox-4x32-10).

Every random number of the project is a pure function of ``(seed, element index,
iteration, stream)``: the 64-bit key is ``seed`` (read from a device tensor, see
``_common.philox_seed``), the 128-bit counter is ``(index_lo, iteration, stream,
index_hi)``. ``stream`` separates the independent uses inside one kernel (shot noise,
read noise, row noise, ...); ``iteration`` numbers the Philox calls of a rejection loop
(the Poisson sampler: call 0 gives the inversion uniform and PTRS trials 0 and 1, call c
trials 2c and 2c + 1). So results do not depend on block sizes, launch configurations
or launch order, and two uses never overlap.
"""
import triton
import triton.language as tl

# Stream identifiers: one per independent use of randomness inside a kernel.
# tl.constexpr so that @triton.jit code may read them as globals.
STREAM_POISSON = tl.constexpr(0)
STREAM_GAUSS = tl.constexpr(1)
STREAM_TUKEY = tl.constexpr(2)
STREAM_ROW = tl.constexpr(3)
STREAM_QUANT = tl.constexpr(4)


@triton.jit
def philox4(seed, index, iteration, stream):
    """Four uint32 blocks for counter ``(index, iteration, stream)`` under key ``seed``.

    seed: int64 scalar. index: int32/int64 block. iteration, stream: int scalars.
    """
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
def box_muller(bits_a, bits_b):
    """Two independent standard normals (float32 blocks) from two uint32 blocks."""
    u = open_unit(bits_a)
    theta = 6.283185307179586 * open_unit(bits_b)
    radius = tl.sqrt(-2.0 * tl.log(u))
    return radius * tl.cos(theta), radius * tl.sin(theta)


@triton.jit
def standard_normal(seed, index, iteration, stream):
    """One standard-normal float32 block per element of ``index``."""
    a, b, _, _ = philox4(seed, index, iteration, stream)
    z, _ = box_muller(a, b)
    return z
