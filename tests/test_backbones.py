"""Backbones (SPEC section 5): architecture, parameter counts, shapes, refusals, dtypes,
memory formats, export and the analytic MAC count."""
import pytest
import torch
import torch.nn.functional as F

from engine.models.backbones import (BackboneConfig, LayerNorm2d, NAFNet, UNet, build_backbone, count_macs,
                              unet_macs)

pytestmark = pytest.mark.usefixtures("one_thread")

CHANNELS = [(4, 9), (4, 4), (8, 9), (8, 4), (12, 9), (12, 4)]
# Exact counts. UNet: 7,758,336 weights shared by all variants + 32*9*in (conv1_1) + 33*out (conv10_1).
UNET_PARAMS = {(4, 9): 7_760_649, (4, 4): 7_760_484, (8, 9): 7_761_801, (8, 4): 7_761_636,
               (12, 9): 7_762_953, (12, 4): 7_762_788}
NAFNET_PARAMS = {(4, 9): 6_897_289, (4, 4): 6_896_564, (8, 9): 6_897_865, (8, 4): 6_897_140,
                 (12, 9): 6_898_441, (12, 4): 6_897_716}
SMALL_NAF = dict(width=8, enc_blocks=(1, 2), middle_blocks=2, dec_blocks=(2, 1))

PUBLIC_UNET_KEYS = sorted(
    [f"conv{lvl}_{j}.{p}" for lvl in range(1, 10) for j in (1, 2) for p in ("weight", "bias")]
    + [f"upv{lvl}.{p}" for lvl in range(6, 10) for p in ("weight", "bias")]
    + ["conv10_1.weight", "conv10_1.bias"])




def n_params(model):
    return sum(p.numel() for p in model.parameters())


def randomise_(model, seed=0):
    """Random weights everywhere, including NAFNet's beta/gamma (0 at init: identity blocks)."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            noise = torch.randn(p.shape, generator=g)
            if p.dim() == 4 and not name.endswith(("beta", "gamma")):  # conv weights: keep activations O(1)
                p.copy_(noise * (1.0 / p[0].numel()) ** 0.5)
            elif name.endswith("norm1.weight") or name.endswith("norm2.weight"):
                p.copy_(1.0 + 0.2 * noise)
            else:  # biases, beta, gamma
                p.copy_(0.3 * noise)
    return model


@pytest.mark.parametrize("cin,cout", CHANNELS)
def test_unet_parameter_count_and_keys(cin, cout):
    model = UNet(cin, cout)
    assert n_params(model) == UNET_PARAMS[(cin, cout)]
    assert sorted(model.state_dict()) == PUBLIC_UNET_KEYS
    assert model.conv1_1.weight.shape[1] == cin and model.conv10_1.weight.shape[0] == cout


@pytest.mark.parametrize("cin,cout", CHANNELS)
def test_nafnet_parameter_count(cin, cout):
    model = NAFNet(cin, cout)
    assert n_params(model) == NAFNET_PARAMS[(cin, cout)]  # SPEC: ~6.9 M
    keys = set(model.state_dict())
    assert {"intro.weight", "ending.weight", "downs.3.weight", "ups.3.0.weight",
            "middle_blks.11.sca.1.weight", "encoders.2.3.norm1.weight", "decoders.0.1.beta"} <= keys
    assert "ups.0.0.bias" not in keys


@pytest.mark.parametrize("arch", ["unet", "nafnet"])
@pytest.mark.parametrize("cin,cout", CHANNELS)
def test_output_shapes(arch, cin, cout):
    model = build_backbone(arch, cin, cout).eval()
    x = torch.rand(2, cin, 32, 48)
    with torch.no_grad():
        y = model(x)
    assert y.shape == (2, cout, 32, 48) and y.dtype == torch.float32
    assert torch.isfinite(y).all()


def _reference_unet(model, x):
    """SID UNet written out with functional ops and the public code's max(0.2x, x)."""
    def conv(name, t, pad=1):
        m = getattr(model, name)
        return F.conv2d(t, m.weight, m.bias, padding=pad)

    def lrelu(t):
        return torch.max(0.2 * t, t)

    def level(t, i):
        return lrelu(conv(f"conv{i}_2", lrelu(conv(f"conv{i}_1", t))))

    skips, t = [], x
    for i in range(1, 5):
        t = level(t, i)
        skips.append(t)
        t = F.max_pool2d(t, 2)
    t = level(t, 5)
    for i in range(6, 10):
        up = getattr(model, f"upv{i}")
        t = level(torch.cat([F.conv_transpose2d(t, up.weight, up.bias, stride=2), skips[9 - i]], 1), i)
    return conv("conv10_1", t, pad=0)


def test_unet_matches_functional_reference():
    model = randomise_(UNet(12, 9)).eval()
    x = torch.rand(1, 12, 32, 48)
    with torch.no_grad():
        torch.testing.assert_close(model(x), _reference_unet(model, x), rtol=1e-5, atol=1e-5)


