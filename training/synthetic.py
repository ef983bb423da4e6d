"""Clean training raw without a download: sRGB photos turned into raw, and procedural scenes.

Both produce the same uint16 packed items as the SID readers (``training.patches``), with
the levels of a 14-bit camera (black 512, white 16383 DN), so they flow through the same
collate / augment / synthesis path.

**sRGB photos -> raw** (:func:`srgb_to_packed_raw`), undoing a camera's rendering step by
step: the sRGB transfer curve (to linear sRGB), the colour matrix (linear sRGB -> camera
RGB, the inverse of ``engine.camera.camera_to_srgb`` for an XYZ -> camera matrix, by
default the Sony A7S II's), and the white balance (camera RGB divided by per-image gains
drawn log-uniformly from ``WB_RANGES``, so greens dominate as in real raw); then the RGGB
mosaic: plane R samples the photo's R at the top-left site of every 2x2 cell, G1 the G at
top-right, G2 the G at bottom-left and B the B at bottom-right, so the planes carry the
half-pixel offsets of a real sensor. A photo is not a raw capture (it was denoised,
sharpened, tone-mapped and JPEG-compressed), so this is *plausible* raw, not real raw.

**Procedural scenes** (:func:`procedural_scene`): rendered directly on a 2p x 2p RGGB
mosaic (one colour per site) and packed: a textured background, 8-40 shapes (ellipses,
rotated rectangles and thin lines, triangles) with one-pixel anti-aliased sharp edges,
random colours (some saturated, a few brighter than white so highlights clip) and
fractal textures at several scales, 0-3 patches of fine stripes or text-like glyph rows,
a smooth illumination field, a white-balance cast and a random exposure (mean value
log-uniform in [0.02, 0.35]). Vectorised torch on the CPU: the per-shape loop works on
each shape's bounding box only.

Determinism: a scene is a pure function of its ``torch.Generator`` seed, which the
datasets derive from ``(seed, epoch, index)`` through ``SeedSequence``. The CPU generator
is the same on every machine; float rounding of a different CPU could at worst move a
value across a DN rounding boundary (1 DN).
"""
from __future__ import annotations

import math
import os
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch.utils.data import Dataset

from engine.camera import camera_to_srgb

from .patches import (DEFAULT_BLACK, DEFAULT_WHITE, EmptyDatasetError, PackedBatch, collate_patches, sample_rng,
                      seeded_item, to_dn, torch_generator, warn_skipped)

__all__ = ["SONY_A7S2_XYZ_TO_CAMERA", "WB_RANGES", "srgb_to_linear", "srgb_to_camera_matrix", "srgb_to_packed_raw",
           "SRGBFolderDataset", "ProceduralSceneDataset", "procedural_scene", "synthetic_holdout"]

# XYZ -> camera RGB of the Sony ILCE-7S / ILCE-7SM2 (the SID camera): Adobe DNG Converter's
# ColorMatrix, as in dcraw's / LibRaw's adobe_coeff table (/ 10000).
SONY_A7S2_XYZ_TO_CAMERA = np.array([[5838, -1430, -246], [-3497, 11477, 2297], [-748, 1885, 5778]]) / 10000.0
# Log-uniform ranges of the as-shot white-balance gains (R, B; G = 1), from tungsten-ish
# to daylight / shade for a Sony sensor.
WB_RANGES = ((1.3, 2.8), (1.2, 2.6))
IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".webp")
_TAG_SRGB_WB = 201
_TAG_SRGB = 202
_TAG_PROCEDURAL = 203
_TAG_HOLDOUT = 204


# ----------------------------------------------------------------------------- sRGB -> raw


def srgb_to_linear(x: torch.Tensor) -> torch.Tensor:
    """Inverse sRGB transfer curve (IEC 61966-2-1), float in [0, 1]."""
    x = x.clamp(0, 1)
    return torch.where(x <= 0.04045, x / 12.92, ((x + 0.055) / 1.055) ** 2.4)


