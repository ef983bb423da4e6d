"""The photograph-like hold-out set: rendered still-life scenes unprocessed to raw.

A third scene family, used only to *judge* models (issue 14): neither the procedural scenes
(``training.synthetic``) nor the dead-leaves scenes (``training.deadleaves_scenes``) draw
from it, and its seed stream is its own. Each scene is rendered in linear light at the
mosaic resolution (``2 p x 2 p``) with what photographs have and the training families do
not put together:

- a backdrop (a wall or sky: a vertical gradient between two low-saturation colours with
  a faint 1/f plaster texture, defocused) above a horizon at 35-75% of the height;
- a floor / table plane below it with a perspective texture (wood grain, tiles or a
  checkerboard whose cells shrink towards the horizon: one texture at every scale);
- 3-9 shaded objects standing on the floor: spheres (Lambertian shading plus a Phong
  highlight that can saturate), boxes (two faces of different brightness) and cylinders
  (shading across), with soft contact shadows, occluding each other (far ones first);
- a shelf of 0-12 thin coloured "book spines" (dense vertical edges) on some scenes;
- 0-3 lamps (bright discs with a glow, 3-30x white: they clip) and sometimes a window
  (a bright rectangle with a frame);
- colours with the statistics of real scenes (mostly low saturation, a few vivid ones;
  reflectances log-uniform in [0.03, 0.9]) under a warm or cool illuminant, vignetting,
  and an optical blur (Gaussian PSF, sigma 0.5-1.0 pixel) over everything;
- then ``training.unprocess.linear_to_packed_raw`` (Sony A7S II colour matrix, white
  balance, exposure with the mean raw value log-uniform in [0.01, 0.25], clipping, RGGB).

:func:`photo_holdout` gives ``n`` scenes of ``patch x patch`` packed pixels as uint16 DN
(black 512, white 16383): scene ``i`` is a pure function of ``(seed, i)``; the default set
of the evaluation is ``photo_holdout(16, 192, seed=0)``.
"""
from __future__ import annotations

import math

import torch

from .patches import DEFAULT_BLACK, DEFAULT_WHITE, PackedBatch, collate_patches, sample_rng, to_dn, torch_generator
from .unprocess import gaussian_blur, linear_to_packed_raw, random_wb

__all__ = ["photo_scene", "photo_holdout"]

_TAG_PHOTO_HOLDOUT = 206


# Every value is computed in float64 and rounded to DN once (``to_dn``): the set must be the
# same on every machine, and float32 renders differ between instruction sets (vectorised
# exp / sin / pow, FFTs and convolutions differ in the last bits across AVX-512, AVX2 and
# SSE builds of ATen, MKL and oneDNN, which flips some DN roundings and threshold tests). In
# float64 those differences are ~1e-16 relative: a DN value or a threshold test would have to
# fall within ~1e-10 of its edge to move. The generator only gives float32 uniforms (integer
# -> float, exact everywhere); normals are made from them here (``_normal``), not by
# ``torch.randn``, whose float32 transform is vectorised differently per CPU.
_F64 = torch.float64


def _uniform(g: torch.Generator, *shape: int) -> torch.Tensor:
    """float32 uniforms in [0, 1) from ``g`` (bit-identical on every CPU), as float64."""
    return torch.rand(*shape, generator=g).to(_F64)


def _normal(g: torch.Generator, *shape: int) -> torch.Tensor:
    """Standard normals ``shape`` (float64, >= 16 values) from ``g``, drawn as ``torch.randn``
    draws them (the same uniforms, the same Box-Muller pairs: element j and j + 8 of each run
    of 16, the last 16 redrawn when the count is not a multiple of 16), so the scenes are
    those of the float32 renderer up to its rounding, but computed in float64."""
    n = math.prod(shape)
    if n < 16:
        raise ValueError(f"_normal draws at least 16 values, got shape {shape}")
    u = _uniform(g, n)
    if n % 16:
        u = torch.cat([u[: n - n % 16], _uniform(g, 16)])  # ATen recomputes the last 16
    runs = u.view(-1, 16)
    radius = torch.sqrt(-2.0 * torch.log(1.0 - runs[:, :8]))
    theta = (2.0 * math.pi) * runs[:, 8:]
    z = torch.cat([radius * torch.cos(theta), radius * torch.sin(theta)], 1).flatten()
    if n % 16:  # the tail run overwrites the last 16 values
        z = torch.cat([z[: n - 16], z[-16:]])
    return z.view(shape)


