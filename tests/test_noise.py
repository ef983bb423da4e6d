"""kernels.synthesize_noise: the fused ELD noise synthesis against its reference and theory.

Deterministic parts (zero noise scales, zero photons) are compared with the reference
and the closed form to a stated tolerance. Random parts are tested statistically with
fixed seeds; under a fresh seed each statistical test fails falsely with probability at
most ALPHA (Bonferroni-corrected where one test makes several comparisons). Sample
sizes are stated per test (N_PIXELS per sample unless said otherwise).

The Triton interpreter pays per program, so the statistical tests enlarge the tile
(``big_tiles``); ``test_draws_do_not_depend_on_tile_shape`` shows that this changes no
output bit, and the shape/edge tests run the shipped tile.
"""
import math

import numpy as np
import pytest
import scipy.stats as st
import torch
import triton
import triton.language as tl

import kernels
from kernels import noise
from kernels._common import DEFAULT_DN_SCALE as S
from kernels import _fastmath
from kernels._fastmath import fast_rcp
from kernels._philox import box_muller
from kernels.noise import _tukey_lambda, parse_noise_model, synthesize_noise, synthesize_noise_reference
from kernels.profiles import sample_noise_params
from tests.conftest import TRITON_DEVICE
from tests.helpers import chi_square_pvalue, poison_

ALPHA = 1e-3  # per-test false-failure rate of every statistical test below
Z_CRIT = st.norm.isf(ALPHA / 2)  # two-sided z threshold at ALPHA (3.29)
H, W = 32, 32  # statistical tests: 4 * 32 * 32 = 4096 pixels (N_PIXELS) per sample
N_PIXELS = 4 * H * W
DEV = TRITON_DEVICE

needs_triton = pytest.mark.skipif(
    DEV.type == "cpu" and not kernels._common.triton_interpreter_enabled(), reason="needs CUDA or TRITON_INTERPRET=1"
)
pytestmark = needs_triton


@pytest.fixture
def big_tiles(monkeypatch):
    """Fewer, larger programs: the interpreter's cost is per program."""
    monkeypatch.setattr(noise, "BLOCK_H", 32)
    monkeypatch.setattr(noise, "BLOCK_W", 64)


def gen(seed: int) -> torch.Generator:
    """A generator on the device under test. Tests that pass ``torch.Generator()`` instead
    do so deliberately: a host generator with device data is part of the ops' promise."""
    return torch.Generator(device=DEV).manual_seed(seed) if DEV.type == "cuda" else torch.Generator().manual_seed(seed)


def dn_signal(x: torch.Tensor, ratio) -> torch.Tensor:
    """y = x * s / r in float32, computed as the kernel does (DN)."""
    r = torch.as_tensor(ratio, dtype=torch.float32, device=x.device).reshape(-1, 1, 1, 1)
    return x.float() * S / r


def fresh(shape, lo=0.0, hi=1.0, seed=0, dtype=torch.float32):
    g = torch.Generator().manual_seed(seed)
    return (lo + (hi - lo) * torch.rand(shape, generator=g)).to(dtype=dtype, device=DEV)


def const_image(values, h=H, w=W):
    """[B, 4, h, w] image whose sample b is values[b] everywhere."""
    v = torch.tensor(values, dtype=torch.float32, device=DEV)
    return v.view(-1, 1, 1, 1).expand(-1, 4, h, w).contiguous()


# ----------------------------------------------------------------------------- model names
def test_parse_model_any_order():
    assert parse_noise_model("u+r+G+P") == parse_noise_model("P+G+r+u")
    assert parse_noise_model(" P + g ").name == "P+g"
    m = parse_noise_model("p+r")
    assert (m.shot, m.read, m.row, m.quant) == ("p", None, True, False)


# ----------------------------------------------------------------------------- deterministic
LAYOUTS = ["contiguous", "channels_last", "strided"]
SHAPES = [(1, 4, 1, 1), (2, 4, 3, 5), (1, 4, 5, 3), (3, 4, 2, 131), (2, 4, 5, 1)]


def make_input(shape, layout, dtype, seed):
    B, C, h, w = shape
    if layout == "strided":  # every other row and column of a larger image
        return fresh((B, C, 2 * h, 2 * w + 1), -0.2, 1.2, seed, dtype)[:, :, ::2, 1::2]
    x = fresh(shape, -0.2, 1.2, seed, dtype)  # outside [0, 1] so the clip is exercised
    return x.contiguous(memory_format=torch.channels_last) if layout == "channels_last" else x


