"""Normalisation and per-sample dihedral transform of packed DN batches, in one pass.

Training augments each clean packed patch ``[4, h, w]`` (R, G1, B, G2, DN) by one of the 8
symmetries of the square and normalises it: ``clip((D - black) * ratio / (white - black), 0,
1)``. Done with tensor ops this is about ten full passes over the float32 batch (convert,
subtract, scale, clip, then flip + select twice, plane swap + transpose + select); this op
reads each uint16 once and writes each float32 once.

Per sample ``b`` the flags ``(hflip, vflip, transpose)`` apply in that order: a horizontal
flip mirrors every plane left-right, a vertical flip top-bottom, a transpose transposes
every plane *and swaps planes 1 and 3* (the transposed scene's packing: the green that
shared R's column now shares its row; ``training.augment`` derives this). So output
``(c, i, j)`` reads input plane ``c'`` (c with 1 <-> 3 swapped under a transpose) at
``(p', q')`` where ``(p, q) = (j, i)`` under a transpose else ``(i, j)``,
``p' = h - 1 - p`` under a vertical flip and ``q' = w - 1 - q`` under a horizontal one.
The black level and scale of the *input* plane ``c'`` apply, with the same float32
arithmetic as ``kernels.pack_bayer`` and ``training.augment.normalise_packed``
(bit-identical results).
"""
from __future__ import annotations

import torch
import triton
import triton.language as tl

from ._common import ValueChecks, check_tensor, host_read_bool, per_sample, use_triton, value_checks_enabled

BLOCK_H = 16
BLOCK_W = 64
NUM_WARPS = 4
IN_DTYPES = (torch.uint16, torch.int32, torch.float32)
_TRANSPOSED_PLANE = (0, 3, 2, 1)


@triton.jit
def _normalise_dihedral_kernel(x_ptr, out_ptr, black_ptr, scale_ptr, flags_ptr, h, w,
                               s_xb, s_xc, s_xh, s_xw,
                               BLOCK_H: tl.constexpr, BLOCK_W: tl.constexpr):
    # One program: a BLOCK_H x BLOCK_W tile of output plane c of sample b.
    bc = tl.program_id(2)
    b = bc // 4
    c = bc % 4
    hflip = tl.load(flags_ptr + b * 3)
    vflip = tl.load(flags_ptr + b * 3 + 1)
    trans = tl.load(flags_ptr + b * 3 + 2)
    src_c = tl.where((trans != 0) & (c % 2 == 1), 4 - c, c)  # 1 <-> 3 under a transpose
    i = tl.program_id(1) * BLOCK_H + tl.arange(0, BLOCK_H)
    j = tl.program_id(0) * BLOCK_W + tl.arange(0, BLOCK_W)
    ii = i[:, None] + 0 * j[None, :]
    jj = j[None, :] + 0 * i[:, None]
    mask = (ii < h) & (jj < w)  # a transpose needs h == w, so the output is h x w too
    p = tl.where(trans != 0, jj, ii)
    q = tl.where(trans != 0, ii, jj)
    p = tl.where(vflip != 0, h - 1 - p, p)
    q = tl.where(hflip != 0, w - 1 - q, q)
    src = x_ptr + b.to(tl.int64) * s_xb + src_c.to(tl.int64) * s_xc + p.to(tl.int64) * s_xh + q.to(tl.int64) * s_xw
    # p < h and q < w always hold when h == w; a transpose of non-square input (refused on
    # the host unless value checks are off) reads nothing out of bounds
    d = tl.load(src, mask=mask & (p < h) & (q < w), other=0).to(tl.float32)
    black = tl.load(black_ptr + b * 4 + src_c)
    scale = tl.load(scale_ptr + b * 4 + src_c)
    v = tl.minimum(tl.maximum((d - black) * scale, 0.0), 1.0)
    dst = out_ptr + bc.to(tl.int64) * h * w + ii.to(tl.int64) * w + jj
    tl.store(dst, v, mask=mask)


