"""Bayer packing: CFA mosaic (DN) <-> 4 half-resolution planes R, G1, B, G2 (SPEC §1).

``pack_bayer`` also writes the first network input directly (SPEC §4): the state
``A_T`` (4 ch), optionally its photon channel ``A_T / (ratio * K)`` (4 ch, rho_0 = 1) and
the origin ``A_T`` again (4 ch). ``unpack_bayer`` is the exact inverse, back to the
sensor's own mosaic.

Conventions:
- Pattern: "RGGB", "BGGR", "GRBG", "GBRG" (any case) or a rawpy ``raw_pattern`` 2x2
  array of colour codes (0 = R, 2 = B, 1 and 3 = the greens). G1 is *by geometry* the
  green on red's row, whichever code it carries. A string pattern is read as the
  rawpy array whose green on R's row is 1 and green on B's row is 3 (RGGB = [[0,1],[3,2]]).
- ``black_level`` with 4 values is indexed by **colour code** 0..3, exactly rawpy's
  ``black_level_per_channel``; for a string pattern that is the order [R, G1, B, G2].
  With a rawpy pattern using code 1 for both greens, both greens take black_level[1].
- Maths in float32: ``x = clip((D - black) * (ratio / (white - black)), 0, 1)``; the
  per-sample, per-plane factors are formed on the host side (in torch, float32) so the
  kernel and the reference do bit-identical arithmetic.
"""
from __future__ import annotations

import torch
import triton
import triton.language as tl

from ._common import ValueChecks, check_tensor, per_sample, use_triton

CFA_DTYPES = (torch.uint16, torch.int32, torch.float32, torch.float16)
PACKED_DTYPES = (torch.float32, torch.float16)
PLANES = ("R", "G1", "B", "G2")
# Strings as rawpy raw_pattern arrays (green on R's row = 1, green on B's row = 3).
PATTERNS = {
    "RGGB": ((0, 1), (3, 2)),
    "BGGR": ((2, 3), (1, 0)),
    "GRBG": ((1, 0), (2, 3)),
    "GBRG": ((3, 2), (0, 1)),
}
# Tile of packed pixels per program; 128 threads read 2 CFA rows of 2*BLOCK_W DN each.
BLOCK_H = 8
BLOCK_W = 64
NUM_WARPS = 4
MAX_BATCH = 65535  # grid axis 2 limit on CUDA


@triton.jit
def _pack_kernel(cfa_ptr, out_ptr, black_ptr, scale_ptr, photon_ptr, h, w, r_row, r_col,
                 s_cb, s_ch, s_cw, s_ob, s_oc, s_oh, s_ow,
                 UNIT_STRIDE: tl.constexpr, WITH_PHOTON: tl.constexpr, CONCAT_ORIGIN: tl.constexpr,
                 BLOCK_H: tl.constexpr, BLOCK_W: tl.constexpr):
    pid_w = tl.program_id(0)
    pid_h = tl.program_id(1)
    b = tl.program_id(2).to(tl.int64)
    i = (pid_h * BLOCK_H + tl.arange(0, BLOCK_H)).to(tl.int64)  # packed rows
    j = (pid_w * BLOCK_W + tl.arange(0, BLOCK_W)).to(tl.int64)  # packed columns
    # Each tile row reads one contiguous run of 2*BLOCK_W DN per CFA row (coalesced,
    # vectorised when the row is contiguous), then splits it into even/odd columns.
    c = pid_w.to(tl.int64) * (2 * BLOCK_W) + tl.arange(0, 2 * BLOCK_W)
    if UNIT_STRIDE:  # constexpr: lets the compiler prove contiguity -> 16-byte loads/stores
        col = c
    else:
        col = c * s_cw
    cmask = (i[:, None] < h) & (c[None, :] < 2 * w)
    base = cfa_ptr + b * s_cb
    # Row of R and G1 (row_a), row of G2 and B (row_b): SPEC §1, planes 0,1 share a row.
    row_a = (2 * i + r_row) * s_ch
    row_b = (2 * i + 1 - r_row) * s_ch
    va = tl.load(base + row_a[:, None] + col[None, :], mask=cmask, other=0).to(tl.float32)
    vb = tl.load(base + row_b[:, None] + col[None, :], mask=cmask, other=0).to(tl.float32)
    even_a, odd_a = tl.split(tl.reshape(va, (BLOCK_H, BLOCK_W, 2)))
    even_b, odd_b = tl.split(tl.reshape(vb, (BLOCK_H, BLOCK_W, 2)))
    # R sits in column r_col of its row, B diagonally opposite (scalar-predicate selects).
    r = tl.where(r_col == 0, even_a, odd_a)
    g1 = tl.where(r_col == 0, odd_a, even_a)
    g2 = tl.where(r_col == 0, even_b, odd_b)
    bl = tl.where(r_col == 0, odd_b, even_b)

    x0 = tl.minimum(tl.maximum((r - tl.load(black_ptr + b * 4 + 0)) * tl.load(scale_ptr + b * 4 + 0), 0.0), 1.0)
    x1 = tl.minimum(tl.maximum((g1 - tl.load(black_ptr + b * 4 + 1)) * tl.load(scale_ptr + b * 4 + 1), 0.0), 1.0)
    x2 = tl.minimum(tl.maximum((bl - tl.load(black_ptr + b * 4 + 2)) * tl.load(scale_ptr + b * 4 + 2), 0.0), 1.0)
    x3 = tl.minimum(tl.maximum((g2 - tl.load(black_ptr + b * 4 + 3)) * tl.load(scale_ptr + b * 4 + 3), 0.0), 1.0)

    if UNIT_STRIDE:
        off = i[:, None] * s_oh + j[None, :]
    else:
        off = i[:, None] * s_oh + j[None, :] * s_ow
    out = out_ptr + b * s_ob + off
    omask = (i[:, None] < h) & (j[None, :] < w)
    _store4(out, s_oc, x0, x1, x2, x3, omask)
    if WITH_PHOTON:
        p = tl.load(photon_ptr + b)  # 1 / (ratio * K)
        _store4(out + 4 * s_oc, s_oc, x0 * p, x1 * p, x2 * p, x3 * p, omask)
    if CONCAT_ORIGIN:
        origin = out + (8 if WITH_PHOTON else 4) * s_oc
        _store4(origin, s_oc, x0, x1, x2, x3, omask)