@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("layout", LAYOUTS)
@pytest.mark.parametrize("in_dtype, out_dtype", [(torch.float32, torch.float32), (torch.float16, torch.float16), (torch.float32, torch.float16)])
def test_zero_noise_scales_match_reference_and_closed_form(shape, layout, in_dtype, out_dtype):
    """g+r and G with zero scales are deterministic: A_T = clip(x s / r * r / s, 0, 1),
    photon channel A_T / (r K), origin channel A_T, in this order (12 channels)."""
    B = shape[0]
    x = make_input(shape, layout, in_dtype, seed=sum(shape))
    ratio = torch.linspace(50.0, 300.0, B, device=DEV)
    K = torch.linspace(0.3, 12.0, B, device=DEV)
    out = poison_(torch.empty(B, 12, *shape[2:], dtype=out_dtype, device=DEV))
    for model, kw in (("g+r", dict(sigma_g=0.0, sigma_r=0.0)), ("G", dict(sigma_TL=0.0, lam=0.14))):
        got = synthesize_noise(x, model, ratio=ratio, K=K, with_photon=True, concat_origin=True,
                               out_dtype=out_dtype, out=out, backend="triton", **kw)
        assert got is out and not torch.isnan(got).any(), "every output element must be written"
        ref = synthesize_noise_reference(x, model, ratio=ratio, K=K, with_photon=True, concat_origin=True, out_dtype=out_dtype, **kw)
        a = torch.clamp(dn_signal(x, ratio) * ratio.view(-1, 1, 1, 1) / S, 0, 1)
        closed = torch.cat([a, a / (ratio * K).view(-1, 1, 1, 1), a], 1)
        # fp32: a few ulp (the GPU's division is not correctly rounded); fp16: half an ulp at 1 (+ fp32 ulps)
        tol = dict(atol=2e-6, rtol=2e-6) if out_dtype == torch.float32 else dict(atol=6e-4, rtol=1e-3)
        torch.testing.assert_close(got.float(), ref.float(), **tol)
        torch.testing.assert_close(got.float(), closed, **tol)
        assert torch.all((got[:, :4] >= 0) & (got[:, :4] <= 1))


@pytest.mark.parametrize("channels", [4, 8, 12])
def test_channel_layout_and_out_buffer_strides(channels):
    x = fresh((2, 4, 3, 7), seed=5)
    with_photon, concat_origin = channels >= 8, channels == 12
    out = poison_(torch.empty(2, channels, 3, 7, device=DEV)).contiguous(memory_format=torch.channels_last)
    got = synthesize_noise(x, "g", ratio=[100.0, 200.0], K=[1.0, 3.0], sigma_g=0.0, with_photon=with_photon,
                           concat_origin=concat_origin, out=out, backend="triton")
    assert got.shape == (2, channels, 3, 7) and not torch.isnan(got).any()
    ref = synthesize_noise_reference(x, "g", ratio=[100.0, 200.0], K=[1.0, 3.0], sigma_g=0.0,
                                     with_photon=with_photon, concat_origin=concat_origin)
    torch.testing.assert_close(got, ref, atol=2e-6, rtol=2e-6)
    if concat_origin:
        assert torch.equal(got[:, 8:], got[:, :4])


def test_zero_photons_give_exact_zero_and_black_level():
    x = torch.zeros(2, 4, 3, 5, device=DEV)
    net = synthesize_noise(x, "P", ratio=150.0, K=[0.5, 20.0], with_photon=True, backend="triton")
    assert torch.equal(net, torch.zeros_like(net))
    black = torch.tensor([[512.0, 511.0, 510.0, 509.0]], device=DEV)
    dn = synthesize_noise(x, "P", ratio=150.0, K=[0.5, 20.0], output="dn", black_level=black, backend="triton")
    assert torch.equal(dn, black.view(1, 4, 1, 1).expand(2, 4, 3, 5))


@pytest.mark.parametrize("backend", ["triton", "torch"])
def test_negative_clean_values_read_as_zero_photons(backend):
    x = torch.tensor([-0.3, 0.0, 0.5, -1e-3], device=DEV).view(1, 1, 1, 4).expand(2, 4, 2, 4).contiguous()
    host = torch.Generator().manual_seed(1)  # deliberately on the host (any device's generator is accepted)
    z = synthesize_noise(x, "P", ratio=100.0, K=1.0, output="dn", generator=host, backend=backend)
    assert torch.all(z[x <= 0] == 0) and torch.all(z[x > 0] > 0)


@pytest.mark.parametrize("black", [64.0, [64.0, 1024.0], "per_plane"])
def test_dn_output_is_signal_plus_black(black):
    x = fresh((2, 4, 5, 3), seed=9)
    ratio = torch.tensor([100.0, 250.0], device=DEV)
    if black == "per_plane":
        black = torch.tensor([[60.0, 61.0, 62.0, 63.0], [512.0, 513.0, 514.0, 515.0]], device=DEV)
        expect_black = black.view(2, 4, 1, 1)
    else:
        expect_black = torch.tensor(black, device=DEV).reshape(-1, 1, 1, 1)
    out = poison_(torch.empty(2, 4, 5, 3, device=DEV))
    got = synthesize_noise(x, "g+r", ratio=ratio, K=2.0, sigma_g=0.0, sigma_r=0.0, output="dn", black_level=black,
                           out=out, backend="triton")
    assert got.dtype == torch.float32 and not torch.isnan(got).any()
    torch.testing.assert_close(got, dn_signal(x, ratio) + expect_black, atol=1e-4, rtol=1e-6)


def test_dn_output_keeps_negative_read_noise(big_tiles):
    """Bias frame: no light, Gaussian read noise on a black level of 64 DN: values below
    the black level survive (N = 2 * N_PIXELS), and their mean is the black level."""
    x = torch.zeros(2, 4, H, W, device=DEV)
    z = synthesize_noise(x, "P+g", ratio=100.0, K=1.0, sigma_g=3.0, output="dn", black_level=64.0,
                         generator=gen(3), backend="triton")
    assert (z < 64.0 - 3.0).float().mean() > 0.1  # ~16% expected
    assert abs(z.mean().item() - 64.0) < Z_CRIT * 3.0 / math.sqrt(z.numel())
    net = synthesize_noise(x, "P+g", ratio=100.0, K=1.0, sigma_g=3.0, generator=gen(3), backend="triton")
    assert net.min() == 0.0  # the network input clips the same noise


