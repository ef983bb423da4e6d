"""engine.inference.loop and the Pipeline's loop against an independent plain-PyTorch SPEC §4.

The reference below is written from SPEC §4 alone (no project code): deterministic mode
must match to fp32 rounding; stochastic mode is checked by fixed-seed statistics with a
false-failure rate of ALPHA per test.
"""
import math

import numpy as np
import pytest
import scipy.stats as st
import torch
import torch.nn.functional as F

from engine import BackboneConfig, Pipeline
from engine.inference.loop import exposure_schedule, pad_to_multiple

ALPHA = 1e-3
S = 15583.0


def spec_loop(net, a_t, r, K, steps, *, with_photon, concat_origin, accumulate=False):
    """SPEC §4 inference, deterministic (P = mu), in float64."""
    rho = [1 + (r - 1) * i / steps for i in range(steps + 1)]
    a = a_t
    for i in range(steps):
        parts = [a]
        if with_photon:
            parts.append(a * rho[i] / (r * K))
        if concat_origin:
            parts.append(a_t)
        out = net(torch.cat(parts, 1).float()).double()
        if out.shape[1] == 9:
            m = torch.sigmoid(out[:, :1])
            y = out[:, 1:5].clamp(0, 1) * m + (out[:, 5:9] + a).clamp(0, 1) * (1 - m)
        else:
            y = out.clamp(0, 1)
        if i == steps - 1:
            return y
        if accumulate:
            mu = (rho[i + 1] - rho[i]) * S * y.clamp(0, 1) / (r * K)
            a = (a * rho[i] + mu * r * K / S) / rho[i + 1]
        else:
            mu = (rho[i + 1] - 1) * S * y.clamp(0, 1) / (r * K)
            a = (a_t.clamp(0, 1) + mu * r * K / S) / rho[i + 1]


def packed_first_state(cfa, black, white, r):
    """A_T from an RGGB uint16 mosaic, by SPEC §1."""
    d = cfa.double()
    planes = torch.stack([d[0::2, 0::2], d[0::2, 1::2], d[1::2, 1::2], d[1::2, 0::2]])
    return ((planes - black) / (white - black) * r).clamp(0, 1)[None]


def small_unet_config(**kw):
    return BackboneConfig(arch="unet", options={"widths": (8, 16, 16, 32, 32)}, **kw)


@pytest.mark.parametrize("with_photon, concat_origin, out_channels", [(True, False, 9), (False, True, 9), (True, True, 4), (False, False, 9)])
@pytest.mark.parametrize("steps", [1, 3])
def test_deterministic_pipeline_matches_spec(with_photon, concat_origin, out_channels, steps):
    torch.manual_seed(0)
    cfg = small_unet_config(with_photon=with_photon, concat_origin=concat_origin, out_channels=out_channels)
    net = cfg.build().eval()
    pipe = Pipeline(net, cfg, device="cpu", precision="fp32", fidelity_scale=None)
    g = torch.Generator().manual_seed(1)
    cfa = torch.randint(512, 1200, (64, 96), generator=g, dtype=torch.int32).to(torch.uint16)
    got = pipe(cfa, ratio=150.0, steps=steps, K=1.7, stochastic=False, pattern="RGGB", black_level=512, white_level=16383).raw
    with torch.no_grad():
        want = spec_loop(net, packed_first_state(cfa, 512, 16383, 150.0), 150.0, 1.7, steps,
                         with_photon=with_photon, concat_origin=concat_origin)[0]
    assert got.shape == (4, 32, 48) and got.dtype == torch.float32
    assert torch.allclose(got.double(), want, atol=2e-5, rtol=0)


def test_accumulating_form_matches_spec():
    torch.manual_seed(1)
    cfg = small_unet_config()
    net = cfg.build().eval()
    pipe = Pipeline(net, cfg, device="cpu", precision="fp32", fidelity_scale=None)
    cfa = torch.randint(512, 2000, (32, 64), generator=torch.Generator().manual_seed(2), dtype=torch.int32).to(torch.uint16)
    got = pipe(cfa, ratio=80.0, steps=3, K=0.9, stochastic=False, accumulate=True, pattern="RGGB", black_level=512, white_level=16383).raw
    with torch.no_grad():
        want = spec_loop(net, packed_first_state(cfa, 512, 16383, 80.0), 80.0, 0.9, 3, with_photon=True, concat_origin=False, accumulate=True)[0]
    assert torch.allclose(got.double(), want, atol=2e-5, rtol=0)


