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
"""
from __future__ import annotations

import torch
import triton
import triton.language as tl

from ._common import ValueChecks, check_tensor, philox_seed, use_triton
from ._cpu_sampling import poisson_draws
from ._philox import STREAM_POISSON, open_unit, philox4

# Largest mean accepted by the op: above 2**24 / 2 counts lose integer resolution in fp32.
MAX_MEAN = 8.0e6
# Inversion below this mean, PTRS from it (as in Hormann 1993 and numpy).
PTRS_THRESHOLD = 10.0
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
    seed = philox_seed(generator, mu.device)
    _poisson_kernel[(triton.cdiv(n, BLOCK),)](mu_c, out, n, seed, BLOCK=BLOCK, num_warps=NUM_WARPS)
    return out


def aot_specs():
    from .aot import AotSpec

    sig = {"mu_ptr": "*fp32", "out_ptr": "*fp32", "n": "i64", "seed_ptr": "*i64", "BLOCK": "constexpr"}
    return [AotSpec("poisson", _poisson_kernel, sig, {"BLOCK": BLOCK}, NUM_WARPS)]