def srgb_to_camera_matrix(xyz_to_camera=SONY_A7S2_XYZ_TO_CAMERA) -> np.ndarray:
    """3x3 linear sRGB -> camera RGB (rows sum to 1: white stays white before white
    balance), the exact inverse of ``engine.camera.camera_to_srgb``. None: the identity."""
    return np.linalg.inv(camera_to_srgb(xyz_to_camera))


def _gains3(wb_gains) -> np.ndarray:
    g = np.asarray(wb_gains, dtype=np.float64).reshape(-1)
    if g.size == 4:
        g = g[:3]
    if g.size != 3 or not np.all(np.isfinite(g)) or np.any(g <= 0):
        raise ValueError(f"wb_gains must be 3 (R, G, B) or 4 (R, G1, B, G2) values > 0, got {wb_gains!r}")
    return g / g[1]


def srgb_to_packed_raw(image, *, xyz_to_camera=SONY_A7S2_XYZ_TO_CAMERA, wb_gains=(2.0, 1.0, 1.6)) -> torch.Tensor:
    """An sRGB image -> plausible linear raw, packed R, G1, B, G2, normalised.

    Args:
        image: ``[H, W, 3]`` uint8 (0..255), uint16 (0..65535) or float (0..1), numpy or torch.
        xyz_to_camera: the camera's XYZ -> camera matrix (None: camera RGB = linear sRGB).
        wb_gains: the as-shot white-balance gains (R, G, B) the raw is divided by.

    Returns:
        float32 ``[4, H//2, W//2]`` in [0, 1] (RGGB sites, see the module docstring).
        Rendering it with ``kernels.render_srgb(x, "RGGB", wb_gains, camera_to_srgb(m))``
        gives the photo back, up to demosaicing and clipping.
    """
    if isinstance(image, torch.Tensor):
        img = image.cpu()
    else:
        arr = np.asarray(image)
        img = torch.from_numpy(arr if arr.flags.writeable else arr.copy())  # PIL gives read-only arrays
    if img.dim() != 3 or img.shape[2] != 3 or img.shape[0] < 2 or img.shape[1] < 2:
        raise ValueError(f"image must be [H, W, 3] with H, W >= 2, got shape {tuple(img.shape)}")
    if img.dtype == torch.uint8:
        img = img.to(torch.float32) / 255.0
    elif img.dtype == torch.uint16:
        img = img.to(torch.float32) / 65535.0
    else:
        img = img.to(torch.float32)
    h, w = img.shape[0] // 2, img.shape[1] // 2
    lin = srgb_to_linear(img[: 2 * h, : 2 * w])
    s2c = torch.as_tensor(srgb_to_camera_matrix(xyz_to_camera), dtype=torch.float32)
    gains = torch.as_tensor(_gains3(wb_gains), dtype=torch.float32)
    cam = (lin @ s2c.T) / gains  # [2h, 2w, 3] camera RGB before white balance
    planes = (cam[0::2, 0::2, 0], cam[0::2, 1::2, 1], cam[1::2, 1::2, 2], cam[1::2, 0::2, 1])
    return torch.stack(planes).clamp_(0.0, 1.0).contiguous()


def random_wb_gains(rng: np.random.Generator) -> tuple[float, float, float]:
    """As-shot gains (R, 1, B), log-uniform in ``WB_RANGES``."""
    (r0, r1), (b0, b1) = WB_RANGES
    return (float(np.exp(rng.uniform(np.log(r0), np.log(r1)))), 1.0, float(np.exp(rng.uniform(np.log(b0), np.log(b1)))))


def _crop_item(pixels: torch.Tensor, patch: int, rng, black, white, index, source) -> dict:
    h, w = pixels.shape[1:]
    top, left = int(rng.integers(0, h - patch + 1)), int(rng.integers(0, w - patch + 1))
    return {"raw": pixels[:, top : top + patch, left : left + patch].clone(),
            "black": torch.full((4,), float(black), dtype=torch.float32), "white": float(white),
            "index": index, "source": source}


