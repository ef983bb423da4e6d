"""kernels.exposure: the fused exposure-diffusion step (SPEC §4).

The Triton path is forced (``backend="triton"``) on TRITON_DEVICE. Deterministic mode
is compared with the plain-PyTorch reference (fp32 inputs: atol/rtol FP32_TOL; fp16
outputs: FP16_TOL) and with a hand-computed example; stochastic mode by fixed-seed
statistics whose false-failure rate under a fresh seed is ALPHA per test (Bonferroni
over the comparisons inside one test); gradients by gradcheck (float64, reference) and
Triton backward == reference autograd.
"""
import math

import numpy as np
import pytest
import scipy.stats as st
import torch

from kernels import exposure as exposure_module
from kernels import _common as kernels_common
from kernels._common import philox_seed, value_checks_disabled
from kernels.exposure import BLOCK, exposure_step, exposure_step_reference
from tests.conftest import TRITON_DEVICE
from tests.helpers import chi_square_pvalue, poison_

ALPHA = 1e-3  # per-test false-failure rate of every statistical test below
FP32_TOL = dict(atol=1e-5, rtol=1e-5)
FP16_TOL = dict(atol=2e-3, rtol=2e-3)  # fp16 storage of the next input (~1e-3 relative)
DEV = TRITON_DEVICE
LAYOUTS = [(False, False), (True, False), (False, True), (True, True)]  # (with_photon, concat_origin)


def make_inputs(B=2, C=9, h=5, w=7, dtype=torch.float32, seed=0):
    """Fresh inputs covering both sides of every clip (x0, R + A_i, A_T outside [0, 1])."""
    g = torch.Generator().manual_seed(seed)
    net = torch.randn(B, C, h, w, generator=g) * 0.6 + 0.4
    state = torch.rand(B, 4, h, w, generator=g)
    origin = torch.rand(B, 4, h, w, generator=g) * 1.2 - 0.1
    return net.to(DEV, dtype), state.to(DEV, dtype), origin.to(DEV, dtype)


def params(B=2):
    return dict(ratio=torch.tensor([100.0, 250.0, 37.0][:B], device=DEV), K=torch.tensor([1.5, 0.3, 7.0][:B], device=DEV),
                rho=torch.tensor([1.0, 3.5, 12.0][:B], device=DEV), rho_next=torch.tensor([50.0, 80.0, 13.0][:B], device=DEV))


def both(net, state, origin, **kw):
    got = exposure_step(net, state, origin, backend="triton", **kw)
    ref = exposure_step_reference(net, state, origin, **kw)
    return got, ref


def assert_close(got, ref, **tol):
    torch.testing.assert_close(got.float().cpu(), ref.float().cpu(), **tol)


# ------------------------------------------------------------------ deterministic mode

@pytest.mark.parametrize("C", [9, 4])
@pytest.mark.parametrize("accumulate", [False, True])
@pytest.mark.parametrize("with_photon, concat_origin", LAYOUTS)
def test_deterministic_matches_reference(C, accumulate, with_photon, concat_origin):
    net, state, origin = make_inputs(C=C, seed=C + 10 * accumulate)
    kw = dict(params(), stochastic=False, accumulate=accumulate, with_photon=with_photon, concat_origin=concat_origin)
    (est, nxt), (est_r, nxt_r) = both(net, state, origin, **kw)
    assert est.dtype == torch.float32 and est.shape == (2, 4, 5, 7) and est.is_contiguous()
    assert nxt.dtype == torch.float32 and nxt.shape == (2, 4 * (1 + with_photon + concat_origin), 5, 7)
    assert nxt.is_contiguous()
    assert_close(est, est_r, **FP32_TOL)
    assert_close(nxt, nxt_r, **FP32_TOL)


def test_hand_computed_example():
    """One pixel, numbers worked out by hand from SPEC §4 (not from the reference)."""
    net = torch.tensor([0.0, 0.2, 1.5, -0.3, 0.6, 0.1, 0.2, 0.5, -0.9]).view(1, 9, 1, 1).to(DEV)
    state = torch.tensor([0.3, 0.3, 0.6, 0.5]).view(1, 4, 1, 1).to(DEV)
    origin = torch.tensor([0.1, 0.2, 1.3, -0.1]).view(1, 4, 1, 1).to(DEV)
    kw = dict(ratio=100.0, K=2.0, rho=1.5, rho_next=3.0, dn_scale=1000.0, stochastic=False, with_photon=True, concat_origin=True)
    # M = 1/2; clip(x0) = [.2, 1, 0, .6]; clip(R + A) = [.4, .5, 1, 0] -> Y = [.3, .75, .5, .3]
    y = torch.tensor([0.3, 0.75, 0.5, 0.3])
    # default: mu = (3 - 1) * 1000 * Y / 200 = 10 Y; A_next = (clip(A_T) + mu * 200 / 1000) / 3
    a_next = (torch.tensor([0.1, 0.2, 1.0, 0.0]) + 2 * y) / 3
    expect = torch.cat([a_next, a_next * 3 / 200, torch.tensor([0.1, 0.2, 1.3, -0.1])])
    est, nxt = exposure_step(net, state, origin, backend="triton", **kw)
    assert_close(est.flatten(), y, atol=1e-6, rtol=0)
    assert_close(nxt.flatten(), expect, atol=1e-6, rtol=0)
    # accumulate: mu = (3 - 1.5) * 1000 * Y / 200 = 7.5 Y; A_next = (1.5 A_i + 0.2 mu) / 3
    a_acc = (1.5 * torch.tensor([0.3, 0.3, 0.6, 0.5]) + 1.5 * y) / 3
    _, nxt = exposure_step(net, state, origin, backend="triton", accumulate=True, **kw)
    assert_close(nxt.flatten()[:4], a_acc, atol=1e-6, rtol=0)
    # plain head: Y = clip(out) = [.2, 1, 0, .6]
    est, nxt = exposure_step(net[:, 1:5], state, origin, backend="triton", **kw)
    assert_close(est.flatten(), torch.tensor([0.2, 1.0, 0.0, 0.6]), atol=1e-6, rtol=0)


