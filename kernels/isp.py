"""Fused raw -> sRGB rendering: white balance, bilinear demosaic, colour matrix, gamma.

Input is the packed linear raw ``[B, 4, h, w]`` (R, G1, B, G2, normalised); output is an
interleaved image ``[B, 2h, 2w, 3]`` on the sensor's full-resolution grid, laid out for
image writers. The demosaic is bilinear with the sites of the sensor's true pattern (so
BGGR/GRBG/GBRG render without a half-pixel colour shift):

- R and B at a pixel: weights ``[[1,2,1],[2,4,2],[1,2,1]]`` over the 3x3 neighbourhood,
  restricted to sites of that colour;
- G: weights ``[[0,1,0],[1,4,1],[0,1,0]]`` over green sites;
- each sum divided by the weights of the in-frame sites used, so borders need no padding.
Then ``rgb = clip(ccm @ demosaic(min(wb * raw, min(wb))), 0, 1)`` with the camera -> sRGB
matrix ``ccm`` and the sRGB transfer curve, quantised to uint8 / uint16 or kept float32.

Highlights (``min(wb * raw, min(wb))``, dcraw's / LibRaw's default "clip" highlight mode):
a site at the white level (raw 1) reaches ``wb_c`` after white balance, so a clipped
highlight would come out as ``(wb_R, 1, wb_B)``, magenta with the usual gains > 1 for red
and blue. Clipping every white-balanced site at the lowest channel's saturation level,
``min(wb)``, before the demosaic turns a clipped highlight into ``(m, m, m)``: neutral after
the colour matrix (its rows sum to 1), white when the smallest gain is 1 (green, as
normalised gains have it). Values below that level are untouched.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
import triton
import triton.language as tl

from ._common import ValueChecks, check_same_device, check_tensor, to_device, use_triton
from .bayer import parse_pattern

OUT_DTYPES = (torch.uint8, torch.uint16, torch.float32)
BLOCK_Y = 8
BLOCK_X = 64
NUM_WARPS = 4


@triton.jit
def _srgb_gamma(v):
    v = tl.minimum(tl.maximum(v, 0.0), 1.0)
    curved = 1.055 * tl.exp(tl.log(tl.maximum(v, 1e-12)) * (1.0 / 2.4)) - 0.055
    return tl.where(v <= 0.0031308, 12.92 * v, curved)


@triton.jit
def _render_kernel(x_ptr, out_ptr, wb_ptr, ccm_ptr, h, w, r_row, r_col,
                   s_b, s_c, s_h, s_w, o_b, o_y, o_x,
                   OUT_KIND: tl.constexpr, BLOCK_Y: tl.constexpr, BLOCK_X: tl.constexpr):
    """One program: a BLOCK_Y x BLOCK_X tile of full-resolution pixels of sample b.

    OUT_KIND: 0 float32 in [0, 1], 1 uint8, 2 uint16.
    """
    b = tl.program_id(2)
    ys = tl.program_id(0) * BLOCK_Y + tl.arange(0, BLOCK_Y)[:, None]
    xs = tl.program_id(1) * BLOCK_X + tl.arange(0, BLOCK_X)[None, :]
    H = 2 * h
    W = 2 * w
    inside = (ys < H) & (xs < W)
    base = x_ptr + b.to(tl.int64) * s_b
    wb_r = tl.load(wb_ptr + b * 4 + 0)
    wb_g1 = tl.load(wb_ptr + b * 4 + 1)
    wb_b = tl.load(wb_ptr + b * 4 + 2)
    wb_g2 = tl.load(wb_ptr + b * 4 + 3)
    # Highlight clip: every white-balanced site at most the lowest channel's saturation level.
    clip = tl.minimum(tl.minimum(wb_r, wb_g1), tl.minimum(wb_b, wb_g2))
    zero = tl.zeros([BLOCK_Y, BLOCK_X], tl.float32)
    sum_r, wsum_r, sum_g, wsum_g, sum_b, wsum_b = zero, zero, zero, zero, zero, zero
    for dy in tl.static_range(-1, 2):
        for dx in tl.static_range(-1, 2):
            yn = ys + dy
            xn = xs + dx
            ok = inside & (yn >= 0) & (yn < H) & (xn >= 0) & (xn < W)
            py = yn & 1  # site parity decides the colour (yn >= 0 where ok)
            px = xn & 1
            is_r = (py == r_row) & (px == r_col)
            is_b = (py != r_row) & (px != r_col)
            is_g1 = (py == r_row) & (px != r_col)
            plane = tl.where(is_r, 0, tl.where(is_g1, 1, tl.where(is_b, 2, 3)))
            ptr = base + plane * s_c + (yn >> 1) * s_h + (xn >> 1) * s_w
            v = tl.load(ptr, mask=ok, other=0.0).to(tl.float32)
            gain = tl.where(is_r, wb_r, tl.where(is_g1, wb_g1, tl.where(is_b, wb_b, wb_g2)))
            v = tl.minimum(v * gain, clip)
            w_rb = ((2 - dy * dy) * (2 - dx * dx)) * 1.0  # 4 centre, 2 edge, 1 corner
            w_g = 4.0 if dy == 0 and dx == 0 else (1.0 if dy * dy + dx * dx == 1 else 0.0)
            okf = ok.to(tl.float32)
            is_rf = is_r.to(tl.float32) * okf
            is_bf = is_b.to(tl.float32) * okf
            is_gf = (1.0 - is_r.to(tl.float32) - is_b.to(tl.float32)) * okf
            sum_r += v * is_rf * w_rb
            wsum_r += is_rf * w_rb
            sum_b += v * is_bf * w_rb
            wsum_b += is_bf * w_rb
            if w_g != 0.0:
                sum_g += v * is_gf * w_g
                wsum_g += is_gf * w_g
    cr = sum_r / tl.maximum(wsum_r, 1e-6)
    cg = sum_g / tl.maximum(wsum_g, 1e-6)
    cb = sum_b / tl.maximum(wsum_b, 1e-6)
    optr = out_ptr + b.to(tl.int64) * o_b + ys * o_y + xs * 3
    for ch in tl.static_range(3):
        m0 = tl.load(ccm_ptr + b * 9 + ch * 3 + 0)
        m1 = tl.load(ccm_ptr + b * 9 + ch * 3 + 1)
        m2 = tl.load(ccm_ptr + b * 9 + ch * 3 + 2)
        v = _srgb_gamma(m0 * cr + m1 * cg + m2 * cb)
        if OUT_KIND == 1:
            tl.store(optr + ch, (v * 255.0 + 0.5).to(tl.uint8), mask=inside)
        elif OUT_KIND == 2:
            tl.store(optr + ch, (v * 65535.0 + 0.5).to(tl.int32).to(tl.uint16), mask=inside)
        else:
            tl.store(optr + ch, v, mask=inside)


def _colour_constant(name: str, value, device: torch.device) -> torch.Tensor:
    """wb / ccm as a tensor: numbers and sequences are made on the data's device; tensors
    are kept as given (``_prepare`` copies host tensors to the data's device)."""
    if isinstance(value, torch.Tensor):
        return value.detach()
    try:
        return torch.as_tensor(value, dtype=torch.float32, device=device)
    except (TypeError, ValueError, RuntimeError):
        raise TypeError(f"{name} must be a tensor or a sequence of numbers, got {type(value).__name__}") from None


def _prepare(packed, pattern, wb, ccm, out_dtype):
    check_tensor("packed", packed, dtypes=(torch.float32, torch.float16), ndims=(3, 4))
    if packed.dim() == 3:
        packed = packed.unsqueeze(0)
    if packed.shape[1] != 4:
        raise ValueError(f"packed must have 4 planes (R, G1, B, G2) on dim 1, got shape {tuple(packed.shape)}")
    if out_dtype not in OUT_DTYPES:
        raise TypeError(f"out_dtype must be one of {OUT_DTYPES}, got {out_dtype}")
    B = packed.shape[0]
    r_row, r_col, _ = parse_pattern(pattern)
    wb = _colour_constant("wb", wb, packed.device)
    ccm = _colour_constant("ccm", ccm, packed.device)
    # shapes before devices: a bad input gets the same message on every device
    if wb.shape[-1:] == (3,):  # R, G, B gains: G1 and G2 share G
        wb = wb[..., [0, 1, 2, 1]]
    if wb.shape not in ((4,), (B, 4)):
        raise ValueError(f"wb must hold 3 (R, G, B) or 4 (R, G1, B, G2) gains, or [B, 4]; got shape {tuple(wb.shape)}")
    if ccm.shape not in ((3, 3), (B, 3, 3)):
        raise ValueError(f"ccm must be a 3x3 camera -> sRGB matrix or [B, 3, 3], got shape {tuple(ccm.shape)}")
    if packed.device.type != "cpu":  # host constants follow the data (asynchronous pinned copies)
        wb = to_device(wb, packed.device, non_blocking=True) if wb.device.type == "cpu" else wb
        ccm = to_device(ccm, packed.device, non_blocking=True) if ccm.device.type == "cpu" else ccm
    check_same_device(packed=packed, wb=wb, ccm=ccm)
    wb = wb.to(torch.float32).expand(B, 4).contiguous()
    ccm = ccm.to(torch.float32).expand(B, 3, 3).contiguous()
    checks = ValueChecks()
    checks.require(lambda: torch.isfinite(wb) & (wb > 0), lambda: f"wb gains must be finite and > 0, got {wb.tolist()}")
    checks.require(lambda: torch.isfinite(ccm), lambda: f"ccm must be finite, got {ccm.tolist()}")
    checks.run()  # one host read (none inside value_checks_disabled)
    return packed, r_row, r_col, wb, ccm


def _quantise(v: torch.Tensor, out_dtype: torch.dtype) -> torch.Tensor:
    if out_dtype == torch.uint8:
        return (v * 255.0 + 0.5).to(torch.uint8)
    if out_dtype == torch.uint16:
        return (v * 65535.0 + 0.5).to(torch.int32).to(torch.uint16)
    return v


def render_srgb_reference(packed, pattern, wb, ccm, *, out_dtype=torch.uint8) -> torch.Tensor:
    """Plain-PyTorch reference of :func:`render_srgb` (same maths, convolution form)."""
    return _reference(*_prepare(packed, pattern, wb, ccm, out_dtype), out_dtype)


def _reference(packed, r_row, r_col, wb, ccm, out_dtype) -> torch.Tensor:
    B, _, h, w = packed.shape
    # White balance, then the highlight clip at the lowest channel's saturation level (module docstring).
    x = torch.minimum(packed.to(torch.float32) * wb[:, :, None, None], wb.min(dim=1).values[:, None, None, None])
    # Scatter the planes back onto the mosaic; one mask per colour.
    site = {0: (r_row, r_col), 1: (r_row, 1 - r_col), 2: (1 - r_row, 1 - r_col), 3: (1 - r_row, r_col)}
    mosaic = x.new_zeros(B, 1, 2 * h, 2 * w)
    masks = x.new_zeros(3, 1, 2 * h, 2 * w)  # R, G, B
    for plane, (dy, dx) in site.items():
        mosaic[:, 0, dy::2, dx::2] = x[:, plane]
        masks[{0: 0, 1: 1, 2: 2, 3: 1}[plane], 0, dy::2, dx::2] = 1.0
    k_rb = torch.tensor([[1.0, 2.0, 1.0], [2.0, 4.0, 2.0], [1.0, 2.0, 1.0]], device=x.device)
    k_g = torch.tensor([[0.0, 1.0, 0.0], [1.0, 4.0, 1.0], [0.0, 1.0, 0.0]], device=x.device)
    kernels = torch.stack([k_rb, k_g, k_rb])[:, None]  # [3, 1, 3, 3]: one filter per colour
    # One depthwise convolution for all three colours, channels_last: about 10x faster on
    # oneDNN CPUs than three single-channel convolutions.
    cl = torch.channels_last
    num = F.conv2d((mosaic * masks[None, :, 0]).contiguous(memory_format=cl), kernels, padding=1, groups=3)
    den = F.conv2d(masks[None, :, 0].contiguous(memory_format=cl), kernels, padding=1, groups=3)
    rgb = (num / den.clamp_min(1e-6)).contiguous()  # [B, 3, 2h, 2w]
    rgb = torch.einsum("bij,bjyx->byxi", ccm, rgb).clamp(0, 1)
    srgb = torch.where(rgb <= 0.0031308, 12.92 * rgb, 1.055 * rgb.clamp_min(1e-12) ** (1 / 2.4) - 0.055)
    return _quantise(srgb, out_dtype).contiguous()


# Packed pixels per band of the CPU form (``_reference_banded``): ~3 MB temporaries, where the
# whole frame's reference at 12 MP holds ~1 GB of them.
CPU_BAND_PIXELS = 1 << 16


def _reference_banded(packed, r_row, r_col, wb, ccm, out_dtype) -> torch.Tensor:
    """The reference, band of packed rows by band of rows, each with one packed row of
    context above and below (the demosaic's 3x3 stencil reaches one full-resolution row,
    i.e. one packed row, past a band): the same values as the whole frame's reference,
    with temporaries the size of a band."""
    B, _, h, w = packed.shape
    out = torch.empty(B, 2 * h, 2 * w, 3, dtype=out_dtype)
    rows = max(1, CPU_BAND_PIXELS // max(w, 1))
    for r0 in range(0, h, rows):
        r1 = min(r0 + rows, h)
        lo, hi = max(r0 - 1, 0), min(r1 + 1, h)
        band = _reference(packed[:, :, lo:hi], r_row, r_col, wb, ccm, out_dtype)
        out[:, 2 * r0:2 * r1] = band[:, 2 * (r0 - lo):2 * (r1 - lo)]
    return out


def render_srgb(packed, pattern, wb, ccm, *, out_dtype=torch.uint8, backend: str = "auto") -> torch.Tensor:
    """Render packed linear raw to sRGB in one fused pass.

    Args:
        packed: ``[B, 4, h, w]`` or ``[4, h, w]`` float32/float16, R, G1, B, G2 planes,
            normalised linear raw (1 = white level); any strides.
        pattern: the sensor's Bayer pattern ("RGGB", ... or a rawpy raw_pattern), which
            places the planes back on the full-resolution grid.
        wb: white-balance gains, 3 (R, G, B) or 4 (R, G1, B, G2) values, or ``[B, 4]``
            (e.g. the camera's as-shot gains normalised to green = 1). White-balanced values
            are clipped at ``min(wb)`` (highlights render neutral, see the module docstring).
        ccm: camera RGB -> linear sRGB 3x3 matrix (rows sum to 1 for a neutral white),
            or ``[B, 3, 3]``.
            wb and ccm may be numbers / sequences or tensors on the host: host tensors
            are copied to packed's device (a CPU 3x3 matrix with CUDA data is the usual
            call); a tensor on another GPU is refused.
        out_dtype: uint8 (0..255), uint16 (0..65535) or float32 (0..1), sRGB-encoded.
        backend: "auto", "triton" or "torch".

    Returns:
        ``[B, 2h, 2w, 3]`` tensor of out_dtype on packed's device.
    """
    packed, r_row, r_col, wb, ccm = _prepare(packed, pattern, wb, ccm, out_dtype)
    if not use_triton(packed.device, backend):
        if packed.device.type == "cpu":
            return _reference_banded(packed, r_row, r_col, wb, ccm, out_dtype)
        return _reference(packed, r_row, r_col, wb, ccm, out_dtype)
    B, _, h, w = packed.shape
    out = torch.empty(B, 2 * h, 2 * w, 3, dtype=out_dtype, device=packed.device)
    if out.numel() == 0:
        return out
    kind = {torch.float32: 0, torch.uint8: 1, torch.uint16: 2}[out_dtype]
    grid = (triton.cdiv(2 * h, BLOCK_Y), triton.cdiv(2 * w, BLOCK_X), B)
    _render_kernel[grid](packed, out, wb, ccm, h, w, r_row, r_col, *packed.stride(), out.stride(0), out.stride(1), out.stride(2),
                         OUT_KIND=kind, BLOCK_Y=BLOCK_Y, BLOCK_X=BLOCK_X, num_warps=NUM_WARPS)
    return out


def aot_specs():
    from .aot import AotSpec

    specs = []
    for in_t in ("fp32", "fp16"):
        for kind, out_t in ((0, "fp32"), (1, "u8"), (2, "u16")):
            sig = {"x_ptr": f"*{in_t}", "out_ptr": f"*{out_t}", "wb_ptr": "*fp32", "ccm_ptr": "*fp32", "h": "i32", "w": "i32",
                   "r_row": "i32", "r_col": "i32", "s_b": "i64", "s_c": "i32", "s_h": "i32", "s_w": "i32",
                   "o_b": "i64", "o_y": "i32", "o_x": "i32", "OUT_KIND": "constexpr", "BLOCK_Y": "constexpr", "BLOCK_X": "constexpr"}
            specs.append(AotSpec(f"render_srgb[{in_t}->{out_t}]", _render_kernel, sig,
                                 {"OUT_KIND": kind, "BLOCK_Y": BLOCK_Y, "BLOCK_X": BLOCK_X}, NUM_WARPS))
    return specs
