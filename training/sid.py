"""The SID dataset layout (Chen et al., "Learning to See in the Dark", CVPR 2018).

Layout under ``root``: ``Sony/long/*.ARW`` (ground truth), ``Sony/short/*.ARW`` (inputs),
and list files such as ``Sony_train_list.txt`` whose rows read::

    ./Sony/short/00001_00_0.04s.ARW ./Sony/long/00001_00_10s.ARW ISO200 F8

(short path, long path, optional ISO and F-number; paths relative to ``root`` or absolute;
blank lines and ``#`` comments ignored). File names carry the exposure time (``_0.04s``,
``_10s``); when a name does not, the file's EXIF exposure time is used.

- :class:`SIDLongDataset`: random packed crops of the long exposures (clean targets for
  synthetic noise). Each long file is decoded **once** into packed uint16 DN
  (:class:`PackedRawCache`, in memory or on disk), and crops are cut from that.
- :class:`SIDPairDataset`: real (short, long) pairs with their exposure ratio, capped at
  300 as in SID, for evaluation (centre crop or full frame) and fine-tuning (random crop).

Bad data never crashes construction: an unreadable file, a malformed list row, a frame
smaller than the patch or a pair whose sizes differ is recorded in ``dataset.skipped``
(``(path, reason)`` pairs) and summarised in one :class:`~training.patches.DataWarning`;
a dataset left with nothing raises :class:`~training.patches.EmptyDatasetError`.
"""
from __future__ import annotations

import os
import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import rawpy
import torch
from torch.utils.data import Dataset

from .cache import FrameInfo, PackedRawCache, decode_packed
from .patches import EmptyDatasetError, sample_rng, seeded_item, split_index, warn_skipped

__all__ = ["SIDLongDataset", "SIDPairDataset", "SIDListEntry", "read_sid_list", "exposure_from_name",
           "collate_pairs", "SID_MAX_RATIO"]

SID_MAX_RATIO = 300.0  # SID caps the amplification ratio at 300
_TAG_LONG = 101  # SeedSequence stream tags: one per kind of sample
_TAG_PAIR = 102
_EXPOSURE_RE = re.compile(r"_((?:\d+\.?\d*)|(?:\.\d+))s$", re.IGNORECASE)
_ISO_RE = re.compile(r"^ISO(\d+(?:\.\d*)?)$", re.IGNORECASE)
_F_RE = re.compile(r"^F(\d+(?:\.\d*)?)$", re.IGNORECASE)


@dataclass(frozen=True)
class SIDListEntry:
    """One list-file row: absolute short and long paths, ISO and F-number (None if absent)."""

    short: str
    long: str
    iso: float | None = None
    fnumber: float | None = None
    where: str = ""


def exposure_from_name(path) -> float | None:
    """Exposure time in seconds from a SID file name (``00001_00_0.04s.ARW`` -> 0.04)."""
    m = _EXPOSURE_RE.search(Path(os.fspath(path)).stem)
    if not m:
        return None
    v = float(m.group(1))
    return v if v > 0 else None


def _resolve(root: Path, p: str) -> str:
    return os.path.normpath(p if os.path.isabs(p) else os.path.join(root, p))


