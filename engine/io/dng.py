"""Writing a linear Bayer CFA DNG that LibRaw / rawpy (and raw editors) read back.

``write_dng`` writes one uncompressed 16-bit CFA image with the tags LibRaw needs
(checked with rawpy 0.28 for all four patterns): DNGVersion 1.4, UniqueCameraModel,
CFARepeatPatternDim 2x2 + CFAPattern + CFAPlaneColor + CFALayout, BlackLevelRepeatDim
2x2 + four BlackLevel values (without the repeat dim LibRaw drops per-site blacks),
WhiteLevel, ColorMatrix1 + CalibrationIlluminant1, BaselineExposure (0 by default: the
mosaic is at its intended brightness, so raw editors open an enhanced frame as bright as
our sRGB rendering), and optionally AsShotNeutral, Make/Model, Orientation, Software and
ImageDescription. ISO, exposure time, aperture, focal length, lens and capture date / time
go into an EXIF IFD, where LibRaw looks for them (it ignores ISOSpeedRatings in IFD0);
``engine.io.exif`` builds the tags. ``write_frame_dng`` writes a :class:`RawFrame` (or an
enhanced mosaic with a frame's metadata).

Every write is atomic: a temporary file in the target's directory, fsync, then
``os.replace``; on any error the temporary file is removed and an existing file at
``path`` is left untouched.

LibRaw refuses images smaller than 22 pixels on either side, so ``write_dng`` does too.
LibRaw stores black levels as integers: fractional black levels are written exactly
(as rationals) but read back truncated by rawpy.
"""
from __future__ import annotations

import math
import os
from pathlib import Path

import numpy as np
import tifffile
import torch

from ..camera import colour_matrix_problem
from ..errors import InvalidRawError
from .atomic import atomic_path
from .exif import (SOFTWARE, Provenance, append_exif_ifd as _append_exif_ifd, ascii_text, exif_ifd_entries, exif_tags,
                   rationals, tiff_ifd0_tags)
from .raw import PATTERNS, RawFrame, plane_sites, source_files

__all__ = ["write_dng", "write_frame_dng", "MIN_SIDE", "SRGB_COLOR_MATRIX"]

MIN_SIDE = 22  # LibRaw's identify() rejects raw images with a side below 22 pixels
D65 = 21  # EXIF LightSource code used by CalibrationIlluminant1
# XYZ (D65) -> linear sRGB: the ColorMatrix1 of a "camera" whose raw RGB is linear sRGB.
# Used when no colour matrix is known (DNG requires one for a colour image).
SRGB_COLOR_MATRIX = np.array([[3.2404542, -1.5371385, -0.4985314],
                              [-0.9692660, 1.8760108, 0.0415560],
                              [0.0556434, -0.2040259, 1.0572252]])

# TIFF field types
_BYTE, _ASCII, _SHORT, _LONG, _RATIONAL, _UNDEFINED, _SRATIONAL = 1, 2, 3, 4, 5, 7, 10
_EXIF_IFD = 34665
# tifffile will not write tag 34665 itself; a placeholder with the next lower code (sorts
# to the same place in IFD0) is written and renamed once the EXIF IFD is appended.
_EXIF_PLACEHOLDER = _EXIF_IFD - 1
_COLOUR_CODE = {"R": 0, "G": 1, "B": 2}