def _colour(g: torch.Generator, n: int = 1, vivid: float = 0.15) -> torch.Tensor:
    """``n`` linear RGB reflectances ``[n, 3]`` (float64): log-uniform value in [0.03, 0.9], low
    saturation mostly (``S = U^2 * 0.5``), vivid (``S`` in [0.6, 1]) with probability ``vivid``."""
    hue = _uniform(g, n) * 6.0
    sat = _uniform(g, n) ** 2 * 0.5
    sat = torch.where(_uniform(g, n) < vivid, 0.6 + 0.4 * _uniform(g, n), sat)
    val = torch.exp(math.log(0.03) + _uniform(g, n) * math.log(0.9 / 0.03))
    k = torch.stack([(5.0 + hue) % 6, (3.0 + hue) % 6, (1.0 + hue) % 6], 1)  # HSV -> RGB
    rgb = 1 - torch.clamp(torch.minimum(k, 4 - k), 0, 1)
    return val[:, None] * (1 - sat[:, None] * rgb)


def _fbm(g: torch.Generator, side: int, beta: float = 1.0) -> torch.Tensor:
    """Zero-mean, unit-std 1/f^beta field ``[side, side]`` (float64, from a Fourier spectrum)."""
    fy = torch.fft.fftfreq(side, dtype=_F64)[:, None]
    fx = torch.fft.rfftfreq(side, dtype=_F64)[None, :]
    amp = (fy**2 + fx**2).clamp_min(1.0 / side**2) ** (-beta / 2)
    spec = amp * torch.complex(_normal(g, *amp.shape), _normal(g, *amp.shape))
    f = torch.fft.irfft2(spec, s=(side, side))
    return (f - f.mean()) / f.std().clamp_min(1e-8)


def _floor_texture(g: torch.Generator, yy, xx, horizon: float, side: int) -> torch.Tensor:
    """Perspective texture of the floor (rows below the horizon), values around 1."""
    depth = (yy - horizon).clamp_min(0.5)
    u, v = (xx - side / 2) / depth, side / depth  # floor coordinates: cells shrink towards the horizon
    kind = int(torch.randint(0, 3, (1,), generator=g))
    freq = 0.5 + 2.0 * float(torch.rand(1, generator=g))
    if kind == 0:  # wood grain: wavy stripes along the depth
        warp = 0.3 * torch.sin(u * 1.7 + 3.0 * float(torch.rand(1, generator=g)))
        t = 0.75 + 0.25 * torch.sin((v * 0.5 + warp) * freq * 6.0) + 0.1 * torch.sin(u * 23.0 * freq)
    elif kind == 1:  # tiles with grout lines
        fu, fv = (u * freq) % 1.0, (v * freq * 0.5) % 1.0
        grout = ((fu < 0.06) | (fv < 0.06)).to(_F64)
        t = 1.0 - 0.6 * grout
    else:  # checkerboard
        t = 0.55 + 0.45 * (((torch.floor(u * freq) + torch.floor(v * freq * 0.5)) % 2) * 2 - 1)
    return t


