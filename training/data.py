"""Training data: every source, mixed, as DataLoader-ready uint16 packed patches.

The flow (docs/architecture.md: clean patches -> ``kernels.synthesize_noise`` -> network)::

    sources (SID long exposures | sRGB photos -> raw | procedural scenes)
      -> MixedPatchDataset item: uint16 [4, p, p] DN + black [4] + white   (CPU, workers)
      -> collate_patches -> PackedBatch (uint16 [B, 4, p, p], black [B, 4], white [B])
      -> batch.to(device) -> augment_and_normalise(raw, black, white, generator)
      -> float32 [B, 4, p, p] in [0, 1] on the device -> noise synthesis

The modules: ``training.patches`` (items, batches, seeding), ``training.augment``
(normalisation and flips / transposes on the device), ``training.cache`` (decode-once
uint16 cache), ``training.sid`` (the SID layout), ``training.synthetic`` (sRGB photos,
procedural scenes, the synthetic hold-out set). This module mixes them.

Reproducibility: sample ``i`` of epoch ``e`` is a pure function of ``(seed, e, i)``. Call
``dataset.set_epoch(e)`` before each epoch's iterator is created, or, so that persistent
DataLoader workers see the epoch too, wrap the sampler in :class:`EpochTaggedSampler`,
which hands ``(epoch, index)`` pairs to the dataset. Together with a seeded sampler (e.g.
``DistributedSampler(seed=...)`` with ``set_epoch``), a resumed run sees the same data.
"""
from __future__ import annotations

from typing import Sequence

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset, Sampler

from .augment import apply_dihedral, augment_and_normalise, normalise_packed, random_dihedral
from .cache import FrameInfo, PackedRawCache, decode_packed
from .patches import (DEFAULT_BLACK, DEFAULT_WHITE, DataWarning, EmptyDatasetError, PackedBatch, collate_patches,
                      pack_dn, sample_rng, split_index, to_dn)
from .sid import SID_MAX_RATIO, SIDLongDataset, SIDPairDataset, collate_pairs, exposure_from_name, read_sid_list
from .synthetic import (SONY_A7S2_XYZ_TO_CAMERA, ProceduralSceneDataset, SRGBFolderDataset, procedural_scene,
                        srgb_to_camera_matrix, srgb_to_linear, srgb_to_packed_raw, synthetic_holdout)

__all__ = [
    "MixedPatchDataset", "EpochTaggedSampler", "build_training_dataset", "make_patch_loader",
    "PackedBatch", "collate_patches", "pack_dn", "to_dn", "sample_rng", "DataWarning", "EmptyDatasetError",
    "DEFAULT_BLACK", "DEFAULT_WHITE",
    "normalise_packed", "random_dihedral", "apply_dihedral", "augment_and_normalise",
    "PackedRawCache", "FrameInfo", "decode_packed",
    "SIDLongDataset", "SIDPairDataset", "collate_pairs", "read_sid_list", "exposure_from_name", "SID_MAX_RATIO",
    "SRGBFolderDataset", "ProceduralSceneDataset", "procedural_scene", "synthetic_holdout",
    "srgb_to_packed_raw", "srgb_to_linear", "srgb_to_camera_matrix", "SONY_A7S2_XYZ_TO_CAMERA",
]

_TAG_MIX = 301


