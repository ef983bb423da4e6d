"""Adaptive number of steps (``steps="auto"``): the evaluations a frame needs, chosen before the loop.

More exposure steps help a frame when its input is photon-starved and do not when it is
not (the paper's Fig. 2 and 6; issue 14). The frame's expected signal-to-noise ratio is
set by how many photo-electrons its pixels collected during the short exposure:

    ``electrons = mean(A_T) * s / (r * K)``

(``A_T`` the normalised, amplified input ``[4, h, w]``, ``s`` the DN scale, ``r`` the
ratio, ``K`` the gain in DN per electron; the mean over the frame after a 4x4 box
average, so a few hot highlights do not make a dark frame look easy: the *median* of the
block means is used). Shot-noise SNR is ``sqrt(electrons)``. The policy is a step
function of that count: ``steps = counts[j]`` for the first threshold
``electrons >= thresholds[j]``, else ``counts[-1]``; e.g. thresholds (40, 12) and counts
(1, 2, 3): a frame with >= 40 electrons per pixel gets 1 evaluation, >= 12 gets 2, the
rest 3. The thresholds of a model are calibrated on scenes it was not evaluated on
(``training.auto_steps``) and stored in its checkpoint's metadata (``"auto_steps"``).

The count is chosen before the loop starts, so the CUDA-graph path captures (or reuses)
the graph of that count (graphs are keyed by shape and steps): no host synchronisation
inside the loop, no change to the loop. In a batch, the frames run together at the
largest count any of them needs (the loop is one batched pass); call the frames one by
one, or group them by :func:`choose_steps`, to give each its own count.
"""
from __future__ import annotations

import dataclasses

import torch
import torch.nn.functional as F

from kernels._common import DEFAULT_DN_SCALE

__all__ = ["AutoStepsPolicy", "DEFAULT_POLICY", "frame_electrons", "choose_steps", "steps_for_batch"]


@dataclasses.dataclass(frozen=True)
class AutoStepsPolicy:
    """``thresholds`` (electrons per pixel, non-increasing; equal ones skip a count) and ``counts`` (one more than
    thresholds): a frame with ``electrons >= thresholds[j]`` (first such j) gets
    ``counts[j]`` evaluations, else ``counts[-1]``."""

    thresholds: tuple = (40.0, 12.0)
    counts: tuple = (1, 2, 3)

    def __post_init__(self):
        t, c = tuple(float(v) for v in self.thresholds), tuple(int(v) for v in self.counts)
        if len(c) != len(t) + 1 or any(v < 1 for v in c):
            raise ValueError(f"counts must hold len(thresholds) + 1 integers >= 1, got {self.counts!r}")
        if any(a < b for a, b in zip(t, t[1:])) or any(v < 0 for v in t):
            raise ValueError(f"thresholds must be >= 0 and non-increasing, got {self.thresholds!r}")
        object.__setattr__(self, "thresholds", t)
        object.__setattr__(self, "counts", c)

    @classmethod
    def from_meta(cls, meta: dict | None) -> "AutoStepsPolicy":
        """The policy stored in a checkpoint's metadata (``meta["auto_steps"]``), else the default."""
        if meta and isinstance(meta.get("auto_steps"), dict):
            d = meta["auto_steps"]
            return cls(tuple(d["thresholds"]), tuple(d["counts"]))
        return DEFAULT_POLICY

    def to_meta(self) -> dict:
        return {"thresholds": list(self.thresholds), "counts": list(self.counts)}

    def steps(self, electrons: float) -> int:
        for t, c in zip(self.thresholds, self.counts):
            if electrons >= t:
                return c
        return self.counts[-1]


DEFAULT_POLICY = AutoStepsPolicy()


def frame_electrons(a_t: torch.Tensor, ratio: torch.Tensor, K: torch.Tensor,
                    dn_scale: float = DEFAULT_DN_SCALE) -> torch.Tensor:
    """Photo-electrons per pixel each frame collected: float32 ``[B]`` on the CPU.

    Args:
        a_t: ``[B, 4, h, w]`` (or ``[B, C, h, w]``: the first 4 channels are used), the
            normalised amplified input; ratio, K: ``[B]`` (or numbers).
    Returns the median over 4x4 blocks of the block-mean input, in electrons (see the module
    docstring).
    """
    x = a_t[:, :4].float()
    B = x.shape[0]
    if min(x.shape[-2:]) >= 4:
        x = F.avg_pool2d(x, 4)
    level = x.mean(1).flatten(1).median(dim=1).values
    ratio = torch.as_tensor(ratio, dtype=torch.float32, device=x.device).reshape(-1).expand(B)
    K = torch.as_tensor(K, dtype=torch.float32, device=x.device).reshape(-1).expand(B)
    return (level * dn_scale / (ratio * K)).cpu()


def choose_steps(a_t: torch.Tensor, ratio, K, policy: AutoStepsPolicy = DEFAULT_POLICY,
                 dn_scale: float = DEFAULT_DN_SCALE) -> list[int]:
    """The evaluation count of every frame of a batch (one host read of ``[B]`` values)."""
    return [policy.steps(float(e)) for e in frame_electrons(a_t, ratio, K, dn_scale)]


def steps_for_batch(a_t: torch.Tensor, ratio, K, policy: AutoStepsPolicy = DEFAULT_POLICY,
                    dn_scale: float = DEFAULT_DN_SCALE) -> int:
    """One count for a batch that runs as one loop: the largest any frame needs."""
    return max(choose_steps(a_t, ratio, K, policy, dn_scale))