def read_sid_list(root, list_file) -> tuple[list[SIDListEntry], list[tuple[str, str]]]:
    """Parse one list file (or a sequence of them) -> (entries, problems).

    ``list_file`` is absolute or relative to ``root`` (or to the working directory).
    ``problems`` holds ``(file:line, reason)`` for malformed rows; a missing list file
    raises FileNotFoundError (a wrong argument, not bad data).
    """
    root = Path(root)
    files = [list_file] if isinstance(list_file, (str, os.PathLike)) else list(list_file)
    entries, problems = [], []
    for lf in files:
        path = Path(lf)
        if not path.is_absolute() and not path.exists():
            path = root / path
        if not path.is_file():
            raise FileNotFoundError(2, f"SID list file not found (looked in the working directory and under {root})", os.fspath(lf))
        for n, line in enumerate(path.read_text().splitlines(), 1):
            line = line.split("#", 1)[0].strip()
            if not line:
                continue
            where = f"{path}:{n}"
            tokens = line.split()
            if len(tokens) < 2:
                problems.append((where, f"malformed row {line!r}: expected 'short long [ISOnnn] [Fn]'"))
                continue
            iso = fnum = None
            for t in tokens[2:]:
                if (m := _ISO_RE.match(t)):
                    iso = float(m.group(1))
                elif (m := _F_RE.match(t)):
                    fnum = float(m.group(1))
            entries.append(SIDListEntry(_resolve(root, tokens[0]), _resolve(root, tokens[1]), iso, fnum, where))
    return entries, problems


def _as_cache(cache, cache_dir) -> PackedRawCache:
    return cache if isinstance(cache, PackedRawCache) else PackedRawCache(cache, cache_dir)


def _reason(e: BaseException) -> str:
    return f"{type(e).__name__}: {e}"


class SIDLongDataset(Dataset):
    """Random packed crops of SID long exposures, as uint16 DN items (see ``training.patches``).

    Args:
        root: the dataset root (holding ``Sony/``).
        list_file: a list file or several (absolute or relative to ``root``); None takes
            every file in ``root/Sony/long``. Each long file is used once, however many
            rows name it.
        patch: crop side in packed pixels (512 packed = 1024 x 1024 sensor pixels).
        cache: "memory" (packed uint16 tensors in RAM), "disk" (``.npy`` files under
            ``cache_dir``, memory-mapped per crop), None (decode at every access), or a
            :class:`PackedRawCache` to share with another dataset.
        cache_dir: folder of the disk cache (default ``~/.cache/exposure_diffusion/packed``).
        repeat: crops per file per epoch (``len = files * repeat``).
        seed: with the epoch and index, fixes every crop (reproducible after a resume).
        white_level: override the files' white level (e.g. 16383 for the reference code's
            "faithful" normalisation); default: each file's own.
        warn: emit the summary warning for skipped files.

    Item ``i`` (or ``(epoch, i)``) is a dict: ``raw`` uint16 [4, patch, patch], ``black``
    float32 [4], ``white``, ``index``, ``source`` (the file), ``iso``, ``exposure_time``.
    """

    def __init__(self, root, list_file=None, *, patch: int = 512, cache="memory", cache_dir=None, repeat: int = 1,
                 seed: int = 0, white_level: float | None = None, warn: bool = True):
        self._init_crops(root, patch, cache, cache_dir, repeat, seed, white_level)
        if list_file is None:
            folder = self.root / "Sony" / "long"
            longs = sorted(os.fspath(p) for p in folder.iterdir() if p.is_file()) if folder.is_dir() else []
        else:
            entries, self.skipped = read_sid_list(self.root, list_file)
            longs = list(dict.fromkeys(e.long for e in entries))
        where = f"list {list_file}" if list_file is not None else f"{self.root / 'Sony' / 'long'}"
        self._probe(longs, warn, f"no usable long exposure under {self.root} ({where})")

    def _init_crops(self, root, patch, cache, cache_dir, repeat, seed, white_level) -> None:
        """The settings every dataset of random crops of raw files holds (checked)."""
        self.root, self.patch, self.repeat, self.seed, self.epoch = Path(root), int(patch), int(repeat), int(seed), 0
        self.white_level = white_level
        if self.patch < 1 or self.repeat < 1:
            raise ValueError(f"patch and repeat must be >= 1, got {patch} and {repeat}")
        self.cache = _as_cache(cache, cache_dir)
        self.skipped: list[tuple[str, str]] = []

    def _probe(self, paths, warn: bool, empty_message: str) -> None:
        """Keep the files of ``paths`` that decode and hold a patch (``files``, ``infos``);
        the others go to ``skipped`` with the reason, summarised in one warning."""
        n_rows_bad = len(self.skipped)
        self.files: list[str] = []
        self.infos: list[FrameInfo] = []
        for path in map(os.fspath, paths):
            try:
                info = self.cache.info(path)
            except Exception as e:  # noqa: BLE001 - bad data is skipped and reported, never fatal
                self.skipped.append((path, _reason(e)))
                continue
            if min(info.shape) < self.patch:
                self.skipped.append((path, f"packed size {info.shape[1]}x{info.shape[0]} is smaller than the patch {self.patch}"))
                continue
            self.files.append(path)
            self.infos.append(info)
        total = len(paths) + n_rows_bad
        if warn:
            warn_skipped(type(self).__name__, self.skipped, total)
        if not self.files:
            detail = "; ".join(f"{p}: {r}" for p, r in self.skipped[:5]) or "no files listed"
            raise EmptyDatasetError(f"{type(self).__name__}: {empty_message}: {detail}")

    def __len__(self) -> int:
        return len(self.files) * self.repeat

    def set_epoch(self, epoch: int) -> None:
        self.epoch = int(epoch)

    def sample(self, item: int, rng: np.random.Generator) -> dict:
        """A random crop of file ``item`` (0 <= item < len(files)) drawn with ``rng``."""
        info = self.infos[item]
        h, w = info.shape
        top = int(rng.integers(0, h - self.patch + 1))
        left = int(rng.integers(0, w - self.patch + 1))
        raw = self.cache.crop(self.files[item], top, left, self.patch, self.patch)
        return {"raw": raw, "black": torch.tensor(info.black, dtype=torch.float32),
                "white": float(self.white_level or info.white), "index": item, "source": self.files[item],
                "iso": float("nan") if info.iso is None else info.iso,
                "exposure_time": float("nan") if info.exposure_time is None else info.exposure_time}

    _tag = _TAG_LONG

    def __getitem__(self, index) -> dict:
        return seeded_item(self, index, self._tag, len(self.files))


