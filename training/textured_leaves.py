"""Textured-leaves scenes: dead leaves whose leaves carry the textures of real surfaces.

Why this family: ``training.scene_stats`` measured that the dead-leaves scenes the shipped model
was trained on match photographs in edges and colour but hold less of their variance at fine and
middle scales (the 4 finest octaves: 0.52 of the luminance variance against 0.65; the octaves of
4-16 packed pixels: 0.40 against 0.50). Their leaves are flat colours with white noise: what
they lack is structure *inside* objects, at 8-32 sensor pixels, which photographs have
everywhere (fabric, foliage, hair, print, bark). A network trained on flat leaves learns a
piecewise-flat prior and, run for several steps, flattens texture a little more at each.

This module renders such scenes without any extra package (numpy + Pillow):

- **Layout**: leaves painted front to back (each covers only what is still free) until the
  frame is covered, radii from ``p(r) ~ r^-3`` on ``[4 px, (0.25 .. 0.6) x size]`` (the
  scale-invariant occlusion model of natural images: Lee, Mumford and Huang 2001, "Occlusion
  models for natural images"); shapes: ellipses, rotated rectangles, convex polygons; the
  smallest leaves are flat (they are texture themselves).
- **Textures** (:data:`TEXTURES`, each leaf one, on a base colour from the dead-leaves
  distribution: hue uniform, saturation ~ Beta(1, 2.5), value ~ Beta(2, 2)):
  ``flat`` (the dead leaves' own: a colour with faint white noise); ``fractal`` (Gaussian
  noise with power spectrum ``f^-beta``, beta 1.5-3, in log luminance plus a weaker chroma
  field: bark, stone, skin, sky); ``weave`` (a plain weave of two thread colours, period 3-20
  px, any orientation, with a fractal shading: fabric); ``strands`` (hundreds of thin curved
  lines along a common direction: hair, fur, grass); ``text`` (rows of letters 7-28 px high,
  dark on light or light on dark, at any angle: print, signs); ``foliage`` (dense small
  leaves of 2-8 px in greens, yellows and browns: high-frequency colour).
- Output: display-referred sRGB uint8 ``[size, size, 3]``, as the dead-leaves bank holds, so
  the same photographic finish (``training.deadleaves_scenes.finish_scene``: crop, turn,
  defocus, illumination, lights, unprocessing to raw) serves both.

:func:`render_bank` renders a bank (``python -m training.textured_leaves --out FILE --n N``);
:class:`TexturedLeavesDataset` serves finished scenes from it (``train --textured-bank FILE``).
"""
from __future__ import annotations

import argparse
import colorsys
import math
import string
import sys
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageDraw, ImageFont

from .deadleaves_scenes import DeadLeavesDataset, finish_scene, image_seed, write_bank
from .patches import seeded_item

__all__ = ["TEXTURES", "leaf_texture", "render_textured_leaves", "render_bank", "textured_holdout",
           "TexturedLeavesDataset"]

TEXTURES = ("flat", "fractal", "weave", "strands", "text", "foliage")
# How often each texture is drawn for a leaf large enough to carry one (sums to 1).
TEXTURE_WEIGHTS = (0.15, 0.30, 0.15, 0.15, 0.10, 0.15)
MIN_RADIUS = 10.0  # px: the smallest leaf
TEXTURED_RADIUS = 16.0  # px: smaller leaves are flat or fractal
SMALL_TEXTURES = ("flat", "fractal")  # the two a small leaf draws from, equally
MAX_LEAVES = 20000  # a frame is normally covered after a few thousand
# SeedSequence stream tags. 206 is also the photo-like hold-out's (training.holdout), which derives its scenes
# through sample_rng / torch generators, these images through generate_state: no seed is shared. It stays 206 so
# that the bank the shipped model was trained on re-renders bit for bit.
_TAG_TEXTURED = 206
_TAG_TEXTURED_HOLDOUT = 207