def test_fp16_input_equals_its_fp32_upcast():
    x = fresh((2, 4, 3, 9), seed=4, dtype=torch.float16)
    kw = dict(ratio=[120.0, 80.0], K=[1.5, 6.0], sigma_TL=2.0, lam=-0.1, sigma_r=0.7, output="dn", backend="triton")
    a = synthesize_noise(x, "P+G+r+u", generator=gen(8), **kw)
    b = synthesize_noise(x.float(), "P+G+r+u", generator=gen(8), **kw)
    assert torch.equal(a, b)


def test_empty_batch_and_zero_size():
    x = torch.zeros(0, 4, 3, 3, device=DEV)
    assert synthesize_noise(x, "P+g", ratio=100.0, K=1.0, sigma_g=1.0, backend="triton").shape == (0, 4, 3, 3)
    x = torch.zeros(2, 4, 0, 3, device=DEV)
    assert synthesize_noise(x, "P+g", ratio=100.0, K=1.0, sigma_g=1.0, with_photon=True, backend="triton").shape == (2, 8, 0, 3)


# ----------------------------------------------------------------------------- randomness plumbing
def test_same_seed_repeats_new_seed_differs():
    x = fresh((2, 4, 3, 5), seed=1)
    kw = dict(ratio=100.0, K=2.0, sigma_TL=1.0, lam=0.1, sigma_r=1.0, backend="triton")
    a = synthesize_noise(x, "P+G+r+u", generator=gen(11), **kw)
    b = synthesize_noise(x, "P+G+r+u", generator=gen(11), **kw)
    c = synthesize_noise(x, "P+G+r+u", generator=gen(12), **kw)
    assert torch.equal(a, b) and not torch.equal(a, c)
    torch.manual_seed(5)
    d = synthesize_noise(x, "P+G+r+u", **kw)
    torch.manual_seed(5)
    e = synthesize_noise(x, "P+G+r+u", **kw)
    assert torch.equal(d, e)


def test_draws_do_not_depend_on_tile_shape(monkeypatch):
    """Counters are element indices (row noise: (b, y, half)), so every tile shape gives
    the same bits: every configuration autotune may pick, and odd ones; this also licenses
    the big tiles of the statistical tests."""
    x = fresh((2, 4, 5, 21), seed=2)
    kw = dict(ratio=[100.0, 30.0], K=[2.0, 0.7], sigma_TL=3.0, lam=0.05, sigma_r=2.0, output="dn", backend="triton")
    outs = [synthesize_noise(x, "P+G+r+u", generator=gen(21), **kw)]  # as shipped (tuned on a GPU)
    odd = [({"BLOCK_H": bh, "BLOCK_W": bw, "TILES": t}, 4) for bh, bw, t in ((32, 64, 1), (1, 16, 3), (4, 8, 2))]
    for config in [*noise.CONFIGS, *odd]:
        monkeypatch.setattr(noise, "LAUNCH_CONFIG", config)
        outs.append(synthesize_noise(x, "P+G+r+u", generator=gen(21), **kw))
    for o in outs[1:]:
        assert torch.equal(o, outs[0])


def test_params_from_sample_noise_params():
    x = fresh((3, 4, 2, 5), seed=6)
    p = sample_noise_params(3, generator=torch.Generator().manual_seed(0), device=DEV)
    a = synthesize_noise(x, params=p, generator=gen(4), backend="triton")  # model from params: P+G+r+u
    b = synthesize_noise(x, "P+G+r+u", generator=gen(4), backend="triton", **p.as_kwargs())
    assert torch.equal(a, b)
    c = synthesize_noise(x, "P+g", params=p, generator=gen(4), backend="triton")
    assert c.shape == (3, 4, 2, 5) and not torch.equal(a, c)


# ----------------------------------------------------------------------------- statistics
def test_shot_noise_is_K_times_poisson_per_sample(big_tiles):
    """P: z / K ~ Poisson(y / K) with per-sample K; means 0.7, 20, 400 (N_PIXELS each):
    integer counts, chi-square fit, mean and variance z-tests (Bonferroni over 3 x 3)."""
    means, K, ratio = [0.7, 20.0, 400.0], [2.0, 0.5, 4.0], [100.0, 300.0, 50.0]
    x = const_image([m * k * r / S for m, k, r in zip(means, K, ratio)])
    z = synthesize_noise(x, "P", ratio=ratio, K=K, output="dn", generator=gen(1), backend="triton")
    y = dn_signal(x, ratio)
    crit = st.norm.isf(ALPHA / 18)
    for b, (mean, k) in enumerate(zip(means, K)):
        counts = (z[b] / k).cpu().double().numpy().ravel()
        mu = (y[b, 0, 0, 0] / k).item()
        assert np.all(np.abs(counts - np.round(counts)) < 1e-3), "z / K must be integer photon counts"
        counts = np.round(counts).astype(np.int64)
        assert chi_square_pvalue(counts, mu) > ALPHA / 9
        n = counts.size
        assert abs(counts.mean() - mu) < crit * math.sqrt(mu / n)
        assert abs(counts.var(ddof=1) - mu) < crit * math.sqrt((mu + 2 * mu * mu) / n)


