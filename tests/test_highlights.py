"""Clipped highlights render neutral (issue 15, item 10): white balance used to lift the
clipped red and blue sites above green (raw 1 x gain), so clouds came out magenta. The
rendering clips white-balanced sites at the lowest channel's saturation level, as dcraw /
LibRaw do, in the Triton kernel and its reference alike."""
import numpy as np
import pytest
import torch
from PIL import Image

from engine.camera import camera_to_srgb
from kernels.isp import render_srgb, render_srgb_reference
from tests.conftest import TRITON_DEVICE
from tests.dngfactory import DEFAULT_COLOR_MATRIX

PATTERNS = ["RGGB", "BGGR", "GRBG", "GBRG"]
AS_SHOT = [(2.0, 1.0, 1.6, 1.0), (2.7, 1.0, 1.3, 1.0), (1.2, 1.0, 3.1, 1.0), (1.9, 1.0, 1.5, 1.05)]
CCM = torch.as_tensor(camera_to_srgb(DEFAULT_COLOR_MATRIX), dtype=torch.float32)


@pytest.mark.parametrize("backend", ["triton", "torch"])
@pytest.mark.parametrize("pattern", PATTERNS)
@pytest.mark.parametrize("wb", AS_SHOT)
def test_saturated_flat_patch_renders_white(backend, pattern, wb):
    packed = torch.ones(1, 4, 6, 8, device=TRITON_DEVICE)
    out = render_srgb(packed, pattern, wb, CCM.to(TRITON_DEVICE), out_dtype=torch.uint8, backend=backend)
    assert (out == 255).all(), f"saturated patch rendered {out.reshape(-1, 3).unique(dim=0).tolist()}"


@pytest.mark.parametrize("pattern", PATTERNS)
def test_clipped_highlight_next_to_unclipped_pixels_is_neutral_and_kernel_matches_reference(pattern):
    """A saturated disc in a mid-grey scene: its inside is neutral, the kernel equals the
    reference everywhere (including the clipped edge), the grey around it is untouched."""
    wb = torch.tensor([[2.0, 1.0, 1.6, 1.0], [1.2, 1.0, 3.1, 1.0]], device=TRITON_DEVICE)
    neutral = 1.0 / wb[:, :4]  # camera response of grey after white balance = 1
    yy, xx = torch.meshgrid(torch.arange(12), torch.arange(16), indexing="ij")
    disc = ((yy - 6) ** 2 + (xx - 8) ** 2 < 16).to(TRITON_DEVICE)
    packed = (0.4 * neutral[:, :, None, None]).expand(2, 4, 12, 16).clone()
    packed[:, :, disc] = 1.0
    kw = dict(out_dtype=torch.float32)
    a = render_srgb(packed, pattern, wb, CCM.to(TRITON_DEVICE), backend="triton", **kw)
    b = render_srgb_reference(packed, pattern, wb, CCM.to(TRITON_DEVICE), **kw)
    assert torch.allclose(a, b, atol=2e-6)
    full = torch.nn.functional.interpolate(disc[None, None].float(), scale_factor=2)[0, 0].bool()
    inner = torch.nn.functional.max_pool2d((~full)[None, None].float(), 5, 1, 2)[0, 0] == 0  # 2 px inside
    outer = torch.nn.functional.max_pool2d(full[None, None].float(), 5, 1, 2)[0, 0] == 0  # 2 px outside
    assert torch.allclose(a[:, inner], torch.ones_like(a[:, inner]), atol=1e-6)  # white
    grey = a[:, outer]
    assert (grey.max(-1).values - grey.min(-1).values).max() < 1e-5  # neutral grey, not tinted
    assert torch.allclose(grey, torch.full_like(grey, float(grey[0, 0, 0])), atol=1e-5)


def test_enhanced_dng_with_clipped_sky_saves_a_white_sky(tmp_path):
    """End to end: a DNG whose top half is at the white level (as-shot gains 2, 1, 1.6) saved
    as PNG through the engine: the sky is white, not magenta."""
    from engine import BackboneConfig, Pipeline
    from tests.dngfactory import make_bayer_dng

    scene = np.full((48, 64, 3), 0.02)
    scene[:24] = 1.0  # clipped in every channel
    make_bayer_dng(tmp_path / "sky.dng", scene=scene, height=48, width=64)

    class Identity(torch.nn.Module):
        def forward(self, x):  # a plain 4-channel estimate: the state itself
            return x[:, :4]

    cfg = BackboneConfig(out_channels=4, with_photon=False)
    pipe = Pipeline(Identity(), cfg, device="cpu", precision="fp32")
    result = pipe(tmp_path / "sky.dng", ratio=1, steps=1, K=1.0, stochastic=False)
    assert result.frame.wb_gains == pytest.approx((2.0, 1.0, 1.6, 1.0))
    png = np.asarray(Image.open(result.save(tmp_path / "sky.png")))
    sky = png[4:20, 4:60].reshape(-1, 3)
    assert (sky == 255).all(), f"sky colours {np.unique(sky, axis=0)[:5].tolist()}"