def _base_colour(rng: np.random.Generator) -> np.ndarray:
    """A leaf colour, float32 RGB in [0, 1] (the dead-leaves bank's HSV distribution)."""
    return np.array(colorsys.hsv_to_rgb(rng.uniform(), rng.beta(1.0, 2.5), rng.beta(2.0, 2.0)), np.float32)


def _power_law_radius(rng: np.random.Generator, lo: float, hi: float) -> float:
    """A radius with density ``~ r^-3`` on ``[lo, hi]`` (inverse CDF)."""
    u = rng.uniform()
    return float((lo ** -2 - u * (lo ** -2 - hi ** -2)) ** -0.5)


def _fractal_field(rng: np.random.Generator, h: int, w: int, beta: float) -> np.ndarray:
    """Gaussian noise ``[h, w]`` with power spectrum ``~ f^-beta``, zero mean, unit std."""
    fy = np.fft.fftfreq(h)[:, None]
    fx = np.fft.rfftfreq(w)[None, :]
    f = np.sqrt(fy * fy + fx * fx)
    f[0, 0] = 1.0
    amplitude = f ** (-beta / 2)
    amplitude[0, 0] = 0.0
    spectrum = amplitude * (rng.standard_normal(amplitude.shape) + 1j * rng.standard_normal(amplitude.shape))
    field = np.fft.irfft2(spectrum, s=(h, w))
    std = field.std()
    return (field / std if std > 0 else field).astype(np.float32)


def _rotated_coords(h: int, w: int, angle: float):
    """Pixel coordinates ``[h, w]`` rotated by ``angle`` (radians) about the box's centre."""
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    yy -= (h - 1) / 2
    xx -= (w - 1) / 2
    c, s = math.cos(angle), math.sin(angle)
    return c * xx + s * yy, -s * xx + c * yy


def _flat(rng, h, w, colour):
    """The dead leaves' own surface: one colour with faint white noise."""
    return colour * (1.0 + rng.uniform(0.0, 0.04) * rng.standard_normal((h, w, 1)).astype(np.float32))


def _fractal(rng, h, w, colour):
    """Bark, stone, skin, sky: f^-beta noise in log luminance, a weaker one in chroma."""
    beta = rng.uniform(1.5, 3.0)
    contrast = rng.uniform(0.1, 0.6)  # std of log luminance
    lum = _fractal_field(rng, h, w, beta)
    tint = _fractal_field(rng, h, w, beta)
    direction = rng.standard_normal(3).astype(np.float32)
    direction -= direction.mean()  # a pure chroma direction
    direction /= max(float(np.linalg.norm(direction)), 1e-6)
    chroma = contrast * rng.uniform(0.0, 0.5)
    return colour * np.exp(contrast * lum[..., None] + chroma * tint[..., None] * direction)


def _weave(rng, h, w, colour):
    """Fabric: a plain weave of two thread colours at any angle, with a faint fractal shading."""
    period = math.exp(rng.uniform(math.log(3.0), math.log(20.0)))
    u, v = _rotated_coords(h, w, rng.uniform(0.0, math.pi))
    if rng.uniform() < 0.5:  # a second hue, or a darker shade of the first
        second = colour * np.exp(rng.normal(0.0, 0.4, 3)).astype(np.float32)
    else:
        second = colour * rng.uniform(0.4, 0.9)
    warp = 0.5 + 0.5 * np.cos(2 * math.pi * u / period)  # thread profiles across their width
    weft = 0.5 + 0.5 * np.cos(2 * math.pi * v / period)
    over = np.cos(math.pi * u / period) * np.cos(math.pi * v / period) > 0  # which thread lies on top
    profile = np.where(over, warp, weft)[..., None]
    which = over[..., None]
    thread = np.where(which, colour, second)
    shade = np.exp(0.15 * _fractal_field(rng, h, w, 2.5))[..., None]
    return thread * (0.55 + 0.45 * profile) * shade