class MixedPatchDataset(Dataset):
    """Sample ``i`` comes from one of ``sources``, chosen with probability ``weights``.

    Args:
        sources: datasets with ``sample(item, rng) -> item dict`` and ``__len__`` (the
            classes of this package), e.g. SID long exposures, sRGB photos, procedural scenes.
        weights: relative probabilities (default: equal).
        length: samples per epoch (default: the sum of the sources' lengths).
        seed: with (epoch, index), fixes the source, the item within it and the crop.

    Items are the sources' dicts (``raw`` uint16 [4, p, p], ``black``, ``white``,
    ``source``) with ``index`` set to ``i``; all sources must give the same patch size.
    """

    def __init__(self, sources: Sequence[Dataset], weights: Sequence[float] | None = None, *,
                 length: int | None = None, seed: int = 0):
        self.sources = list(sources)
        if not self.sources:
            raise ValueError("MixedPatchDataset needs at least one source")
        for s in self.sources:
            if not hasattr(s, "sample") or len(s) < 1:
                raise ValueError(f"source {type(s).__name__} must be non-empty and have sample(item, rng)")
        w = np.ones(len(self.sources)) if weights is None else np.asarray(weights, dtype=np.float64)
        if w.shape != (len(self.sources),) or not np.all(np.isfinite(w)) or np.any(w < 0) or w.sum() <= 0:
            raise ValueError(f"weights must be {len(self.sources)} finite values >= 0, not all 0; got {weights!r}")
        self.weights = w / w.sum()
        self.length = int(length) if length is not None else sum(self._items(s) for s in self.sources)
        if self.length < 1:
            raise ValueError(f"length must be >= 1, got {length}")
        self.seed, self.epoch = int(seed), 0

    @staticmethod
    def _items(source) -> int:
        """Distinct items of a source (files for the file datasets, else its length)."""
        files = getattr(source, "files", None)
        return len(files) if files is not None else len(source)

    def __len__(self) -> int:
        return self.length

    def set_epoch(self, epoch: int) -> None:
        self.epoch = int(epoch)
        for s in self.sources:
            if hasattr(s, "set_epoch"):
                s.set_epoch(epoch)

    def __getitem__(self, index) -> dict:
        epoch, index = split_index(index, self.epoch)
        if not 0 <= index < self.length:
            raise IndexError(f"index {index} out of range for {self.length} samples")
        rng = sample_rng(self.seed, _TAG_MIX, epoch, index)
        k = int(rng.choice(len(self.sources), p=self.weights))
        source = self.sources[k]
        out = source.sample(int(rng.integers(0, self._items(source))), rng)
        out["index"] = index
        return out


class EpochTaggedSampler(Sampler):
    """Wraps a sampler of indices into one of ``(epoch, index)`` pairs.

    ``set_epoch(e)`` sets the tag (and calls the wrapped sampler's ``set_epoch``, e.g. a
    ``DistributedSampler``'s). The datasets of this package accept such pairs, so the
    epoch reaches persistent DataLoader workers without recreating them.
    """

    def __init__(self, sampler, epoch: int = 0):
        self.sampler, self.epoch = sampler, int(epoch)

    def set_epoch(self, epoch: int) -> None:
        self.epoch = int(epoch)
        if hasattr(self.sampler, "set_epoch"):
            self.sampler.set_epoch(epoch)

    def __iter__(self):
        epoch = self.epoch
        return ((epoch, int(i)) for i in self.sampler)

    def __len__(self) -> int:
        return len(self.sampler)