@triton.jit
def _store4(ptr, s_c, x0, x1, x2, x3, mask):
    ty = ptr.dtype.element_ty
    tl.store(ptr, x0.to(ty), mask=mask)
    tl.store(ptr + s_c, x1.to(ty), mask=mask)
    tl.store(ptr + 2 * s_c, x2.to(ty), mask=mask)
    tl.store(ptr + 3 * s_c, x3.to(ty), mask=mask)


@triton.jit
def _unpack_kernel(x_ptr, out_ptr, scale_ptr, offset_ptr, h, w, r_row, r_col,
                   s_xb, s_xc, s_xh, s_xw, s_ob, s_oh, s_ow,
                   UNIT_STRIDE: tl.constexpr, OUT_INT: tl.constexpr,
                   BLOCK_H: tl.constexpr, BLOCK_W: tl.constexpr):
    pid_w = tl.program_id(0)
    pid_h = tl.program_id(1)
    b = tl.program_id(2).to(tl.int64)
    i = (pid_h * BLOCK_H + tl.arange(0, BLOCK_H)).to(tl.int64)
    j = (pid_w * BLOCK_W + tl.arange(0, BLOCK_W)).to(tl.int64)
    if UNIT_STRIDE:
        off = i[:, None] * s_xh + j[None, :]
    else:
        off = i[:, None] * s_xh + j[None, :] * s_xw
    src = x_ptr + b * s_xb + off
    m = (i[:, None] < h) & (j[None, :] < w)
    # v = x * scale + offset: DN = x / ratio * (white - black) + black, or x / ratio.
    v0 = tl.load(src, mask=m, other=0.0).to(tl.float32) * tl.load(scale_ptr + b * 4 + 0) + tl.load(offset_ptr + b * 4 + 0)
    v1 = tl.load(src + s_xc, mask=m, other=0.0).to(tl.float32) * tl.load(scale_ptr + b * 4 + 1) + tl.load(offset_ptr + b * 4 + 1)
    v2 = tl.load(src + 2 * s_xc, mask=m, other=0.0).to(tl.float32) * tl.load(scale_ptr + b * 4 + 2) + tl.load(offset_ptr + b * 4 + 2)
    v3 = tl.load(src + 3 * s_xc, mask=m, other=0.0).to(tl.float32) * tl.load(scale_ptr + b * 4 + 3) + tl.load(offset_ptr + b * 4 + 3)
    if OUT_INT:  # round half up, clamp to the uint16 range
        v0 = tl.minimum(tl.maximum(tl.floor(v0 + 0.5), 0.0), 65535.0)
        v1 = tl.minimum(tl.maximum(tl.floor(v1 + 0.5), 0.0), 65535.0)
        v2 = tl.minimum(tl.maximum(tl.floor(v2 + 0.5), 0.0), 65535.0)
        v3 = tl.minimum(tl.maximum(tl.floor(v3 + 0.5), 0.0), 65535.0)
    # Interleave back into two contiguous mosaic rows of 2*BLOCK_W values each.
    # R in column r_col of its row, G1 beside it; G2 below R, B diagonal to R.
    even_a = tl.where(r_col == 0, v0, v1)
    odd_a = tl.where(r_col == 0, v1, v0)
    even_b = tl.where(r_col == 0, v3, v2)
    odd_b = tl.where(r_col == 0, v2, v3)
    row_a = tl.reshape(tl.join(even_a, odd_a), (BLOCK_H, 2 * BLOCK_W))
    row_b = tl.reshape(tl.join(even_b, odd_b), (BLOCK_H, 2 * BLOCK_W))
    c = pid_w.to(tl.int64) * (2 * BLOCK_W) + tl.arange(0, 2 * BLOCK_W)
    if UNIT_STRIDE:
        col = c
    else:
        col = c * s_ow
    cmask = (i[:, None] < h) & (c[None, :] < 2 * w)
    dst = out_ptr + b * s_ob + col[None, :]
    ty = out_ptr.dtype.element_ty
    if OUT_INT:  # via int32: float -> uint16 conversion is not native everywhere
        row_a = row_a.to(tl.int32)
        row_b = row_b.to(tl.int32)
    tl.store(dst + ((2 * i + r_row) * s_oh)[:, None], row_a.to(ty), mask=cmask)
    tl.store(dst + ((2 * i + 1 - r_row) * s_oh)[:, None], row_b.to(ty), mask=cmask)


