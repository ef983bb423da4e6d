"""The Poisson sampler as measured on 2026-11-30 (commit 3d4e87b), kept as a bench baseline.

Verbatim copy of that commit's ``poisson_sample`` and ``_poisson_kernel`` (512-element
programs of 4 warps, block-wide rejection loops, libdevice logs, a factorial loop in the
log-pmf), so that ``bench/stages.py`` times old and new side by side in one run. It draws
from the same Philox streams in a different order, so its counts differ from the
production sampler's; both are exact in distribution (it passed tests/test_poisson.py).
Not used by the product; not a kernel module (``kernels.aot`` does not compile it).
"""
import torch
import triton
import triton.language as tl

from kernels._philox import STREAM_POISSON, open_unit, philox4

BLOCK = 512
NUM_WARPS = 4


@triton.jit
def _log_poisson_pmf(k, mu):
    """log P(K = k) for K ~ Poisson(mu); k >= 0 integer-valued fp32, mu >= 10."""
    kk = tl.maximum(k, 1.0)
    # bd0(k, mu) = k log(k / mu) + mu - k, by its series when k is close to mu.
    d = kk - mu
    v = d / (kk + mu)
    v2 = v * v
    term = 2.0 * kk * v
    series = d * v
    for j in tl.static_range(1, 8):
        term = term * v2
        series += term / (2 * j + 1)
    direct = kk * tl.log(kk / mu) + mu - kk
    bd0 = tl.where(tl.abs(d) < 0.1 * (kk + mu), series, direct)
    # stirlerr(k) = log(k!) - (k + 1/2) log k + k - log(2 pi) / 2.
    inv = 1.0 / kk
    inv2 = inv * inv
    stirl_large = inv * (0.08333333333333333 - inv2 * (0.002777777777777778 - inv2 * (0.0007936507936507937 - inv2 * 0.0005952380952380953)))
    factorial = tl.full(kk.shape, 1.0, tl.float32)
    for i in tl.static_range(2, 16):
        factorial = tl.where(kk >= i, factorial * i, factorial)
    stirl_small = tl.log(factorial) - (kk + 0.5) * tl.log(kk) + kk - 0.9189385332046727
    stirlerr = tl.where(kk > 15.0, stirl_large, stirl_small)
    log_pmf = -stirlerr - bd0 - 0.5 * tl.log(6.283185307179586 * kk)
    return tl.where(k < 0.5, -mu, log_pmf)


@triton.jit
def poisson_sample(mu, seed, index, stream):
    """Poisson(mu) counts as a float32 block.

    mu: float32 block of means (negative or NaN means are treated as 0; launchers
    refuse them). seed: int64 scalar Philox key. index: int32/int64 block, unique per
    element of the launch (the Philox counter). stream: int scalar separating this use
    from the kernel's other random draws.
    """
    mu = tl.where(mu > 0.0, mu, 0.0)
    # ---- inversion for small means: walk the CDF from k = 0 until it passes u.
    small = mu < 10.0
    bits, _, _, _ = philox4(seed, index, 0, stream)
    u = open_unit(bits)
    p = tl.exp(-mu)
    cdf = p
    k_small = tl.zeros_like(mu)
    active = small & (u > cdf)
    while tl.max(active.to(tl.int32)) > 0:
        k_small = tl.where(active, k_small + 1.0, k_small)
        p = tl.where(active, p * mu / tl.maximum(k_small, 1.0), p)
        cdf = tl.where(active, cdf + p, cdf)
        # The fp32 CDF can stall just below a u within ~1e-6 of 1: stop once past the
        # mode with terms below fp32 resolution (misplaced mass < 1e-7).
        active = active & (u > cdf) & ((k_small <= mu) | (p > 1e-8))

    # ---- PTRS for large means.
    big = mu >= 10.0
    m = tl.where(big, mu, 10.0)
    b = 0.931 + 2.53 * tl.sqrt(m)
    a = -0.059 + 0.02483 * b
    inv_alpha = 1.1239 + 1.1328 / (b - 3.4)
    v_r = 0.9277 - 3.6224 / (b - 2.0)
    k_big = tl.zeros_like(mu)
    active = big
    iteration = 1
    while tl.max(active.to(tl.int32)) > 0:
        bits_u, bits_v, _, _ = philox4(seed, index, iteration, stream)
        uu = open_unit(bits_u) - 0.5
        vv = open_unit(bits_v)
        us = 0.5 - tl.abs(uu)
        k = tl.floor((2.0 * a / us + b) * uu + m + 0.43)
        quick = (us >= 0.07) & (vv <= v_r)
        hopeless = (k < 0.0) | ((us < 0.013) & (vv > us))
        log_lhs = tl.log(vv * inv_alpha / (a / (us * us) + b))
        accept = active & (quick | ((~hopeless) & (log_lhs <= _log_poisson_pmf(tl.maximum(k, 0.0), m))))
        k_big = tl.where(accept, k, k_big)
        active = active & ~accept
        iteration += 1
    return tl.where(big, k_big, k_small)


@triton.jit
def _poisson_kernel(mu_ptr, out_ptr, n, seed_ptr, BLOCK: tl.constexpr):
    pid = tl.program_id(0)
    offsets = pid.to(tl.int64) * BLOCK + tl.arange(0, BLOCK)
    mask = offsets < n
    mu = tl.load(mu_ptr + offsets, mask=mask, other=0.0).to(tl.float32)
    seed = tl.load(seed_ptr)
    counts = poisson_sample(mu, seed, offsets, STREAM_POISSON)
    tl.store(out_ptr + offsets, counts, mask=mask)



def poisson_2026_11_30(mu: torch.Tensor, seed: torch.Tensor) -> torch.Tensor:
    """Counts for contiguous float32 CUDA ``mu`` with the int64 Philox key tensor ``seed``."""
    out = torch.empty_like(mu, dtype=torch.float32)
    n = mu.numel()
    _poisson_kernel[(triton.cdiv(n, BLOCK),)](mu, out, n, seed, BLOCK=BLOCK, num_warps=NUM_WARPS)
    return out