def build_training_dataset(*, sid_root=None, sid_list=None, srgb_folder=None, deadleaves_bank=None,
                           textured_bank=None, raw_folder=None, procedural: bool | int = True,
                           illumination: str = "frame",
                           patch: int = 512, weights: Sequence[float] | None = None, length: int | None = None,
                           cache="memory", cache_dir=None, seed: int = 0, white_level: float | None = None) -> MixedPatchDataset:
    """The training set from whatever is at hand; with no argument, procedural scenes only
    (runs out of the box).

    Args:
        sid_root, sid_list: SID long exposures (:class:`SIDLongDataset`; ``sid_list`` None
            takes every file in ``Sony/long``).
        srgb_folder: a folder of sRGB photos (:class:`SRGBFolderDataset`).
        raw_folder: a folder of the user's own clean raws, any format LibRaw reads
            (:class:`training.raw_folder.RawFolderDataset`).
        deadleaves_bank: a dead-leaves bank ``.npy`` (``training.deadleaves_scenes``): finished
            dead-leaves scenes (1000 per epoch, or as many as the other sources have samples).
        textured_bank: a textured-leaves bank ``.npy`` (``training.textured_leaves``): finished
            textured-leaves scenes (as many per epoch as the dead leaves).
        illumination: how the two leaves families are lit, ``"frame"`` or ``"crop"``
            (``training.deadleaves_scenes._light_field``).
        procedural: include procedural scenes; an int sets how many per epoch (default
            1000, or as many as the other sources have samples).
        weights: one per included source, in the order SID, raw folder, sRGB, dead leaves,
            textured leaves, procedural (default: equal).
        length: samples per epoch (default: the sum over the sources).
        cache, cache_dir, white_level: for SID (see :class:`SIDLongDataset`); cache and
            cache_dir for the raw folder too.
    """
    sources = []
    if sid_root is not None:
        sources.append(SIDLongDataset(sid_root, sid_list, patch=patch, cache=cache, cache_dir=cache_dir, seed=seed,
                                      white_level=white_level))
    if raw_folder is not None:
        from .raw_folder import RawFolderDataset

        sources.append(RawFolderDataset(raw_folder, patch=patch, cache=cache, cache_dir=cache_dir, seed=seed))
    if srgb_folder is not None:
        sources.append(SRGBFolderDataset(srgb_folder, patch=patch, seed=seed))
    if deadleaves_bank is not None:
        from .deadleaves_scenes import DeadLeavesDataset

        sources.append(DeadLeavesDataset(deadleaves_bank, max(1000, sum(len(s) for s in sources)), patch=patch, seed=seed,
                                          illumination=illumination))
    if textured_bank is not None:
        from .textured_leaves import TexturedLeavesDataset

        n = len(sources[-1]) if deadleaves_bank is not None else max(1000, sum(len(s) for s in sources))
        sources.append(TexturedLeavesDataset(textured_bank, n, patch=patch, seed=seed, illumination=illumination))
    if procedural:
        n = procedural if not isinstance(procedural, bool) else max(1000, sum(len(s) for s in sources))
        sources.append(ProceduralSceneDataset(n, patch=patch, seed=seed))
    if not sources:
        raise ValueError("build_training_dataset: no source selected (give sid_root, raw_folder, srgb_folder, "
                         "deadleaves_bank, textured_bank or procedural=True)")
    return MixedPatchDataset(sources, weights, length=length, seed=seed)


def make_patch_loader(dataset: Dataset, batch_size: int, *, sampler=None, shuffle: bool = True, num_workers: int = 0,
                      pin_memory: bool | None = None, drop_last: bool = True, persistent_workers: bool = False,
                      seed: int = 0) -> DataLoader:
    """A DataLoader of :class:`PackedBatch` over ``dataset``.

    Without ``sampler``, a single-replica ``DistributedSampler(shuffle=shuffle, seed=seed)``,
    whose order depends on (seed, epoch) only (give a multi-replica one under DDP); any sampler is wrapped in :class:`EpochTaggedSampler`, so call
    ``loader.sampler.set_epoch(e)`` (which forwards to the wrapped sampler) before each epoch.
    ``pin_memory`` defaults to True when CUDA is available.
    """
    if sampler is None:  # a permutation that is a function of (seed, epoch) only: resumable
        sampler = torch.utils.data.DistributedSampler(dataset, num_replicas=1, rank=0, shuffle=shuffle, seed=int(seed))
    if not isinstance(sampler, EpochTaggedSampler):
        sampler = EpochTaggedSampler(sampler)
    if pin_memory is None:
        pin_memory = torch.cuda.is_available()
    return DataLoader(dataset, batch_size=batch_size, sampler=sampler, num_workers=num_workers,
                      collate_fn=collate_patches, pin_memory=pin_memory, drop_last=drop_last,
                      persistent_workers=persistent_workers and num_workers > 0)