def _strands(rng, h, w, colour):
    """Hair, fur, grass: thin bent lines along a common direction over a darker ground."""
    img = Image.new("RGB", (w, h), tuple(int(255 * c) for c in np.clip(colour * rng.uniform(0.3, 0.8), 0, 1)))
    draw = ImageDraw.Draw(img)
    angle, spread = rng.uniform(0.0, math.pi), rng.uniform(0.05, 0.6)
    length = rng.uniform(8.0, 60.0)
    spacing = rng.uniform(1.5, 4.0)
    n = int(min(4000, h * w / (spacing * length) * 2.0))
    contrast = rng.uniform(0.15, 0.6)
    for _ in range(n):
        y, x = rng.uniform(-length / 2, h + length / 2), rng.uniform(-length / 2, w + length / 2)
        a = angle + rng.normal(0.0, spread)
        bend = rng.normal(0.0, 0.3)
        points = []
        for t in (-0.5, 0.0, 0.5):
            b = a + bend * t
            points.append((x + t * length * math.cos(b), y + t * length * math.sin(b)))
        c = np.clip(colour * math.exp(rng.normal(0.0, contrast)), 0, 1)
        draw.line(points, fill=tuple(int(255 * v) for v in c), width=int(rng.integers(1, 3)))
    return np.asarray(img, np.float32) / 255.0


def _font(size: int):
    """A scalable font of ``size`` px (Pillow's own, no system font needed); Pillow < 10.1 or
    without FreeType: its fixed bitmap font."""
    try:
        return ImageFont.load_default(size=size)
    except TypeError:
        return ImageFont.load_default()


_LETTERS = string.ascii_letters + string.digits + "    .,;:-"


def _text(rng, h, w, colour):
    """Print and signs: rows of random letters, dark on light or light on dark, at any angle."""
    size = int(round(math.exp(rng.uniform(math.log(7.0), math.log(28.0)))))
    ink = colour * rng.uniform(0.05, 0.35) if rng.uniform() < 0.7 else np.clip(colour * 0.3 + 0.7, 0, 1)
    paper = colour if ink.mean() < colour.mean() else colour * rng.uniform(0.1, 0.3)
    side = int(math.ceil(math.hypot(h, w))) + 2  # drawn unrotated, then turned and cut to the box
    img = Image.new("RGB", (side, side), tuple(int(255 * c) for c in np.clip(paper, 0, 1)))
    draw = ImageDraw.Draw(img)
    font = _font(size)
    line = size * rng.uniform(1.15, 1.6)
    chars = max(1, int(side / (0.55 * size)))
    y = -rng.uniform(0.0, line)
    while y < side:
        words = "".join(_LETTERS[int(i)] for i in rng.integers(0, len(_LETTERS), chars))
        draw.text((-rng.uniform(0.0, size), y), words, fill=tuple(int(255 * c) for c in np.clip(ink, 0, 1)), font=font)
        y += line
    img = img.rotate(float(rng.uniform(0.0, 360.0)), resample=Image.BILINEAR)
    top, left = (side - h) // 2, (side - w) // 2
    return np.asarray(img, np.float32)[top:top + h, left:left + w] / 255.0


def _foliage(rng, h, w, colour):
    """Foliage: dense small leaves (2-8 px) in greens, yellows and browns (or the leaf's hue)."""
    img = Image.new("RGB", (w, h), tuple(int(255 * c) for c in np.clip(colour * 0.3, 0, 1)))
    draw = ImageDraw.Draw(img)
    hue = rng.uniform(0.08, 0.42) if rng.uniform() < 0.7 else colorsys.rgb_to_hsv(*colour)[0]
    n = int(min(6000, h * w / 6.0))
    for _ in range(n):
        r = rng.uniform(2.0, 8.0) / 2
        aspect = rng.uniform(0.35, 1.0)
        y, x = rng.uniform(-r, h + r), rng.uniform(-r, w + r)
        rgb = colorsys.hsv_to_rgb((hue + rng.normal(0.0, 0.05)) % 1.0, rng.uniform(0.3, 0.9), rng.beta(2.0, 2.5))
        if rng.uniform() < 0.5:
            box = (x - r, y - r * aspect, x + r, y + r * aspect)
        else:
            box = (x - r * aspect, y - r, x + r * aspect, y + r)
        draw.ellipse(box, fill=tuple(int(255 * c) for c in rgb))
    return np.asarray(img, np.float32) / 255.0