def _reference_nafblock(b, x):
    def ln(t, norm):
        mu = t.mean(1, keepdim=True)
        var = ((t - mu) ** 2).mean(1, keepdim=True)
        return (t - mu) / torch.sqrt(var + 1e-6) * norm.weight.view(1, -1, 1, 1) + norm.bias.view(1, -1, 1, 1)

    def gate(t):
        half = t.shape[1] // 2
        return t[:, :half] * t[:, half:]

    t = b.conv2(b.conv1(ln(x, b.norm1)))
    t = gate(t)
    t = t * F.conv2d(t.mean((2, 3), keepdim=True), b.sca[1].weight, b.sca[1].bias)
    y = x + b.conv3(t) * b.beta
    return y + b.conv5(gate(b.conv4(ln(y, b.norm2)))) * b.gamma


def _reference_nafnet_body(model, inp):
    """intro, per-level blocks + stride-2 downs, middle, 1x1 + PixelShuffle ups + skip add, ending."""
    t = model.intro(inp)
    skips = []
    for enc, down in zip(model.encoders, model.downs):
        t = enc(t)
        skips.append(t)
        t = down(t)
    t = model.middle_blks(t)
    for dec, up, skip in zip(model.decoders, model.ups, skips[::-1]):
        t = dec(F.pixel_shuffle(up[0](t), 2) + skip)
    return model.ending(t)


def test_nafnet_matches_reference():
    model = randomise_(NAFNet(8, 9, **SMALL_NAF)).eval()
    block = model.encoders[1][0]
    x = torch.randn(2, 16, 8, 12)
    with torch.no_grad():
        torch.testing.assert_close(block(x), _reference_nafblock(block, x), rtol=1e-5, atol=1e-5)
        inp = torch.rand(1, 8, 16, 32)
        torch.testing.assert_close(model(inp), _reference_nafnet_body(model, inp))  # head: raw output


def test_nafnet_plain_head_is_residual_over_state():
    # Without the adaptive head the public NAFNet predicts a residual over A_i (first 4 channels).
    model = randomise_(NAFNet(12, 4, **SMALL_NAF)).eval()
    x = torch.rand(1, 12, 16, 16)
    with torch.no_grad():
        torch.testing.assert_close(model(x), _reference_nafnet_body(model, x) + x[:, :4])


@pytest.mark.parametrize("arch", ["unet", "nafnet"])
@pytest.mark.parametrize("h,w", [(40, 48), (32, 8), (17, 32), (31, 31)])
def test_refuses_sizes_not_multiple_of_16(arch, h, w):
    model = build_backbone(arch, 4, 9)
    with pytest.raises(ValueError, match=rf"multiple of 16, got {h}x{w}"):
        model(torch.rand(1, 4, h, w))


@pytest.mark.parametrize("arch", ["unet", "nafnet"])
def test_refuses_wrong_channels_and_rank(arch):
    model = build_backbone(arch, 8, 9)
    with pytest.raises(ValueError, match="built for 8 input channels, got 4"):
        model(torch.rand(1, 4, 32, 32))
    with pytest.raises(ValueError, match=r"expects a \[B, C, h, w\] tensor, got shape \(8, 32, 32\)"):
        model(torch.rand(8, 32, 32))


def test_nafnet_multiple_follows_depth():
    model = NAFNet(4, 9, **SMALL_NAF)  # two levels -> multiple of 4
    assert model(torch.rand(1, 4, 12, 20)).shape == (1, 9, 12, 20)
    with pytest.raises(ValueError, match="multiple of 4, got 14x20"):
        model(torch.rand(1, 4, 14, 20))


@pytest.mark.parametrize("arch,kw", [("unet", {}), ("nafnet", {})])
def test_channels_last_matches_contiguous(arch, kw):
    model = randomise_(build_backbone(arch, 12, 9, **kw)).eval()
    x = torch.rand(2, 12, 32, 48)
    with torch.no_grad():
        ref = model(x)
        model_cl = model.to(memory_format=torch.channels_last)
        out = model_cl(x.contiguous(memory_format=torch.channels_last))
    torch.testing.assert_close(out, ref, rtol=1e-4, atol=1e-4)


def test_layernorm2d_fp16_statistics_in_fp32():
    norm = LayerNorm2d(32)
    with torch.no_grad():
        norm.weight.uniform_(0.5, 1.5)
        norm.bias.uniform_(-0.5, 0.5)
    # Large common offset, small spread: a naive fp16 variance would collapse.
    x = (300.0 + 0.2 * torch.randn(2, 32, 8, 8)).half()
    y = norm.half()(x)
    assert y.dtype == torch.float16
    ref = F.layer_norm(x.float().permute(0, 2, 3, 1), (32,), norm.weight.float(), norm.bias.float(),
                       eps=1e-6).permute(0, 3, 1, 2)
    torch.testing.assert_close(y.float(), ref, rtol=2e-3, atol=4e-3)