def test_per_sample_gain_gives_per_sample_variance(big_tiles):
    """Same image, K = 0.5 vs 20: the variances differ by ~40x, each K * y."""
    x = const_image([0.4, 0.4])
    for K in ([0.5, 20.0], [20.0, 0.5]):
        z = synthesize_noise(x, "P", ratio=100.0, K=K, output="dn", generator=gen(2), backend="triton")
        y = dn_signal(x, 100.0)[0, 0, 0, 0].item()
        v = z.flatten(1).var(dim=1).cpu()
        for b in range(2):
            # variance of s^2 for Poisson-like data ~ (K y)^2 * 2 / n (+ small K^3 y term)
            sd = math.sqrt((2 * (K[b] * y) ** 2 + K[b] ** 3 * y) / N_PIXELS)
            assert abs(v[b].item() - K[b] * y) < st.norm.isf(ALPHA / 8) * sd


def ks_pvalue(samples, cdf) -> float:
    return st.kstest(np.asarray(samples, dtype=np.float64).ravel(), cdf).pvalue


def test_gaussian_shot_approximation(big_tiles):
    """p: (z - y) / sqrt(K y) ~ N(0, 1) per sample (KS, N_PIXELS each, Bonferroni over 2)."""
    x = const_image([0.2, 0.9])
    ratio, K = [100.0, 200.0], [0.3, 9.0]
    z = synthesize_noise(x, "p", ratio=ratio, K=K, output="dn", generator=gen(3), backend="triton")
    y = dn_signal(x, ratio)
    for b in range(2):
        std = torch.sqrt(K[b] * y[b])
        assert ks_pvalue(((z[b] - y[b]) / std).cpu(), "norm") > ALPHA / 2


def test_gaussian_read_noise(big_tiles):
    """g: (z - y) / sigma_g ~ N(0, 1) per sample (KS, N_PIXELS each, Bonferroni over 2)."""
    x = const_image([0.3, 0.6])
    sigma = [0.5, 7.0]
    z = synthesize_noise(x, "g", ratio=100.0, K=1.0, sigma_g=sigma, output="dn", generator=gen(4), backend="triton")
    y = dn_signal(x, 100.0)
    for b in range(2):
        assert ks_pvalue(((z[b] - y[b]) / sigma[b]).cpu(), "norm") > ALPHA / 2


LAMBDAS = [-0.15, 0.0, 0.2, 1e-4]


def test_tukey_lambda_read_noise(big_tiles):
    """G: z / sigma_TL ~ Tukey-lambda(lam) per sample, lam in LAMBDAS (scipy.stats.tukeylambda;
    KS, N_PIXELS each, Bonferroni over 4)."""
    x = torch.zeros(len(LAMBDAS), 4, H, W, device=DEV)
    sigma = [1.0, 2.5, 0.7, 3.0]
    z = synthesize_noise(x, "G", ratio=100.0, K=1.0, sigma_TL=sigma, lam=LAMBDAS, output="dn", generator=gen(5), backend="triton")
    for b, lam in enumerate(LAMBDAS):
        assert ks_pvalue((z[b] / sigma[b]).cpu(), st.tukeylambda(lam).cdf) > ALPHA / len(LAMBDAS)


@triton.jit
def _tukey_probe(bits_ptr, lam_ptr, out_ptr, n, BLOCK: tl.constexpr):
    offs = tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)
    mask = offs < n
    bits = tl.load(bits_ptr + offs, mask=mask, other=0).to(tl.uint32)
    lam = tl.load(lam_ptr + offs, mask=mask, other=0.0)
    inv_lam = fast_rcp(tl.where(lam == 0.0, 1.0, lam))  # as the kernel computes it
    tl.store(out_ptr + offs, _tukey_lambda(bits, lam, inv_lam), mask=mask)


def test_tukey_lambda_transform_accuracy():
    """The fp32 transform equals the float64 definition at the same uniform, through lam = 0
    (no cancellation for tiny lam), over the whole range of u (relative error < 2e-5)."""
    m = np.unique(np.concatenate([np.arange(0, 64), np.linspace(0, 2**23 - 1, 4001).astype(np.int64), 2**23 - 1 - np.arange(64)]))
    lams = [-0.25, -0.15, -1e-5, -1e-7, 0.0, 1e-7, 1e-5, 1e-3, 0.2, 0.5]
    bits = np.tile(m << 9, len(lams)).astype(np.int64)
    lam = np.repeat(lams, len(m))
    out = torch.empty(len(bits), dtype=torch.float32, device=DEV)
    _tukey_probe[(triton.cdiv(len(bits), 256),)](
        torch.tensor(bits, dtype=torch.int64, device=DEV), torch.tensor(lam, dtype=torch.float32, device=DEV), out, len(bits), BLOCK=256
    )
    u = (np.tile(m, len(lams)) + 0.5) * 2.0**-23
    v = (2**23 - 1 - np.tile(m, len(lams)) + 0.5) * 2.0**-23
    lam32 = lam.astype(np.float32).astype(np.float64)
    with np.errstate(divide="ignore", invalid="ignore"):
        exact = np.where(lam32 == 0, np.log(u / v), (u**lam32 - v**lam32) / np.where(lam32 == 0, 1, lam32))
    got = out.cpu().double().numpy()
    # relative error, floored near the median (TL(0.5) = 0) by the value at |u - 1/2| ~ 1e-3
    scale = np.maximum(np.abs(exact), 4e-3)
    assert np.max(np.abs(got - exact) / scale) < 2e-5