def write_dng(path, cfa, *, pattern, black_level, white_level, color_matrix=None, as_shot_neutral=None,
              iso=None, exposure_time=None, make=None, model=None, unique_camera_model=None,
              calibration_illuminant=D65, lens=None, f_number=None, focal_length=None, capture_time=None,
              orientation=None, provenance: Provenance | None = None, baseline_exposure: float | None = 0.0,
              overwrite: bool = False, protect=()) -> Path:
    """Write a linear CFA DNG (uncompressed, 16 bits per pixel, little-endian).

    Args:
        path: output file (conventionally ``.dng``), written atomically.
        cfa: uint16 ``[H, W]`` mosaic in DN (numpy, or torch on any device), H, W >= 22.
        pattern: "RGGB" | "BGGR" | "GRBG" | "GBRG".
        black_level: DN, a number or 4 values in plane order R, G1, B, G2 (G1 = the green
            on red's row), >= 0 and < white_level.
        white_level: DN, integer in 1..65535.
        color_matrix: 3x3 XYZ -> camera RGB (DNG ColorMatrix1); default
            :data:`SRGB_COLOR_MATRIX` (camera RGB taken as linear sRGB).
        as_shot_neutral: camera RGB of a neutral (3 values > 0), i.e. the reciprocal of the
            white-balance gains; omitted when None.
        iso: ISO speed (rounded to an integer); exposure_time: seconds. Into the EXIF IFD.
        make, model: ASCII strings (non-ASCII characters become "?").
        unique_camera_model: defaults to "make model", or "ExposureDiffusion" with neither.
        calibration_illuminant: EXIF LightSource code of color_matrix (21 = D65).
        lens, f_number, focal_length (mm), capture_time ("YYYY:MM:DD HH:MM:SS"): EXIF.
        orientation: EXIF Orientation 1..8 (IFD0), so editors turn the picture as the camera was held.
        provenance: ratio and steps of an enhancement (ImageDescription, Software).
        baseline_exposure: DNG BaselineExposure in EV (None: not written). 0 for a mosaic
            already at its intended brightness (an enhanced frame: the ratio is applied),
            so that a raw editor's neutral rendering matches our sRGB output.
        overwrite: replace an existing ``path`` (default: ``FileExistsError``).
        protect: files ``path`` may not be, whatever ``overwrite`` (the inputs the mosaic
            came from: paths or ``engine.io.paths.FileIdentity``; ``OutputPathError``).

    Returns:
        ``path`` as a Path.

    Raises:
        InvalidRawError: bad pixels or metadata (message names ``path`` and the reason).
        engine.io.atomic.DiskFullError: the disk (or a file-size limit) ran out of space.
    """
    path = Path(path)
    name = os.fspath(path)
    data = _cfa_array(cfa, name)
    key = pattern.upper() if isinstance(pattern, str) else None
    if key not in PATTERNS:
        raise InvalidRawError(name, f"pattern {pattern!r} is not a 2x2 Bayer pattern; expected one of {PATTERNS}")
    white = _number("white_level", white_level, name)
    if white != int(white) or not 1 <= white <= 65535:
        raise InvalidRawError(name, f"white_level must be an integer in 1..65535, got {white_level!r}")
    black = _values("black_level", black_level, 4, name, allow_scalar=True)
    if min(black) < 0 or max(black) >= white:
        raise InvalidRawError(name, f"black_level {tuple(black)} must be >= 0 and below the white level {int(white)}")
    matrix = _values("color_matrix", SRGB_COLOR_MATRIX if color_matrix is None else color_matrix, 9, name)
    problem = colour_matrix_problem(np.reshape(matrix, (3, 3)))
    if problem is not None:  # raw editors (and our own reader) could not colour the file
        raise InvalidRawError(name, f"color_matrix (XYZ -> camera) cannot colour an image: {problem}")

    # Per-site values go in raster order of the 2x2 cell; our order is R, G1, B, G2.
    sites = plane_sites(key)
    black_raster = [0.0] * 4
    for plane, site in enumerate(sites):
        black_raster[site] = black[plane]
    if all(v == int(v) for v in black_raster):
        black_tag = (50714, _LONG, 4, tuple(int(v) for v in black_raster), True)
    else:
        black_tag = (50714, _RATIONAL, 4, _rationals(black_raster, name, "black_level"), True)
    make_s, model_s = _ascii(make), _ascii(model)
    unique = _ascii(unique_camera_model) or " ".join(s for s in (make_s, model_s) if s) or "ExposureDiffusion"
    tags = [
        (50706, _BYTE, 4, (1, 4, 0, 0), True),  # DNGVersion
        (50707, _BYTE, 4, (1, 1, 0, 0), True),  # DNGBackwardVersion
        (50708, _ASCII, 0, unique, True),  # UniqueCameraModel
        (33421, _SHORT, 2, (2, 2), True),  # CFARepeatPatternDim
        (33422, _BYTE, 4, tuple(_COLOUR_CODE[c] for c in key), True),  # CFAPattern
        (50710, _BYTE, 3, (0, 1, 2), True),  # CFAPlaneColor
        (50711, _SHORT, 1, 1, True),  # CFALayout: rectangular
        (50713, _SHORT, 2, (2, 2), True),  # BlackLevelRepeatDim
        black_tag,  # BlackLevel
        (50717, _LONG, 1, int(white), True),  # WhiteLevel
        (50721, _SRATIONAL, 9, _rationals(matrix, name, "color_matrix", signed=True), True),  # ColorMatrix1
        (50778, _SHORT, 1, int(calibration_illuminant), True),  # CalibrationIlluminant1
    ]
    if baseline_exposure is not None:
        tags.append((50730, _SRATIONAL, 1, _rationals([_number("baseline_exposure", baseline_exposure, name)], name,
                                                       "baseline_exposure", signed=True), True))  # BaselineExposure
    if as_shot_neutral is not None:
        neutral = _values("as_shot_neutral", as_shot_neutral, 3, name)
        if min(neutral) <= 0:
            raise InvalidRawError(name, f"as_shot_neutral {tuple(neutral)} must be > 0")
        tags.append((50728, _RATIONAL, 3, _rationals(neutral, name, "as_shot_neutral"), True))
    _check_exif_numbers(iso, exposure_time, name)
    info = exif_tags(None, provenance, make=make_s, model=model_s, iso=iso, exposure_time=exposure_time, lens=lens,
                     f_number=f_number, focal_length=focal_length, capture_time=capture_time, orientation=orientation)
    tags += tiff_ifd0_tags(info)
    exif = exif_ifd_entries(info)
    if exif:
        tags.append((_EXIF_PLACEHOLDER, _LONG, 1, 0, True))
    description = provenance.description() if provenance is not None else None

    with atomic_path(path, overwrite=overwrite, protect=protect) as tmp:
        tifffile.imwrite(tmp, data, photometric=32803, subfiletype=0, byteorder="<", bigtiff=False,
                         metadata=None, software=provenance.software if provenance else SOFTWARE,
                         description=description, extratags=tags)
        if exif:
            _append_exif_ifd(tmp, exif, _EXIF_PLACEHOLDER)
    return path


