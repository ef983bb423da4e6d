"""Exact Poisson sampling in Triton: a device function for other kernels, and an op.

Algorithm (SPEC §3), all in float32:
- mean < 10: inversion by sequential search of the CDF from k = 0 (one uniform);
- mean >= 10: Hormann's transformed rejection with squeeze, PTRS ("The transformed
  rejection method for generating Poisson random variables", Insurance: Mathematics
  and Economics 12, 1993), with the acceptance test on the log-pmf evaluated through
  Loader's saddle-point form ``-stirlerr(k) - bd0(k, mu) - log(2 pi k) / 2``
  ("Fast and accurate computation of binomial probabilities", 2000). That form has no
  cancellation between terms of size ``mu log mu``, which in fp32 would cost a whole
  unit of log-probability at mu = 1e6.
Counts are exact integers in fp32 up to 2**24, so the sampler is exact for means up to
about 1e7; the project needs up to ~2e5.

Speed (issue 11; the SASS counts behind these choices are in NOTES.md, "Poisson
sampler"). A Triton ``while tl.max(active)`` loop runs, for every element of the
program, as many rounds as its slowest element needs, and ``tl.where`` evaluates both
sides. So the cost of a sample is set by the program's worst element, and:
- one Philox call feeds the inversion uniform *and* the first two PTRS trials (an element
  uses one method or the other, never both), then one call per two trials;
- the inversion adds 8 CDF terms per check (unrolled, 1/j folded at compile time) instead
  of one term and a block-wide reduction per step;
- the PTRS part is skipped by programs without a mean >= 10, the inversion by programs
  without a mean < 10;
- the log-pmf uses no factorial loop (stirlerr: a table for k = 1, 2, the series from 3),
  series coefficients as products, and MUFU log / reciprocal (``_fastmath``: accuracy below);
- launchers use programs of few elements (one warp: the loop's maximum is over 32-128
  elements; ``triton.autotune`` picks among configurations on the user's GPU).

Accuracy of the fast functions (``kernels/_fastmath.py``: log within 3.6e-7 absolute on
[0.5, 2] and 3 ulp elsewhere, division 2 ulp): the acceptance test compares
``log(v alpha / (a / us**2 + b))`` with the log-pmf, so an absolute error e on either side
changes the acceptance probability of a k by a factor exp(e) only. ``bd0`` uses its series
(no log) for 1/2 < k/mu < 2 and ``k log(k/mu)`` only outside, where the log's error is
relative (3 ulp): with the reciprocal's 2 ulp, bd0 keeps a relative error below 3e-6; the
other logs are of values outside [0.5, 2]. So the log-pmf is right to 3e-6 * bd0 + ~1e-6,
and an acceptance probability to that relative error: ~1e-6 near the mode, 3e-5 where the
pmf is e^-10 below it, 2e-4 at e^-70 (the accuracy test's bound): as with the fp32
arithmetic itself, far below what the statistical tests, or any use, can see.
"""
from __future__ import annotations

import torch
import triton
import triton.language as tl

from ._common import ValueChecks, check_tensor, philox_seed, use_triton
from ._cpu_sampling import poisson_draws
from ._fastmath import fast_div, fast_log, fast_rcp
from ._philox import STREAM_POISSON, open_unit, philox4
from ._tuning import autotuned, autotuning_enabled, record_launch

# Largest mean accepted by the op: above 2**24 / 2 counts lose integer resolution in fp32.
MAX_MEAN = 8.0e6
# Inversion below this mean, PTRS from it (as in Hormann 1993 and numpy).
PTRS_THRESHOLD = tl.constexpr(10.0)
# Inversion: CDF terms added between two checks of the program, and the number of such
# chunks. 5 x 8 = 40 terms: P(K > 40) < 1e-12 for a mean below 10, and the search stops
# earlier anyway where fp32 cannot resolve the rest of the CDF (the guard below).
INVERSION_CHUNK = tl.constexpr(8)
INVERSION_CHUNKS = tl.constexpr(5)