FAST_MATH_ONLY_INTERPRETED = pytest.mark.skipif(
    not kernels._common.triton_interpreter_enabled(),
    reason="injects the GPU's fast-math errors under the interpreter; a GPU runs the real ones")


def inject_fast_math_errors(monkeypatch, sign):
    """Every fast function of kernels/_fastmath.py off by its documented bound, one sign
    (log2's flips at 1/2, the worst case for log2(u) - log2(1 - u))."""
    monkeypatch.setattr(_fastmath, "LOG2_ERROR", tl.constexpr(sign * 2.4e-7))
    monkeypatch.setattr(_fastmath, "EXP2_ERROR", tl.constexpr(sign * 2.4e-7))
    monkeypatch.setattr(_fastmath, "DIV_ERROR", tl.constexpr(sign * 2.4e-7))
    monkeypatch.setattr(_fastmath, "TRIG_ERROR", tl.constexpr(sign * 4.2e-7))
    monkeypatch.setattr(_fastmath, "LOG_ERROR", tl.constexpr(sign * 3.6e-7))


@pytest.mark.parametrize("sign", [0.0, 1.0, -1.0])
def test_tukey_lambda_fast_math_error_is_below_two_grid_steps(monkeypatch, sign):
    """Every draw is the exact transform of a uniform within 2 steps of its own 2**-23 grid
    point (kernels/noise.py states the argument): |got - TL(u)| <= 2 * 2**-23 * dTL/du, over
    the whole grid range (both tails, the median) and lam through 0; on a GPU with its fast
    functions, under the interpreter (sign != 0) with their errors injected at the bounds.
    (Measured under the interpreter: 1.96 steps injected, 0.63 exact.)"""
    if sign and not kernels._common.triton_interpreter_enabled():
        pytest.skip("injects the GPU's fast-math errors under the interpreter")
    inject_fast_math_errors(monkeypatch, sign)
    m = np.unique(np.concatenate([np.arange(0, 64), np.linspace(0, 2**23 - 1, 4001).astype(np.int64),
                                  2**23 - 1 - np.arange(64), 2**22 + np.arange(-64, 64)]))
    lams = [-0.3, -0.25, -0.15, -1e-5, 0.0, 1e-5, 1e-3, 0.14, 0.2, 0.3, 0.5]
    bits = np.tile(m << 9, len(lams)).astype(np.int64)
    lam = np.repeat(lams, len(m)).astype(np.float32)
    out = torch.empty(len(bits), dtype=torch.float32, device=DEV)
    _tukey_probe[(triton.cdiv(len(bits), 1024),)](
        torch.tensor(bits, device=DEV), torch.tensor(lam, device=DEV), out, len(bits), BLOCK=1024)
    mm = np.tile(m, len(lams)).astype(np.float64)
    u, v = (mm + 0.5) * 2.0**-23, (2**23 - 1 - mm + 0.5) * 2.0**-23
    lam64 = lam.astype(np.float64)
    with np.errstate(divide="ignore", invalid="ignore"):
        exact = np.where(lam64 == 0, np.log(u / v), (u**lam64 - v**lam64) / np.where(lam64 == 0, 1, lam64))
    slope = u ** (lam64 - 1) + v ** (lam64 - 1)  # dTL/du
    steps = np.abs(out.cpu().double().numpy() - exact) / slope / 2.0**-23
    assert steps.max() < 2.0, (steps.max(), mm[steps.argmax()], lam64[steps.argmax()])


@triton.jit
def _box_muller_probe(a_ptr, b_ptr, z1_ptr, z2_ptr, n, BLOCK: tl.constexpr):
    offs = tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)
    mask = offs < n
    z1, z2 = box_muller(tl.load(a_ptr + offs, mask=mask, other=0).to(tl.uint32),
                        tl.load(b_ptr + offs, mask=mask, other=0).to(tl.uint32))
    tl.store(z1_ptr + offs, z1, mask=mask)
    tl.store(z2_ptr + offs, z2, mask=mask)


@pytest.mark.parametrize("sign", [0.0, 1.0, -1.0])
def test_box_muller_within_its_stated_bound(monkeypatch, sign):
    """Both normals within 5e-6 of the exact transform sqrt(-2 ln u) (cos, sin)(2 pi (t - 1/2))
    of the same uniforms (kernels/_philox.py states why), u over the whole grid incl. the
    series branch near 1, with (sign != 0) every fast-function error at its bound."""
    if sign and not kernels._common.triton_interpreter_enabled():
        pytest.skip("injects the GPU's fast-math errors under the interpreter")
    inject_fast_math_errors(monkeypatch, sign)
    m = np.unique(np.concatenate([np.arange(0, 32), np.linspace(0, 2**23 - 1, 2001).astype(np.int64),
                                  2**23 - 1 - np.arange(32), 2**23 - 2**17 + np.arange(-32, 32)]))
    t = np.unique(np.concatenate([np.linspace(0, 2**23 - 1, 257).astype(np.int64), np.arange(8), 2**23 - 1 - np.arange(8)]))
    a, b = (g.ravel() for g in np.meshgrid(m, t, indexing="ij"))
    z1, z2 = (torch.empty(len(a), device=DEV) for _ in range(2))
    _box_muller_probe[(triton.cdiv(len(a), 4096),)](torch.tensor(a << 9, device=DEV), torch.tensor(b << 9, device=DEV),
                                                     z1, z2, len(a), BLOCK=4096)
    r = np.sqrt(-2 * np.log((a + 0.5) * 2.0**-23))
    theta = 2 * np.pi * ((b + 0.5) * 2.0**-23 - 0.5)
    assert np.max(np.abs(z1.cpu().double().numpy() - r * np.cos(theta))) < 5e-6
    assert np.max(np.abs(z2.cpu().double().numpy() - r * np.sin(theta))) < 5e-6