class SRGBFolderDataset(Dataset):
    """Random packed crops of ordinary sRGB photos turned into raw (uint16 DN items).

    Every image (PNG, JPEG, BMP, TIFF, WebP; sub-folders included) is converted once at
    construction with :func:`srgb_to_packed_raw` and gains from :func:`random_wb_gains`
    (fixed per image by ``seed``; or ``wb_gains`` for all), then kept as uint16 DN.
    Images whose half size is below ``patch`` are enlarged (bicubic) to fit. Unreadable
    images are skipped with a :class:`~training.patches.DataWarning`; none left raises
    :class:`~training.patches.EmptyDatasetError`. Memory: 2 bytes per photo pixel.

    Item ``i`` (or ``(epoch, i)``): ``raw`` uint16 [4, patch, patch], ``black`` float32
    [4], ``white``, ``index``, ``source`` (the image path).
    """

    def __init__(self, folder, *, patch: int = 512, xyz_to_camera=SONY_A7S2_XYZ_TO_CAMERA, wb_gains=None,
                 repeat: int = 1, seed: int = 0, black: float = DEFAULT_BLACK, white: float = DEFAULT_WHITE,
                 warn: bool = True):
        from PIL import Image, ImageOps

        self.folder, self.patch, self.repeat, self.seed = Path(folder), int(patch), int(repeat), int(seed)
        self.black, self.white, self.epoch = float(black), float(white), 0
        if not self.folder.is_dir():
            raise FileNotFoundError(2, "image folder not found", os.fspath(folder))
        paths = sorted(p for p in self.folder.rglob("*") if p.is_file() and p.suffix.lower() in IMAGE_EXTENSIONS)
        self.files: list[str] = []
        self.gains: list[tuple[float, float, float]] = []
        self._pixels: list[torch.Tensor] = []
        self.skipped: list[tuple[str, str]] = []
        for k, path in enumerate(paths):
            try:
                with Image.open(path) as im:
                    im = ImageOps.exif_transpose(im).convert("RGB")
                    short = min(im.size)
                    if short < 2 * self.patch:
                        scale = 2 * self.patch / short
                        size = (max(2 * self.patch, math.ceil(im.size[0] * scale)), max(2 * self.patch, math.ceil(im.size[1] * scale)))
                        im = im.resize(size, Image.BICUBIC)
                    rgb = np.asarray(im)
            except Exception as e:  # noqa: BLE001 - bad data is skipped and reported
                self.skipped.append((os.fspath(path), f"{type(e).__name__}: {e}"))
                continue
            gains = tuple(float(g) for g in _gains3(wb_gains)) if wb_gains is not None else random_wb_gains(
                sample_rng(self.seed, _TAG_SRGB_WB, k))
            x = srgb_to_packed_raw(rgb, xyz_to_camera=xyz_to_camera, wb_gains=gains)
            self._pixels.append(to_dn(x, self.black, self.white))
            self.files.append(os.fspath(path))
            self.gains.append(gains)
        if warn:
            warn_skipped(type(self).__name__, self.skipped, len(paths), "images")
        if not self.files:
            detail = "; ".join(f"{p}: {r}" for p, r in self.skipped[:5]) or f"no {'/'.join(IMAGE_EXTENSIONS)} files"
            raise EmptyDatasetError(f"SRGBFolderDataset: no usable image in {self.folder}: {detail}")

    def __len__(self) -> int:
        return len(self.files) * self.repeat

    def set_epoch(self, epoch: int) -> None:
        self.epoch = int(epoch)

    def packed(self, item: int) -> torch.Tensor:
        """The whole converted image ``item``, uint16 [4, h, w] DN (shared: do not modify)."""
        return self._pixels[item]

    def sample(self, item: int, rng: np.random.Generator) -> dict:
        return _crop_item(self._pixels[item], self.patch, rng, self.black, self.white, item, self.files[item])

    def __getitem__(self, index) -> dict:
        return seeded_item(self, index, _TAG_SRGB, len(self.files))


