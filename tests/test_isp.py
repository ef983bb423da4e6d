"""kernels.isp.render_srgb: the fused sRGB rendering against its reference and by hand.

Tolerances: float32 output within 2e-6 of the reference (same maths, different
summation order); uint8/uint16 outputs may differ by one code where the float value sits
on a rounding boundary.
"""
import pytest
import torch

from kernels.isp import render_srgb, render_srgb_reference
from tests.conftest import TRITON_DEVICE

PATTERNS = ["RGGB", "BGGR", "GRBG", "GBRG"]
CCM = torch.tensor([[1.6, -0.4, -0.2], [-0.2, 1.4, -0.2], [0.0, -0.5, 1.5]])
WB = [2.0, 1.0, 1.5]


def srgb(v: torch.Tensor) -> torch.Tensor:
    v = v.clamp(0, 1)
    return torch.where(v <= 0.0031308, 12.92 * v, 1.055 * v ** (1 / 2.4) - 0.055)


@pytest.mark.parametrize("pattern", PATTERNS)
@pytest.mark.parametrize("out_dtype", [torch.float32, torch.uint8, torch.uint16])
def test_triton_matches_reference(pattern, out_dtype):
    g = torch.Generator().manual_seed(1)
    x = torch.rand(2, 4, 5, 7, generator=g).to(TRITON_DEVICE)
    a = render_srgb(x, pattern, WB, CCM.to(TRITON_DEVICE), out_dtype=out_dtype, backend="triton")
    b = render_srgb_reference(x, pattern, WB, CCM.to(TRITON_DEVICE), out_dtype=out_dtype)
    assert a.shape == (2, 10, 14, 3) and a.dtype == out_dtype
    diff = (a.double() - b.double()).abs().max().item()
    assert diff <= (2e-6 if out_dtype == torch.float32 else 1)


@pytest.mark.parametrize("rows", [1, 2, 5])
@pytest.mark.parametrize("pattern", PATTERNS)
@pytest.mark.parametrize("out_dtype", [torch.float32, torch.uint8, torch.uint16])
def test_the_banded_cpu_form_equals_the_whole_frame_reference(monkeypatch, rows, pattern, out_dtype):
    # On the CPU the reference runs band by band (one packed row of context each side):
    # the demosaic's stencil sees the same neighbours, so the same picture (up to the last
    # float32 bit of a convolution); bands of 1, 2 and 5 packed rows of an 11-row frame.
    import kernels.isp as isp

    monkeypatch.setattr(isp, "CPU_BAND_PIXELS", rows * 13)
    g = torch.Generator().manual_seed(3)
    x = (torch.rand(2, 4, 11, 13, generator=g) * 1.3).transpose(2, 3).contiguous().transpose(2, 3)  # odd strides
    a = render_srgb(x, pattern, WB, CCM, out_dtype=out_dtype, backend="torch")
    b = render_srgb_reference(x, pattern, WB, CCM, out_dtype=out_dtype)
    assert a.shape == b.shape == (2, 22, 26, 3) and a.dtype == out_dtype and a.is_contiguous()
    diff = (a.double() - b.double()).abs()
    assert diff.max().item() <= (1.2e-7 if out_dtype == torch.float32 else 1)
    assert (diff == 0).double().mean().item() >= 0.99


def test_fp16_noncontiguous_single_frame_and_per_sample_parameters():
    g = torch.Generator().manual_seed(2)
    base = torch.rand(2, 4, 9, 6, generator=g).to(TRITON_DEVICE)
    x = base.transpose(2, 3).half()  # [2, 4, 6, 9], non-contiguous
    wb = torch.tensor([[2.0, 1.0, 1.5, 1.0], [1.2, 1.0, 2.5, 1.0]], device=TRITON_DEVICE)
    ccm = torch.stack([CCM, torch.eye(3)]).to(TRITON_DEVICE)
    a = render_srgb(x, "GRBG", wb, ccm, out_dtype=torch.float32, backend="triton")
    b = render_srgb_reference(x, "GRBG", wb, ccm, out_dtype=torch.float32)
    assert torch.allclose(a, b, atol=2e-6)
    single = render_srgb(x[1], "GRBG", wb[1], ccm[1], out_dtype=torch.float32, backend="triton")
    assert torch.allclose(single[0], a[1], atol=2e-6)