@FAST_MATH_ONLY_INTERPRETED
@pytest.mark.parametrize("sign", [1.0, -1.0])
def test_read_noise_distributions_with_fast_math_errors(monkeypatch, big_tiles, sign):
    """The KS tests of "G" (lam = -0.15, 0.2) and "g" still pass with every fast-function
    error at its bound (N_PIXELS per sample, Bonferroni over 3)."""
    inject_fast_math_errors(monkeypatch, sign)
    x = torch.zeros(2, 4, H, W, device=DEV)
    z = synthesize_noise(x, "G", ratio=100.0, K=1.0, sigma_TL=[1.0, 2.0], lam=[-0.15, 0.2], output="dn",
                         generator=gen(31), backend="triton")
    assert ks_pvalue(z[0].cpu(), st.tukeylambda(-0.15).cdf) > ALPHA / 3
    assert ks_pvalue((z[1] / 2.0).cpu(), st.tukeylambda(0.2).cdf) > ALPHA / 3
    g = synthesize_noise(x[:1], "g", ratio=100.0, K=1.0, sigma_g=3.0, output="dn", generator=gen(32), backend="triton")
    assert ks_pvalue((g / 3.0).cpu(), "norm") > ALPHA / 3


def test_row_noise_shared_along_cfa_rows_and_independent(big_tiles):
    """r: one N(0, sigma_r) per (sample, packed row, CFA half). Exact sharing by planes
    0/1 and 2/3 along the whole width; 2048 row values: variance chi-square per sample,
    KS normality, correlation across halves and adjacent rows ~ 0 (Bonferroni over 8)."""
    B, h = 4, 256
    sigma = torch.tensor([1.5, 4.0, 0.5, 2.0], device=DEV)
    z = synthesize_noise(torch.zeros(B, 4, h, 2, device=DEV), "r", ratio=100.0, K=1.0, sigma_r=sigma,
                         output="dn", generator=gen(6), backend="triton")
    assert torch.equal(z[:, 0], z[:, 1]) and torch.equal(z[:, 2], z[:, 3])
    assert torch.equal(z[..., 0], z[..., 1])
    rows = (z[:, [0, 2], :, 0] / sigma.view(B, 1, 1)).cpu().double().numpy()  # [B, half, h], standardised
    a = ALPHA / 8
    for b in range(B):
        ss = float((rows[b] ** 2).sum())
        n = rows[b].size
        assert st.chi2.sf(ss, n) > a / 2 and st.chi2.cdf(ss, n) > a / 2
    assert ks_pvalue(rows, "norm") > a
    crit = st.norm.isf(a / 2)
    halves = np.corrcoef(rows[:, 0].ravel(), rows[:, 1].ravel())[0, 1]
    assert abs(halves) * math.sqrt(B * h) < crit
    adjacent = np.corrcoef(rows[:, :, :-1].ravel(), rows[:, :, 1:].ravel())[0, 1]
    assert abs(adjacent) * math.sqrt(rows[:, :, 1:].size) < crit


@pytest.mark.parametrize("backend", ["triton", "torch"])
def test_row_noise_shared_across_column_tiles(backend):
    """The shipped tile is BLOCK_W wide: a 300-wide row spans 3 programs per plane, and all
    of them (for both planes of the CFA row) must add the same value."""
    g = gen(7) if backend == "triton" else torch.Generator().manual_seed(7)  # the reference: a host generator, deliberately
    z = synthesize_noise(torch.zeros(2, 4, 3, 300, device=DEV), "r", ratio=100.0, K=1.0, sigma_r=2.0,
                         output="dn", generator=g, backend=backend)
    assert torch.equal(z, z[..., :1].expand_as(z))
    assert torch.equal(z[:, 0], z[:, 1]) and torch.equal(z[:, 2], z[:, 3])
    assert not torch.equal(z[:, 0], z[:, 2]) and not torch.equal(z[:, 0, 0], z[:, 0, 1])


def test_quantisation_noise_uniform(big_tiles):
    """u: z ~ U(-0.5, 0.5) (KS, 2 * N_PIXELS), strictly inside the interval."""
    z = synthesize_noise(torch.zeros(2, 4, H, W, device=DEV), "u", ratio=100.0, K=1.0, output="dn",
                         generator=gen(8), backend="triton")
    assert z.abs().max() < 0.5
    assert ks_pvalue(z.cpu(), st.uniform(-0.5, 1.0).cdf) > ALPHA


