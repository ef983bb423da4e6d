"""Camera facts the engine needs: gain K from ISO through a noise profile, and colour.

Gain: ``K`` given directly wins; else the ISO (given, or from the file) goes through a
camera profile (``kernels.profiles``): the one named by the user (a shipped name or a
JSON path), else the one matched from the file's make/model, else ``DEFAULT_CAMERA``.

Colour: the camera's ``XYZ -> camera`` matrix (DNG ColorMatrix convention, as
``engine.io.raw`` reports it) becomes a ``camera -> linear sRGB`` matrix with rows summing
to 1, so that a white-balanced neutral stays neutral.

White balance when the input carries none (a uint16 array without ``wb_gains``, a file
without as-shot multipliers), ``default_white_balance``: with a colour matrix, the daylight
(D65) balance it implies (the camera response to D65 white made neutral, as dcraw does
without as-shot data); without one, a grey-world estimate on the image being rendered
(unclipped, non-black sites of each colour averaged to the green mean). Either way a grey
card renders grey (lit by daylight, or filling the frame); unbalanced camera RGB, whose
green is the most sensitive channel, would render it green.
"""
from __future__ import annotations

import re

import numpy as np
import torch

from kernels.numbers import real
from kernels.profiles import CameraProfile, load_profile

# The camera profile used when neither the user nor the file names a known camera: the
# Sony A7S II of the SID dataset, on which the public checkpoints were trained.
DEFAULT_CAMERA = "SonyA7S2"

# Accepted system gains K, DN per photo-electron. Real sensors lie within about 0.05 (base ISO
# of a deep-well sensor) and a few hundred (extreme ISO); below 0.01 the Poisson means of the
# exposure step (dn_scale / K, up to 1.6e6 at the default scale) approach the sampler's exact
# range (kernels.poisson.MAX_MEAN = 8e6), above 1e4 r * K leaves the range fp32 keeps exact.
K_RANGE = (0.01, 1.0e4)

# Model strings (upper case, spaces and dashes removed) that identify a shipped profile.
_MODEL_ALIASES = {
    "SonyA7S2": ("ILCE7SM2", "A7SII", "A7S2", "ALPHA7SII"),
    "NikonD850": ("D850",),
    "CanonEOS5D4": ("EOS5DMARKIV", "5DMARKIV", "EOS5D4"),
    "CanonEOS700D": ("EOS700D", "EOSREBELT5I", "EOSKISSX7I"),
    "CanonEOS70D": ("EOS70D",),
}

# Linear sRGB (D65) -> XYZ, IEC 61966-2-1.
SRGB_TO_XYZ = np.array(
    [[0.4124564, 0.3575761, 0.1804375], [0.2126729, 0.7151522, 0.0721750], [0.0193339, 0.1191920, 0.9503041]]
)


def _squash(s: str | None) -> str:
    return re.sub(r"[\s\-_]", "", s or "").upper()


def match_camera(make: str | None, model: str | None) -> str | None:
    """Name of the shipped profile for a file's make/model, or None if none fits."""
    key = _squash(model)
    if not key:
        return None
    for name, aliases in _MODEL_ALIASES.items():
        if any(key == a or key.endswith(a) for a in aliases):
            return name
    return None


def resolve_profile(camera=None, make: str | None = None, model: str | None = None) -> tuple[CameraProfile, str]:
    """The profile to use and how it was chosen ("given", "matched" or "default")."""
    if camera is not None:
        return load_profile(camera), "given"
    matched = match_camera(make, model)
    if matched is not None:
        return load_profile(matched), "matched"
    return load_profile(DEFAULT_CAMERA), "default"


def resolve_gain(*, K=None, iso=None, camera=None, make=None, model=None, source="input") -> float:
    """System gain K in DN per photo-electron for one frame.

    ``K`` wins when given; otherwise ``iso`` (> 0) through the profile from
    ``resolve_profile``. Either way K must lie in ``K_RANGE``. Neither known -> ValueError
    saying what to pass. Numbers may be Python, numpy or 0-d tensors (``kernels.numbers``).
    """
    lo, hi = K_RANGE
    if K is not None:
        return real(f"{source}: K", K, low=lo, high=hi, unit=" DN per photo-electron")
    if iso is None:
        raise ValueError(f"{source}: the gain K is unknown: the input carries no ISO; pass K= (DN per "
                         "photo-electron) or iso= (with camera= for a camera other than the default)")
    iso = real(f"{source}: iso", iso, low=0, low_open=True)
    profile, _ = resolve_profile(camera, make, model)
    K = float(profile.K_from_iso(iso))
    if not lo <= K <= hi:
        raise ValueError(f"{source}: ISO {iso:g} gives K = {K:g} DN per photo-electron through the {profile.name} "
                         f"profile, outside the accepted [{lo:g}, {hi:g}]; pass K= or a plausible ISO")
    return K