@pytest.mark.parametrize("arch,kw", [("unet", {}), ("nafnet", SMALL_NAF)])
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_half_precision_forward(arch, kw, dtype):
    model = randomise_(build_backbone(arch, 8, 9, **kw)).eval()
    x = torch.rand(1, 8, 32, 32)
    with torch.no_grad():
        ref = model(x)
        try:
            out = model.to(dtype)(x.to(dtype))
        except RuntimeError as e:  # pragma: no cover - depends on the CPU kernels of the torch build
            pytest.skip(f"{dtype} convolution unavailable on this CPU build: {e}")
    assert out.dtype == dtype and torch.isfinite(out).all()
    rel = (out.float() - ref).abs().max() / ref.abs().max()
    assert rel < (2e-2 if dtype == torch.float16 else 6e-2)


def test_nafnet_exports():
    model = randomise_(NAFNet(12, 9, width=8, enc_blocks=(1,), middle_blocks=1, dec_blocks=(1,))).eval()
    x = torch.rand(1, 12, 16, 16)
    exported = torch.export.export(model, (x,))
    torch.testing.assert_close(exported.module()(x), model(x))


@pytest.mark.parametrize("cin,cout", CHANNELS)
@pytest.mark.parametrize("h,w", [(32, 48), (64, 16)])
def test_unet_macs_match_hook_count(cin, cout, h, w):
    assert unet_macs(h, w, cin, cout) == count_macs(UNet(cin, cout), (cin, h, w))


def test_unet_macs_reference_sizes():
    # 4 -> 9: 48.4 G per 512x512 patch, 559.8 G per 1424x2128 packed Sony frame.
    assert unet_macs(512, 512, 4, 9) == 48_427_433_984
    assert unet_macs(1424, 2128, 4, 9) == 559_800_328_192
    # SPEC's 48.7 G / 567 G correspond to 8 and 12 input channels respectively.
    assert round(unet_macs(512, 512, 8, 9) / 1e9, 1) == 48.7
    assert round(unet_macs(1424, 2128, 12, 9) / 1e9) == 567
    assert count_macs(UNet(4, 9), (1, 4, 1424, 2128)) == 559_800_328_192
    assert unet_macs(64, 64, 4, 9, widths=(8, 16, 32, 64, 128)) == count_macs(
        UNet(4, 9, widths=(8, 16, 32, 64, 128)), (4, 64, 64))
    with pytest.raises(ValueError, match="multiple of 16, got 100x64"):
        unet_macs(100, 64)


def test_count_macs_batch_and_depthwise():
    m = torch.nn.Conv2d(8, 8, 3, padding=1, groups=8)
    assert count_macs(m, (2, 8, 5, 7)) == 2 * 8 * 5 * 7 * 9
    assert count_macs(NAFNet(4, 9, **SMALL_NAF), (4, 16, 16)) > 0


@pytest.mark.parametrize("cin,wp,co", [(4, False, False), (8, True, False), (12, True, True)])
def test_config_from_channels_defaults(cin, wp, co):
    cfg = BackboneConfig.from_channels("unet", cin, 9)
    assert (cfg.with_photon, cfg.concat_origin, cfg.in_channels, cfg.adaptive_head) == (wp, co, cin, True)


def test_config_eight_channels_override_and_contradictions():
    cfg = BackboneConfig.from_channels("unet", 8, 4, concat_origin=True)
    assert (cfg.with_photon, cfg.concat_origin, cfg.adaptive_head) == (False, True, False)
    assert BackboneConfig.from_channels("unet", 8, 9, with_photon=False).concat_origin
    with pytest.raises(ValueError, match="8 input channels do not match with_photon=True, concat_origin=True"):
        BackboneConfig.from_channels("unet", 8, 9, with_photon=True, concat_origin=True)
    with pytest.raises(ValueError, match="4, 8 or 12 channels.*got 6"):
        BackboneConfig.from_channels("unet", 6, 9)
    with pytest.raises(ValueError, match="9 .*or 4 channels, got 5"):
        BackboneConfig(out_channels=5)
    with pytest.raises(ValueError, match="unknown backbone architecture 'resnet'"):
        BackboneConfig(arch="resnet")
    with pytest.raises(ValueError, match=r"unknown option\(s\) \['depth'\] for backbone 'unet'"):
        build_backbone("unet", 4, 9, depth=3)


def test_config_dict_round_trip_and_build():
    cfg = BackboneConfig.from_channels("naf2", 12, 9, width=8, enc_blocks=[1, 1], middle_blocks=1,
                                       dec_blocks=[1, 1])
    assert cfg.arch == "nafnet" and cfg.options["enc_blocks"] == (1, 1)
    d = cfg.to_dict()
    assert d["in_channels"] == 12 and d["adaptive_head"] is True
    assert BackboneConfig.from_dict(d) == cfg
    model = cfg.build()
    assert isinstance(model, NAFNet) and model.options() == cfg.options
    with pytest.raises(ValueError, match="says in_channels=8 but its other fields give 12"):
        BackboneConfig.from_dict({**d, "in_channels": 8})
    default = BackboneConfig()
    assert (default.arch, default.in_channels, default.out_channels) == ("unet", 8, 9)
    assert default.options == {"widths": (32, 64, 128, 256, 512)}