# ----------------------------------------------------------------------------- host side


def parse_pattern(pattern) -> tuple[int, int, tuple[int, int, int, int]]:
    """Bayer pattern -> (row of R, column of R, colour codes of the planes R, G1, B, G2).

    The colour codes index ``black_level`` (rawpy's ``black_level_per_channel`` order).
    """
    if isinstance(pattern, str):
        key = pattern.upper()
        if key not in PATTERNS:
            raise ValueError(f"unknown Bayer pattern {pattern!r}; expected one of {tuple(PATTERNS)} or a rawpy 2x2 raw_pattern")
        grid = PATTERNS[key]
    else:
        try:
            grid = pattern.tolist() if hasattr(pattern, "tolist") else [list(row) for row in pattern]
            grid = [[int(v) for v in row] for row in grid]
        except (TypeError, ValueError):
            raise ValueError(f"pattern must be a string or a 2x2 rawpy raw_pattern, got {pattern!r}") from None
        shape = (len(grid), len(grid[0]) if grid else 0)
        if shape != (2, 2) or any(len(row) != 2 for row in grid):
            raise ValueError(
                f"pattern must be a 2x2 Bayer raw_pattern, got shape {shape}"
                + (" (X-Trans 6x6 sensors are not supported)" if shape == (6, 6) else "")
            )
    flat = [grid[0][0], grid[0][1], grid[1][0], grid[1][1]]
    if flat.count(0) != 1 or flat.count(2) != 1 or any(v not in (0, 1, 2, 3) for v in flat):
        raise ValueError(f"pattern must hold one R (0), one B (2) and two greens (1 or 3), got {grid}")
    r_site, b_site = flat.index(0), flat.index(2)
    r_row, r_col = divmod(r_site, 2)
    if b_site != 3 - r_site:
        raise ValueError(f"not a Bayer pattern: R and B must sit diagonally in the 2x2 cell, got {grid}")
    return r_row, r_col, (0, grid[r_row][1 - r_col], 2, grid[1 - r_row][r_col])