# Grey-world white balance: sites counted as neither black nor clipped (normalised raw), and
# the largest correction trusted (a frame of one saturated colour must not explode a gain).
GREY_WORLD_RANGE = (0.002, 0.95)
MAX_GREY_WORLD_GAIN = 16.0


def daylight_white_balance(xyz_to_camera) -> tuple[float, float, float, float]:
    """Gains (R, G1, B, G2), green = 1, that make D65 white neutral for a camera whose
    ``XYZ -> camera`` matrix is given: ``1 / (matrix @ XYZ_D65)``, normalised to green."""
    neutral = np.asarray(xyz_to_camera, dtype=np.float64) @ SRGB_TO_XYZ.sum(axis=1)  # camera RGB of D65 white
    r, g, b = (neutral[1] / neutral).tolist()
    return (r, g, b, g)


def grey_world_white_balance(raw: torch.Tensor) -> torch.Tensor:
    """Gains float32 ``[4]`` (R, G1, B, G2) on ``raw``'s device from a packed linear raw
    ``[4, h, w]`` in [0, 1]: each plane's mean over its sites within ``GREY_WORLD_RANGE``
    (the plane's whole mean when none is) scaled to the greens' mean, within
    [1 / MAX_GREY_WORLD_GAIN, MAX_GREY_WORLD_GAIN]. No host synchronisation."""
    x = raw.detach().to(torch.float32).flatten(1)
    lo, hi = GREY_WORLD_RANGE
    valid = ((x > lo) & (x < hi)).to(torch.float32)
    count = valid.sum(1)
    mean = torch.where(count > 0, (x * valid).sum(1) / count.clamp_min(1), x.mean(1))
    green = (mean[1] + mean[3]) / 2
    gains = green / mean.clamp_min(1e-6)
    gains = torch.where(mean > 0, gains, torch.ones_like(gains))
    return gains.clamp(1 / MAX_GREY_WORLD_GAIN, MAX_GREY_WORLD_GAIN)


def default_white_balance(raw: torch.Tensor, xyz_to_camera) -> torch.Tensor:
    """The white balance used when an input has none (module docstring): daylight from the
    colour matrix when there is one, else grey world on ``raw`` ``[4, h, w]``. float32
    ``[4]`` (R, G1, B, G2) on ``raw``'s device."""
    if xyz_to_camera is not None:
        return torch.tensor(daylight_white_balance(xyz_to_camera), dtype=torch.float32, device=raw.device)
    return grey_world_white_balance(raw)


def colour_matrix_problem(xyz_to_camera) -> str | None:
    """Why ``xyz_to_camera`` cannot colour an image (None when it can): it must be a finite
    3x3 matrix under which white (sRGB D65) gives a positive response in every camera
    channel, and whose white-normalised form is invertible (``camera_to_srgb`` inverts it).
    A zero or singular ColorMatrix in a file, for instance, fails here."""
    m = np.asarray(xyz_to_camera, dtype=np.float64)
    if m.shape != (3, 3):
        return f"shape {m.shape}, expected 3x3"
    if not np.all(np.isfinite(m)):
        return "non-finite values"
    if not np.any(m):
        return "all zeros"
    white = m @ SRGB_TO_XYZ
    response = white.sum(axis=1)
    if not np.all(response > 0):
        return (f"white gives the camera response {np.round(response, 6).tolist()}, not positive in every channel "
                f"(a singular or sign-flipped matrix)")
    if np.linalg.cond(white / response[:, None]) > 1e8:
        return "singular (not invertible)"
    return None


def camera_to_srgb(xyz_to_camera) -> np.ndarray:
    """3x3 ``camera RGB -> linear sRGB`` from an ``XYZ -> camera`` matrix (float64).

    ``None`` (no colour data in the file) gives the identity. A matrix
    ``colour_matrix_problem`` objects to raises ValueError (``RawFrame`` refuses such
    matrices when it is built, so a frame's own matrix always works here).
    """
    if xyz_to_camera is None:
        return np.eye(3)
    problem = colour_matrix_problem(xyz_to_camera)
    if problem is not None:
        raise ValueError(f"colour matrix must be a finite, invertible 3x3 XYZ -> camera matrix: {problem}")
    srgb_to_camera = np.asarray(xyz_to_camera, dtype=np.float64) @ SRGB_TO_XYZ
    srgb_to_camera /= srgb_to_camera.sum(axis=1, keepdims=True)
    return np.linalg.inv(srgb_to_camera)