@pytest.mark.parametrize("backend", ["triton", "torch"])
@pytest.mark.parametrize("pattern", PATTERNS)
def test_flat_colour_renders_flat_everywhere_including_borders(backend, pattern):
    """Bilinear demosaic of a constant-per-colour mosaic is that constant at every pixel."""
    x = torch.empty(1, 4, 3, 4, device=TRITON_DEVICE)
    x[:, 0], x[:, 1], x[:, 2], x[:, 3] = 0.2, 0.5, 0.05, 0.5
    # torch.eye(3) on the host with device data, deliberately: host colour constants are copied
    out = render_srgb(x, pattern, [1.0, 1.0, 1.0], torch.eye(3), out_dtype=torch.float32, backend=backend)
    expected = srgb(torch.tensor([0.2, 0.5, 0.05]))
    assert torch.allclose(out.cpu(), expected.expand_as(out.cpu()), atol=1e-6)


@pytest.mark.parametrize("backend", ["triton", "torch"])
def test_single_red_site_spreads_bilinearly_at_its_true_position(backend):
    """BGGR: R sits at (1, 1) of each cell. A lone red sample of value 1 gives R = 1 at its
    own site, 1/2 at its horizontal/vertical neighbours and 1/4 at the diagonals."""
    x = torch.zeros(1, 4, 3, 3, device=TRITON_DEVICE)
    x[0, 0, 1, 1] = 1.0  # packed (1, 1) -> full-resolution site (3, 3) in BGGR
    out = render_srgb(x, "BGGR", [1.0, 1.0, 1.0], torch.eye(3), out_dtype=torch.float32, backend=backend).cpu()
    red = out[0, :, :, 0]
    assert red[3, 3] == pytest.approx(1.0)
    for y, xx, v in [(2, 3, 0.5), (4, 3, 0.5), (3, 2, 0.5), (3, 4, 0.5), (2, 2, 0.25), (4, 4, 0.25)]:
        assert red[y, xx].item() == pytest.approx(srgb(torch.tensor(v)).item(), abs=1e-6)
    assert red[0, 0].item() == 0.0 and red[5, 5].item() == 0.0
    assert out[0, :, :, 1].abs().max() == 0 and out[0, :, :, 2].abs().max() == 0


def test_empty_frame():
    # CCM on the host with device data, deliberately (copied to the data's device)
    out = render_srgb(torch.rand(1, 4, 0, 3, device=TRITON_DEVICE), "RGGB", WB, CCM, backend="triton")
    assert out.shape == (1, 0, 6, 3)


@pytest.mark.parametrize(
    "kwargs, exc, match",
    [
        (dict(packed=torch.rand(1, 3, 4, 4)), ValueError, r"packed must have 4 planes \(R, G1, B, G2\) on dim 1"),
        (dict(packed=torch.rand(4, 4)), ValueError, "packed must have 3 or 4 dimensions"),
        (dict(packed=torch.rand(1, 4, 4, 4).double()), TypeError, "packed must have dtype in"),
        (dict(pattern="RGBW"), ValueError, "unknown Bayer pattern 'RGBW'"),
        (dict(wb=[1.0, 2.0]), ValueError, r"wb must hold 3 \(R, G, B\) or 4"),
        (dict(wb=[1.0, 0.0, 1.0]), ValueError, "wb gains must be finite and > 0"),
        (dict(ccm=torch.eye(4)), ValueError, r"ccm must be a 3x3 camera -> sRGB matrix"),
        (dict(out_dtype=torch.int8), TypeError, "out_dtype must be one of"),
        (dict(ccm=torch.eye(3, device="meta")), ValueError, "all tensors must be on one device"),
    ],
)
def test_refusals(kwargs, exc, match):
    args = dict(packed=torch.rand(1, 4, 4, 4), pattern="RGGB", wb=WB, ccm=CCM, out_dtype=torch.uint8)
    args.update(kwargs)
    with pytest.raises(exc, match=match):
        render_srgb(args.pop("packed"), args.pop("pattern"), args.pop("wb"), args.pop("ccm"), **args)