# ----------------------------------------------------------------------------- procedural


def _fractal(g: torch.Generator, size: int, betas, finest: int) -> torch.Tensor:
    """Zero-mean, unit-std 1/f^beta noise fields ``[len(betas), size, size]``: a pyramid
    from 4x4 up to ``finest`` cells per side, each level upsampled x2 (bilinear) and given
    fresh noise of amplitude ``(cells / 4) ** -beta``."""
    betas = torch.as_tensor(betas, dtype=torch.float32).reshape(1, -1, 1, 1)
    n = 4
    acc = torch.randn(1, betas.shape[1], n, n, generator=g)
    while n < finest:
        n *= 2
        acc = F.interpolate(acc, size=(n, n), mode="bilinear", align_corners=False)
        acc += torch.randn(acc.shape, generator=g) * (n / 4.0) ** (-betas)
    probe = acc[0, :, ::2, ::2]  # moments from a subsample: cheaper, same normalisation
    acc = (acc - probe.mean((1, 2)).reshape(1, -1, 1, 1)) / probe.std((1, 2)).clamp_min(1e-6).reshape(1, -1, 1, 1)
    return F.interpolate(acc, size=(size, size), mode="bilinear", align_corners=False)[0]


def _colours(g: torch.Generator, n: int) -> torch.Tensor:
    """``n`` linear RGB reflectances [n, 3]: random hue and saturation, log-uniform value;
    about 5% brighter than white (lamps, speculars: they clip)."""
    hue = torch.rand(n, 3, generator=g)
    sat = torch.rand(n, 1, generator=g).sqrt()
    val = torch.exp(torch.empty(n, 1).uniform_(math.log(0.02), 0.0, generator=g))
    val = torch.where(torch.rand(n, 1, generator=g) < 0.05, val * 6.0, val)
    base = hue / hue.amax(dim=1, keepdim=True)
    return val * (1 - sat + sat * base)


def _sites(c: torch.Tensor) -> torch.Tensor:
    """RGB ``[..., 3]`` -> the value of each site of an RGGB cell, ``[..., 2, 1, 2]``
    (broadcasts against the ``[rows, 2, cols, 2]`` mosaic layout)."""
    return torch.stack([c[..., 0], c[..., 1], c[..., 1], c[..., 2]], -1).reshape(*c.shape[:-1], 2, 1, 2)


