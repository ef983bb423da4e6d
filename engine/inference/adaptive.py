"""Adaptive number of steps (``steps="auto"``): the evaluations a frame needs, chosen before the loop.

More exposure steps help a frame when its input is noisy and do not when it is clean (the
paper's Fig. 2 and 6; issue 14). What sets the quality (PSNR) of the input is the variance
of its noise in the normalised, amplified units the result is judged in: shot noise of
variance ``x * r * K / s`` at a pixel of value ``x`` (``r`` the ratio, ``K`` the gain in DN
per electron, ``s`` the DN scale), so the frame's expected input PSNR is

    ``input_psnr = -10 log10(mean(A_T) * r * K / s)`` dB

(``A_T`` ``[4, h, w]`` the amplified input; read noise, which the engine does not know for
an arbitrary camera, is left out: it only adds to the variance of dark frames). Note that a
brighter frame has *more* noise in these units at the same ratio (more photons, but
amplified by the same r), and a higher ratio or gain more. The policy is a step function:
``steps = counts[j]`` for the first threshold with ``input_psnr >= thresholds[j]``, else
``counts[-1]``; e.g. thresholds (34, 28) dB and counts (1, 2, 3). The thresholds of a
model are calibrated on scenes it is not evaluated on (``training.auto_steps``) and stored
in its checkpoint's metadata (``"auto_steps"``). (A first version used the median photon
count per pixel; on the calibration scenes no threshold policy on it came within 0.2 dB of
the best fixed count, while one on the input PSNR matches it: bright frames at x100 gain
from more steps, dark ones at the same ratio do not.)

The count is chosen before the loop starts, so the CUDA-graph path captures (or reuses)
the graph of that count (graphs are keyed by shape and steps): no host synchronisation
inside the loop, no change to the loop. In a batch, the frames run together at the
largest count any of them needs (the loop is one batched pass); call the frames one by
one, or group them by :func:`choose_steps`, to give each its own count.
"""
from __future__ import annotations

import dataclasses

import torch

from kernels._common import DEFAULT_DN_SCALE

__all__ = ["AutoStepsPolicy", "DEFAULT_POLICY", "input_psnr", "choose_steps", "steps_for_batch"]


@dataclasses.dataclass(frozen=True)
class AutoStepsPolicy:
    """``thresholds`` (expected input PSNR in dB, non-increasing; equal ones skip a count) and ``counts`` (one more than
    thresholds): a frame with ``input_psnr >= thresholds[j]`` (first such j) gets
    ``counts[j]`` evaluations, else ``counts[-1]`` (``input_psnr >= thresholds[j]``)."""

    thresholds: tuple = (34.0, 28.0)
    counts: tuple = (1, 2, 3)

    def __post_init__(self):
        t, c = tuple(float(v) for v in self.thresholds), tuple(int(v) for v in self.counts)
        if len(c) != len(t) + 1 or any(v < 1 for v in c):
            raise ValueError(f"counts must hold len(thresholds) + 1 integers >= 1, got {self.counts!r}")
        if any(a < b for a, b in zip(t, t[1:])):
            raise ValueError(f"thresholds must be non-increasing, got {self.thresholds!r}")
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

    def steps(self, input_psnr: float) -> int:
        for t, c in zip(self.thresholds, self.counts):
            if input_psnr >= t:
                return c
        return self.counts[-1]


# For checkpoints without a calibration of their own (meta["auto_steps"]): the session-3 default
# model's (python -m training.auto_steps --counts 1 2 3 5, photograph-like scenes of seed 7,
# 2026-11-30; it never chose 1 step, so counts 2 / 3 / 5), a multi-step model whose later steps
# helped: a safer guess for an unknown checkpoint than the session-4 default's own calibration,
# which mostly picks 1 or 2 evaluations (engine/data/README.md).
DEFAULT_POLICY = AutoStepsPolicy((32.62, 23.66), (2, 3, 5))


def input_psnr(a_t: torch.Tensor, ratio: torch.Tensor, K: torch.Tensor,
               dn_scale: float = DEFAULT_DN_SCALE) -> torch.Tensor:
    """Each frame's expected input PSNR from its shot noise: float64 ``[B]`` dB on the CPU.

    Args:
        a_t: ``[B, 4, h, w]`` (or ``[B, C, h, w]``: the first 4 channels are used), the
            normalised amplified input; ratio, K: ``[B]`` (or numbers).
    Returns ``-10 log10(mean(A_T) * r * K / s)`` (module docstring); +inf for a black frame.
    """
    x = a_t[:, :4].float()
    B = x.shape[0]
    level = x.flatten(1).mean(1).double()
    ratio = torch.as_tensor(ratio, dtype=torch.float64, device=x.device).reshape(-1).expand(B)
    K = torch.as_tensor(K, dtype=torch.float64, device=x.device).reshape(-1).expand(B)
    return (-10 * torch.log10(level * ratio * K / dn_scale)).cpu()


def choose_steps(a_t: torch.Tensor, ratio, K, policy: AutoStepsPolicy = DEFAULT_POLICY,
                 dn_scale: float = DEFAULT_DN_SCALE) -> list[int]:
    """The evaluation count of every frame of a batch (one host read of ``[B]`` values)."""
    return [policy.steps(float(p)) for p in input_psnr(a_t, ratio, K, dn_scale)]


def steps_for_batch(a_t: torch.Tensor, ratio, K, policy: AutoStepsPolicy = DEFAULT_POLICY,
                    dn_scale: float = DEFAULT_DN_SCALE) -> int:
    """One count for a batch that runs as one loop: the largest any frame needs."""
    return max(choose_steps(a_t, ratio, K, policy, dn_scale))