def write_frame_dng(path, frame: RawFrame, cfa=None, *, provenance: Provenance | None = None,
                    overwrite: bool = False) -> Path:
    """Write ``frame`` (or the mosaic ``cfa`` with ``frame``'s metadata, e.g. an enhanced
    output with its ``provenance``) as a DNG: same pattern, black / white levels, capture
    metadata (ISO, exposure, aperture, focal length, lens, date / time, orientation, make /
    model), white balance (as AsShotNeutral = 1 / gains) and colour matrix, BaselineExposure
    0. ``overwrite`` as for ``write_dng``; ``frame``'s own source file is never replaced
    (``OutputPathError``)."""
    gains = frame.wb_gains
    neutral = None if gains is None else (1.0 / gains[0], 1.0 / gains[1], 1.0 / gains[2])
    return write_dng(path, frame.cfa if cfa is None else cfa, pattern=frame.pattern, black_level=frame.black_level,
                     white_level=frame.white_level, color_matrix=frame.color_matrix, as_shot_neutral=neutral,
                     iso=frame.iso, exposure_time=frame.exposure_time, make=frame.make, model=frame.model,
                     lens=frame.lens, f_number=frame.f_number, focal_length=frame.focal_length,
                     capture_time=frame.capture_time, orientation=frame.orientation, provenance=provenance,
                     overwrite=overwrite, protect=source_files(frame))


# ----------------------------------------------------------------------------- helpers


def _check_exif_numbers(iso, exposure_time, name) -> None:
    if exposure_time is not None and _number("exposure_time", exposure_time, name) <= 0:
        raise InvalidRawError(name, f"exposure_time must be > 0 seconds, got {exposure_time!r}")
    if iso is not None and _number("iso", iso, name) <= 0:
        raise InvalidRawError(name, f"iso must be > 0, got {iso!r}")


def _cfa_array(cfa, name) -> np.ndarray:
    if isinstance(cfa, torch.Tensor):
        if cfa.dtype != torch.uint16:
            raise InvalidRawError(name, f"cfa dtype {cfa.dtype}; expected uint16 DN")
        cfa = cfa.detach().cpu().numpy()
    if not isinstance(cfa, np.ndarray):
        raise InvalidRawError(name, f"cfa must be a numpy array or torch tensor, got {type(cfa).__name__}")
    if cfa.dtype != np.uint16:
        raise InvalidRawError(name, f"cfa dtype {cfa.dtype}; expected uint16 DN")
    if cfa.ndim != 2:
        raise InvalidRawError(name, f"cfa shape {cfa.shape}; expected a 2-D [H, W] mosaic")
    h, w = cfa.shape
    if h < MIN_SIDE or w < MIN_SIDE:
        raise InvalidRawError(name, f"frame {w}x{h} is too small for a DNG LibRaw reads (at least {MIN_SIDE}x{MIN_SIDE})")
    return np.ascontiguousarray(cfa)


def _number(what, value, name) -> float:
    try:
        v = float(value)
    except (TypeError, ValueError):
        raise InvalidRawError(name, f"{what} must be a number, got {value!r}") from None
    if not math.isfinite(v):
        raise InvalidRawError(name, f"{what} must be finite, got {value!r}")
    return v


def _values(what, value, n, name, allow_scalar=False) -> list[float]:
    try:
        arr = np.asarray(value.tolist() if isinstance(value, torch.Tensor) else value, dtype=np.float64).reshape(-1)
    except (TypeError, ValueError):
        raise InvalidRawError(name, f"{what} must be {n} numbers, got {value!r}") from None
    if allow_scalar and arr.size == 1:
        arr = np.repeat(arr, n)
    if arr.size != n or not np.isfinite(arr).all():
        raise InvalidRawError(name, f"{what} must be {n} finite numbers{' (or one)' if allow_scalar else ''}, got {arr.tolist()}")
    return [float(v) for v in arr]


def _rationals(values, name, what, signed=False) -> tuple[int, ...]:
    """Flattened (numerator, denominator) pairs within 32 bits (``exif.rationals``)."""
    try:
        return rationals(values, signed=signed)
    except ValueError as e:
        raise InvalidRawError(name, f"{what} {e}") from None


_ascii = ascii_text
