"""A user's own clean raws as training ground truth (``train --raw-folder DIR``).

Low-ISO, well-exposed frames of any camera LibRaw reads are nearly noise-free: random
packed crops of them stand in for the scenes, and the trainer synthesises the dark, noisy
inputs from the camera's calibrated noise profile (``train --camera mycam.json``, made by
``exposure-diffusion calibrate``), exactly as for the other sources. Each file keeps its own
black and white levels (the crops are normalised by them on the device). Files that do not
decode (sidecars, JPEGs, X-Trans) or are smaller than a patch are skipped, with one warning
that names them; a folder with no usable raw is an error.
"""
from __future__ import annotations

from pathlib import Path

from .sid import SIDLongDataset

_TAG_RAW_FOLDER = 107  # its own SeedSequence stream (training.sid's tags are 101..)


class RawFolderDataset(SIDLongDataset):
    """Random packed crops of every raw file directly in ``folder`` (sorted by name; hidden
    files left out), as uint16 DN items like :class:`training.sid.SIDLongDataset`'s.

    Args:
        folder: the folder of clean raws.
        patch: crop side in packed pixels.
        cache: "memory", "disk", None or a ``PackedRawCache`` (see ``SIDLongDataset``).
        cache_dir: folder of the disk cache.
        repeat: crops per file per epoch.
        seed: with the epoch and index, fixes every crop.
        warn: emit the summary warning for skipped files.
    """

    _tag = _TAG_RAW_FOLDER

    def __init__(self, folder, *, patch: int = 512, cache="memory", cache_dir=None, repeat: int = 1, seed: int = 0,
                 warn: bool = True):
        folder = Path(folder)
        if not folder.is_dir():
            raise ValueError(f"raw folder {str(folder)!r} is not a folder")
        self._init_crops(folder, patch, cache, cache_dir, repeat, seed, white_level=None)  # each file's own levels
        files = sorted(p for p in folder.iterdir() if p.is_file() and not p.name.startswith("."))
        self._probe(files, warn, f"no usable raw file in {str(folder)!r}")
