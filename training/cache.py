"""Decode-once cache of raw files as packed uint16 DN (``[4, h, w]``, planes R, G1, B, G2).

Ground-truth frames are read many times per run (one crop per epoch or more), and
decoding a 12 MP ARW costs far more than cutting a crop, so each file is decoded once:

- ``"memory"``: a uint16 CPU tensor per file (24 MB for a Sony A7S II frame, versus
  97 MB as float32). Built at dataset construction, in the main process, so DataLoader
  workers forked later share the pages instead of decoding again.
- ``"disk"``: one ``<key>.npy`` (the packed uint16 array, plain NumPy format) and one
  ``<key>.json`` (levels, pattern, ISO, exposure, and the source's path, ``st_mtime_ns``
  and ``st_size``) per file under ``cache_dir``, where ``key`` is the SHA-1 of the
  file's real path. Both are written atomically (``engine.io.atomic.atomic_path``), the
  ``.npy`` first, so a ``.json`` whose key matches always sits beside its complete
  array. A source whose mtime or size changed no longer matches: it is decoded again and
  its entry rewritten in place. Crops memory-map the ``.npy``, so a dataset larger than
  RAM works, and a second run (or a second process) decodes nothing.
- ``None``: no cache; every access decodes the file again.

Decoding goes through ``engine.io.raw.read_raw`` (looked up at call time, so tests can count
the calls); ``decodes`` counts them too.
"""
from __future__ import annotations

import hashlib
import json
import os
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch

from engine.io import raw as rawio
from engine.io.atomic import atomic_path

from .patches import pack_dn

__all__ = ["FrameInfo", "PackedRawCache", "decode_packed", "CACHE_VERSION"]

CACHE_VERSION = 1
CACHE_MODES = ("memory", "disk", None)


@dataclass(frozen=True)
class FrameInfo:
    """What a cached frame is: packed ``shape`` (h, w), the sensor ``pattern``, ``black``
    DN per plane (R, G1, B, G2), ``white`` DN, ``iso``, ``exposure_time`` (s) or None."""

    source: str
    shape: tuple[int, int]
    pattern: str
    black: tuple[float, float, float, float]
    white: float
    iso: float | None = None
    exposure_time: float | None = None


def decode_packed(path) -> tuple[torch.Tensor, FrameInfo]:
    """Decode a raw file -> (uint16 [4, H//2, W//2] packed DN, FrameInfo)."""
    frame = rawio.read_raw(path)
    packed = pack_dn(frame.cfa, frame.pattern)
    info = FrameInfo(os.fspath(path), (packed.shape[1], packed.shape[2]), frame.pattern, tuple(frame.black_level),
                     float(frame.white_level), frame.iso, frame.exposure_time)
    return packed, info


def _default_dir() -> Path:
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "exposure_diffusion" / "packed"


class PackedRawCache:
    """Packed uint16 frames by path (see the module docstring for the modes).

    Args:
        mode: "memory", "disk" or None.
        cache_dir: folder of the disk cache (created if needed); default
            ``$XDG_CACHE_HOME/exposure_diffusion/packed`` (``~/.cache/...``).
    """

    def __init__(self, mode="memory", cache_dir=None):
        if mode not in CACHE_MODES:
            raise ValueError(f"cache must be one of {CACHE_MODES}, got {mode!r}")
        self.mode = mode
        self.cache_dir = Path(cache_dir) if cache_dir is not None else (_default_dir() if mode == "disk" else None)
        if mode == "disk":
            self.cache_dir.mkdir(parents=True, exist_ok=True)
        self.decodes = 0
        self._pixels: dict[str, torch.Tensor] = {}  # memory mode
        self._infos: dict[str, FrameInfo] = {}

    def __repr__(self) -> str:
        where = f", cache_dir={os.fspath(self.cache_dir)!r}" if self.mode == "disk" else ""
        return f"PackedRawCache(mode={self.mode!r}{where}, {len(self._infos)} frames, {self.decodes} decodes)"

    def _decode(self, path: str) -> tuple[torch.Tensor, FrameInfo]:
        self.decodes += 1
        return decode_packed(path)

    def info(self, path) -> FrameInfo:
        """The frame's metadata; decodes (and caches) the file unless already cached.
        Raises whatever decoding raises (``engine.errors.RawInputError``, OSError)."""
        path = os.fspath(path)
        if path in self._infos:
            return self._infos[path]
        if self.mode == "memory":
            pixels, info = self._decode(path)
            self._pixels[path] = pixels
        elif self.mode == "disk":
            info = self._disk_entry(path)
        else:
            _, info = self._decode(path)
        self._infos[path] = info
        return info

    def full(self, path) -> torch.Tensor:
        """The whole packed frame, uint16 [4, h, w] (a shared tensor in memory mode: do not modify)."""
        info = self.info(path)
        return self.crop(path, 0, 0, *info.shape)

    def crop(self, path, top: int, left: int, height: int, width: int) -> torch.Tensor:
        """uint16 ``[4, height, width]`` packed DN cut at (top, left), a new contiguous tensor."""
        path = os.fspath(path)
        info = self.info(path)
        h, w = info.shape
        if not (0 <= top and 0 <= left and height >= 1 and width >= 1 and top + height <= h and left + width <= w):
            raise ValueError(f"{path}: crop ({top}, {left}, {height}x{width}) outside the packed frame {h}x{w}")
        if self.mode == "memory":
            return self._pixels[path][:, top : top + height, left : left + width].clone()
        if self.mode == "disk":
            arr = np.load(self._npy(path), mmap_mode="r")
            return torch.from_numpy(np.array(arr[:, top : top + height, left : left + width], copy=True))
        pixels, _ = self._decode(path)
        return pixels[:, top : top + height, left : left + width].clone()

    # ------------------------------------------------------------------ disk

    def _key(self, path: str) -> str:
        return hashlib.sha1(os.path.realpath(path).encode("utf-8", "surrogateescape")).hexdigest()

    def _npy(self, path: str) -> Path:
        return self.cache_dir / f"{self._key(path)}.npy"

    def _disk_entry(self, path: str) -> FrameInfo:
        st = os.stat(path)  # FileNotFoundError for a missing source, as for decoding
        stamp = {"version": CACHE_VERSION, "source": os.path.realpath(path), "mtime_ns": st.st_mtime_ns,
                 "size": st.st_size}
        npy, meta = self._npy(path), self.cache_dir / f"{self._key(path)}.json"
        try:
            stored = json.loads(meta.read_text())
            if all(stored.get(k) == v for k, v in stamp.items()):
                info = FrameInfo(**{**stored["info"], "source": path, "shape": tuple(stored["info"]["shape"]),
                                    "black": tuple(stored["info"]["black"])})
                arr = np.load(npy, mmap_mode="r")
                if arr.dtype == np.uint16 and arr.shape == (4, *info.shape):
                    return info
        except (OSError, ValueError, KeyError, TypeError):
            pass  # missing, stale or damaged entry: rebuild it below
        pixels, info = self._decode(path)
        with atomic_path(npy) as tmp, open(tmp, "wb") as f:
            np.save(f, pixels.numpy())
        record = {**stamp, "info": {**asdict(info), "shape": list(info.shape), "black": list(info.black)}}
        with atomic_path(meta) as tmp:
            Path(tmp).write_text(json.dumps(record, indent=1))
        return info
