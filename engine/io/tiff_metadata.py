"""Camera metadata from the TIFF structure of TIFF-based raws (DNG, ARW, NEF, CR2, ...).

LibRaw (through rawpy) decodes the pixels; make, model, ISO, exposure time, aperture,
focal length, lens, capture date / time, orientation and a DNG's own colour matrix are
read here from IFD0 and the EXIF IFD with tifffile, best effort. tifffile also parses the
TIFF structures of Olympus ORF and Panasonic RW2 (other magic numbers). Formats that are
not TIFF (Canon CR3 and CRW, Fujifilm RAF, Minolta MRW, Phase One IIQ) have no make or
model here: rawpy does not expose them; their capture settings come from LibRaw
(``engine.io.raw``).
"""
from __future__ import annotations

import logging
import math

import numpy as np
import tifffile


class _Quiet(logging.Filter):
    def filter(self, record) -> bool:
        return False


def tiff_metadata(name) -> dict:
    """Make, model, ISO, exposure and (DNG) colour matrix from a TIFF-based raw's IFD0 and
    EXIF IFD. Best effort: any problem gives {} (the pixels came from LibRaw anyway)."""
    log = logging.getLogger("tifffile")
    quiet = _Quiet()
    log.addFilter(quiet)  # tifffile logs about vendor tags it does not know
    try:
        with tifffile.TiffFile(name) as tf:
            tags = {t.code: t.value for t in tf.pages[0].tags.values()}
    except Exception:  # noqa: BLE001 - metadata is optional
        return {}
    finally:
        log.removeFilter(quiet)
    exif = tags.get(34665) if isinstance(tags.get(34665), dict) else {}
    out = {}
    out["make"] = text_value(tags.get(271))
    out["model"] = text_value(tags.get(272)) or text_value(tags.get(50708))  # DNG UniqueCameraModel
    iso = exif.get("ISOSpeedRatings", exif.get("PhotographicSensitivity", tags.get(34855)))
    iso = iso[0] if isinstance(iso, (tuple, list)) and iso else iso
    if iso == 65535 and exif.get("ISOSpeed"):  # EXIF 2.3: the real value is in ISOSpeed
        iso = exif["ISOSpeed"]
    out["iso"] = float(iso) if isinstance(iso, (int, float)) and iso > 0 else None
    out["exposure_time"] = _rational(exif.get("ExposureTime", tags.get(33434)))
    out["f_number"] = _rational(exif.get("FNumber", tags.get(33437)))
    out["focal_length"] = _rational(exif.get("FocalLength", tags.get(37386)))
    out["lens"] = text_value(exif.get("LensModel", tags.get(42036)))
    out["capture_time"] = _exif_time(exif.get("DateTimeOriginal", tags.get(36867)))
    orientation = tags.get(274)
    out["orientation"] = int(orientation) if isinstance(orientation, int) and 1 <= orientation <= 8 else None
    if 50706 in tags:  # DNG: the file's own ColorMatrix, preferring the D65 (21) one
        mats = [(tags.get(50778 + k), _srationals(tags.get(50721 + k))) for k in (0, 1)]
        mats = [(ill, m) for ill, m in mats if m is not None]
        mats.sort(key=lambda im: im[0] != 21)
        if mats:
            out["color_matrix"] = mats[0][1]
    return {k: v for k, v in out.items() if v is not None}


def _exif_time(v) -> str | None:
    """An EXIF date / time ("YYYY:MM:DD HH:MM:SS"); None when empty or all zeros / blanks."""
    text = text_value(v)
    if text is None or not any(c.isdigit() and c != "0" for c in text):
        return None
    return text


def _rational(v) -> float | None:
    try:
        num, den = (v if isinstance(v, (tuple, list)) else (v, 1))[:2]
        x = float(num) / float(den)
    except (TypeError, ValueError, ZeroDivisionError):
        return None
    return x if math.isfinite(x) and x > 0 else None


def _srationals(v) -> np.ndarray | None:
    if not isinstance(v, (tuple, list)) or len(v) != 18:
        return None
    num, den = np.asarray(v[0::2], dtype=np.float64), np.asarray(v[1::2], dtype=np.float64)
    if np.any(den == 0):
        return None
    return (num / den).reshape(3, 3)


def text_value(v) -> str | None:
    """A TIFF ASCII / bytes value as stripped text (None when empty)."""
    if v is None:
        return None
    if isinstance(v, bytes):
        v = v.decode("utf-8", "replace")
    v = str(v).replace("\x00", " ").strip()
    return v or None
