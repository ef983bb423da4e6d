"""The built-in procedural scene: a deterministic linear-sRGB test chart and the noisy short
exposure a camera would record of it, as a packed raw or a Bayer mosaic.

Used where the package needs a picture of its own without any file: the bench
(``bench/scene.py`` writes it as a DNG), the CPU backends' int8 calibration
(``engine.inference.cpu_backends``) and the docs' figures. ``render_scene`` draws smooth
gradients and shading, a 24-patch colour checker, a Siemens star and sharp discs, a chirped
grating and a value-noise texture at any size; ``clean_packed`` takes it to a Sony A7S II's
camera RGB, packed RGGB; ``short_exposure_cfa`` darkens it by the exposure ratio and adds the
ELD noise of a shipped camera profile. Everything is seeded.
"""
from __future__ import annotations

import math

import numpy as np
import torch
import torch.nn.functional as F

from kernels import load_profile, synthesize_noise

from .camera import SRGB_TO_XYZ

BLACK_LEVEL = 512
WHITE_LEVEL = 16383
PATTERN = "RGGB"
MAKE, MODEL = "Sony", "ILCE-7SM2"
CAMERA = "SonyA7S2"
DEFAULT_ISO = 3200
DEFAULT_RATIO = 100.0
LONG_EXPOSURE_S = 10.0  # the reference exposure; the file's exposure time is this / ratio
# The rest of the capture metadata a camera writes (EXIF), carried into every output.
CAPTURE = dict(lens="FE 35mm F1.8", f_number=1.8, focal_length=35.0, capture_time="2026:11:30 21:15:42", orientation=1)
# Sony ILCE-7SM2 XYZ(D65) -> camera RGB (Adobe DNG Converter / dcraw adobe_coeff, /10000).
SONY_A7S2_COLOR_MATRIX = np.array([[5838, -1430, -246], [-3497, 11477, 2297], [-748, 1885, 5778]]) / 10000.0

# The 24 patches of the classic colour checker, 8-bit sRGB (row by row).
_CHECKER_SRGB8 = [
    (115, 82, 68), (194, 150, 130), (98, 122, 157), (87, 108, 67), (133, 128, 177), (103, 189, 170),
    (214, 126, 44), (80, 91, 166), (193, 90, 99), (94, 60, 108), (157, 188, 64), (224, 163, 46),
    (56, 61, 150), (70, 148, 73), (175, 54, 60), (231, 199, 31), (187, 86, 149), (8, 133, 161),
    (243, 243, 242), (200, 200, 200), (160, 160, 160), (122, 122, 121), (85, 85, 85), (52, 52, 52),
]


def _srgb_to_linear(v: torch.Tensor) -> torch.Tensor:
    return torch.where(v <= 0.04045, v / 12.92, ((v + 0.055) / 1.055) ** 2.4)


