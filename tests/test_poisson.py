"""kernels.poisson: the Triton Poisson sampler against the exact distribution.

Statistical tests use fixed seeds, so they are repeatable; their false-failure rate
under a fresh seed is ALPHA per test (Bonferroni-corrected where one test makes
several comparisons).
"""
import importlib
import math

import numpy as np
import pytest
import scipy.stats as st
import torch
import triton
import triton.language as tl

import kernels
from kernels import _fastmath
from kernels._common import philox_seed
from kernels.poisson import MAX_MEAN, _log_poisson_pmf, poisson, poisson_reference
from tests.conftest import TRITON_DEVICE
from tests.helpers import chi_square_pvalue

poisson_module = importlib.import_module("kernels.poisson")  # the attribute kernels.poisson is the op

ALPHA = 1e-3  # per-test false-failure rate of every statistical test below
N_SAMPLES = 20_000
MEANS = [0.0, 1e-3, 0.5, 3.0, 9.99, 10.0, 50.0, 1e3, 1e5, 1e6]


@pytest.mark.parametrize("mean", MEANS)
def test_triton_matches_exact_poisson_distribution(mean):
    gen = torch.Generator().manual_seed(1234 + int(mean * 1000) % 9973)
    mu = torch.full((N_SAMPLES,), mean, device=TRITON_DEVICE)
    k = poisson(mu, generator=gen, backend="triton").cpu().numpy()
    assert np.all(k == np.round(k)) and np.all(k >= 0), "counts must be non-negative integers"
    if mean == 0.0:
        assert np.all(k == 0)
        return
    # Moments: z-tests on the mean (var = mean) and on the variance (var of s^2 ~ (mu + 2 mu^2) / n).
    z_crit = st.norm.isf(ALPHA / 4)
    assert abs(k.mean() - mean) <= z_crit * math.sqrt(mean / N_SAMPLES)
    var_sd = math.sqrt((mean + 2 * mean**2) / N_SAMPLES)
    assert abs(k.var(ddof=1) - mean) <= z_crit * var_sd
    assert chi_square_pvalue(k.astype(np.int64), mean) > ALPHA / 2


def test_mixed_means_in_one_launch():
    """Small (inversion) and large (rejection) means interleaved inside every block."""
    gen = torch.Generator().manual_seed(7)
    means = torch.tensor([0.7, 2500.0, 0.0, 12.0], device=TRITON_DEVICE).repeat(4000)
    k = poisson(means, generator=gen, backend="triton").cpu().numpy().astype(np.int64)
    for j, mean in enumerate([0.7, 2500.0, 0.0, 12.0]):
        sub = k[j::4]
        if mean == 0.0:
            assert np.all(sub == 0)
        else:
            assert chi_square_pvalue(sub, mean) > ALPHA / 3


def test_shape_dtype_and_noncontiguous_input():
    gen = torch.Generator().manual_seed(3)
    base = torch.rand(6, 10, device=TRITON_DEVICE, generator=None) * 40
    mu = base.t()  # non-contiguous view
    k = poisson(mu, generator=gen, backend="triton")
    assert k.shape == mu.shape and k.dtype == torch.float32 and k.device == mu.device
    assert torch.all(k >= 0) and torch.all(k == k.round())
    half = poisson(base.half(), generator=gen, backend="triton")
    assert half.dtype == torch.float32 and half.shape == base.shape


def test_empty_input():
    out = poisson(torch.empty(0, 3, device=TRITON_DEVICE), backend="triton")
    assert out.shape == (0, 3)


def test_same_generator_seed_repeats_and_new_seed_differs():
    mu = torch.linspace(0, 300, 997, device=TRITON_DEVICE)
    a = poisson(mu, generator=torch.Generator().manual_seed(11), backend="triton")
    b = poisson(mu, generator=torch.Generator().manual_seed(11), backend="triton")
    c = poisson(mu, generator=torch.Generator().manual_seed(12), backend="triton")
    assert torch.equal(a, b)
    assert not torch.equal(a, c)
    torch.manual_seed(5)
    d = poisson(mu, backend="triton")
    torch.manual_seed(5)
    e = poisson(mu, backend="triton")
    assert torch.equal(d, e)


def test_reference_path_matches_distribution_and_auto_dispatch():
    gen = torch.Generator().manual_seed(21)
    mu = torch.full((N_SAMPLES,), 37.0)
    k = poisson(mu, generator=gen)  # auto on CPU: the reference
    assert chi_square_pvalue(k.numpy().astype(np.int64), 37.0) > ALPHA
    gen2 = torch.Generator().manual_seed(21)
    assert torch.equal(k, poisson_reference(mu, gen2))


@triton.jit
def _log_pmf_probe(k_ptr, mu_ptr, out_ptr, n, BLOCK: tl.constexpr):
    offs = tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)
    mask = offs < n
    k = tl.load(k_ptr + offs, mask=mask, other=0.0)
    mu = tl.load(mu_ptr + offs, mask=mask, other=10.0)
    tl.store(out_ptr + offs, _log_poisson_pmf(k, mu), mask=mask)