@pytest.mark.parametrize("backend", ["triton", "torch"])
def test_full_model_variance_decomposition(big_tiles, backend):
    """P+G+r+u on a flat patch, residual e = z - y split per (sample, CFA half, row) of
    2 * W pixels: the mean is 0, the within-row variance is K y + sigma_TL^2 Var(TL) + 1/12
    (z-test with the sample's own 4th moment), and the row means have variance
    sigma_r^2 + within / (2 W) (chi-square, 2 H dof). Per sample, Bonferroni over 2 x 3.
    The within-row variance needs the components independent: on CUDA torch.poisson used
    to leave its Philox numbers to the generator's next draw (the Tukey-lambda uniforms),
    which added 2 K sigma_TL Cov ~ 17 DN^2 (kernels._cpu_sampling.poisson_draws)."""
    x = const_image([0.5, 0.3], h=2 * H, w=W)
    ratio, K, sigma_tl, lam, sigma_r = [100.0, 250.0], [2.0, 0.4], [3.0, 1.0], [-0.1, 0.15], [2.5, 1.2]
    z = synthesize_noise(x, "P+G+r+u", ratio=ratio, K=K, sigma_TL=sigma_tl, lam=lam, sigma_r=sigma_r,
                         output="dn", generator=gen(9), backend=backend)
    e = (z - dn_signal(x, ratio)).cpu().double().numpy()  # [B, 4, 2H, W]
    a = ALPHA / 6
    crit = st.norm.isf(a / 2)
    for b in range(2):
        y = dn_signal(x, ratio)[b, 0, 0, 0].item()
        within_theory = K[b] * y + sigma_tl[b] ** 2 * st.tukeylambda(lam[b]).var() + 1 / 12
        # halves: planes 0-1 and 2-3 share a CFA row -> rows of 2W pixels
        per_row = np.stack([e[b, 0:2].transpose(1, 0, 2).reshape(2 * H, -1), e[b, 2:4].transpose(1, 0, 2).reshape(2 * H, -1)])
        per_row = per_row.reshape(-1, 2 * W)  # [2 halves * 2H rows, 2W pixels]
        n_rows, n_per = per_row.shape
        means = per_row.mean(axis=1)
        resid = per_row - means[:, None]
        s_within = (resid**2).sum() / (resid.size - n_rows)
        m4 = (resid**4).mean()
        assert abs(s_within - within_theory) < crit * math.sqrt((m4 - s_within**2) / resid.size)
        row_theory = sigma_r[b] ** 2 + within_theory / n_per
        q = (means**2).sum() / row_theory  # the true row mean is 0: chi-square with n_rows dof
        assert st.chi2.sf(q, n_rows) > a / 2 and st.chi2.cdf(q, n_rows) > a / 2
        assert abs(e[b].mean()) < crit * math.sqrt(row_theory / n_rows)


@pytest.mark.parametrize(
    "model, kw",
    [
        ("P+G+u", dict(sigma_TL=[2.0, 0.5], lam=[-0.12, 0.18])),
        ("p+g+u", dict(sigma_g=[1.0, 4.0])),
        ("P+g", dict(sigma_g=[1.0, 4.0])),
    ],
)
def test_triton_and_reference_draw_the_same_distribution(big_tiles, model, kw):
    """Two-sample KS of Triton vs reference per sample (N_PIXELS each side, Bonferroni over 2);
    "P+g" on the network input (no clipping at these levels), the others in DN."""
    x = const_image([0.35, 0.5])
    common = dict(ratio=[100.0, 150.0], K=[1.0, 2.0], **kw)
    output = "network" if model == "P+g" else "dn"
    t = synthesize_noise(x, model, output=output, generator=gen(10), backend="triton", **common)
    r = synthesize_noise(x, model, output=output, generator=torch.Generator().manual_seed(10), backend="torch", **common)  # host gen.
    if output == "network":
        assert 0 < t.min() and t.max() < 1
    for b in range(2):
        assert st.ks_2samp(t[b].cpu().numpy().ravel(), r[b].cpu().numpy().ravel()).pvalue > ALPHA / 2


# ----------------------------------------------------------------------------- refusals
X = torch.rand(2, 4, 3, 3)


def call(x=None, model="P+g", **kw):
    kw.setdefault("ratio", 100.0)
    kw.setdefault("K", 1.0)
    kw.setdefault("sigma_g", 1.0)
    return synthesize_noise(X.to(DEV) if x is None else x, model, backend="triton", **kw)


@pytest.mark.parametrize(
    "model, match",
    [
        ("P+x", r"unknown noise component 'x' in model 'P\+x'"),
        ("P+p", "both P .* and p"),
        ("g+G", "both g .* and G"),
        ("P+P", "names a component twice"),
        ("", "must name components joined by"),
        ("P+", "must name components joined by"),
    ],
)
def test_bad_model_refused(model, match):
    with pytest.raises(ValueError, match=match):
        call(model=model)


@pytest.mark.parametrize(
    "model, kw, match",
    [
        ("P+g", dict(sigma_g=None), r"needs sigma_g \(model has g\)"),
        ("P+G", dict(lam=0.1), r"needs sigma_TL \(model has G\)"),
        ("P+G", dict(sigma_TL=1.0), r"needs lam \(model has G\)"),
        ("P+r", dict(), r"needs sigma_r \(model has r\)"),
        ("P", dict(ratio=None), "ratio .* is required"),
        ("P", dict(K=None), "K .* is required"),
    ],
)
def test_missing_parameter_refused(model, kw, match):
    with pytest.raises(ValueError, match=match):
        call(model=model, **kw)