def photo_scene(g: torch.Generator, patch: int = 192) -> torch.Tensor:
    """One hold-out scene: float64 ``[4, patch, patch]`` packed raw in [0, 1] (module docstring)."""
    side = 2 * int(patch)
    yy = torch.arange(side, dtype=_F64)[:, None].expand(side, side)
    xx = torch.arange(side, dtype=_F64)[None, :].expand(side, side)
    rnd = lambda: float(torch.rand(1, generator=g))  # noqa: E731
    horizon = side * (0.35 + 0.4 * rnd())

    top, bottom = _colour(g, 2, vivid=0.05)
    t = (yy / side)[None]
    backdrop = top.view(3, 1, 1) * (1 - t) + bottom.view(3, 1, 1) * t
    backdrop = backdrop * (1 + 0.08 * _fbm(g, side, 1.2))[None]
    backdrop = gaussian_blur(backdrop, 2.0 * rnd())
    floor = _colour(g, 1, vivid=0.1)[0].view(3, 1, 1) * _floor_texture(g, yy, xx, horizon, side)[None]
    floor = floor * (0.6 + 0.4 * ((yy - horizon) / (side - horizon)).clamp(0, 1))[None]  # light falls off with depth
    img = torch.where((yy < horizon)[None], backdrop, floor)

    if rnd() < 0.5:  # window: bright rectangle with a frame, on the wall
        h0, w0 = int(horizon * (0.1 + 0.3 * rnd())), int(side * rnd() * 0.7)
        hh, ww = int(horizon * (0.3 + 0.3 * rnd())), int(side * (0.15 + 0.2 * rnd()))
        img[:, h0 : h0 + hh, w0 : w0 + ww] = _colour(g, 1, vivid=0.0)[0].view(3, 1, 1) * 0.1
        b = max(2, ww // 12)
        img[:, h0 + b : h0 + hh - b, w0 + b : w0 + ww - b] = (1.5 + 3.0 * rnd()) * torch.tensor([0.9, 1.0, 1.1], dtype=_F64).view(3, 1, 1)

    if rnd() < 0.5:  # a shelf of book spines: dense vertical edges
        y1 = int(horizon * (0.3 + 0.4 * rnd()))
        x = int(side * 0.7 * rnd())
        height = int(side * (0.08 + 0.1 * rnd()))
        for c in _colour(g, int(torch.randint(4, 13, (1,), generator=g)), vivid=0.35):
            w = min(int(3 + 10 * rnd()), side - x)  # (clamped at the frame's edge)
            hb = min(int(height * (0.7 + 0.3 * rnd())), y1)
            img[:, y1 - hb : y1, x : x + w] = c.view(3, 1, 1) * (0.8 + 0.2 * _uniform(g, 1, 1, w))
            x += w + int(2 * rnd())
            if x >= side:
                break

    light_dir = torch.tensor([rnd() - 0.5, -0.5 - 0.5 * rnd(), 0.7], dtype=_F64)
    light_dir = light_dir / light_dir.norm()
    objects = sorted(([horizon + (side - horizon) * rnd(), side * rnd()] for _ in range(int(torch.randint(3, 10, (1,), generator=g)))),
                     key=lambda o: o[0])  # far (near the horizon) first: near ones occlude them
    for base_y, cx in objects:
        scale = 0.25 + 0.75 * (base_y - horizon) / (side - horizon)  # nearer objects are larger
        r = side * (0.04 + 0.12 * rnd()) * scale + 2
        colour = _colour(g, 1)[0].view(3, 1, 1)
        shadow = torch.exp(-(((xx - cx) / (1.6 * r)) ** 2 + ((yy - base_y) / (0.35 * r)) ** 2))
        img = img * (1 - 0.6 * shadow)[None]
        kind = int(torch.randint(0, 3, (1,), generator=g))
        if kind == 0:  # sphere resting on the floor
            cy = base_y - r
            dx, dy = (xx - cx) / r, (yy - cy) / r
            nz = (1 - dx * dx - dy * dy).clamp_min(0).sqrt()
            lam = (dx * light_dir[0] + dy * light_dir[1] + nz * light_dir[2]).clamp_min(0)
            spec = (2 * lam * nz - light_dir[2]).clamp_min(0) ** (20 + 60 * rnd()) * (2 + 8 * rnd())
            shade = colour * (0.15 + 0.85 * lam)[None] + spec[None]
            alpha = ((1 - (dx * dx + dy * dy).sqrt()) * r).clamp(0, 1)  # anti-aliased rim
        elif kind == 1:  # box: front face and a lighter or darker side face
            w, h = r * (0.8 + 0.8 * rnd()), r * (0.8 + 1.4 * rnd())
            front = ((xx - (cx - w)).clamp(0, 1) * ((cx + w * 0.5) - xx).clamp(0, 1)
                     * (yy - (base_y - h)).clamp(0, 1) * (base_y - yy).clamp(0, 1))
            sidef = ((xx - (cx + w * 0.5)).clamp(0, 1) * ((cx + w) - xx).clamp(0, 1)
                     * (yy - (base_y - h - 0.3 * w)).clamp(0, 1) * (base_y - 0.2 * w - yy).clamp(0, 1))
            shade = colour * (0.8 * front + (0.35 + 0.5 * rnd()) * sidef)[None]
            alpha = (front + sidef).clamp(0, 1)
        else:  # cylinder standing: shading across its width
            w, h = r * (0.5 + 0.5 * rnd()), r * (1.0 + 2.0 * rnd())
            dx = (xx - cx) / w
            alpha = ((1 - dx.abs()) * w).clamp(0, 1) * (yy - (base_y - h)).clamp(0, 1) * (base_y - yy).clamp(0, 1)
            nz = (1 - dx * dx).clamp_min(0).sqrt()
            lam = (dx * light_dir[0] + nz * light_dir[2]).clamp_min(0)
            shade = colour * (0.15 + 0.85 * lam)[None] + ((2 * lam * nz - light_dir[2]).clamp_min(0) ** 30 * 3.0)[None]
        img = img * (1 - alpha)[None] + shade * alpha[None]

    for _ in range(int(torch.randint(0, 4, (1,), generator=g))):  # lamps: they clip
        cy, cx = side * rnd() * 0.8, side * rnd()
        radius = 2 + side * 0.02 * rnd()
        d2 = (yy - cy) ** 2 + (xx - cx) ** 2
        level = 3.0 * 10 ** rnd()
        glow = ((radius - d2.sqrt()).clamp(0, 1) + 0.3 * torch.exp(-d2 / (2 * (4 * radius) ** 2))) * level
        img = img + torch.tensor([1.0, 0.8, 0.55], dtype=_F64).view(3, 1, 1) * glow[None]

    illuminant = torch.tensor([1.0, 1.0, 1.0], dtype=_F64) + (rnd() - 0.5) * torch.tensor([0.5, 0.0, -0.5], dtype=_F64)
    vignette = 1 - 0.4 * (((yy - side / 2) ** 2 + (xx - side / 2) ** 2) / (side * side / 2))
    img = img * illuminant.view(3, 1, 1) * vignette[None]
    img = gaussian_blur(img, 0.5 + 0.5 * rnd())
    mean = math.exp(math.log(0.01) + rnd() * math.log(0.25 / 0.01))
    return linear_to_packed_raw(img, wb_gains=random_wb(g), mean=mean)


def photo_holdout(n: int = 16, patch: int = 192, seed: int = 0) -> PackedBatch:
    """The hold-out set: ``n`` scenes of ``patch x patch`` packed pixels (CPU
    :class:`PackedBatch`, uint16 DN, black 512, white 16383); scene ``i`` is a pure
    function of ``(seed, i)`` and no training source draws from its seed stream."""
    if n < 1 or patch < 16:
        raise ValueError(f"need n >= 1 and patch >= 16, got n={n}, patch={patch}")
    items = []
    threads = torch.get_num_threads()
    # One thread: the blurs' convolutions sum in another order with more threads (float64
    # makes that harmless too, see _F64; one thread keeps the order fixed on one machine).
    torch.set_num_threads(1)
    try:
        for i in range(n):
            x = photo_scene(torch_generator(sample_rng(seed, _TAG_PHOTO_HOLDOUT, i)), patch)
            items.append({"raw": to_dn(x), "black": torch.full((4,), DEFAULT_BLACK), "white": DEFAULT_WHITE,
                          "index": i, "source": "photo-holdout"})
    finally:
        torch.set_num_threads(threads)
    return collate_patches(items)