def _black_per_plane(black_level, codes, batch: int, device: torch.device) -> torch.Tensor:
    """black_level (number, 4 values by colour code, [4] or [B, 4]) -> float32 [B, 4] in plane order."""
    if isinstance(black_level, torch.Tensor):
        t = black_level.detach().to(torch.float32)
    elif isinstance(black_level, (int, float)) and not isinstance(black_level, bool):
        t = torch.tensor(float(black_level), dtype=torch.float32, device=device)
    else:
        try:
            t = torch.tensor(black_level.tolist() if hasattr(black_level, "tolist") else black_level, dtype=torch.float32, device=device)
        except (TypeError, ValueError):
            raise TypeError(f"black_level must be a number, 4 values or a tensor [4] / [B, 4], got {type(black_level).__name__}") from None
    one, four = t.numel() == 1, t.dim() == 1 and t.shape[0] == 4
    if not (one or four or (t.dim() == 2 and t.shape[1] == 4 and t.shape[0] in (1, batch))):
        raise ValueError(f"black_level must be a number, 4 values (by colour code) or [B, 4] with B = {batch}, got shape {tuple(t.shape)}")
    if t.device != device:  # after the shape: a bad input gets the same message on every device
        raise ValueError(f"black_level is on {t.device} but the data is on {device}")
    if one:
        return t.reshape(1, 1).expand(batch, 4).contiguous()
    if four:
        t = t.unsqueeze(0)
    return t.expand(batch, 4)[:, list(codes)].contiguous()


def _levels(pattern, black_level, white_level, ratio, batch, device, checks: ValueChecks):
    """Parse and check pattern and levels. Returns (r_row, r_col, black [B,4], white [B], ratio [B]).

    The value checks of tensors are recorded in ``checks``; the caller runs them.
    """
    r_row, r_col, codes = parse_pattern(pattern)
    black = _black_per_plane(black_level, codes, batch, device)
    white = per_sample("white_level", white_level, batch, device, checks=checks)
    ratio = per_sample("ratio", ratio, batch, device, positive=True, checks=checks)
    checks.require(lambda: torch.isfinite(black) & (black >= 0),
                   lambda: f"black_level must be finite and >= 0, got {black.tolist()}")
    checks.require(lambda: black < white[:, None],
                   lambda: f"black_level must be < white_level, got black {black.tolist()} and white {white.tolist()}")
    return r_row, r_col, black, white, ratio


def _check_out(out, shape, dtype, device):
    if out is None:
        return torch.empty(shape, dtype=dtype, device=device)
    check_tensor("out", out)
    if tuple(out.shape) != tuple(shape) or out.dtype != dtype or out.device != device:
        raise ValueError(f"out must be {tuple(shape)} {dtype} on {device}, got {tuple(out.shape)} {out.dtype} on {out.device}")
    return out


def _prepare_pack(cfa, pattern, black_level, white_level, ratio, K, with_photon, out_dtype):
    check_tensor("cfa", cfa, dtypes=CFA_DTYPES, ndims=(2, 3))
    if out_dtype not in PACKED_DTYPES:
        raise TypeError(f"out_dtype must be torch.float32 or torch.float16, got {out_dtype}")
    cfa3 = cfa.unsqueeze(0) if cfa.dim() == 2 else cfa
    batch, height, width = cfa3.shape
    if height < 2 or width < 2 or batch < 1:
        raise ValueError(f"cfa must hold at least one 2x2 cell per frame, got shape {tuple(cfa.shape)}")
    checks = ValueChecks()
    r_row, r_col, black, white, ratio = _levels(pattern, black_level, white_level, ratio, batch, cfa.device, checks)
    scale = (ratio[:, None] / (white[:, None] - black)).contiguous()  # normalised per DN, amplified
    if with_photon:
        if K is None:
            raise ValueError("K (gain, DN per photo-electron) is required when with_photon=True")
        photon = (1.0 / (ratio * per_sample("K", K, batch, cfa.device, positive=True, checks=checks))).contiguous()
    else:
        photon = scale  # unused by the kernel, any float32 pointer
    checks.run()  # one host read for every value check (none inside value_checks_disabled)
    return cfa3, r_row, r_col, black, scale, photon


def pack_bayer_reference(cfa, pattern, black_level, white_level, ratio=1.0, *, K=None, with_photon=False,
                         concat_origin=False, out_dtype=torch.float32, clip=True) -> torch.Tensor:
    """Plain-PyTorch reference of :func:`pack_bayer` (same arguments, same arithmetic)."""
    prepared = _prepare_pack(cfa, pattern, black_level, white_level, ratio, K, with_photon, out_dtype)
    return _pack_torch(*prepared, with_photon, concat_origin, out_dtype, clip=clip)