def test_per_sample_parameters_match_one_sample_at_a_time():
    net, state, origin = make_inputs(B=3, h=6, w=5, seed=3)
    p = params(3)
    est, nxt = exposure_step(net, state, origin, backend="triton", stochastic=False, with_photon=True, **p)
    for b in range(3):
        one = {k: float(v[b]) for k, v in p.items()}
        e, n = exposure_step(net[b:b + 1], state[b:b + 1], origin[b:b + 1], backend="triton", stochastic=False, with_photon=True, **one)
        assert_close(est[b:b + 1], e, atol=0, rtol=0)
        assert_close(nxt[b:b + 1], n, atol=0, rtol=0)
    _, nxt_r = exposure_step_reference(net, state, origin, stochastic=False, with_photon=True, **p)
    assert_close(nxt, nxt_r, **FP32_TOL)


@pytest.mark.parametrize("B, h, w", [(1, 1, 1), (1, 3, 1), (2, 1, BLOCK + 3), (1, 17, 19), (3, 2, 2)])
def test_odd_and_tiny_shapes(B, h, w):
    net, state, origin = make_inputs(B=B, h=h, w=w, seed=h * w)
    kw = dict(ratio=200.0, K=0.8, rho=1.0, rho_next=67.0, stochastic=False, concat_origin=True)
    (est, nxt), (est_r, nxt_r) = both(net, state, origin, **kw)
    assert_close(est, est_r, **FP32_TOL)
    assert_close(nxt, nxt_r, **FP32_TOL)


def test_empty_input():
    net, state, origin = make_inputs(h=0, w=4)
    est, nxt = exposure_step(net, state, origin, backend="triton", ratio=2.0, K=1.0, rho=1.0, rho_next=2.0)
    assert est.shape == (2, 4, 0, 4) and nxt.shape == (2, 4, 0, 4)


def test_strided_inputs_and_channels_last_output():
    """channels_last and sliced net_out, permuted state, batch-broadcast origin are read in place."""
    net, state, origin = make_inputs(B=2, h=6, w=10, seed=5)
    big = torch.randn(2, 13, 12, 10, device=DEV)
    sliced = big[:, 2:11, ::2, :]  # non-contiguous in C and H
    sliced.copy_(net)
    cl = net.contiguous(memory_format=torch.channels_last)
    state_t = state.transpose(2, 3).contiguous().transpose(2, 3)  # strides (.., 1, h)
    origin_b = origin[:1].expand(2, 4, 6, 10)  # zero batch stride
    kw = dict(params(), stochastic=False, with_photon=True, concat_origin=True)
    _, ref = exposure_step_reference(net, state, origin_b.contiguous(), **kw)
    for n in (net, sliced, cl):
        est, nxt = exposure_step(n, state_t, origin_b, backend="triton", out_memory_format=torch.channels_last, **kw)
        assert nxt.is_contiguous(memory_format=torch.channels_last)
        assert_close(nxt, ref, **FP32_TOL)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_half_inputs(dtype):
    net, state, origin = make_inputs(B=2, h=4, w=9, dtype=dtype, seed=9)
    net = net.contiguous(memory_format=torch.channels_last)
    kw = dict(params(), stochastic=False, with_photon=True, concat_origin=True)
    (est, nxt), (est_r, nxt_r) = both(net, state, origin, **kw)
    assert est.dtype == torch.float32
    assert nxt.dtype == (torch.float16 if dtype == torch.float16 else torch.float32)
    assert_close(est, est_r, **FP32_TOL)  # same half inputs, fp32 maths on both sides
    assert_close(nxt, nxt_r, **FP16_TOL)
    _, nxt16 = exposure_step(net, state, origin, backend="triton", out_dtype=torch.float16,
                             out_memory_format=torch.channels_last, **kw)
    assert nxt16.dtype == torch.float16 and nxt16.is_contiguous(memory_format=torch.channels_last)
    assert_close(nxt16, nxt_r, **FP16_TOL)