def test_odd_sizes_are_padded_and_cropped_back():
    """A 21 x 45 packed frame: the loop runs on the reflect-padded 32 x 48 input, cropped."""
    torch.manual_seed(2)
    cfg = small_unet_config()
    net = cfg.build().eval()
    pipe = Pipeline(net, cfg, device="cpu", precision="fp32", fidelity_scale=None)
    cfa = torch.randint(512, 3000, (43, 91), generator=torch.Generator().manual_seed(3), dtype=torch.int32).to(torch.uint16)
    got = pipe(cfa, ratio=50.0, steps=2, K=2.0, stochastic=False, pattern="RGGB", black_level=512, white_level=16383).raw
    assert got.shape == (4, 21, 45)
    a_t = packed_first_state(cfa[:42, :90], 512, 16383, 50.0)
    padded = F.pad(a_t, (0, 3, 0, 11), mode="reflect")

    def net_cropless(x):
        return net(x)

    with torch.no_grad():
        # the loop is pointwise apart from the network, so padding A_T once is the same as
        # padding the network input at every step
        want = spec_loop(net_cropless, padded, 50.0, 2.0, 2, with_photon=True, concat_origin=False)[0, :, :21, :45]
    assert torch.allclose(got.double(), want, atol=2e-5, rtol=0)


class _ClippedStateNet(torch.nn.Module):
    """A stand-in backbone whose estimate is the current state: Y_i = clip(A_i)."""

    def forward(self, x):
        mask_logit = torch.full_like(x[:, :1], 30.0)
        return torch.cat([mask_logit, x[:, :4], torch.zeros_like(x[:, :4])], 1)


def test_stochastic_mode_draws_poisson_photons():
    """Y_1 = clip(A_1), A_1 = (A_T + P r K / s) / rho_1, P ~ Poisson((rho_1 - 1) s A_T / (r K)):
    mean A_T, variance mu (r K / s)^2 / rho_1^2; and the counts are Poisson (chi-square)."""
    cfg = BackboneConfig(arch="unet", with_photon=True, out_channels=9)
    pipe = Pipeline(_ClippedStateNet(), cfg, device="cpu", precision="fp32", fidelity_scale=None)
    level, black, white, r, K = 600, 512, 16383, 100.0, 4.0
    cfa = torch.full((128, 128), level, dtype=torch.uint16)
    res = pipe(cfa, ratio=r, steps=2, K=K, seed=123, pattern="RGGB", black_level=black, white_level=white)
    a_t = (level - black) / (white - black) * r
    rho1 = 1 + (r - 1) / 2
    mu = (rho1 - 1) * S * a_t / (r * K)
    counts = ((res.raw.double() * rho1 - a_t) * S / (r * K)).flatten().numpy()
    assert np.allclose(counts, np.round(counts), atol=1e-2)
    counts = np.round(counts).astype(np.int64)
    n = counts.size
    z = st.norm.isf(ALPHA / 4)
    assert abs(counts.mean() - mu) < z * math.sqrt(mu / n)
    assert abs(counts.var() - mu) < z * math.sqrt((mu + 2 * mu * mu) / n)
    # repeatable with the seed, fresh without
    again = pipe(cfa, ratio=r, steps=2, K=K, seed=123, pattern="RGGB", black_level=black, white_level=white)
    other = pipe(cfa, ratio=r, steps=2, K=K, seed=124, pattern="RGGB", black_level=black, white_level=white)
    assert torch.equal(res.raw, again.raw) and not torch.equal(res.raw, other.raw)


def test_exposure_schedule_default_and_explicit():
    rho = exposure_schedule(torch.tensor([300.0]), 3)
    assert torch.allclose(rho, torch.tensor([[1.0, 100.6667, 200.3333, 300.0]]), atol=1e-3)
    explicit = exposure_schedule(torch.tensor([300.0, 300.0]), 2, [1, 10, 300])
    assert explicit.shape == (2, 3) and explicit[1].tolist() == [1.0, 10.0, 300.0]


@pytest.mark.parametrize(
    "schedule, match",
    [
        ([1, 10], r"schedule must hold steps \+ 1 = 3"),
        ([2, 10, 300], "schedule must start at exposure multiple 1"),
        ([1, 400, 300], "schedule must increase strictly"),
        ([1, 10, 200], "schedule must end at the exposure ratio"),
        ([1, float("nan"), 300], "schedule must be finite"),
    ],
)
def test_schedule_refusals(schedule, match):
    with pytest.raises(ValueError, match=match):
        exposure_schedule(torch.tensor([300.0]), 2, schedule)


def test_pad_to_multiple_keeps_layout():
    x = torch.rand(1, 8, 21, 45).contiguous(memory_format=torch.channels_last)
    p, hw = pad_to_multiple(x)
    assert p.shape == (1, 8, 32, 48) and hw == (21, 45) and p.is_contiguous(memory_format=torch.channels_last)
    assert torch.equal(p[:, :, :21, :45], x)
    tiny, _ = pad_to_multiple(torch.rand(1, 4, 3, 5))
    assert tiny.shape == (1, 4, 16, 16)
