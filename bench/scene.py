"""The bench's built-in raw scene: ``engine.scene``'s procedural test chart made into a real DNG.

No download and nothing shipped: ``render_scene`` (``engine.scene``) draws a linear-sRGB test chart at any
size (smooth gradients and shading, a 24-patch colour checker, a Siemens star and sharp
discs for edges, a chirped grating and a value-noise texture for fine detail, a
near-white highlight), and ``write_scene_dng`` turns it into the short exposure a camera
would record:

1. linear sRGB -> camera RGB through the Sony A7S II colour matrix (so the raw has a
   camera's green-heavy, white-unbalanced look and the DNG's ColorMatrix1 /
   AsShotNeutral describe it truthfully), mosaiced RGGB, normalised to [0, 1] of
   (white - black): the clean long exposure;
2. darkened by the exposure ratio and given the ELD noise of a shipped camera profile
   (SonyA7S2 at ISO 3200 by default) with ``kernels.synthesize_noise(..., output="dn")``:
   shot noise (P), Tukey-lambda read noise (G) and row noise (r) in DN above the black
   level. The ``u`` (quantisation) component is left out because the ADC step itself is
   applied instead: rounding to uint16, clipped to [0, white];
3. written with ``engine.io.dng.write_dng`` (RGGB, black 512, white 16383, the ISO, make
   "Sony", model "ILCE-7SM2", so the Pipeline matches the SonyA7S2 profile) and read
   back by the bench through rawpy (``engine.read_raw``), the production path.

Everything is seeded: the same arguments give the same file bit for bit.
"""
from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from engine.io.dng import write_dng
from engine.scene import (  # noqa: F401 - the scene itself lives in the engine (also its int8 calibration)
    BLACK_LEVEL, CAMERA, CAPTURE, DEFAULT_ISO, DEFAULT_RATIO, LONG_EXPOSURE_S, MAKE, MODEL, PATTERN,
    SONY_A7S2_COLOR_MATRIX, WHITE_LEVEL, camera_neutral, clean_packed, noise_parameters, render_scene,
    short_exposure_cfa,
)


def write_cfa_dng(path, cfa: np.ndarray, *, ratio: float = DEFAULT_RATIO, iso: float = DEFAULT_ISO,
                  **capture) -> Path:
    """Write a scene mosaic as a Sony-A7S-II-like DNG (atomic; the bench's own scratch file,
    replaced when it exists). ``capture``: more of ``write_dng``'s metadata (lens,
    f_number, focal_length, capture_time, orientation), default ``CAPTURE``."""
    return write_dng(path, cfa, pattern=PATTERN, black_level=BLACK_LEVEL, white_level=WHITE_LEVEL,
                     color_matrix=SONY_A7S2_COLOR_MATRIX, as_shot_neutral=tuple(camera_neutral()),
                     iso=iso, exposure_time=LONG_EXPOSURE_S / ratio, make=MAKE, model=MODEL, overwrite=True,
                     **{**CAPTURE, **capture})


def write_scene_dng(path, height: int, width: int, *, ratio: float = DEFAULT_RATIO, iso: float = DEFAULT_ISO,
                    seed: int = 0, noise_seed: int = 0, **capture) -> Path:
    """Render the scene at ``height x width`` Bayer sites (even, >= 22) and write its
    noisy short exposure (darkened by ``ratio``) as a DNG; returns the path. ``capture``
    as for ``write_cfa_dng``."""
    _check_size(height, width)
    clean = clean_packed(render_scene(height, width, seed))
    return write_cfa_dng(path, short_exposure_cfa(clean, ratio=ratio, iso=iso, noise_seed=noise_seed),
                         ratio=ratio, iso=iso, **capture)


def write_scene_files(folder, count: int, height: int, width: int, *, ratio: float = DEFAULT_RATIO,
                      iso: float = DEFAULT_ISO, seed: int = 0) -> list[Path]:
    """``count`` DNGs of the scene in ``folder`` (frame_000.dng, ...), each with its own
    noise draw (one clean render shared by all)."""
    _check_size(height, width)
    os.makedirs(folder, exist_ok=True)
    clean = clean_packed(render_scene(height, width, seed))
    return [write_cfa_dng(Path(folder) / f"frame_{i:03d}.dng",
                          short_exposure_cfa(clean, ratio=ratio, iso=iso, noise_seed=1000 + i), ratio=ratio, iso=iso)
            for i in range(count)]


def _check_size(height: int, width: int) -> None:
    if height % 2 or width % 2 or height < 22 or width < 22:
        raise ValueError(f"scene size must be even and at least 22 x 22 Bayer sites (LibRaw's minimum), "
                         f"got {height} x {width}")