def test_out_buffers_are_fully_written_and_nothing_else():
    net, state, origin = make_inputs(B=2, h=5, w=7, seed=11)
    kw = dict(params(), stochastic=False, with_photon=True, concat_origin=False)
    est_big = poison_(torch.empty(2, 6, 5, 9, device=DEV))
    nxt_big = poison_(torch.empty(2, 10, 5, 7, device=DEV, dtype=torch.float16))
    est_buf, nxt_buf = est_big[:, 1:5, :, 1:8], nxt_big[:, 1:9]
    est, nxt = exposure_step(net, state, origin, backend="triton", out=(est_buf, nxt_buf), **kw)
    assert est.data_ptr() == est_buf.data_ptr() and nxt.data_ptr() == nxt_buf.data_ptr()
    assert not est_buf.isnan().any() and not nxt_buf.isnan().any()
    # everything around the views stays poisoned (no stray writes)
    assert est_big[:, [0, 5]].isnan().all() and est_big[..., [0, 8]].isnan().all()
    assert nxt_big[:, [0, 9]].isnan().all()
    est_r, nxt_r = exposure_step_reference(net, state, origin, **kw)
    assert_close(est, est_r, **FP32_TOL)
    assert_close(nxt, nxt_r, **FP16_TOL)
    # last step: estimate only
    est_only = poison_(torch.empty(2, 4, 5, 7, device=DEV))
    est, none = exposure_step(net, state, origin, backend="triton", out=(est_only, None), ratio=3.0, K=1.0, rho=1.0)
    assert none is None and not est_only.isnan().any()


def test_last_step_returns_estimate_only_and_draws_nothing():
    net, state, origin = make_inputs(seed=12)
    gen = torch.Generator().manual_seed(4)
    before = gen.get_state()
    global_before = torch.get_rng_state()
    est, nxt = exposure_step(net, state, origin, backend="triton", ratio=100.0, K=1.0, rho=67.0, generator=gen)
    assert nxt is None
    assert torch.equal(gen.get_state(), before)
    exposure_step(net, state, origin, backend="triton", ratio=100.0, K=1.0, rho=67.0)
    assert torch.equal(torch.get_rng_state(), global_before)
    est_r, _ = exposure_step_reference(net, state, origin, ratio=100.0, K=1.0, rho=67.0)
    assert_close(est, est_r, **FP32_TOL)


def test_auto_backend_on_cpu_is_the_reference():
    net, state, origin = make_inputs(seed=13)
    net, state, origin = net.cpu(), state.cpu(), origin.cpu()
    p = {k: v.cpu() for k, v in params().items()}
    a = exposure_step(net, state, origin, generator=torch.Generator().manual_seed(1), **p)
    b = exposure_step_reference(net, state, origin, generator=torch.Generator().manual_seed(1), **p)
    assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1])


@pytest.mark.parametrize("C", [9, 4])
@pytest.mark.parametrize("accumulate", [False, True])
@pytest.mark.parametrize("with_photon, concat_origin", LAYOUTS)
@pytest.mark.parametrize("draws", ["means", "generator", "shared key", "keys", "last step"])
def test_the_banded_cpu_form_equals_the_reference(monkeypatch, C, accumulate, with_photon, concat_origin, draws):
    # Inference on the CPU evaluates the reference's maths band by band into the outputs:
    # bands of 3 rows here (the frame has 11), fp16 channels_last next input, the same
    # draws (the whole frame's means drawn at once, as the reference draws them).
    monkeypatch.setattr(exposure_module, "CPU_BAND_PIXELS", 3 * 13)
    net, state, origin = (t.cpu() for t in make_inputs(B=3, C=C, h=11, w=13, seed=17))
    p = {k: v.cpu() for k, v in params(3).items()}
    if draws == "last step":
        p["rho_next"] = None
    kw = dict(p, accumulate=accumulate, with_photon=with_photon, concat_origin=concat_origin,
              stochastic=draws not in ("means", "last step"), out_dtype=torch.float16,
              out_memory_format=torch.channels_last)
    seeds = {"shared key": torch.tensor([7]), "keys": torch.tensor([7, 8, 9])}
    results = []
    for step in (exposure_step, exposure_step_reference):
        extra = ({"seed": seeds[draws]} if draws in seeds else
                 {"generator": torch.Generator().manual_seed(3)} if draws == "generator" else {})
        with torch.inference_mode():
            results.append(step(net, state, origin, **kw, **extra))
    (est, nxt), (ref_est, ref_nxt) = results
    assert est.is_contiguous() and est.dtype == torch.float32
    torch.testing.assert_close(est, ref_est, atol=1e-7, rtol=2e-7)  # the sigmoid's last bit at most
    if draws == "last step":
        assert nxt is None and ref_nxt is None
        return
    assert nxt.dtype == torch.float16 and nxt.is_contiguous(memory_format=torch.channels_last)
    assert torch.equal(nxt, ref_nxt)


# ------------------------------------------------------------------ stochastic mode

def photons_from_next(nxt, origin, ratio, K, rho_next, dn_scale):
    """Invert A_next = (clip(A_T) + P r K / s) / rho_next for P (float64, per element)."""
    col = lambda v: torch.as_tensor(v, dtype=torch.float64).view(-1, 1, 1, 1)  # noqa: E731
    a = nxt[:, :4].double().cpu()
    p = (a * col(rho_next) - origin.double().cpu().clamp(0, 1)) * dn_scale / (col(ratio) * col(K))
    counts = p.round()
    assert (p - counts).abs().max() < 0.05, "recovered photon counts are not integers"
    return counts


def plain_head_for_means(mu, ratio, K, rho_next, h, w, dn_scale=15583.0):
    """A 4-channel net_out whose blend gives exactly-known means mu[b, c] (default form)."""
    mu = torch.as_tensor(mu, dtype=torch.float64)
    col = lambda v: torch.as_tensor(v, dtype=torch.float64).view(-1, 1)  # noqa: E731
    y = (mu * col(ratio) * col(K) / ((col(rho_next) - 1) * dn_scale)).float()
    assert (y > 0).all() and (y < 1).all()
    exact_mu = (col(rho_next) - 1) * dn_scale * y.double() / (col(ratio) * col(K))
    return y.view(*y.shape, 1, 1).expand(*y.shape, h, w).contiguous(), exact_mu