_RENDER = {"flat": _flat, "fractal": _fractal, "weave": _weave, "strands": _strands, "text": _text,
           "foliage": _foliage}


def leaf_texture(rng: np.random.Generator, kind: str, h: int, w: int, colour: np.ndarray) -> np.ndarray:
    """A texture of ``kind`` (one of :data:`TEXTURES`) on base ``colour`` (RGB in [0, 1]):
    float32 ``[h, w, 3]`` display-referred RGB in [0, 1]."""
    if kind not in _RENDER:
        raise ValueError(f"texture must be one of {TEXTURES}, got {kind!r}")
    return np.clip(_RENDER[kind](rng, h, w, colour), 0.0, 1.0).astype(np.float32)


def _leaf_mask(rng: np.random.Generator, h: int, w: int, cy: float, cx: float, r: float) -> np.ndarray:
    """Bool ``[h, w]``: a leaf of radius ~``r`` centred at ``(cy, cx)`` in its box's coordinates."""
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    yy -= cy
    xx -= cx
    shape = int(rng.integers(0, 3))
    angle = rng.uniform(0.0, math.pi)
    c, s = math.cos(angle), math.sin(angle)
    u, v = c * xx + s * yy, -s * xx + c * yy
    if shape == 0:  # ellipse
        b = r * rng.uniform(0.35, 1.0)
        return (u / r) ** 2 + (v / b) ** 2 <= 1.0
    if shape == 1:  # rotated rectangle
        b = r * rng.uniform(0.3, 1.0)
        return (np.abs(u) <= r * 0.85) & (np.abs(v) <= b * 0.85)
    corners = np.sort(rng.uniform(0.0, 2 * math.pi, int(rng.integers(3, 8))))  # convex polygon
    radii = r * rng.uniform(0.7, 1.0, corners.size)
    py, px = radii * np.sin(corners), radii * np.cos(corners)
    inside = np.ones((h, w), bool)
    for k in range(corners.size):  # inside every edge's half-plane (vertices counter-clockwise)
        y0, x0, y1, x1 = py[k], px[k], py[(k + 1) % corners.size], px[(k + 1) % corners.size]
        inside &= (x1 - x0) * (yy - y0) - (y1 - y0) * (xx - x0) >= 0
    return inside


def render_textured_leaves(seed: int, size: int = 256) -> np.ndarray:
    """One textured-leaves image: uint8 ``[size, size, 3]`` display-referred RGB, a pure
    function of ``(seed, size)`` (the module docstring gives the distributions)."""
    rng = np.random.default_rng(seed)
    canvas = np.zeros((size, size, 3), np.float32)
    free = np.ones((size, size), bool)
    left = size * size
    r_max = size * rng.uniform(0.25, 0.6)
    p = np.asarray(TEXTURE_WEIGHTS) / sum(TEXTURE_WEIGHTS)
    for _ in range(MAX_LEAVES):
        r = _power_law_radius(rng, MIN_RADIUS, r_max)
        cy, cx = rng.uniform(-r / 2, size + r / 2, 2)
        y0, y1 = max(0, int(cy - r)), min(size, int(math.ceil(cy + r)) + 1)
        x0, x1 = max(0, int(cx - r)), min(size, int(math.ceil(cx + r)) + 1)
        if y1 <= y0 or x1 <= x0:
            continue
        mask = _leaf_mask(rng, y1 - y0, x1 - x0, cy - y0, cx - x0, r)
        paint = mask & free[y0:y1, x0:x1]
        if not paint.any():
            continue
        if r >= TEXTURED_RADIUS:
            kind = TEXTURES[int(rng.choice(len(TEXTURES), p=p))]
        else:
            kind = SMALL_TEXTURES[int(rng.integers(0, 2))]
        texture = leaf_texture(rng, kind, y1 - y0, x1 - x0, _base_colour(rng))
        canvas[y0:y1, x0:x1][paint] = texture[paint]
        free[y0:y1, x0:x1][paint] = False
        left -= int(paint.sum())
        if left == 0:
            break
    if left:  # the rest shows a background surface
        kind = TEXTURES[int(rng.choice(len(TEXTURES), p=p))]
        canvas[free] = leaf_texture(rng, kind, size, size, _base_colour(rng))[free]
    return (canvas * 255.0 + 0.5).astype(np.uint8)