def _prepare(raw, black, white, flags, ratio):
    check_tensor("raw", raw, dtypes=IN_DTYPES, ndims=(4,))
    if raw.shape[1] != 4:
        raise ValueError(f"raw must be a packed batch [B, 4, h, w] (R, G1, B, G2), got shape {tuple(raw.shape)}")
    check_tensor("flags", flags, dtypes=(torch.bool,), ndims=(2,))
    B, _, h, w = raw.shape
    if flags.shape != (B, 3):
        raise ValueError(f"flags must be bool [B, 3] (hflip, vflip, transpose) with B = {B}, got {tuple(flags.shape)}")
    check_tensor("black", black, dtypes=(torch.float32,), ndims=(2,))
    if black.shape != (B, 4):
        raise ValueError(f"black must be float32 [B, 4] (DN per plane) with B = {B}, got {tuple(black.shape)}")
    for name, t in (("black", black), ("flags", flags)):
        if t.device != raw.device:
            raise ValueError(f"{name} is on {t.device} but the data is on {raw.device}")
    checks = ValueChecks()
    white_t = per_sample("white", white, B, raw.device, checks=checks)
    ratio_t = per_sample("ratio", ratio, B, raw.device, positive=True, checks=checks)
    checks.require(lambda: black < white_t[:, None], lambda: f"black must be < white, got {black.tolist()}, {white_t.tolist()}")
    checks.run()
    if h != w and B and value_checks_enabled() and host_read_bool(flags[:, 2].any()):  # non-square input only
        raise ValueError(f"a transpose needs square patches, got {h}x{w}")
    scale = (ratio_t[:, None] / (white_t[:, None] - black)).contiguous()  # as kernels.pack_bayer
    return black.contiguous(), scale


def normalise_dihedral_reference(raw, black, white, flags, *, ratio=1.0) -> torch.Tensor:
    """Plain PyTorch, one sample at a time: normalise, flip, flip, transpose + plane swap."""
    return _reference(raw, *_prepare(raw, black, white, flags, ratio), flags)


def _reference(raw, black, scale, flags) -> torch.Tensor:
    out = []
    for b in range(raw.shape[0]):
        x = raw[b].to(torch.float32).sub(black[b, :, None, None]).mul(scale[b, :, None, None]).clamp(0.0, 1.0)
        hflip, vflip, trans = flags[b].tolist()
        if hflip:
            x = x.flip(-1)
        if vflip:
            x = x.flip(-2)
        if trans:
            x = x[list(_TRANSPOSED_PLANE)].transpose(-1, -2)
        out.append(x)
    return torch.stack(out).contiguous() if out else torch.empty(raw.shape, dtype=torch.float32, device=raw.device)


def normalise_dihedral(raw: torch.Tensor, black: torch.Tensor, white, flags: torch.Tensor, *, ratio=1.0,
                       backend: str = "auto") -> torch.Tensor:
    """Normalise packed DN and apply per-sample flips / transpose, in one pass.

    Args:
        raw: ``[B, 4, h, w]`` uint16 (or int32 / float32) DN, planes R, G1, B, G2; any strides.
        black: float32 ``[B, 4]`` black level per input plane (DN), on raw's device.
        white: white level (DN): a number or float32 ``[B]``; ratio: amplification (> 0),
            a number or ``[B]``.
        flags: bool ``[B, 3]`` (horizontal flip, vertical flip, transpose) on raw's device;
            a transpose needs ``h == w`` (checked by a host read for non-square input only,
            and not inside ``value_checks_disabled()``, where such a sample is undefined).
        backend: "auto" (Triton on CUDA, the reference on CPU), "triton" or "torch".

    Returns:
        float32 ``[B, 4, h, w]`` contiguous, in [0, 1].
    """
    black_c, scale = _prepare(raw, black, white, flags, ratio)
    if not use_triton(raw.device, backend):
        return _reference(raw, black_c, scale, flags)
    B, _, h, w = raw.shape
    out = torch.empty((B, 4, h, w), dtype=torch.float32, device=raw.device)
    if out.numel() == 0:
        return out
    flags_i = flags.to(torch.int32).contiguous()
    grid = (triton.cdiv(w, BLOCK_W), triton.cdiv(h, BLOCK_H), B * 4)
    _normalise_dihedral_kernel[grid](raw, out, black_c, scale, flags_i, h, w, *raw.stride(),
                                     BLOCK_H=BLOCK_H, BLOCK_W=BLOCK_W, num_warps=NUM_WARPS)
    return out


def aot_specs():
    from .aot import AotSpec

    specs = []
    for in_ty in ("u16", "i32", "fp32"):
        sig = {"x_ptr": f"*{in_ty}", "out_ptr": "*fp32", "black_ptr": "*fp32", "scale_ptr": "*fp32",
               "flags_ptr": "*i32", "h": "i32", "w": "i32", "s_xb": "i32", "s_xc": "i32", "s_xh": "i32",
               "s_xw": "i32", "BLOCK_H": "constexpr", "BLOCK_W": "constexpr"}
        specs.append(AotSpec(f"normalise_dihedral[{in_ty}]", _normalise_dihedral_kernel, sig,
                             {"BLOCK_H": BLOCK_H, "BLOCK_W": BLOCK_W}, NUM_WARPS))
    return specs