def test_poisson_moments_per_sample_and_plane():
    """Batch of 3 with its own r, K, rho_next: 12 groups of means from 0.05 to 2e5."""
    h, w = 32, 32
    ratio, K, rho_next = [100.0, 300.0, 20.0], [0.5, 2.0, 0.05], [34.0, 201.0, 20.0]
    want = [[0.05, 0.8, 4.0, 9.5], [10.5, 60.0, 700.0, 3e3], [1.2e4, 5e4, 1e5, 2e5]]
    net, mu = plain_head_for_means(want, ratio, K, rho_next, h, w)
    origin = torch.zeros(3, 4, h, w)
    state = torch.rand(3, 4, h, w)
    gen = torch.Generator().manual_seed(2024)
    _, nxt = exposure_step(net.to(DEV), state.to(DEV), origin.to(DEV), backend="triton", ratio=torch.tensor(ratio, device=DEV),
                           K=torch.tensor(K, device=DEV), rho=1.0, rho_next=torch.tensor(rho_next, device=DEV), generator=gen)
    counts = photons_from_next(nxt, origin, ratio, K, rho_next, 15583.0)
    n = h * w
    z = st.norm.isf(ALPHA / (2 * 2 * 12))
    for b in range(3):
        for c in range(4):
            k, m = counts[b, c].flatten(), float(mu[b, c])
            assert (k >= 0).all()
            assert abs(k.mean().item() - m) <= z * math.sqrt(m / n), (b, c, m, k.mean().item())
            assert abs(k.var().item() - m) <= z * math.sqrt((m + 2 * m * m) / n), (b, c, m, k.var().item())


@pytest.mark.parametrize("mean", [0.3, 2.5, 9.99, 10.5, 700.0, 5e4, 1.5e5])
def test_poisson_distribution_chi_square(mean):
    """Goodness of fit per mean, both sampler regimes; the 4 planes draw independently."""
    h, w = 64, 64
    net, mu = plain_head_for_means([[mean] * 4], [250.0], [0.05], [125.0], h, w)
    origin = torch.zeros(1, 4, h, w)
    _, nxt = exposure_step(net.to(DEV), origin.to(DEV), origin.to(DEV), backend="triton", ratio=250.0, K=0.05, rho=1.0,
                           rho_next=125.0, generator=torch.Generator().manual_seed(77))
    planes = photons_from_next(nxt, origin, [250.0], [0.05], [125.0], 15583.0)[0].flatten(1)
    counts = planes.flatten().numpy().astype(np.int64)
    # the exact mean differs from `mean` by fp32 rounding of the net output only
    assert chi_square_pvalue(counts, float(mu[0, 0])) > ALPHA / 2
    # same mean on all planes: their counts at one pixel must be uncorrelated (distinct counters)
    corr = torch.corrcoef(planes)[np.triu_indices(4, 1)]
    assert corr.abs().max() < st.norm.isf(ALPHA / 2 / 2 / 6) / math.sqrt(h * w), corr


def test_accumulate_form_adds_poisson_photons_onto_the_state():
    h, w = 32, 32
    r, K, rho, rho_next, s = 100.0, 1.0, 3.0, 7.0, 15583.0
    y = 3.0 * r * K / ((rho_next - rho) * s)  # mu = 3
    net = torch.full((1, 4, h, w), y).to(DEV)
    state = torch.rand(1, 4, h, w).to(DEV)
    _, nxt = exposure_step(net, state, state, backend="triton", ratio=r, K=K, rho=rho, rho_next=rho_next,
                           accumulate=True, generator=torch.Generator().manual_seed(5))
    p = (nxt.double().cpu() * rho_next - state.double().cpu() * rho) * s / (r * K)
    k = p.round()
    assert (p - k).abs().max() < 0.01
    mu = (rho_next - rho) * s * float(torch.tensor(y)) / (r * K)
    assert chi_square_pvalue(k.flatten().numpy().astype(np.int64), mu) > ALPHA


def test_large_counts_stay_fp32_with_fp16_io():
    """mu ~ 1e5 photons (beyond fp16's 65504): fp16 inputs/outputs see the same draw as fp32."""
    h, w = 8, 8
    net, _ = plain_head_for_means([[1e5, 6e4, 3e4, 2e5]], [300.0], [0.05], [300.0], h, w)
    origin = torch.rand(1, 4, h, w) * 0.01
    args = dict(ratio=300.0, K=0.05, rho=1.0, rho_next=300.0)
    _, ref = exposure_step(net.to(DEV), origin.to(DEV), origin.to(DEV), backend="triton",
                           generator=torch.Generator().manual_seed(8), **args)
    net16, org16 = net.half().to(DEV), origin.half().to(DEV)
    _, half = exposure_step(net16, org16, org16, backend="triton", generator=torch.Generator().manual_seed(8), **args)
    assert half.dtype == torch.float16 and torch.isfinite(half).all()
    # fp16 rounding of net/origin moves mu by ~1e-3 relative: the draws then differ, but stay close
    assert_close(half, ref, atol=0, rtol=2e-2)


