"""Packed uint16 patches: the unit every training data source yields.

A data source returns one *item* per index, a dict::

    {"raw": uint16 [4, p, p] DN, planes R, G1, B, G2 (SPEC §1),
     "black": float32 [4] DN per plane, "white": float DN,
     "index": int, "source": str}

and :func:`collate_patches` stacks items into a :class:`PackedBatch`. The pixels stay
uint16 DN all the way to the device (half the bytes of float16, a quarter of float32);
``training.augment.augment_and_normalise`` turns them into normalised float32 there.

Seeding: :func:`sample_rng` builds a NumPy generator from a tuple of integers through
``SeedSequence``, so a sample is a pure function of ``(seed, epoch, index)``: the same on
every run, in every DataLoader worker, after a resume.
"""
from __future__ import annotations

import warnings
from dataclasses import dataclass, field

import numpy as np
import torch

from engine.io.raw import plane_sites

__all__ = ["PackedBatch", "collate_patches", "pack_dn", "to_dn", "sample_rng", "DataWarning",
           "EmptyDatasetError", "DEFAULT_BLACK", "DEFAULT_WHITE"]

# Levels given to synthetic raw (sRGB photos, procedural scenes): a 14-bit camera with the
# black level of the Sony A7S II of SID, so synthetic and real data look alike in DN.
DEFAULT_BLACK = 512.0
DEFAULT_WHITE = 16383.0


class DataWarning(UserWarning):
    """Bad training / evaluation data was skipped (details on the dataset's ``skipped``)."""


class EmptyDatasetError(ValueError):
    """A dataset has no usable sample left (nothing listed, or everything skipped)."""


@dataclass
class PackedBatch:
    """A batch of clean packed patches in DN.

    Attributes:
        raw: uint16 ``[B, 4, h, w]``, DN, planes R, G1, B, G2.
        black: float32 ``[B, 4]``, DN per plane.
        white: float32 ``[B]``, DN.
        index: int64 ``[B]``, the dataset indices the samples came from.
        source: ``B`` strings naming where each sample came from (file, "procedural", ...).
    """

    raw: torch.Tensor
    black: torch.Tensor
    white: torch.Tensor
    index: torch.Tensor
    source: list = field(default_factory=list)

    def __len__(self) -> int:
        return self.raw.shape[0]

    def to(self, device, non_blocking: bool = False) -> "PackedBatch":
        move = lambda t: t.to(device, non_blocking=non_blocking)  # noqa: E731
        return PackedBatch(move(self.raw), move(self.black), move(self.white), move(self.index), list(self.source))

    def pin_memory(self) -> "PackedBatch":  # DataLoader(pin_memory=True) calls this
        return PackedBatch(self.raw.pin_memory(), self.black.pin_memory(), self.white.pin_memory(),
                           self.index.pin_memory(), list(self.source))

    def normalised(self) -> torch.Tensor:
        """float32 ``[B, 4, h, w]`` in [0, 1], no augmentation (evaluation)."""
        from .augment import normalise_packed

        return normalise_packed(self.raw, self.black, self.white)


def collate_patches(items, *, pin_memory: bool = False) -> PackedBatch:
    """DataLoader ``collate_fn``: a list of item dicts -> :class:`PackedBatch`.

    ``pin_memory=True`` stacks the pixels straight into page-locked memory (one copy
    instead of a stack and a pin), so the copy to a GPU can run without blocking.
    """
    if not items:
        raise ValueError("collate_patches: empty list of items")
    raws = [it["raw"] for it in items]
    raw = None
    if pin_memory:
        raw = torch.empty((len(raws), *raws[0].shape), dtype=raws[0].dtype, pin_memory=True)
    return PackedBatch(
        raw=torch.stack(raws, out=raw) if raw is not None else torch.stack(raws),
        black=torch.stack([torch.as_tensor(it["black"], dtype=torch.float32) for it in items]),
        white=torch.tensor([float(it["white"]) for it in items], dtype=torch.float32),
        index=torch.tensor([int(it["index"]) for it in items], dtype=torch.int64),
        source=[str(it.get("source", "")) for it in items],
    )


