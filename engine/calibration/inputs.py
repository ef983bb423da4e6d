"""What ``engine.calibration.calibrate`` is given: capture folders, file lists, {ISO: frames}.

``find_frames`` reads the documented capture layout (``bias/`` and ``flat/`` folders),
``work_items`` flattens any accepted form into one list of frames to measure, and
``iso_from_path`` recovers an ISO from folder names when the files carry none.
"""
from __future__ import annotations

import dataclasses
import math
import os
import re
from collections.abc import Mapping
from pathlib import Path

from ..io.raw import RawFrame, read_raw
from .stats import CalibrationError

RAW_EXTENSIONS = (".dng", ".arw", ".srf", ".sr2", ".nef", ".nrw", ".cr2", ".cr3", ".crw", ".orf", ".rw2",
                  ".raf", ".pef", ".srw", ".3fr", ".iiq", ".erf", ".kdc", ".mrw", ".raw", ".rwl", ".x3f")
_ISO_IN_PATH = re.compile(r"(?i)(?:^|[^a-z])iso[ _-]?(\d+)")
_WHAT_TO_CAPTURE = ("capture, at each ISO, >= 2 bias frames (lens capped, shortest exposure) and flats at >= 3 "
                    "brightness levels with >= 2 frames per level")



@dataclasses.dataclass
class _Item:
    ref: object  # path or RawFrame
    kind: str  # "bias" | "flat"
    iso: float | None = None  # from a {iso: frames} key
    level: int | None = None  # explicit level group (a nested list of flats)
    # filled from the frame
    source: str = ""
    mean: float = 0.0  # flats: mean DN above black
    exposure: float | None = None
    stats: dict | None = None  # bias statistics

    def read(self) -> RawFrame:
        return self.ref if isinstance(self.ref, RawFrame) else read_raw(self.ref)


def _is_frame(x) -> bool:
    return isinstance(x, (str, os.PathLike, RawFrame))


def _iso_key(value, where) -> float:
    try:
        iso = float(value)
    except (TypeError, ValueError):
        raise CalibrationError(f"{where}: ISO keys must be numbers, got {value!r}") from None
    if not (math.isfinite(iso) and iso > 0):
        raise CalibrationError(f"{where}: ISO must be > 0, got {value!r}")
    return iso


def work_items(frames, kind) -> list:
    """Flatten ``frames`` (a frame, a sequence, or {iso: sequence}; flats may nest a level
    as a sequence of frames) into _Items."""
    what = "bias frames" if kind == "bias" else "flat frames"
    out, level = [], [0]

    def add(seq, iso):
        if _is_frame(seq):
            seq = [seq]
        if isinstance(seq, (bytes, Mapping)) or not hasattr(seq, "__iter__"):
            raise CalibrationError(f"{what}: expected paths or RawFrames, got {type(seq).__name__}")
        for el in seq:
            if isinstance(el, (str, os.PathLike)) and os.path.isdir(el):
                out.extend(_Item(f, kind, iso) for f in raw_files(el))
            elif _is_frame(el):
                out.append(_Item(el, kind, iso))
            elif kind == "flat" and hasattr(el, "__iter__") and not isinstance(el, (bytes, Mapping)):
                level[0] += 1
                for f in el:
                    if not _is_frame(f):
                        raise CalibrationError(f"{what}: a level must list paths or RawFrames, got {type(f).__name__}")
                    out.append(_Item(f, kind, iso, level[0]))
            else:
                raise CalibrationError(f"{what}: expected paths or RawFrames, got {type(el).__name__}")

    if frames is None:
        frames = []
    if isinstance(frames, Mapping):
        for key, seq in frames.items():
            add(seq, _iso_key(key, what))
    else:
        add(frames, None)
    if not out:
        raise CalibrationError(f"no {what} given: {_WHAT_TO_CAPTURE}")
    return out


def iso_from_path(path) -> float | None:
    """The ISO named in a path (``ISO3200``, ``iso_800``, ...; the deepest part wins), or None."""
    for part in reversed(Path(path).parts):
        m = _ISO_IN_PATH.search(part)
        if m and int(m.group(1)) > 0:
            return float(m.group(1))
    return None


def find_frames(folder) -> tuple[list, list]:
    """Bias and flat files under a capture folder: ``folder/bias`` (or ``dark``, ``darks``)
    and ``folder/flat`` (or ``flats``), any case, searched recursively for raw files."""
    folder = Path(folder)
    if not folder.is_dir():
        raise CalibrationError(f"{folder}: no such capture folder")
    found = []
    for names in (("bias", "dark", "darks"), ("flat", "flats")):
        sub = next((d for n in names for d in sorted(folder.iterdir()) if d.is_dir() and d.name.lower() == n), None)
        if sub is None:
            raise CalibrationError(f"{folder}: no '{names[0]}' sub-folder (expected {folder}/bias/ and {folder}/flat/ "
                                   "holding the raw files)")
        found.append(raw_files(sub))
    return found[0], found[1]


def raw_files(path) -> list:
    """``path`` itself if a file; else the raw files under it (recursively, sorted)."""
    path = Path(path)
    if path.is_file():
        return [path]
    if not path.is_dir():
        raise CalibrationError(f"{path}: no such file or folder")
    return sorted(p for p in path.rglob("*") if p.is_file() and p.suffix.lower() in RAW_EXTENSIONS
                  and not p.name.startswith("."))