def test_seeds_generators_and_layout_independence():
    net, state, origin = make_inputs(B=2, h=6, w=9, seed=21)
    kw = dict(params(), with_photon=True)
    run = lambda gen=None, n=net, **more: exposure_step(n, state, origin, backend="triton", generator=gen, **kw, **more)[1]  # noqa: E731
    a = run(torch.Generator().manual_seed(11))
    b = run(torch.Generator().manual_seed(11))
    c = run(torch.Generator().manual_seed(12))
    assert torch.equal(a, b) and not torch.equal(a, c)
    torch.manual_seed(3)
    d = run()
    torch.manual_seed(3)
    assert torch.equal(d, run())
    # the noise depends on element indices, not on memory layouts
    assert torch.equal(a, run(torch.Generator().manual_seed(11), n=net.contiguous(memory_format=torch.channels_last)))
    # seed= takes the keys philox_seed would draw (one per sample); rewriting them in place gives fresh noise
    key = philox_seed(torch.Generator().manual_seed(11), DEV, count=2)
    with value_checks_disabled():
        e = run(seed=key)
        key.fill_(12345)
        f = run(seed=key)
    assert torch.equal(a, e) and not torch.equal(e, f)
    # the deterministic step does not depend on the seed at all, and draws nothing
    g = torch.Generator().manual_seed(11)
    state_before = g.get_state()
    det = exposure_step(net, state, origin, backend="triton", stochastic=False, generator=g, **kw)[1]
    assert torch.equal(g.get_state(), state_before)
    assert torch.equal(det, exposure_step(net, state, origin, backend="triton", stochastic=False, **kw)[1])


def test_draws_do_not_depend_on_launch_configuration(monkeypatch):
    """The Poisson counter is the element's index: every forward configuration autotune may
    pick (and the untuned one) gives the same next input, bit for bit."""
    net, state, origin = make_inputs(B=2, h=5, w=11, seed=8)
    kw = dict(params(), with_photon=True, concat_origin=True, backend="triton")
    run = lambda: exposure_step(net, state, origin, generator=torch.Generator().manual_seed(4), **kw)  # noqa: E731
    est, ref = run()
    odd = ({"BLOCK_H": 2, "BLOCK_W": 8, "TILES": 3}, 1)  # several tiles per program, some right of the frame
    for config in (*exposure_module.FWD_CONFIGS, odd):
        monkeypatch.setattr(exposure_module, "LAUNCH_CONFIG", config)
        e, nxt = run()
        assert torch.equal(nxt, ref) and torch.equal(e, est), config


@pytest.mark.parametrize("module_name, tuned, kernel, configs", [
    ("kernels.exposure", "_exposure_fwd_tuned", "_exposure_fwd_kernel", "FWD_CONFIGS"),
    ("kernels.noise", "_synthesize_tuned", "_synthesize_kernel", "CONFIGS"),
    ("kernels.head_step", "_head_step_tuned", "_head_step_kernel", "CONFIGS"),
])
def test_autotuned_launchers_wrap_their_kernel_and_configurations(module_name, tuned, kernel, configs):
    """The GPU path launches the autotuned wrapper (CPU tests launch the kernel itself): it
    must exist, wrap the module's kernel and offer exactly the module's configurations
    (the bench reads the tuned choice from it)."""
    import importlib

    mod = importlib.import_module(module_name)
    wrapper = getattr(mod, tuned)
    assert wrapper.fn is getattr(mod, kernel)
    offered = [(dict(c.kwargs), c.num_warps) for c in wrapper.configs]
    assert offered == [(dict(meta), warps) for meta, warps in getattr(mod, configs)]


@pytest.mark.parametrize("backend", ["triton", "torch"])
def test_a_shared_key_makes_each_sample_independent_of_its_batch(backend):
    """With one key for the batch, sample b of a batch is drawn exactly as sample b alone
    (the engine's batch invariance); per-sample keys (the generator path) make identical
    samples draw independent noise (what training needs)."""
    dev = DEV if backend == "triton" else torch.device("cpu")
    net, state, origin = (t.to(dev) for t in make_inputs(B=3, h=5, w=7, seed=23))
    kw = {k: (v.to(dev) if isinstance(v, torch.Tensor) else v) for k, v in params(B=3).items()}
    key = torch.tensor([987654321], dtype=torch.int64, device=dev)
    batch = exposure_step(net, state, origin, backend=backend, seed=key, **kw)[1]
    for b in range(3):
        one = {k: (v[b : b + 1] if isinstance(v, torch.Tensor) else v) for k, v in kw.items()}
        alone = exposure_step(net[b : b + 1], state[b : b + 1], origin[b : b + 1], backend=backend, seed=key, **one)[1]
        assert torch.equal(batch[b : b + 1], alone), b
    same = lambda t: t[:1].expand(2, *t.shape[1:]).contiguous()  # noqa: E731 - two identical samples
    twin = {k: (same(v) if isinstance(v, torch.Tensor) else v) for k, v in kw.items()}
    shared = exposure_step(same(net), same(state), same(origin), backend=backend, seed=key, **twin)[1]
    assert torch.equal(shared[0], shared[1])
    drawn = exposure_step(same(net), same(state), same(origin), backend=backend,
                          generator=torch.Generator().manual_seed(4), **twin)[1]
    assert not torch.equal(drawn[0], drawn[1])


