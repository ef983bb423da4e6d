"""Tiled processing of large frames with overlap and seamless blending.

A tile is a core region plus a context margin on every side (clipped at the frame's
edges). The UNet's output at a pixel depends on inputs within ``UNET_RADIUS`` packed
pixels, and each diffusion step adds that much again (the step itself is pointwise), so
with ``margin >= steps * UNET_RADIUS`` and tile origins on the backbone's 16-pixel grid
(same pooling alignment) every core pixel is computed exactly as in one pass, up to
floating-point summation order. Neighbouring cores overlap by ``blend`` pixels and are
cross-faded with linear ramps, so any residual difference cannot show as a seam.
Backbones with global operations (NAFNet's channel attention averages the whole frame)
are only approximately tile-invariant.
"""
from __future__ import annotations

from typing import Callable

import torch

from .loop import SIZE_MULTIPLE

# Influence radius of the SID UNet in packed pixels (measured: 94 up/left, 78
# down/right), rounded up to the 16-pixel grid.
UNET_RADIUS = 96


def _starts(size: int, core: int, blend: int) -> list[int]:
    """Core start offsets along one axis: stride ``core - blend``, multiples of 16."""
    if size <= core:
        return [0]
    stride = core - blend
    starts = list(range(0, size - core, stride)) + [size - core]
    # onto the grid, rounding up: a core then ends at or past the frame's end (clipped there)
    return sorted({s + (-s) % SIZE_MULTIPLE for s in starts})


def _even_core(size: int, core: int, blend: int) -> int:
    """The core side that covers ``size`` with as many cores as ``core`` needs, made as equal
    as the grid allows (a multiple of 16, at most ``core``): e.g. 1424 packed rows with cores
    of 576 need 3; equal cores of 496 leave the last tile no larger than the others, where
    576-row cores overlapped by 304 rows (1.8x the compute of the frame at 12 MP, 1.4x now)."""
    if size <= core:
        return core
    count = -(-(size - blend) // (core - blend))
    even = -(-(size + (count - 1) * blend) // count)
    return min(core, even + (-even) % SIZE_MULTIPLE)


def _ramp(length: int, lo_fade: int, hi_fade: int, device) -> torch.Tensor:
    """Weights 1 inside, rising over ``lo_fade`` and falling over ``hi_fade`` pixels."""
    w = torch.ones(length, device=device)
    if lo_fade:
        w[:lo_fade] = torch.arange(1, lo_fade + 1, device=device, dtype=torch.float32) / (lo_fade + 1)
    if hi_fade:
        w[length - hi_fade:] = torch.flip(torch.arange(1, hi_fade + 1, device=device, dtype=torch.float32), (0,)) / (hi_fade + 1)
    return w


def run_tiled(run: Callable[[torch.Tensor], torch.Tensor], x: torch.Tensor, *, tile: int, margin: int,
              blend: int = 32, out_channels: int = 4) -> torch.Tensor:
    """Apply ``run`` (``[B, C, th, tw] -> [B, out_channels, th, tw]`` float32) tile by tile.

    Args:
        x: the whole input ``[B, C, h, w]`` (the first network input for the whole loop, or
            one step's network input for ``TiledBackbone``).
        tile: largest tile side in packed pixels, margins included (a multiple of 16).
        margin: context on each side of a core (a multiple of 16).
        blend: width of the cross-fade between neighbouring cores (a multiple of 16).
        out_channels: channels of ``run``'s output.

    Returns:
        float32 ``[B, out_channels, h, w]``.
    """
    for name, v in (("tile", tile), ("margin", margin), ("blend", blend)):
        if v < 0 or v % SIZE_MULTIPLE:
            raise ValueError(f"{name} must be a non-negative multiple of {SIZE_MULTIPLE}, got {v}")
    core = tile - 2 * margin
    if core < max(2 * blend, SIZE_MULTIPLE):
        raise ValueError(f"tile {tile} leaves no room for a core: it must exceed 2 * margin + 2 * blend "
                         f"= {2 * margin + 2 * max(blend, 8)} packed pixels")
    B, _, h, w = x.shape
    out = torch.zeros(B, out_channels, h, w, dtype=torch.float32, device=x.device)
    weight = torch.zeros(1, 1, h, w, dtype=torch.float32, device=x.device)
    core_y, core_x = _even_core(h, core, blend), _even_core(w, core, blend)
    ys, xs = _starts(h, core_y, blend), _starts(w, core_x, blend)
    for iy, y0 in enumerate(ys):
        y1 = min(y0 + core_y, h)
        for ix, x0 in enumerate(xs):
            x1 = min(x0 + core_x, w)
            ty0, tx0 = max(y0 - margin, 0), max(x0 - margin, 0)
            ty1, tx1 = min(y1 + margin, h), min(x1 + margin, w)
            result = run(x[:, :, ty0:ty1, tx0:tx1])
            core_out = result[:, :, y0 - ty0 : y1 - ty0, x0 - tx0 : x1 - tx0]
            # fade only where a neighbour's core overlaps this one
            fy_lo = max(0, (ys[iy - 1] + core_y) - y0) if iy > 0 else 0
            fy_hi = max(0, y1 - ys[iy + 1]) if iy + 1 < len(ys) else 0
            fx_lo = max(0, (xs[ix - 1] + core_x) - x0) if ix > 0 else 0
            fx_hi = max(0, x1 - xs[ix + 1]) if ix + 1 < len(xs) else 0
            wy = _ramp(y1 - y0, min(fy_lo, y1 - y0), min(fy_hi, y1 - y0), x.device)
            wx = _ramp(x1 - x0, min(fx_lo, x1 - x0), min(fx_hi, x1 - x0), x.device)
            wt = wy[:, None] * wx[None, :]
            out[:, :, y0:y1, x0:x1] += core_out * wt
            weight[:, :, y0:y1, x0:x1] += wt
            del result, core_out
    return out.div_(weight)


class TiledBackbone:
    """A backbone applied tile by tile to each network input: the memory of its activations
    follows the tile, not the frame, at the cost of recomputing the margins. Unlike tiling
    the whole loop (``margin = steps * UNET_RADIUS``: every step widens the context), the
    exposure step between network evaluations runs on the whole frame, so one radius of
    context per tile suffices (``margin``, default ``UNET_RADIUS``).

    Args:
        backbone: ``[B, C, th, tw] -> [B, out_channels, th, tw]`` (float32 out).
        tile: largest tile side in packed pixels, margins included (a multiple of 16).
    """

    def __init__(self, backbone: Callable[[torch.Tensor], torch.Tensor], tile: int, out_channels: int,
                 margin: int = UNET_RADIUS, blend: int = 32):
        self.backbone, self.tile, self.out_channels, self.margin, self.blend = backbone, tile, out_channels, margin, blend

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        if max(x.shape[-2:]) <= self.tile:
            return self.backbone(x)
        return run_tiled(lambda t: self.backbone(t).float(), x, tile=self.tile, margin=self.margin, blend=self.blend,
                         out_channels=self.out_channels)