@triton.jit
def _log_pmf(k, mu, inv_mu):
    """log P(K = k), K ~ Poisson(mu); k >= 0 integer-valued fp32, mu >= 10, inv_mu = 1 / mu."""
    kk = tl.maximum(k, 1.0)
    # bd0(k, mu) = k log(k / mu) + mu - k. For 1/2 < k/mu < 2 (|v| < 1/3) by its series
    # d v + 2 k sum_j v^(2j+1) / (2j+1), 8 terms (remainder < 1e-9 relative); outside, with the
    # log, whose fast form then has a small relative error.
    d = kk - mu
    s = kk + mu
    v = fast_div(d, s)
    v2 = v * v
    poly = 0.058823529411764705 * v2 + 0.06666666666666667
    poly = poly * v2 + 0.07692307692307693
    poly = poly * v2 + 0.09090909090909091
    poly = poly * v2 + 0.1111111111111111
    poly = poly * v2 + 0.14285714285714285
    poly = poly * v2 + 0.2
    poly = poly * v2 + 0.3333333333333333
    series = d * v + (2.0 * kk * v) * (v2 * poly)
    direct = kk * fast_log(kk * inv_mu) - d
    bd0 = tl.where(3.0 * tl.abs(d) < s, series, direct)
    # stirlerr(k) = log(k!) - (k + 1/2) log k + k - log(2 pi) / 2: the asymptotic series
    # from k = 3 (truncation error < 4e-8), exact values below.
    inv = fast_rcp(kk)
    inv2 = inv * inv
    stirlerr = inv * (0.08333333333333333 - inv2 * (0.002777777777777778 - inv2 * (0.0007936507936507937 - inv2 * 0.0005952380952380953)))
    stirlerr = tl.where(kk < 2.5, 0.04134069595540929, stirlerr)
    stirlerr = tl.where(kk < 1.5, 0.08106146679532726, stirlerr)
    log_pmf = -stirlerr - bd0 - 0.5 * fast_log(6.283185307179586 * kk)
    return tl.where(k < 0.5, -mu, log_pmf)


@triton.jit
def _log_poisson_pmf(k, mu):
    """log P(K = k) for K ~ Poisson(mu); k >= 0 integer-valued fp32, mu >= 10."""
    return _log_pmf(k, mu, fast_rcp(mu))


@triton.jit
def _inversion_chunk(c: tl.constexpr, mu, u, p, cdf, k, active):
    """CDF terms j = 8c + 1 .. 8c + 8 of the search (see ``_inversion``)."""
    for i in tl.static_range(INVERSION_CHUNK):
        # term j: k = j for elements still searching; p_j = p_{j-1} mu / j (1/j folded)
        k = tl.where(active, c * INVERSION_CHUNK + i + 1.0, k)
        p = p * (mu * (1.0 / (c * INVERSION_CHUNK + i + 1)))
        cdf += p
        active = active & (u > cdf)
    # The fp32 CDF can stall just below a u within ~1e-6 of 1: stop once past the mode
    # with terms below fp32 resolution (misplaced mass < 1e-7).
    active = active & ((c * INVERSION_CHUNK + INVERSION_CHUNK <= mu) | (p > 1e-8))
    return p, cdf, k, active


@triton.jit
def _inversion(mu, u, small):
    """Poisson(mu) by sequential search of the CDF for the ``small`` elements (else 0)."""
    p = tl.exp(-mu)
    cdf = p
    k = tl.zeros_like(mu)
    active = small & (u > cdf)
    # One check for programs with nothing to search (most, where means are large), then
    # one per further chunk.
    if tl.max(active.to(tl.int32)) > 0:
        p, cdf, k, active = _inversion_chunk(0, mu, u, p, cdf, k, active)
        for c in tl.static_range(1, INVERSION_CHUNKS):
            if tl.max(active.to(tl.int32)) > 0:
                p, cdf, k, active = _inversion_chunk(c, mu, u, p, cdf, k, active)
    return k