def test_reference_stochastic_mode_and_seed_tensor():
    net, state, origin = make_inputs(B=2, h=4, w=4, seed=22)
    net, state, origin = net.cpu(), state.cpu(), origin.cpu()
    p = {k: v.cpu() for k, v in params().items()}
    key = torch.tensor([99], dtype=torch.int64)
    a = exposure_step_reference(net, state, origin, seed=key, **p)[1]
    b = exposure_step_reference(net, state, origin, seed=key, **p)[1]
    det = exposure_step_reference(net, state, origin, stochastic=False, **p)[1]
    assert torch.equal(a, b) and not torch.equal(a, det)


# ------------------------------------------------------------------ gradients

def smooth_inputs(B, C, h, w, dtype, seed):
    """Inputs away from every clip boundary (x0, R + A_i, A_T in [0.1, 0.9])."""
    g = torch.Generator().manual_seed(seed)
    u = lambda *s: torch.rand(*s, generator=g, dtype=torch.float64) * 0.8 + 0.1  # noqa: E731
    state = u(B, 4, h, w)
    if C == 9:
        net = torch.cat([torch.randn(B, 1, h, w, generator=g, dtype=torch.float64), u(B, 4, h, w), u(B, 4, h, w) - state], 1)
    else:
        net = u(B, 4, h, w)
    origin = u(B, 4, h, w)
    return [t.to(DEV, dtype).requires_grad_() for t in (net, state, origin)]


GRAD_CONFIGS = [(9, False, False, False), (9, False, True, True), (9, True, True, False), (9, True, False, True),
                (4, False, False, True), (4, True, True, True)]


@pytest.mark.parametrize("C, accumulate, with_photon, concat_origin", GRAD_CONFIGS)
def test_gradcheck_reference_float64(C, accumulate, with_photon, concat_origin):
    inputs = smooth_inputs(2, C, 2, 3, torch.float64, seed=C)
    kw = dict(ratio=[100.0, 30.0], K=[0.5, 2.0], rho=[2.0, 1.0], rho_next=[40.0, 11.0], stochastic=False,
              accumulate=accumulate, with_photon=with_photon, concat_origin=concat_origin, dn_scale=1000.0)
    fn = lambda n, s, o: exposure_step_reference(n, s, o, **kw)  # noqa: E731
    assert torch.autograd.gradcheck(fn, inputs)
    last = lambda n, s, o: exposure_step_reference(n, s, o, ratio=100.0, K=1.0, rho=2.0)[0]  # noqa: E731
    assert torch.autograd.gradcheck(last, inputs)


def grads(fn, inputs, g_est, g_next):
    for t in inputs:
        t.grad = None
    est, nxt = fn(*inputs)
    loss = 0
    if g_est is not None:
        loss = loss + (est * g_est).sum()
    if g_next is not None:
        loss = loss + (nxt.float() * g_next).sum()
    loss.backward()
    return [None if t.grad is None else t.grad.clone() for t in inputs]


@pytest.mark.parametrize("C, accumulate, with_photon, concat_origin", GRAD_CONFIGS)
def test_triton_backward_matches_reference_autograd(C, accumulate, with_photon, concat_origin):
    kw = dict(ratio=[100.0, 30.0], K=[0.5, 2.0], rho=[2.0, 1.0], rho_next=[40.0, 11.0],
              accumulate=accumulate, with_photon=with_photon, concat_origin=concat_origin)
    # make_inputs also crosses the clip kinks (never exactly on them)
    net, state, origin = [t.requires_grad_() for t in make_inputs(C=C, h=3, w=5, seed=30 + C)]
    cl = net.detach().contiguous(memory_format=torch.channels_last).requires_grad_()
    g = torch.Generator().manual_seed(1)
    g_est = torch.randn(2, 4, 3, 5, generator=g).to(DEV)
    g_next = torch.randn(2, 4 * (1 + with_photon + concat_origin), 3, 5, generator=g).to(DEV)
    ref = lambda n, s, o: exposure_step_reference(n, s, o, stochastic=False, **kw)  # noqa: E731
    tri = lambda n, s, o: exposure_step(n, s, o, stochastic=False, backend="triton", **kw)  # noqa: E731
    for ge, gx in ((g_est, g_next), (g_est, None), (None, g_next)):
        want = grads(ref, (net, state, origin), ge, gx)
        for n in (net, cl):
            got = grads(tri, (n, state, origin), ge, gx)
            for name, a, b in zip(("net_out", "state", "origin"), got, want):
                if b is None or not b.any():
                    assert a is None or not a.any(), name
                else:
                    assert a is not None, name
                    assert_close(a, b, **FP32_TOL)
            assert n.grad.stride() == n.stride()  # gradient in the input's layout