def pack_dn(cfa, pattern: str) -> torch.Tensor:
    """uint16 CFA ``[H, W]`` (torch or numpy), DN -> uint16 ``[4, H//2, W//2]`` planes
    R, G1, B, G2 (G1 = the green on red's row), still in DN; odd trailing rows / columns
    are dropped. A new contiguous CPU tensor."""
    cfa = torch.as_tensor(np.asarray(cfa)) if not isinstance(cfa, torch.Tensor) else cfa
    if cfa.dtype != torch.uint16 or cfa.dim() != 2:
        raise ValueError(f"pack_dn: expected a uint16 [H, W] mosaic, got {cfa.dtype} {tuple(cfa.shape)}")
    h, w = cfa.shape[0] // 2, cfa.shape[1] // 2
    planes = []
    for site in plane_sites(pattern.upper()):
        i, j = divmod(site, 2)
        planes.append(cfa[i : i + 2 * h : 2, j : j + 2 * w : 2])
    return torch.stack(planes).contiguous()


def to_dn(x: torch.Tensor, black=DEFAULT_BLACK, white=DEFAULT_WHITE) -> torch.Tensor:
    """Normalised float ``[..., 4, h, w]`` in [0, 1] -> uint16 DN ``black + x (white - black)``
    (rounded; ``black`` a number or 4 per-plane values). Computed in float32, or in float64
    for float64 input (the hold-out renders in float64 so that it rounds alike everywhere)."""
    dtype = torch.float64 if x.dtype == torch.float64 else torch.float32
    black = torch.as_tensor(black, dtype=dtype).reshape(-1, 1, 1)
    dn = black + x.to(dtype).clamp(0, 1) * (float(white) - black)
    return torch.round(dn).clamp(0, 65535).to(torch.int32).to(torch.uint16)


def sample_rng(*key: int) -> np.random.Generator:
    """A NumPy generator that is a pure function of the non-negative integers ``key``."""
    return np.random.default_rng(np.random.SeedSequence([int(k) for k in key]))


def torch_generator(rng: np.random.Generator) -> torch.Generator:
    """A CPU torch generator seeded from ``rng`` (for vectorised torch sampling)."""
    return torch.Generator().manual_seed(int(rng.integers(0, 2**63 - 1)))


def warn_skipped(owner: str, skipped: list, total: int, what: str = "files") -> None:
    """One summary warning for the ``(path, reason)`` entries in ``skipped``."""
    if not skipped:
        return
    shown = "; ".join(f"{p}: {r}" for p, r in skipped[:5])
    more = f"; ... and {len(skipped) - 5} more" if len(skipped) > 5 else ""
    warnings.warn(f"{owner}: skipped {len(skipped)} of {total} {what} ({shown}{more}); "
                  f"see the dataset's .skipped for the full list", DataWarning, stacklevel=3)


def seeded_item(dataset, index, tag: int, n_items: int) -> dict:
    """The ``__getitem__`` of an epoch-seeded patch source.

    ``index`` is ``i`` or ``(epoch, i)``; the item is ``dataset.sample(i % n_items, rng)``
    with ``rng = sample_rng(dataset.seed, tag, epoch, i)``, so it is a pure function of
    (seed, epoch, i); its ``"index"`` is ``i``.
    """
    epoch, index = split_index(index, dataset.epoch)
    if not 0 <= index < len(dataset):
        raise IndexError(f"index {index} out of range for {len(dataset)} samples")
    out = dataset.sample(index % n_items, sample_rng(dataset.seed, tag, epoch, index))
    out["index"] = index
    return out


def split_index(index, default_epoch: int) -> tuple[int, int]:
    """``index`` or ``(epoch, index)`` (from :class:`training.data.EpochTaggedSampler`)."""
    if isinstance(index, (tuple, list)):
        epoch, index = index
        return int(epoch), int(index)
    return int(default_epoch), int(index)