@dataclass(frozen=True)
class PairRecord:
    """A usable SID pair: paths, exposure times (s), ratio (capped), ISO, F-number."""

    short: str
    long: str
    short_exposure: float
    long_exposure: float
    ratio: float
    iso: float | None
    fnumber: float | None


def _probe_header(path: str) -> tuple[tuple[int, int], float | None]:
    """(visible height, width) and EXIF exposure time of a raw file, without decoding pixels."""
    if not os.path.isfile(path):
        raise FileNotFoundError(2, "raw file not found", path)
    raw = rawpy.RawPy()
    try:
        try:
            raw.open_file(path)
            sizes, shutter = raw.sizes, float(raw.other.shutter_speed)
        except (rawpy.LibRawError, rawpy.NotSupportedError) as e:
            msg = e.args[0].decode("utf-8", "replace") if e.args and isinstance(e.args[0], bytes) else str(e)
            raise OSError(f"{path}: not a raw file LibRaw can read (LibRaw: {msg})") from e
    finally:
        raw.close()
    return (int(sizes.height), int(sizes.width)), (shutter if shutter > 0 else None)


class SIDPairDataset(Dataset):
    """Real SID pairs: a short exposure, its long exposure and their ratio.

    Args:
        root, list_file: as :class:`SIDLongDataset`; ``list_file=None`` pairs every file in
            ``Sony/short`` with the long file of the same scene id (the name's first field).
        crop: "center" (the SID protocol: the centre ``patch x patch`` of the packed frame,
            or less where the frame is smaller), "random" (training crops, the same window in
            both images; frames smaller than the patch are skipped) or None (full frame).
        patch: crop side in packed pixels.
        cache, cache_dir, white_level: for the long exposures, as :class:`SIDLongDataset`
            (short exposures are decoded at each access: there are too many to cache).
        max_ratio: ratio cap (SID: 300).
        validate: "header" (default: open every short file's header at construction, which
            finds unreadable files and size mismatches cheaply) or "decode" (decode every
            short file once, which also finds corrupt pixel data).
        seed: fixes the random crops with (epoch, index).

    Ratio: ``min(long exposure / short exposure, max_ratio)`` with exposure times from the
    file names (``_0.04s``), else from the files' EXIF.

    Item: ``input`` uint16 [4, h, w] (short, DN), ``target`` uint16 [4, h, w] (long, DN),
    ``black_input`` / ``black`` float32 [4], ``white_input`` / ``white``, ``ratio``, ``iso``
    (from the list, else NaN), ``short``, ``long`` (paths), ``index``. The network input is
    ``training.augment.normalise_packed(input, black_input, white_input, ratio=ratio)``.
    """

    def __init__(self, root, list_file=None, *, crop: str | None = "center", patch: int = 512, cache="memory",
                 cache_dir=None, max_ratio: float = SID_MAX_RATIO, validate: str = "header", seed: int = 0,
                 white_level: float | None = None, warn: bool = True):
        if crop not in ("center", "random", None):
            raise ValueError(f"crop must be 'center', 'random' or None, got {crop!r}")
        if validate not in ("header", "decode"):
            raise ValueError(f"validate must be 'header' or 'decode', got {validate!r}")
        self.root = Path(root)
        self.crop, self.patch, self.max_ratio = crop, int(patch), float(max_ratio)
        self.seed, self.epoch, self.white_level = int(seed), 0, white_level
        self.cache = _as_cache(cache, cache_dir)
        self.skipped: list[tuple[str, str]] = []
        entries = self._entries(list_file)
        n_rows_bad = len(self.skipped)  # malformed rows, shorts without a long
        self.pairs: list[PairRecord] = []
        self._long_info: dict[str, FrameInfo] = {}
        long_errors: dict[str, str] = {}
        for e in entries:
            name = f"{e.short} / {e.long}"
            if e.long in long_errors:
                self.skipped.append((name, f"long exposure unreadable: {long_errors[e.long]}"))
                continue
            try:
                info = self._long_info.get(e.long) or self.cache.info(e.long)
            except Exception as err:  # noqa: BLE001 - bad data is skipped and reported
                long_errors[e.long] = _reason(err)
                self.skipped.append((name, f"long exposure unreadable: {long_errors[e.long]}"))
                continue
            self._long_info[e.long] = info
            try:
                record = self._check_pair(e, info, validate)
            except Exception as err:  # noqa: BLE001
                self.skipped.append((name, _reason(err)))
                continue
            self.pairs.append(record)
        if warn:
            warn_skipped(type(self).__name__, self.skipped, len(entries) + n_rows_bad, "pairs")
        if not self.pairs:
            detail = "; ".join(f"{p}: {r}" for p, r in self.skipped[:5]) or "no pairs listed"
            raise EmptyDatasetError(f"SIDPairDataset: no usable (short, long) pair under {self.root}: {detail}")

    def _entries(self, list_file) -> list[SIDListEntry]:
        if list_file is not None:
            entries, self.skipped = read_sid_list(self.root, list_file)
            return entries
        shorts, longs = self.root / "Sony" / "short", self.root / "Sony" / "long"
        by_scene = {}
        for p in sorted(longs.iterdir()) if longs.is_dir() else []:
            by_scene.setdefault(p.name.split("_")[0], os.fspath(p))
        entries = []
        for p in sorted(shorts.iterdir()) if shorts.is_dir() else []:
            scene = p.name.split("_")[0]
            if scene in by_scene:
                entries.append(SIDListEntry(os.fspath(p), by_scene[scene], where=os.fspath(p)))
            else:
                self.skipped.append((os.fspath(p), f"no long exposure of scene {scene} in {longs}"))
        return entries

    def _check_pair(self, e: SIDListEntry, info: FrameInfo, validate: str) -> PairRecord:
        if validate == "decode":
            _, short_info = decode_packed(e.short)
            size, shutter = (2 * short_info.shape[0], 2 * short_info.shape[1]), short_info.exposure_time
        else:
            size, shutter = _probe_header(e.short)
        packed = (size[0] // 2, size[1] // 2)
        if packed != info.shape:
            raise ValueError(f"size mismatch: short {size[1]}x{size[0]} pixels, long {2 * info.shape[1]}x{2 * info.shape[0]}")
        if self.crop == "random" and min(packed) < self.patch:
            raise ValueError(f"packed size {packed[1]}x{packed[0]} is smaller than the patch {self.patch}")
        t_short = exposure_from_name(e.short) or shutter
        if t_short is None and validate == "header":  # LibRaw found none: ask the TIFF tags
            t_short = decode_packed(e.short)[1].exposure_time
        t_long = exposure_from_name(e.long) or info.exposure_time
        if not t_short or not t_long:
            missing = "short" if not t_short else "long"
            raise ValueError(f"no exposure time for the {missing} exposure (neither in its name nor in its EXIF)")
        ratio = min(t_long / t_short, self.max_ratio)
        return PairRecord(e.short, e.long, t_short, t_long, ratio, e.iso, e.fnumber)

    def __len__(self) -> int:
        return len(self.pairs)

    def set_epoch(self, epoch: int) -> None:
        self.epoch = int(epoch)

    def window(self, index: int, epoch: int | None = None) -> tuple[int, int, int, int]:
        """(top, left, height, width) in packed pixels of pair ``index``'s crop."""
        h, w = self._long_info[self.pairs[index].long].shape
        if self.crop is None:
            return 0, 0, h, w
        ch, cw = min(self.patch, h), min(self.patch, w)
        if self.crop == "center":
            return (h - ch) // 2, (w - cw) // 2, ch, cw
        rng = sample_rng(self.seed, _TAG_PAIR, self.epoch if epoch is None else epoch, index)
        return int(rng.integers(0, h - ch + 1)), int(rng.integers(0, w - cw + 1)), ch, cw

    def __getitem__(self, index) -> dict:
        epoch, index = split_index(index, self.epoch)
        if not 0 <= index < len(self):
            raise IndexError(f"index {index} out of range for {len(self)} pairs")
        rec = self.pairs[index]
        info = self._long_info[rec.long]
        top, left, ch, cw = self.window(index, epoch)
        short, short_info = decode_packed(rec.short)
        if short_info.shape != info.shape:
            raise ValueError(f"{rec.short}: decoded size {short_info.shape} differs from its long exposure's {info.shape}")
        return {
            "input": short[:, top : top + ch, left : left + cw].contiguous(),
            "target": self.cache.crop(rec.long, top, left, ch, cw),
            "black_input": torch.tensor(short_info.black, dtype=torch.float32),
            "white_input": float(self.white_level or short_info.white),
            "black": torch.tensor(info.black, dtype=torch.float32),
            "white": float(self.white_level or info.white),
            "ratio": rec.ratio,
            "iso": float("nan") if rec.iso is None else rec.iso,
            "short": rec.short, "long": rec.long, "index": index,
        }


def collate_pairs(items) -> dict:
    """DataLoader ``collate_fn`` for :class:`SIDPairDataset` items of one size: tensors
    stacked (``input``/``target`` uint16 [B, 4, h, w], levels float32, ``ratio`` float32
    [B]), paths as lists."""
    if not items:
        raise ValueError("collate_pairs: empty list of items")
    out = {k: torch.stack([it[k] for it in items]) for k in ("input", "target", "black_input", "black")}
    for k in ("white_input", "white", "ratio", "iso"):
        out[k] = torch.tensor([float(it[k]) for it in items], dtype=torch.float32)
    out["index"] = torch.tensor([int(it["index"]) for it in items], dtype=torch.int64)
    out["short"] = [it["short"] for it in items]
    out["long"] = [it["long"] for it in items]
    return out