def _pack_torch(cfa3, r_row, r_col, black, scale, photon, with_photon, concat_origin, out_dtype, clip=True):
    d = cfa3[:, : cfa3.shape[1] // 2 * 2, : cfa3.shape[2] // 2 * 2].to(torch.float32)
    ra, rb, ca, cb = r_row, 1 - r_row, r_col, 1 - r_col
    planes = torch.stack([d[:, ra::2, ca::2], d[:, ra::2, cb::2], d[:, rb::2, cb::2], d[:, rb::2, ca::2]], dim=1)
    x = (planes - black[:, :, None, None]) * scale[:, :, None, None]
    if clip:
        x = x.clamp(0.0, 1.0)
    parts = [x]
    if with_photon:
        parts.append(x * photon[:, None, None, None])
    if concat_origin:
        parts.append(x)
    return torch.cat(parts, dim=1).to(out_dtype)


def _pack_into(out, cfa3, r_row, r_col, black, scale, photon, with_photon, concat_origin, clip=True):
    """``_pack_torch``'s arithmetic written plane by plane into ``out`` (no grad): the same
    float32 values, but the temporaries are one plane, not the ~7 frame-sized tensors of the
    reference (a 12 MP frame: 12 MB instead of ~0.6 GB)."""
    ra, rb, ca, cb = r_row, 1 - r_row, r_col, 1 - r_col
    h, w = out.shape[-2:]
    with torch.no_grad():
        for i, (dy, dx) in enumerate(((ra, ca), (ra, cb), (rb, cb), (rb, ca))):
            plane = cfa3[:, dy : 2 * h : 2, dx : 2 * w : 2].to(torch.float32)
            plane.sub_(black[:, i, None, None]).mul_(scale[:, i, None, None])
            if clip:
                plane.clamp_(0.0, 1.0)
            out[:, i].copy_(plane)
            if concat_origin:
                out[:, (8 if with_photon else 4) + i].copy_(plane)
            if with_photon:
                out[:, 4 + i].copy_(plane.mul_(photon[:, None, None]))
    return out


def pack_bayer(cfa, pattern, black_level, white_level, ratio=1.0, *, K=None, with_photon=False,
               concat_origin=False, out_dtype=torch.float32, out=None, backend="auto", clip=True) -> torch.Tensor:
    """Pack a Bayer CFA frame into normalised, amplified R, G1, B, G2 planes (SPEC §1, §4).

    Args:
        cfa: DN values, [H, W] or [B, H, W], uint16 / int32 / float32 / float16, any strides.
            H, W >= 2; an odd trailing row / column is dropped.
        pattern: "RGGB" | "BGGR" | "GRBG" | "GBRG" (any case) or a rawpy ``raw_pattern`` 2x2.
        black_level: DN; a number, 4 values indexed by colour code (rawpy's
            ``black_level_per_channel``; [R, G1, B, G2] for a string pattern), or a
            tensor [4] / [B, 4] on the data's device. Finite, >= 0, < white_level.
        white_level: DN; a number or a tensor [B].
        ratio: exposure ratio (amplification), number or tensor [B], > 0.
        K: gain (DN per photo-electron), number or [B], > 0; required with ``with_photon``.
        with_photon: append the photon channel ``A_T / (ratio * K)`` (4 ch).
        concat_origin: append ``A_T`` again (4 ch).
        out_dtype: torch.float32 or torch.float16.
        out: optional preallocated output of the result's shape and dtype (any strides).
        backend: "auto" | "triton" | "torch" (``kernels._common.use_triton``).
        clip: False gives ``(D - black) * ratio / (white - black)`` unclipped (noise below the
            black level stays negative: an unbiased estimate of the signal's mean, which the
            engine's low-frequency fidelity step needs); computed by the reference on every
            device (the kernel packs the network's clipped input only).

    Returns:
        [B, C, H // 2, W // 2] with C = 4 / 8 / 12, channel order A_T (R, G1, B, G2), photon,
        origin; ``A_T = clip((D - black) * ratio / (white - black), 0, 1)`` (normalised).
    """
    cfa3, r_row, r_col, black, scale, photon = _prepare_pack(cfa, pattern, black_level, white_level, ratio, K, with_photon, out_dtype)
    batch, h, w = cfa3.shape[0], cfa3.shape[1] // 2, cfa3.shape[2] // 2
    channels = 4 * (1 + bool(with_photon) + bool(concat_origin))
    out = _check_out(out, (batch, channels, h, w), out_dtype, cfa.device)
    if not clip or not use_triton(cfa.device, backend):
        return _pack_into(out, cfa3, r_row, r_col, black, scale, photon, with_photon, concat_origin, clip)
    if batch > MAX_BATCH:
        raise ValueError(f"batch must be <= {MAX_BATCH} for the Triton kernel, got {batch}")
    unit = cfa3.stride(2) == 1 and out.stride(3) == 1
    grid = (triton.cdiv(w, BLOCK_W), triton.cdiv(h, BLOCK_H), batch)
    _pack_kernel[grid](cfa3, out, black, scale, photon, h, w, r_row, r_col, *cfa3.stride(), *out.stride(),
                       UNIT_STRIDE=unit, WITH_PHOTON=bool(with_photon), CONCAT_ORIGIN=bool(concat_origin),
                       BLOCK_H=BLOCK_H, BLOCK_W=BLOCK_W, num_warps=NUM_WARPS)
    return out


def _prepare_unpack(packed, pattern, black_level, white_level, ratio, to_dn, out_dtype):
    check_tensor("packed", packed, dtypes=PACKED_DTYPES, ndims=(3, 4))
    if packed.shape[-3] != 4:
        raise ValueError(f"packed must have 4 planes (R, G1, B, G2) in dim -3, got shape {tuple(packed.shape)}")
    allowed = (torch.uint16, torch.float32) if to_dn else PACKED_DTYPES
    out_dtype = out_dtype or allowed[0]
    if out_dtype not in allowed:
        raise TypeError(f"out_dtype must be one of {allowed} with to_dn={to_dn}, got {out_dtype}")
    x4 = packed.unsqueeze(0) if packed.dim() == 3 else packed
    checks = ValueChecks()
    r_row, r_col, black, white, ratio = _levels(pattern, black_level, white_level, ratio, x4.shape[0], packed.device, checks)
    checks.run()
    if to_dn:
        scale, offset = (white[:, None] - black) / ratio[:, None], black
    else:
        scale, offset = (1.0 / ratio)[:, None].expand(-1, 4), torch.zeros_like(black)
    return x4, r_row, r_col, scale.contiguous(), offset.contiguous(), out_dtype


def unpack_bayer_reference(packed, pattern, black_level, white_level, *, ratio=1.0, to_dn=True, out_dtype=None) -> torch.Tensor:
    """Plain-PyTorch reference of :func:`unpack_bayer` (same arguments, same arithmetic)."""
    mosaic = _unpack_torch(*_prepare_unpack(packed, pattern, black_level, white_level, ratio, to_dn, out_dtype))
    return mosaic[0] if packed.dim() == 3 else mosaic


def _unpack_torch(x4, r_row, r_col, scale, offset, out_dtype):
    v = x4.to(torch.float32) * scale[:, :, None, None] + offset[:, :, None, None]
    if out_dtype == torch.uint16:
        v = torch.floor(v + 0.5).clamp(0.0, 65535.0).to(torch.int32)
    b, _, h, w = x4.shape
    mosaic = torch.empty((b, 2 * h, 2 * w), dtype=v.dtype, device=v.device)
    ra, rb, ca, cb = r_row, 1 - r_row, r_col, 1 - r_col
    mosaic[:, ra::2, ca::2], mosaic[:, ra::2, cb::2] = v[:, 0], v[:, 1]
    mosaic[:, rb::2, cb::2], mosaic[:, rb::2, ca::2] = v[:, 2], v[:, 3]
    return mosaic.to(out_dtype)


def unpack_bayer(packed, pattern, black_level, white_level, *, ratio=1.0, to_dn=True, out_dtype=None, out=None,
                 backend="auto") -> torch.Tensor:
    """Inverse of :func:`pack_bayer`: R, G1, B, G2 planes back to the sensor's mosaic.

    Args:
        packed: normalised planes [B, 4, h, w] or [4, h, w], float32 / float16, any strides.
        pattern, black_level, white_level: as in :func:`pack_bayer` (DN).
        ratio: the amplification to undo, number or [B], > 0.
        to_dn: True -> DN ``x / ratio * (white - black) + black``; False -> normalised,
            un-amplified ``x / ratio`` (black/white then only validated).
        out_dtype: to_dn: torch.uint16 (default; rounded half up, clamped to [0, 65535]) or
            torch.float32 (not rounded); otherwise torch.float32 (default) or torch.float16.
        out: optional preallocated output of the result's shape and dtype (any strides).

    Returns:
        [B, 2h, 2w] (or [2h, 2w] for a 3-D input) mosaic in the sensor's own pattern.
        pack -> unpack with ratio 1 and float32 reproduces every DN in [black, white].
    """
    x4, r_row, r_col, scale, offset, out_dtype = _prepare_unpack(packed, pattern, black_level, white_level, ratio, to_dn, out_dtype)
    batch, _, h, w = x4.shape
    shape = (2 * h, 2 * w) if packed.dim() == 3 else (batch, 2 * h, 2 * w)
    out = _check_out(out, shape, out_dtype, packed.device)
    out3 = out.unsqueeze(0) if out.dim() == 2 else out
    if not use_triton(packed.device, backend):
        out3.copy_(_unpack_torch(x4, r_row, r_col, scale, offset, out_dtype))
        return out
    if batch > MAX_BATCH:
        raise ValueError(f"batch must be <= {MAX_BATCH} for the Triton kernel, got {batch}")
    if h == 0 or w == 0:
        return out
    unit = x4.stride(3) == 1 and out3.stride(2) == 1
    grid = (triton.cdiv(w, BLOCK_W), triton.cdiv(h, BLOCK_H), batch)
    _unpack_kernel[grid](x4, out3, scale, offset, h, w, r_row, r_col, *x4.stride(), *out3.stride(),
                         UNIT_STRIDE=unit, OUT_INT=out_dtype == torch.uint16,
                         BLOCK_H=BLOCK_H, BLOCK_W=BLOCK_W, num_warps=NUM_WARPS)
    return out


def aot_specs():
    """The shipped specialisations: contiguous uint16 frames -> fp32/fp16 network inputs of
    4, 8 (photon or origin) and 12 channels, a strided and a float32-input fallback; unpack
    from fp32/fp16 planes to uint16 DN and to float32 (DN or normalised)."""
    from .aot import AotSpec

    blocks = {"BLOCK_H": BLOCK_H, "BLOCK_W": BLOCK_W}
    ints = {k: "i32" for k in ("h", "w", "r_row", "r_col")}
    pack = [("u16", o, True, p, c) for o in ("fp32", "fp16") for p in (False, True) for c in (False, True)]
    pack += [("u16", "fp32", False, False, False), ("fp32", "fp32", True, False, False)]
    specs = []
    for in_ty, out_ty, unit, photon, origin in pack:
        const = {"UNIT_STRIDE": unit, "WITH_PHOTON": photon, "CONCAT_ORIGIN": origin, **blocks}
        sig = {"cfa_ptr": f"*{in_ty}", "out_ptr": f"*{out_ty}", "black_ptr": "*fp32", "scale_ptr": "*fp32", "photon_ptr": "*fp32",
               **ints, **{f"s_{t}": "i32" for t in ("cb", "ch", "cw", "ob", "oc", "oh", "ow")}, **{k: "constexpr" for k in const}}
        name = f"pack_bayer_{in_ty}_{out_ty}_{4 * (1 + photon + origin)}ch{'_photon' * photon}{'' if unit else '_strided'}"
        specs.append(AotSpec(name, _pack_kernel, sig, const, NUM_WARPS))
        if unit and in_ty == "u16":  # the aligned build typical frames get (16-byte accesses)
            aligned = ("cfa_ptr", "out_ptr", "w", "s_cb", "s_ch", "s_ob", "s_oc", "s_oh")
            specs.append(AotSpec(name + "_aligned", _pack_kernel, sig, const, NUM_WARPS, aligned))
    for in_ty in ("fp32", "fp16"):
        for out_ty in ("u16", "fp32"):
            const = {"UNIT_STRIDE": True, "OUT_INT": out_ty == "u16", **blocks}
            sig = {"x_ptr": f"*{in_ty}", "out_ptr": f"*{out_ty}", "scale_ptr": "*fp32", "offset_ptr": "*fp32", **ints,
                   **{f"s_{t}": "i32" for t in ("xb", "xc", "xh", "xw", "ob", "oh", "ow")}, **{k: "constexpr" for k in const}}
            specs.append(AotSpec(f"unpack_bayer_{in_ty}_{out_ty}", _unpack_kernel, sig, const, NUM_WARPS))
    return specs