@pytest.mark.parametrize(
    "kw, exc, match",
    [
        (dict(K=0.0), ValueError, r"K must be > 0"),
        (dict(K=[1.0, -2.0]), ValueError, r"K must be > 0"),
        (dict(ratio=0.0), ValueError, r"ratio must be > 0"),
        (dict(ratio=float("nan")), ValueError, r"ratio must be finite"),
        (dict(sigma_g=-1.0), ValueError, r"sigma_g must be >= 0"),
        (dict(K=[1.0, 2.0, 3.0]), ValueError, r"K has 3 values but the batch has 2"),
        (dict(K=1e-6), ValueError, r"exceeds the Poisson sampler's limit"),
        (dict(dn_scale=0.0), ValueError, r"dn_scale must be a finite number > 0"),
        (dict(output="raw"), ValueError, r"output must be one of \('network', 'dn'\)"),
        (dict(black_level=64.0), ValueError, r"black_level applies to output='dn' only"),
        (dict(output="dn", with_photon=True), ValueError, r"need output='network'"),
        (dict(output="dn", out_dtype=torch.float16), ValueError, r"output='dn' is float32"),
        (dict(out_dtype=torch.bfloat16), TypeError, r"out_dtype must be torch.float32 or torch.float16"),
        (dict(output="dn", black_level=torch.zeros(2, 3)), ValueError, r"black_level must have shape \[2, 4\] or \[1, 4\]"),
        (dict(backend="cuda"), ValueError, r"backend must be one of"),
        (dict(out=torch.empty(2, 8, 3, 3)), ValueError, r"out must have shape \(2, 4, 3, 3\)"),
        (dict(out=torch.empty(2, 4, 3, 3, dtype=torch.float16)), TypeError, r"out must have dtype in \(float32\)"),
    ],
)
def test_bad_parameter_refused(kw, exc, match):
    if "out" in kw:
        kw["out"] = kw["out"].to(DEV)
    if "backend" in kw:
        with pytest.raises(exc, match=match):
            synthesize_noise(X, "P+g", ratio=100.0, K=1.0, sigma_g=1.0, **kw)
        return
    with pytest.raises(exc, match=match):
        call(**kw)


@pytest.mark.parametrize(
    "x, exc, match",
    [
        (torch.rand(2, 4, 3, 3).double(), TypeError, r"clean must have dtype in \(float32, float16\), got float64"),
        (torch.randint(0, 9, (2, 4, 3, 3)), TypeError, r"clean must have dtype in \(float32, float16\), got int64"),
        (torch.rand(4, 3, 3), ValueError, r"clean must have 4 dimensions, got shape \(4, 3, 3\)"),
        (torch.rand(2, 3, 3, 3), ValueError, r"clean must be a packed image \[B, 4, h, w\]"),
        (np.zeros((2, 4, 3, 3), np.float32), TypeError, r"clean must be a torch.Tensor, got ndarray"),
    ],
)
def test_bad_clean_refused(x, exc, match):
    with pytest.raises(exc, match=match):
        call(x=x.to(DEV) if isinstance(x, torch.Tensor) else x)


def _huge(*shape):
    """A tensor of any size without its memory (zero strides): for size refusals."""
    return torch.zeros(1, device=DEV).view(1, 1, 1, 1).expand(*shape)


@pytest.mark.parametrize("shape, match", [
    ((65536, 4, 1, 1), r"batch size must be <= 65535 on the Triton path, got 65536"),
    ((1, 4, 65536, 1), r"h \(packed rows\) must be <= 65535 on the Triton path, got 65536"),
    ((1, 4, 40000, 13422), r"4 \* h \* w must be < 2\*\*31 on the Triton path \(int32 offsets within a sample\), "
                           r"got h=40000, w=13422"),
    ((1, 4, 40000, 4475), r"out: one sample spans 2148000000 elements in memory \(contiguous, shape .*\); the Triton kernel addresses a sample "
                          r"with int32 offsets"),
])
def test_sizes_beyond_the_kernels_int32_offsets_or_grid_refused(shape, match):
    """Checked before the output is allocated (the last: 12 output channels of 40000 x 4475)."""
    with pytest.raises(ValueError, match=match):
        synthesize_noise(_huge(*shape), "P+g", ratio=100.0, K=1.0, sigma_g=1.0, with_photon=True,
                         concat_origin=True, backend="triton")


def test_device_mix_refused():
    # meta tensors stand in for a second device on a CPU-only machine
    with pytest.raises(ValueError, match=r"K is on meta but the data is on"):
        call(K=torch.ones(2, device="meta"))
    with pytest.raises(ValueError, match=r"black_level is on meta but the data is on"):
        call(output="dn", black_level=torch.zeros(2, 4, device="meta"))
    with pytest.raises(ValueError, match=r"out is on meta but the data is on"):
        call(out=torch.empty(2, 4, 3, 3, device="meta"))


def test_params_and_explicit_values_refused_together():
    p = sample_noise_params(2, device=DEV)
    with pytest.raises(ValueError, match=r"either params= or individual parameters.*K"):
        synthesize_noise(X.to(DEV), params=p, K=1.0, backend="triton")
    with pytest.raises(TypeError, match=r"params must be a kernels.NoiseParams"):
        synthesize_noise(X.to(DEV), params={"K": 1.0}, backend="triton")


def test_reference_on_cpu_by_default():
    """backend="auto" on CPU runs the reference (torch's samplers, same generator -> same draws)."""
    x = torch.rand(2, 4, 3, 5)
    a = synthesize_noise(x, "P+g", ratio=100.0, K=1.0, sigma_g=1.0, generator=torch.Generator().manual_seed(1))
    b = synthesize_noise_reference(x, "P+g", ratio=100.0, K=1.0, sigma_g=1.0, generator=torch.Generator().manual_seed(1))
    assert torch.equal(a, b)
