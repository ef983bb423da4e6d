"""kernels._cpu_sampling: the CPU paths' parallel Poisson and float32 Tukey-lambda samplers.

Statistical checks use fixed seeds with a false-failure rate of ALPHA per test under a
fresh seed (Bonferroni inside a test).
"""
import os
import subprocess
import sys
import textwrap

import numpy as np
import pytest
import scipy.stats as st
import torch

from kernels._cpu_sampling import POISSON_CHUNK, poisson_draws, tukey_lambda_draws

from .helpers import chi_square_pvalue

ALPHA = 1e-3
N_BIG = 2 * POISSON_CHUNK + 12_345  # three chunks, the last one partial


@pytest.fixture
def threads():
    before = torch.get_num_threads()
    yield torch.set_num_threads
    torch.set_num_threads(before)


def test_poisson_draws_are_a_function_of_the_generator_not_the_thread_count(threads):
    mu = torch.rand(N_BIG, generator=torch.Generator().manual_seed(0)) * 30
    results = []
    for n in (1, 2, 3):
        threads(n)
        results.append(poisson_draws(mu, torch.Generator().manual_seed(7)))
    assert torch.equal(results[0], results[1]) and torch.equal(results[0], results[2])
    other = poisson_draws(mu, torch.Generator().manual_seed(8))
    assert not torch.equal(results[0], other)


def test_poisson_draws_follow_the_global_seed_without_a_generator():
    mu = torch.full((N_BIG,), 4.0)
    torch.manual_seed(3)
    a = poisson_draws(mu)
    torch.manual_seed(3)
    assert torch.equal(a, poisson_draws(mu))


@pytest.mark.parametrize("mean", [0.7, 12.5, 1500.0])
def test_poisson_draws_have_the_poisson_distribution_in_every_chunk(threads, mean):
    threads(2)
    k = poisson_draws(torch.full((3, N_BIG // 3), mean), torch.Generator().manual_seed(11)).reshape(-1).numpy()
    assert k.dtype == np.float32 and np.all(k == np.round(k))
    chunks = [k[i * POISSON_CHUNK:(i + 1) * POISSON_CHUNK] for i in range(3)]
    for chunk in chunks:  # each chunk is a proper Poisson sample (Bonferroni over 3)
        assert chi_square_pvalue(chunk.astype(np.int64), mean) > ALPHA / 3
    # chunks are seeded independently: no two are equal, and they are uncorrelated
    n = min(len(c) for c in chunks)
    r = np.corrcoef(chunks[0][:n], chunks[1][:n])[0, 1]
    assert abs(r) * np.sqrt(n) < st.norm.isf(ALPHA / 2)


def test_poisson_draws_keep_shape_and_small_tensors_use_torch_poisson():
    mu = torch.rand(2, 3, 5) * 9
    a = poisson_draws(mu, torch.Generator().manual_seed(1))
    assert a.shape == mu.shape and torch.equal(a, torch.poisson(mu, generator=torch.Generator().manual_seed(1)))
    big = torch.rand(2, 4, 129, 300) * 9
    assert poisson_draws(big, torch.Generator().manual_seed(1)).shape == big.shape


def test_poisson_draws_work_in_a_forked_child_after_the_pool_started():
    """A DataLoader worker forks the process after the parent's pool started, and runs with
    one intra-op thread (torch's own rule for forked workers): the child draws inline,
    the same values as the parent for the same generator."""
    if not hasattr(os, "fork"):
        pytest.skip("needs fork")
    code = textwrap.dedent(f"""
        import os, torch
        from kernels._cpu_sampling import poisson_draws
        torch.set_num_threads(2)
        mu = torch.full(({N_BIG},), 3.0)
        parent = poisson_draws(mu, torch.Generator().manual_seed(4))   # starts the parent's pool
        pid = os.fork()
        if pid == 0:
            torch.set_num_threads(1)
            child = poisson_draws(mu, torch.Generator().manual_seed(4))
            os._exit(0 if torch.equal(child, parent) else 3)
        _, status = os.waitpid(pid, 0)
        raise SystemExit(os.waitstatus_to_exitcode(status))
    """)
    done = subprocess.run([sys.executable, "-c", code], timeout=120)
    assert done.returncode == 0


@pytest.mark.parametrize("lam", [-0.15, 0.0, 1e-4, 0.2, 1.0])
def test_tukey_lambda_draws_match_scipy(lam):
    x = tukey_lambda_draws(torch.tensor(lam), (50_000,), torch.Generator().manual_seed(5))
    assert x.dtype == torch.float32 and torch.isfinite(x).all()
    assert st.kstest(x.numpy(), st.tukeylambda(lam).cdf).pvalue > ALPHA


def test_tukey_lambda_draws_broadcast_lam_per_sample():
    lam = torch.tensor([-0.1, 0.14]).view(2, 1)
    x = tukey_lambda_draws(lam, (2, 40_000), torch.Generator().manual_seed(6))
    for b in range(2):  # Bonferroni over 2
        assert st.kstest(x[b].numpy(), st.tukeylambda(float(lam[b])).cdf).pvalue > ALPHA / 2


@pytest.mark.parametrize("mode", ["inference", "no_grad"])
def test_poisson_draws_under_inference_and_no_grad_modes(threads, mode):
    threads(2)
    ctx = torch.inference_mode() if mode == "inference" else torch.no_grad()
    with ctx:
        mu = torch.full((N_BIG,), 2.0)
        k = poisson_draws(mu, torch.Generator().manual_seed(2))
        k.add_(1)  # the result is an ordinary tensor of the caller's mode
    assert k.shape == (N_BIG,) and abs(k.mean().item() - 3.0) < 0.05


@pytest.mark.skipif(not torch.cuda.is_available(), reason="torch.poisson's CUDA stream reservation needs a CUDA device")
@pytest.mark.parametrize("then", ["poisson", "rand"])
def test_cuda_reference_draws_do_not_repeat_in_the_generators_next_draws(then):
    """torch.poisson on CUDA reserves 20 Philox numbers per element but uses ~mean + 1 of
    them below a mean of 64 (pytorch/pytorch#136750): a second draw from the same generator
    reuses the tail, and the two are correlated (~0.5 at a mean of 39). poisson_draws draws
    on a private generator: correlation 0 (z-test, N = 2**16, false-failure rate ALPHA)."""
    g = torch.Generator(device="cuda").manual_seed(0)
    mu = torch.full((1 << 16,), 39.0, device="cuda")
    a = poisson_draws(mu, g)
    b = poisson_draws(mu, g) if then == "poisson" else torch.rand(mu.shape, generator=g, device="cuda")
    corr = np.corrcoef(a.cpu().double().numpy(), b.cpu().double().numpy())[0, 1]
    assert abs(corr) * np.sqrt(mu.numel()) < st.norm.isf(ALPHA / 2), corr