def procedural_scene(generator: torch.Generator, patch: int = 512) -> torch.Tensor:
    """A random clean scene as packed raw: float32 ``[4, patch, patch]`` in [0, 1] (R, G1, B,
    G2 of an RGGB mosaic), a pure function of ``generator``'s state (see the module docstring).

    The mosaic is held as ``[p, 2, p, 2]`` (packed row, site row, packed column, site
    column), so a colour is a broadcast ``[2, 1, 2]`` site pattern rather than a gather,
    and packing at the end is a permutation.
    """
    g, p = generator, int(patch)
    if p < 4:
        raise ValueError(f"patch must be >= 4 packed pixels, got {patch}")
    S = 2 * p  # mosaic side
    rnd = lambda *shape: torch.rand(*shape, generator=g)  # noqa: E731
    # Sensor coordinates (pixel centres) of every site, in the [p, 2, p, 2] layout.
    yy = (torch.arange(S, dtype=torch.float32) + 0.5).reshape(p, 2, 1, 1)
    xx = (torch.arange(S, dtype=torch.float32) + 0.5).reshape(1, 1, p, 2)
    finest = 1 << max(2, (S // 4).bit_length() - 1)  # finest texture grain: about 4 pixels
    tex = _fractal(g, S, 0.6 + 1.2 * rnd(2), finest).reshape(2, p, 2, p, 2)  # two texture fields

    colours = _colours(g, 64)
    img = _sites(colours[0]) * (1 + 0.3 * tex[0]).clamp_min(0.05)  # background, [p, 2, p, 2]
    n_shapes = int(torch.randint(8, 41, (1,), generator=g))
    params = rnd(n_shapes, 8)
    params[:, 3] = params[:, 3].sort(descending=True).values  # large shapes first, small ones on top
    for k, (kind, cy, cx, size, aspect, angle, tstrength, which) in enumerate(params.tolist()):
        cy, cx = (cy * 1.2 - 0.1) * S, (cx * 1.2 - 0.1) * S
        a = 0.01 * S * 35.0 ** (size ** 2)  # half-size 1% .. 35% of the side, mostly small
        b = a * (0.03 + 0.97 * aspect) if kind > 0.35 else a * (0.3 + 0.7 * aspect)
        reach = 1.5 * max(a, b) + 2
        i0, i1 = max(0, int((cy - reach) / 2)), min(p, int((cy + reach) / 2) + 1)  # packed rows
        j0, j1 = max(0, int((cx - reach) / 2)), min(p, int((cx + reach) / 2) + 1)
        if i0 >= i1 or j0 >= j1:
            continue
        dy, dx = yy[i0:i1] - cy, xx[:, :, j0:j1] - cx
        ca, sa = math.cos(angle * math.pi), math.sin(angle * math.pi)
        u, v = dx * ca + dy * sa, dy * ca - dx * sa
        if kind < 0.35:  # ellipse: approximate signed distance in pixels
            sd = (torch.hypot(u * (1 / a), v * (1 / b)) - 1) * min(a, b)
        elif kind < 0.75:  # rotated rectangle; thin ones are lines
            sd = torch.maximum(u.abs() - a, v.abs() - b)
        else:  # triangle: three half-planes at 120 degrees, stretched by the aspect
            v = v * (a / max(b, 1e-3)) ** 0.5
            sd = torch.maximum(torch.maximum(u, u * -0.5 + v * 0.8660254), u * -0.5 - v * 0.8660254) - 0.5 * a
        alpha = (0.5 - sd).clamp_(0, 1)
        shade = (tex[int(which * 2)][i0:i1, :, j0:j1] * tstrength + 1).clamp_(min=0.0)
        region = img[i0:i1, :, j0:j1]
        region += alpha * (_sites(colours[1 + k % 63]) * shade - region)

    for _ in range(int(torch.randint(0, 4, (1,), generator=g))):  # fine stripes / text-like rows
        hp, wp = (int(v * 0.15 * S) + 4 for v in rnd(2).tolist())  # packed size of the patch
        i0, j0 = (int(v * (p - d)) for v, d in zip(rnd(2).tolist(), (hp, wp)))
        ink, paper = _sites(colours[int(rnd(1) * 63) + 1] * 0.1), _sites(colours[int(rnd(1) * 63) + 1].clamp_min(0.2))
        if float(rnd(1)) < 0.5:  # stripes, period 2..16 pixels, any orientation: moire on the mosaic
            period, theta = 2 + 14 * float(rnd(1)), math.pi * float(rnd(1))
            ph = (xx[:, :, j0 : j0 + wp] * (math.cos(theta) / period) + yy[i0 : i0 + hp] * (math.sin(theta) / period)) % 1.0
            mask = (ph < 0.5).to(torch.float32)
        else:  # text: rows of glyphs made of 3x3 random blocks, gaps between glyphs and lines
            cell = 1 + int(4 * float(rnd(1)))
            rows, cols = 2 * hp // cell + 1, 2 * wp // cell + 1
            mask = (rnd(rows, cols) < 0.45).to(torch.float32)
            mask[torch.arange(rows) % 5 >= 3] = 0  # 3 block rows of glyph, 2 of line gap
            mask[:, torch.arange(cols) % 4 == 3] = 0  # 3 block columns per glyph, 1 of gap
            mask = mask.repeat_interleave(cell, 0).repeat_interleave(cell, 1)[: 2 * hp, : 2 * wp].reshape(hp, 2, wp, 2)
        img[i0 : i0 + hp, :, j0 : j0 + wp] = paper + mask * (ink - paper)

    packed = img.permute(1, 3, 0, 2).reshape(4, p, p)[[0, 1, 3, 2]]  # sites (0,0) R, (0,1) G1, (1,1) B, (1,0) G2
    # Smooth illumination (a gradient and coarse shading, at 32x32 then upsampled), the
    # white-balance cast (raw = scene / as-shot gains) and the exposure, at packed resolution.
    gy, gx = (4 * rnd(2) - 2).tolist()
    c = (torch.arange(32, dtype=torch.float32) + 0.5) / 32 - 0.5
    light = torch.exp(gy * c[:, None] + gx * c[None, :] + 0.4 * _fractal(g, 32, [2.0], 8)[0])
    light = F.interpolate(light[None, None], size=(p, p), mode="bilinear", align_corners=False)[0]
    (r0, r1), (b0, b1) = WB_RANGES
    ur, ub = rnd(2).tolist()
    gains = torch.tensor([r0 * (r1 / r0) ** ur, 1.0, b0 * (b1 / b0) ** ub, 1.0]).reshape(4, 1, 1)
    packed = packed * light / gains
    mean = math.exp(math.log(0.02) + float(rnd(1)) * math.log(0.35 / 0.02))
    return (packed * (mean / packed.mean().clamp_min(1e-6))).clamp_(0, 1).contiguous()


class ProceduralSceneDataset(Dataset):
    """``size`` procedural scenes per epoch (new ones every epoch), uint16 DN items.

    Item ``i`` (or ``(epoch, i)``) is a pure function of ``(seed, epoch, i)``: ``raw``
    uint16 [4, patch, patch], ``black`` float32 [4], ``white``, ``index``, ``source``
    ("procedural"). ``render`` gives the float32 scene before quantisation.
    """

    def __init__(self, size: int = 10000, *, patch: int = 512, seed: int = 0, black: float = DEFAULT_BLACK,
                 white: float = DEFAULT_WHITE):
        if size < 1:
            raise ValueError(f"size must be >= 1, got {size}")
        self.size, self.patch, self.seed, self.epoch = int(size), int(patch), int(seed), 0
        self.black, self.white = float(black), float(white)

    def __len__(self) -> int:
        return self.size

    def set_epoch(self, epoch: int) -> None:
        self.epoch = int(epoch)

    def render(self, index: int, epoch: int | None = None) -> torch.Tensor:
        """float32 [4, patch, patch] in [0, 1], scene ``index`` of ``epoch``."""
        rng = sample_rng(self.seed, _TAG_PROCEDURAL, self.epoch if epoch is None else epoch, index)
        return procedural_scene(torch_generator(rng), self.patch)

    def sample(self, item: int, rng: np.random.Generator) -> dict:
        x = procedural_scene(torch_generator(rng), self.patch)
        return {"raw": to_dn(x, self.black, self.white), "black": torch.full((4,), self.black, dtype=torch.float32),
                "white": self.white, "index": item, "source": "procedural"}

    def __getitem__(self, index) -> dict:
        return seeded_item(self, index, _TAG_PROCEDURAL, len(self))


def synthetic_holdout(n: int = 64, patch: int = 256, seed: int = 0) -> PackedBatch:
    """A fixed evaluation set of ``n`` clean procedural patches (CPU): :class:`PackedBatch`
    with ``raw`` uint16 [n, 4, patch, patch] (``.normalised()`` for float32 in [0, 1]).

    Drawn from a seed stream of its own, so no training scene (any seed, epoch, index)
    is ever one of them; the same on every call and machine (see the module docstring).
    """
    if n < 1:
        raise ValueError(f"n must be >= 1, got {n}")
    items = []
    for i in range(n):
        x = procedural_scene(torch_generator(sample_rng(seed, _TAG_HOLDOUT, i)), patch)
        items.append({"raw": to_dn(x), "black": torch.full((4,), DEFAULT_BLACK), "white": DEFAULT_WHITE,
                      "index": i, "source": "holdout"})
    return collate_patches(items)