@pytest.mark.parametrize("backend", ["triton", "torch"])
def test_straight_through_gradient_equals_deterministic_gradient(backend):
    inputs = smooth_inputs(2, 9, 3, 4, torch.float32, seed=40)
    kw = dict(params(), with_photon=True, concat_origin=True)
    g = torch.Generator().manual_seed(2)
    g_est, g_next = torch.randn(2, 4, 3, 4, generator=g).to(DEV), torch.randn(2, 12, 3, 4, generator=g).to(DEV)
    # a host generator with device data, deliberately: any device's generator is accepted
    sto = lambda n, s, o: exposure_step(n, s, o, backend=backend, generator=torch.Generator().manual_seed(3), **kw)  # noqa: E731
    det = lambda n, s, o: exposure_step(n, s, o, backend=backend, stochastic=False, **kw)  # noqa: E731
    with torch.no_grad():
        assert not torch.equal(sto(*inputs)[1], det(*inputs)[1])  # the draw did happen
    for a, b in zip(grads(sto, inputs, g_est, g_next), grads(det, inputs, g_est, g_next)):
        assert_close(a, b, atol=1e-6, rtol=1e-6)


def test_last_step_gradient():
    net, state, origin = smooth_inputs(2, 9, 3, 4, torch.float32, seed=41)
    est, nxt = exposure_step(net, state, origin, backend="triton", ratio=10.0, K=1.0, rho=5.0)
    assert nxt is None
    est.square().sum().backward()
    n2, s2, o2 = [t.detach().clone().requires_grad_() for t in (net, state, origin)]
    exposure_step_reference(n2, s2, o2, ratio=10.0, K=1.0, rho=5.0)[0].square().sum().backward()
    assert_close(net.grad, n2.grad, **FP32_TOL)
    assert_close(state.grad, s2.grad, **FP32_TOL)
    assert origin.grad is None


# ------------------------------------------------------------------ refusals

def _call(net=None, state=None, origin=None, **over):
    n, s, o = make_inputs(B=2, h=3, w=4, seed=50)
    kw = dict(ratio=100.0, K=1.0, rho=1.0, rho_next=34.0, backend="triton")
    kw.update(over)
    return exposure_step(n if net is None else net, s if state is None else state, o if origin is None else origin, **kw)


REFUSALS = [
    (dict(net=torch.ones(2, 9, 3, 4, dtype=torch.int32)), TypeError, r"net_out must have dtype in \(float16, bfloat16, float32\), got int32"),
    (dict(net=torch.ones(2, 9, 3, 4, dtype=torch.float64)), TypeError, r"net_out must have dtype in .*got float64"),
    (dict(net=[1.0]), TypeError, "net_out must be a torch.Tensor, got list"),
    (dict(net=torch.ones(9, 3, 4)), ValueError, r"net_out must have 4 dimensions, got shape \(9, 3, 4\)"),
    (dict(net=torch.ones(2, 5, 3, 4)), ValueError, r"net_out must have 9 channels .* or 4 \(plain head\), got shape \(2, 5, 3, 4\)"),
    (dict(state=torch.ones(2, 4, 3, 5)), ValueError, r"state must have shape \(2, 4, 3, 4\) to match net_out"),
    (dict(origin=torch.ones(3, 4, 3, 4)), ValueError, r"origin must have shape \(2, 4, 3, 4\) to match net_out .* got \(3, 4, 3, 4\)"),
    (dict(state=torch.ones(2, 4, 3, 4, dtype=torch.int64)), TypeError, "state must have dtype in"),
    (dict(state=torch.ones(2, 4, 3, 4, device="meta")), ValueError, "all tensors must be on one device"),
    (dict(ratio=[100.0, 200.0, 300.0]), ValueError, "ratio has 3 values but the batch has 2 samples"),
    (dict(K=torch.ones(1, device="meta")), ValueError, "K is on meta but the data is on"),
    (dict(ratio=0.0), ValueError, r"ratio must be > 0, got \[0.0\]"),
    (dict(K=[1.0, -2.0]), ValueError, r"K must be > 0, got \[1.0, -2.0\]"),
    (dict(K=float("nan")), ValueError, "K must be finite"),
    (dict(rho=0.5), ValueError, r"rho must be >= 1.0"),
    (dict(rho=[1.0, 40.0]), ValueError, r"rho_next must be > rho for every sample, got rho=\[1.0, 40.0\], rho_next=\[34.0, 34.0\]"),
    (dict(rho=34.0), ValueError, "rho_next must be > rho"),
    (dict(dn_scale=0.0), ValueError, "dn_scale must be a finite number > 0, got 0"),
    (dict(dn_scale="15583"), TypeError, r"dn_scale must be a number \(.*\), got str"),
    (dict(out_dtype=torch.int16), TypeError, r"out_dtype must be one of \(float16, bfloat16, float32\), got torch.int16"),
    (dict(out_memory_format=torch.channels_last_3d), ValueError, "out_memory_format must be torch.contiguous_format or torch.channels_last"),
    (dict(seed=torch.tensor([1])), ValueError, r"pass either generator= or seed=, not both"),
    (dict(seed=torch.tensor([1.0])), TypeError, r"seed must have dtype in \(int64\), got float32"),
    (dict(seed=torch.tensor([1, 2, 3])), ValueError, r"seed must hold one int64 Philox key for the batch \(shape \[1\]\) or one per sample \(shape \[2\]\), got shape \(3,\)"),
    (dict(seed=torch.tensor([[1, 2]])), ValueError, r"or one per sample \(shape \[2\]\), got shape \(1, 2\)"),
    (dict(out=(torch.empty(2, 4, 3, 4, dtype=torch.float64), None), rho_next=None), TypeError, r"out\[0\] \(estimate\) must have dtype in \(float32\), got float64"),
    (dict(out=torch.empty(2, 4, 3, 4)), TypeError, r"out must be a pair \(estimate, next_input\)"),
    (dict(out=(torch.empty(2, 4, 3, 5), torch.empty(2, 4, 3, 4))), ValueError, r"out\[0\] \(estimate\) must have shape \(2, 4, 3, 4\)"),
    (dict(out=(torch.empty(2, 4, 3, 4), torch.empty(2, 8, 3, 4))), ValueError, r"out\[1\] \(next_input\) must have shape \(2, 4, 3, 4\)"),
    (dict(out=(torch.empty(2, 4, 3, 4), torch.empty(2, 4, 3, 4)), rho_next=None), ValueError, r"out\[1\] must be None at the last step"),
    (dict(backend="cuda"), ValueError, r"backend must be one of \('auto', 'triton', 'torch'\), got 'cuda'"),
]