@triton.jit
def _ptrs(mu, big, x0, x1, x2, x3, seed, index, stream):
    """PTRS draws for the ``big`` elements (mu >= 10; else 0). x0..x3: Philox bits of
    counter iteration 0, for trials 0 and 1; iteration c feeds trials 2c and 2c + 1."""
    m = tl.where(big, mu, PTRS_THRESHOLD)
    b = 0.931 + 2.53 * tl.sqrt(m)
    a = -0.059 + 0.02483 * b
    inv_alpha = 1.1239 + fast_div(1.1328, b - 3.4)
    v_r = 0.9277 - fast_div(3.6224, b - 2.0)
    inv_m = fast_rcp(m)
    k_big = tl.zeros_like(mu)
    active = big
    trial = 0
    while tl.max(active.to(tl.int32)) > 0:
        # Fetched when needed, not after the last trial: most programs stop after trial 1.
        if (trial > 0) & ((trial & 1) == 0):
            x0, x1, x2, x3 = philox4(seed, index, trial >> 1, stream)
        odd = (trial & 1) == 1
        uu = open_unit(tl.where(odd, x2, x0)) - 0.5
        vv = open_unit(tl.where(odd, x3, x1))
        us = 0.5 - tl.abs(uu)
        r = fast_rcp(us)
        k = tl.floor((2.0 * a * r + b) * uu + m + 0.43)
        quick = (us >= 0.07) & (vv <= v_r)
        hopeless = (k < 0.0) | ((us < 0.013) & (vv > us))
        accept = active & quick
        # The log-pmf test, for the ~15-40% of trials the squeeze leaves undecided; skipped
        # by the whole program when none of its elements needs it (often after trial 0).
        undecided = active & ~quick & ~hopeless
        if tl.max(undecided.to(tl.int32)) > 0:
            log_lhs = fast_log(fast_div(vv * inv_alpha, a * (r * r) + b))
            accept = accept | (undecided & (log_lhs <= _log_pmf(tl.maximum(k, 0.0), m, inv_m)))
        k_big = tl.where(accept, k, k_big)
        active = active & ~accept
        trial += 1
    return k_big


@triton.jit
def poisson_sample(mu, seed, index, stream):
    """Poisson(mu) counts as a float32 block.

    mu: float32 block of means (negative or NaN means are treated as 0; launchers
    refuse them). seed: int64 scalar Philox key. index: int32/int64 block, unique per
    element of the launch (the Philox counter). stream: int scalar separating this use
    from the kernel's other random draws. Draws counters (index, 0..c, stream): c + 1
    Philox calls for an element whose PTRS needs 2c + 1 or 2c + 2 trials.
    """
    mu = tl.where(mu > 0.0, mu, 0.0)
    x0, x1, x2, x3 = philox4(seed, index, 0, stream)
    big = mu >= PTRS_THRESHOLD
    counts = _inversion(mu, open_unit(x0), ~big)
    if tl.max(big.to(tl.int32)) > 0:
        counts = tl.where(big, _ptrs(mu, big, x0, x1, x2, x3, seed, index, stream), counts)
    return counts


@triton.jit(do_not_specialize=["size_class"])
def _poisson_kernel(mu_ptr, out_ptr, n, seed_ptr, size_class, BLOCK: tl.constexpr):
    # size_class (bit length of n) is read by nothing: it is the autotuning key, so that
    # one tuned configuration serves all sizes of one order of magnitude.
    pid = tl.program_id(0)
    offsets = pid.to(tl.int64) * BLOCK + tl.arange(0, BLOCK)
    mask = offsets < n
    mu = tl.load(mu_ptr + offsets, mask=mask, other=0.0).to(tl.float32)
    seed = tl.load(seed_ptr)
    counts = poisson_sample(mu, seed, offsets, STREAM_POISSON)
    tl.store(out_ptr + offsets, counts, mask=mask)