def render_scene(height: int, width: int, seed: int = 0) -> torch.Tensor:
    """Linear sRGB test scene, float32 ``[3, height, width]`` in [0, 1] (CPU).

    Geometry is in fractions of the frame, so every size shows the same picture; the
    fine texture (grating periods from 2 px, per-pixel grain) is in pixels, so it stays
    fine at any size. Each element is computed inside its own bounding box only (a
    12 MP frame renders in about a second).
    """
    H, W = int(height), int(width)
    g = torch.Generator().manual_seed(seed)
    s = min(H, W)  # scale for round shapes, in pixels

    def grid(y0, y1, x0, x1):
        """Pixel coordinates (y [h, 1], x [1, w]) of the box and its slices."""
        ys, xs = slice(int(y0), max(int(y0), int(y1))), slice(int(x0), max(int(x0), int(x1)))
        y = torch.arange(ys.start, ys.stop, dtype=torch.float32)[:, None]
        x = torch.arange(xs.start, xs.stop, dtype=torch.float32)[None, :]
        return y, x, (slice(None), ys, xs)

    # Smooth gradients: a horizontal luminance ramp, a cool-to-warm vertical tint, shading.
    y, x, _ = grid(0, H, 0, W)
    u, v = x / W, y / H
    top = torch.tensor([0.55, 0.70, 1.00])[:, None, None]
    bottom = torch.tensor([1.00, 0.80, 0.55])[:, None, None]
    lum = (0.03 + 0.45 * u) * (1 - 0.8 * ((u - 0.5) ** 2 + (v - 0.5) ** 2))
    img = lum * (top * (1 - v) + bottom * v)

    def paint(box, mask, rgb) -> None:
        colour = torch.as_tensor(rgb, dtype=torch.float32)
        if colour.dim() == 1:
            colour = colour[:, None, None]
        view = img[box]
        view.copy_(torch.where(mask, colour.expand_as(view), view))

    # Colour checker: 6 x 4 patches with dark gaps, lower left.
    y, x, box = grid(0.55 * H, 0.95 * H, 0.05 * W, 0.45 * W)
    cu = (x - 0.05 * W) / (0.40 * W) * 6
    cv = (y - 0.55 * H) / (0.40 * H) * 4
    gap = ((cu % 1) < 0.08) | ((cu % 1) > 0.92) | ((cv % 1) < 0.08) | ((cv % 1) > 0.92)
    idx = cv.clamp(0, 3.999).long() * 6 + cu.clamp(0, 5.999).long()
    patches = _srgb_to_linear(torch.tensor(_CHECKER_SRGB8, dtype=torch.float32) / 255.0)  # [24, 3]
    paint(box, ~gap, patches[idx].permute(2, 0, 1))
    paint(box, gap, (0.01, 0.01, 0.01))

    # Siemens star (36 spokes) upper right: sharp edges down to the pixel scale at its centre.
    cx, cy, r = 0.72 * W, 0.30 * H, 0.22 * s
    y, x, box = grid(max(0, cy - r), min(H, cy + r + 1), max(0, cx - r), min(W, cx + r + 1))
    dx, dy = x - cx, y - cy
    disc = dx * dx + dy * dy < r * r
    spokes = torch.sin(36 * torch.atan2(dy, dx)) > 0
    paint(box, disc & spokes, (0.80, 0.80, 0.80))
    paint(box, disc & ~spokes, (0.02, 0.02, 0.02))

    # Chirped grating: period from 2 px (left) to 32 px (right), upper left.
    y, x, box = grid(0.08 * H, 0.28 * H, 0.05 * W, 0.45 * W)
    t = (x - 0.05 * W) / max(1.0, 0.40 * W)
    phase = torch.cumsum(2 * math.pi / (2.0 * 16.0 ** t), dim=1)  # integrated frequency
    grating = 0.05 + 0.55 * (0.5 + 0.5 * torch.cos(phase))
    img[box] = grating * torch.tensor([1.0, 0.9, 0.8])[:, None, None]

    # Value-noise texture ("fabric"): smooth blobs times per-pixel grain, lower right.
    y, x, box = grid(0.60 * H, 0.95 * H, 0.55 * W, 0.95 * W)
    h, w = y.shape[0], x.shape[1]
    if h and w:
        coarse = torch.rand(1, 3, max(2, h // 24), max(2, w // 24), generator=g)
        blobs = F.interpolate(coarse, size=(h, w), mode="bilinear", align_corners=False)[0]
        grain = 0.7 + 0.6 * torch.rand(1, h, w, generator=g)
        img[box] = (0.05 + 0.5 * blobs * grain).clamp(0, 1)

    # Saturated discs with sharp edges and a specular highlight near white.
    for (fx, fy, fr, rgb) in ((0.55, 0.12, 0.06, (0.75, 0.05, 0.04)), (0.90, 0.12, 0.05, (0.04, 0.45, 0.06)),
                              (0.52, 0.45, 0.05, (0.05, 0.08, 0.70)), (0.93, 0.48, 0.04, (0.98, 0.98, 0.98))):
        cx, cy, r = fx * W, fy * H, fr * s
        y, x, box = grid(max(0, cy - r), min(H, cy + r + 1), max(0, cx - r), min(W, cx + r + 1))
        paint(box, (x - cx) ** 2 + (y - cy) ** 2 < r * r, rgb)
    return img.clamp_(0, 1)


def camera_neutral(color_matrix=SONY_A7S2_COLOR_MATRIX) -> np.ndarray:
    """Camera RGB of a D65 white (DNG AsShotNeutral), green = 1."""
    srgb_to_camera = np.asarray(color_matrix) @ SRGB_TO_XYZ
    white = srgb_to_camera @ np.ones(3)
    return white / white[1]


def clean_packed(rgb: torch.Tensor, color_matrix=SONY_A7S2_COLOR_MATRIX) -> torch.Tensor:
    """Linear sRGB ``[3, H, W]`` -> camera raw of the clean long exposure, packed RGGB
    planes R, G1, B, G2 as float32 ``[1, 4, H/2, W/2]`` normalised to [0, 1]."""
    srgb_to_camera = torch.as_tensor(np.asarray(color_matrix) @ SRGB_TO_XYZ, dtype=torch.float32)
    # Scale so that a white surface reaches 1 in the brightest camera channel (green).
    srgb_to_camera = srgb_to_camera / float(srgb_to_camera.sum(dim=1).max())
    H, W = rgb.shape[-2] // 2 * 2, rgb.shape[-1] // 2 * 2
    rgb = rgb[:, :H, :W]
    planes = [(0, 0, 0), (1, 0, 1), (2, 1, 1), (1, 1, 0)]  # (camera channel, row, col) of R, G1, B, G2
    out = torch.empty(1, 4, H // 2, W // 2)
    for p, (c, r, col) in enumerate(planes):
        sub = rgb[:, r::2, col::2]
        out[0, p] = torch.einsum("k,khw->hw", srgb_to_camera[c], sub)
    return out.clamp_(0, 1)


def noise_parameters(camera: str = CAMERA, iso: float = DEFAULT_ISO) -> dict:
    """Gain K (DN / e-) from the ISO and the profile's mean-fit read / row noise (DN)."""
    profile = load_profile(camera)
    K = float(profile.K_from_iso(float(iso)))
    fit = lambda f: math.exp(f.slope * math.log(K) + f.bias)  # noqa: E731 (the fit's median, no random term)
    shapes = sorted(profile.G_shape)
    return {"K": K, "sigma_TL": fit(profile.G_scale), "lam": float(shapes[len(shapes) // 2]),
            "sigma_r": fit(profile.R_scale)}


def short_exposure_cfa(clean: torch.Tensor, *, ratio: float = DEFAULT_RATIO, iso: float = DEFAULT_ISO,
                       camera: str = CAMERA, noise_seed: int = 0) -> np.ndarray:
    """Clean packed ``[1, 4, h, w]`` -> noisy short exposure, uint16 RGGB mosaic ``[2h, 2w]`` (DN)."""
    p = noise_parameters(camera, iso)
    gen = torch.Generator().manual_seed(noise_seed)
    dn = synthesize_noise(clean.cpu(), "P+G+r", ratio=ratio, dn_scale=float(WHITE_LEVEL - BLACK_LEVEL),
                          output="dn", black_level=float(BLACK_LEVEL), generator=gen, **p)
    dn = dn.round_().clamp_(0, WHITE_LEVEL).to(torch.int32)[0]
    h, w = dn.shape[-2:]
    cfa = torch.empty(2 * h, 2 * w, dtype=torch.int32)
    cfa[0::2, 0::2], cfa[0::2, 1::2], cfa[1::2, 1::2], cfa[1::2, 0::2] = dn[0], dn[1], dn[2], dn[3]
    return cfa.numpy().astype(np.uint16)