def _huge(*shape, dtype=torch.float32):
    """A tensor of any size without its memory (zero strides): for size refusals."""
    return torch.zeros(1, dtype=dtype, device=DEV).view(*([1] * len(shape))).expand(*shape)


@pytest.mark.parametrize("h, w, match", [
    (65536, 1, r"h \(packed rows\) must be <= 65535, got 65536"),
    (40000, 4475, r"12 \* h \* w must be < 2\*\*31 \(int32 offsets within a sample\), "
                  r"got h=40000, w=4475"),
])
def test_sizes_beyond_int32_offsets_or_the_grid_refused(h, w, match):
    with pytest.raises(ValueError, match=match):
        exposure_step(_huge(1, 9, h, w), _huge(1, 4, h, w), _huge(1, 4, h, w), ratio=100.0, K=1.0, rho=1.0,
                      rho_next=2.0, backend="triton")


def test_views_spanning_2_31_elements_per_sample_refused():
    """The kernels' int32 offsets: a view whose sample spans >= 2**31 elements (only
    constructible with unusual strides; meta tensors stand in, no memory needed)."""
    view = torch.empty_strided((1, 9, 2, 2), (0, 2**28, 2, 1), device="meta")
    with pytest.raises(ValueError, match=r"net_out: one sample spans 2147483652 elements in memory .* int32 offsets"):
        kernels_common.check_sample_spans(net_out=view)
    kernels_common.check_sample_spans(net_out=view[:, :8])  # 2**31 - 2**28 + 4: fine


@pytest.mark.skipif(not kernels_common.triton_interpreter_enabled(),
                    reason="injects the GPU's fast-math errors under the interpreter; a GPU runs the real ones")
@pytest.mark.parametrize("sign", [1.0, -1.0])
def test_fast_math_errors_stay_inside_the_reference_tolerance(monkeypatch, sign):
    """On a GPU the sigmoid and the per-sample reciprocals are MUFU approximations
    (kernels/_fastmath.py: exp2 2 ulp, reciprocal 2 ulp); with errors of those sizes injected,
    the deterministic step still matches the reference within FP32_TOL."""
    from kernels import _fastmath
    import triton.language as tl

    monkeypatch.setattr(_fastmath, "EXP2_ERROR", tl.constexpr(sign * 2.4e-7))
    monkeypatch.setattr(_fastmath, "DIV_ERROR", tl.constexpr(sign * 2.4e-7))
    for accumulate in (False, True):
        net, state, origin = make_inputs(seed=60 + accumulate)
        kw = dict(params(), stochastic=False, accumulate=accumulate, with_photon=True, concat_origin=True)
        (est, nxt), (est_r, nxt_r) = both(net, state, origin, **kw)
        assert_close(est, est_r, **FP32_TOL)
        assert_close(nxt, nxt_r, **FP32_TOL)


@pytest.mark.parametrize("over, exc, match", REFUSALS, ids=[m[:40] for _, _, m in REFUSALS])
def test_refusals(over, exc, match):
    if "seed" in over and "pass either" in match:
        over = dict(over, generator=torch.Generator())
    over = {k: (v.to(DEV) if isinstance(v, torch.Tensor) and v.device.type == "cpu" else v) for k, v in over.items()}
    if "out" in over and isinstance(over["out"], tuple):
        over["out"] = tuple(None if t is None else t.to(DEV) for t in over["out"])
    with pytest.raises(exc, match=match):
        _call(**over)


def test_out_buffers_refused_with_gradients():
    n, s, o = make_inputs(B=2, h=3, w=4, seed=51)
    n.requires_grad_()
    out = (torch.empty(2, 4, 3, 4, device=DEV), torch.empty(2, 4, 3, 4, device=DEV))
    for backend in ("triton", "torch"):
        with pytest.raises(ValueError, match="out= buffers cannot be used when gradients are required"):
            exposure_step(n, s, o, ratio=2.0, K=1.0, rho=1.0, rho_next=2.0, out=out, backend=backend)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="CPU/CUDA mix needs a CUDA device")
def test_cpu_cuda_mix_refused():
    n, s, o = make_inputs(B=2, h=3, w=4, seed=52)
    with pytest.raises(ValueError, match="all tensors must be on one device"):
        exposure_step(n.cuda(), s.cpu(), o.cuda(), ratio=2.0, K=1.0, rho=1.0, rho_next=2.0)
    with pytest.raises(ValueError, match="ratio is on cpu but the data is on cuda"):
        exposure_step(n.cuda(), s.cuda(), o.cuda(), ratio=torch.ones(2), K=1.0, rho=1.0, rho_next=2.0)