def _log_pmf_max_error():
    """Largest absolute error of the kernel's log-pmf, where the pmf exceeds 1e-30, over
    k within 6 sd of mu and k = 0..15, mu from 10 to 1e6."""
    rows = []
    for mu in (10.0, 37.5, 1e3, 1e5, 1e6):
        sd = math.sqrt(mu)
        ks = np.unique(np.clip(np.round(mu + sd * np.linspace(-6, 6, 41)), 0, None))
        ks = np.concatenate([ks, np.arange(0, 16)])
        rows += [(k, mu) for k in ks]
    k = torch.tensor([r[0] for r in rows], dtype=torch.float32, device=TRITON_DEVICE)
    mu = torch.tensor([r[1] for r in rows], dtype=torch.float32, device=TRITON_DEVICE)
    out = torch.empty_like(k)
    _log_pmf_probe[(triton.cdiv(k.numel(), 128),)](k, mu, out, k.numel(), BLOCK=128)
    exact = st.poisson.logpmf(k.cpu().double().numpy(), mu.cpu().double().numpy())
    got = out.cpu().double().numpy()
    # absolute error in log-probability where the pmf matters (> 1e-30)
    sel = exact > -69
    return np.max(np.abs(got[sel] - exact[sel]))


needs_triton = pytest.mark.skipif(TRITON_DEVICE.type == "cpu" and not kernels._common.triton_interpreter_enabled(),
                                  reason="needs CUDA or TRITON_INTERPRET=1")


@needs_triton
def test_log_pmf_accuracy_in_fp32():
    """The acceptance test's log-pmf is accurate in fp32 even at mu = 1e6, where the
    naive ``-mu + k log mu - lgamma(k + 1)`` loses about one unit to cancellation."""
    assert _log_pmf_max_error() < 2e-4


@pytest.mark.skipif(not kernels._common.triton_interpreter_enabled(),
                    reason="emulates the GPU's approximate log/division under the interpreter; a GPU runs the real ones")
@pytest.mark.parametrize("sign", [1.0, -1.0])
def test_fast_math_errors_at_their_bounds_change_nothing_measurable(monkeypatch, sign):
    """On a GPU the sampler's logs and divisions are MUFU approximations (kernels/_fastmath.py:
    log within 3.6e-7 absolute or 3 ulp, division within 2 ulp). With errors of those sizes
    injected into every such call, all of one sign, the log-pmf keeps the accuracy bound
    above and the draws still pass the moment and chi-square tests: no term amplifies them
    (as k log mu would, at mu = 1e6, by ~1e7)."""
    monkeypatch.setattr(_fastmath, "LOG_ERROR", tl.constexpr(sign * 3.6e-7))
    monkeypatch.setattr(_fastmath, "DIV_ERROR", tl.constexpr(sign * 2.4e-7))
    assert _log_pmf_max_error() < 2e-4
    for mean in (10.0, 50.0, 1e3, 1e5):  # Bonferroni over 4 means x 3 tests
        gen = torch.Generator().manual_seed(77 + int(mean))
        k = poisson(torch.full((N_SAMPLES,), mean, device=TRITON_DEVICE), generator=gen, backend="triton")
        k = k.cpu().numpy()
        z_crit = st.norm.isf(ALPHA / 24)
        assert abs(k.mean() - mean) <= z_crit * math.sqrt(mean / N_SAMPLES)
        assert abs(k.var(ddof=1) - mean) <= z_crit * math.sqrt((mean + 2 * mean**2) / N_SAMPLES)
        assert chi_square_pvalue(k.astype(np.int64), mean) > ALPHA / 12


@needs_triton
def test_draws_do_not_depend_on_launch_configuration():
    """Every configuration autotune may pick (and the untuned one) draws the same counts:
    the Philox counter is the element index, whatever the program that holds it. Zeros,
    inversion and PTRS means are mixed inside every program."""
    g = torch.Generator().manual_seed(5)
    mu = torch.rand(700, generator=g) ** 3 * 2000.0
    mu[::7] = 0.0
    mu[3::11] = 1.5e5
    mu = mu.to(TRITON_DEVICE)
    ref = poisson(mu, generator=torch.Generator().manual_seed(9), backend="triton")
    seed = philox_seed(torch.Generator().manual_seed(9), mu.device)
    assert ref[mu < 10].sum() > 0 and ref[mu >= 10].sum() > 0
    for meta, warps in poisson_module.CONFIGS:
        out = torch.full_like(mu, -1.0)
        poisson_module._launch(mu, out, seed, config=(meta["BLOCK"], warps))
        assert torch.equal(out, ref), (meta, warps)


@pytest.mark.parametrize(
    "bad, exc, match",
    [
        (torch.tensor([1.0, -0.5]), ValueError, r"mu must lie in \[0, 8e\+06\]"),
        (torch.tensor([1.0, float("nan")]), ValueError, "mu must be finite"),
        (torch.tensor([MAX_MEAN * 2]), ValueError, "mu must lie in"),
        (torch.tensor([1, 2], dtype=torch.int64), TypeError, r"mu must have dtype in \(float32, float16, bfloat16\), got int64"),
        ([1.0, 2.0], TypeError, "mu must be a torch.Tensor, got list"),
    ],
)
def test_refusals(bad, exc, match):
    with pytest.raises(exc, match=match):
        poisson(bad)


def test_unknown_backend_refused():
    with pytest.raises(ValueError, match=r"backend must be one of \('auto', 'triton', 'torch'\), got 'cuda'"):
        poisson(torch.ones(3), backend="cuda")


def test_forced_triton_on_cpu_without_interpreter_refused(monkeypatch):
    monkeypatch.setenv("TRITON_INTERPRET", "0")
    with pytest.raises(RuntimeError, match="TRITON_INTERPRET=1"):
        poisson(torch.ones(3), backend="triton")