# Launch configurations (BLOCK elements per program, warps) that triton.autotune tries on
# the user's GPU. The rejection loops run as long as the slowest element of a program
# needs, so small one-warp programs (32-128 elements) waste least; larger ones have more
# warps per program to hide latency. (512, 4), the shape measured on 2026-11-30, now needs
# 128 registers and spills. The draws are the same under every configuration.
CONFIGS = (
    ({"BLOCK": 32}, 1), ({"BLOCK": 64}, 1), ({"BLOCK": 128}, 1),
    ({"BLOCK": 64}, 2), ({"BLOCK": 128}, 4), ({"BLOCK": 256}, 4),
)
# The configuration where nothing is tuned (the interpreter, whose cost is per program).
BLOCK = 512
NUM_WARPS = 4
_poisson_tuned = autotuned(_poisson_kernel, CONFIGS, key=["size_class"])


def _launch(mu_c: torch.Tensor, out: torch.Tensor, seed: torch.Tensor, config=None) -> None:
    """Launch on contiguous ``mu_c`` -> ``out``; ``config`` (BLOCK, num_warps) forces one."""
    n = mu_c.numel()
    size_class = n.bit_length()
    if config is None and record_launch(_poisson_tuned, (mu_c, out, n, seed, size_class), {}):
        return
    if config is None and autotuning_enabled():
        _poisson_tuned[lambda meta: (triton.cdiv(n, meta["BLOCK"]),)](mu_c, out, n, seed, size_class)
        return
    block, warps = config if config is not None else (BLOCK, NUM_WARPS)
    _poisson_kernel[(triton.cdiv(n, block),)](mu_c, out, n, seed, size_class, BLOCK=block, num_warps=warps)


def poisson_reference(mu: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
    """Plain-PyTorch reference: ``torch.poisson`` on the float32 means (in parallel
    chunks on a multi-threaded CPU, ``kernels._cpu_sampling.poisson_draws``)."""
    return poisson_draws(mu, generator)


def poisson(mu: torch.Tensor, generator: torch.Generator | None = None, *, backend: str = "auto") -> torch.Tensor:
    """Draw Poisson counts, one per element of ``mu``.

    Args:
        mu: means, any shape, float32/float16/bfloat16, each in [0, 8e6] (units: the
            count's own, e.g. photo-electrons). Any layout; non-contiguous is copied.
        generator: torch.Generator supplying the Philox key (default: the global one,
            so ``torch.manual_seed`` makes runs repeatable).
        backend: "auto" (Triton on CUDA, reference on CPU), "triton" or "torch".

    Returns:
        float32 tensor of mu's shape and device holding non-negative integers.
    """
    check_tensor("mu", mu, dtypes=(torch.float32, torch.float16, torch.bfloat16))
    checks = ValueChecks()
    checks.require(lambda: torch.isfinite(mu), lambda: "mu must be finite (got NaN or Inf)")
    checks.require(lambda: (mu >= 0) & (mu <= MAX_MEAN),
                   lambda: f"mu must lie in [0, {MAX_MEAN:g}], got values in [{mu.min().item():g}, {mu.max().item():g}]")
    checks.run()  # one host read (none inside value_checks_disabled)
    if not use_triton(mu.device, backend):
        return poisson_reference(mu, generator)
    mu_c = mu.contiguous()
    out = torch.empty(mu.shape, dtype=torch.float32, device=mu.device)
    n = mu_c.numel()
    if n == 0:
        return out
    _launch(mu_c, out, philox_seed(generator, mu.device))
    return out


def aot_specs():
    from .aot import AotSpec

    sig = {"mu_ptr": "*fp32", "out_ptr": "*fp32", "n": "i64", "seed_ptr": "*i64", "size_class": "i32",
           "BLOCK": "constexpr"}
    # Every configuration autotune may pick must compile without spills.
    return [AotSpec(f"poisson[{meta['BLOCK']}x{warps}w]", _poisson_kernel, sig, dict(meta), warps)
            for meta, warps in CONFIGS]