def render_bank(path, n: int, size: int = 256, seed: int = 0, progress: bool = False) -> Path:
    """Render ``n`` images (:func:`render_textured_leaves` with seeds from ``(seed, i)``) into
    one uint8 ``[n, size, size, 3]`` ``.npy`` at ``path`` (written atomically); returns it."""
    if n < 1 or size < 16:
        raise ValueError(f"render_bank needs n >= 1 images of size >= 16, got n={n}, size={size}")
    return write_bank(path, render_textured_leaves, n, size, seed, _TAG_TEXTURED, "textured-leaves", progress)


def textured_holdout(n: int, patch: int, seed: int = 0, illumination: str = "frame") -> torch.Tensor:
    """Clean textured-leaves scenes for evaluation, float32 ``[n, 4, patch, patch]`` in [0, 1]:
    images of ``2 x patch`` pixels from a seed stream of their own (``(seed, tag 207, i)``; a bank
    of :func:`render_bank` draws from tag 206, so no scene here was trained on), each with the
    dead-leaves finish seeded from the same stream (``illumination`` as there; the evaluation
    set is ``"frame"``)."""
    out = []
    for i in range(n):
        s = image_seed(seed, _TAG_TEXTURED_HOLDOUT, i)
        out.append(finish_scene(torch.from_numpy(render_textured_leaves(s, 2 * patch)),
                                torch.Generator().manual_seed(s), patch, illumination))
    return torch.stack(out)


class TexturedLeavesDataset(DeadLeavesDataset):
    """``size`` finished textured-leaves scenes per epoch from a bank (:func:`render_bank`),
    with the dead-leaves finish; items as :class:`training.deadleaves_scenes.DeadLeavesDataset`'s
    (``source`` "textured leaves"), from a seed stream of their own."""

    def sample(self, item: int, rng: np.random.Generator) -> dict:
        out = super().sample(item, rng)
        out["source"] = "textured leaves"
        return out

    def __getitem__(self, index) -> dict:
        return seeded_item(self, index, _TAG_TEXTURED, len(self))


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(prog="python -m training.textured_leaves",
                                 description="Render a bank of textured-leaves images for train --textured-bank.")
    ap.add_argument("--out", required=True, help="the bank's .npy file")
    ap.add_argument("--n", type=int, default=200, help="images (default 200)")
    ap.add_argument("--size", type=int, default=256, help="image side in pixels (default 256: patches up to 128)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--overwrite", action="store_true", help="replace an existing bank (default: refuse)")
    args = ap.parse_args(argv)
    if Path(args.out).exists() and not args.overwrite:
        print(f"error: {args.out} exists (give --overwrite to replace it)", file=sys.stderr)
        return 2
    try:
        render_bank(args.out, args.n, args.size, args.seed, progress=True)
    except ValueError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(f"wrote {args.n} textured-leaves images of {args.size}^2 to {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
