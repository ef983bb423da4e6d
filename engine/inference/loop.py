"""The multi-step exposure diffusion at inference (SPEC §4), independent of I/O.

``exposure_schedule`` gives the exposure multiples ``1 = rho_0 < ... < rho_n = r``;
``run_exposure_diffusion`` evaluates the backbone at ``rho_0 .. rho_{n-1}`` and returns the
last estimate, with ``kernels.exposure_step`` doing the blend, the Poisson photon
increment and the next network input in one fused pass. No ground truth is used
anywhere; the Poisson draw after the last evaluation is never made.
"""
from __future__ import annotations

from typing import Callable

import torch
import torch.nn.functional as F

from kernels import exposure_step, value_checks_disabled
from kernels._common import DEFAULT_DN_SCALE, ValueChecks, per_sample, philox_seed
from kernels.head_step import head_exposure_step
from kernels.numbers import integer

from ..models.fused_unet import HeadFeatures

# The backbones need spatial sizes that are multiples of this (four 2x2 poolings).
SIZE_MULTIPLE = 16

# How a model's steps add photons: Poisson "draws" (SPEC §4) or their "means" (``stochastic=False``).
# A checkpoint may name the mode it was trained and measured with (``meta["photons"]``); without
# one, draws.
PHOTON_MODES = ("draws", "means")

# Named inference schedules (``exposure_schedule``): SPEC §4's "linspace", rho_i = 1 + (r - 1) i / n,
# and "geometric", rho_i = r^(i / n). Each state holds 1 / rho_i of the noisy input and the rest is the
# previous estimates' photons, so a geometric schedule keeps more of the input in the early states
# (at x100, 3 steps: 22% and 4.6% against linspace's 2.9% and 1.5%). A checkpoint names the schedule
# it was trained for (``meta["schedule"]``); without one, linspace.
SCHEDULES = ("linspace", "geometric")


def _named_meta_value(meta: dict | None, key: str, choices: tuple[str, ...]) -> str:
    """``meta[key]`` of a checkpoint, one of ``choices``; the first choice (SPEC's) when absent;
    anything else is a ``ValueError`` naming the value."""
    value = (meta or {}).get(key, choices[0])
    if value not in choices:
        raise ValueError(f"meta[{key!r}] must be one of {choices}, got {value!r:.80}")
    return value


def schedule_from_meta(meta: dict | None) -> str:
    """``meta["schedule"]`` of a checkpoint ("linspace" or "geometric"), "linspace" when absent."""
    return _named_meta_value(meta, "schedule", SCHEDULES)


def photon_mode_from_meta(meta: dict | None) -> str:
    """``meta["photons"]`` of a checkpoint ("draws" or "means"), "draws" when absent."""
    return _named_meta_value(meta, "photons", PHOTON_MODES)


def use_draws(stochastic: bool | None, mode: str) -> bool:
    """Whether a run draws Poisson photons: an explicit ``stochastic`` wins; None follows the
    model's photon ``mode`` ("draws" or "means")."""
    return mode == "draws" if stochastic is None else stochastic


def exposure_schedule(ratio: torch.Tensor, steps: int, schedule=None) -> torch.Tensor:
    """Exposure multiples of every step, per sample.

    Args:
        ratio: float32 ``[B]`` exposure ratios r (> 1 for more than one step).
        steps: number of network evaluations n >= 1.
        schedule: None or "linspace" for SPEC's ``linspace(1, r, n + 1)``; "geometric" for
            ``r ** linspace(0, 1, n + 1)`` (``SCHEDULES``); or the n + 1 multiples
            ``[1, rho_1, ..., rho_{n-1}, r]`` as a sequence or tensor ``[n + 1]`` /
            ``[B, n + 1]``: starting at 1, strictly increasing, ending at each sample's r.

    Returns:
        float32 ``[B, n + 1]`` on ratio's device; column i is rho_i.
    """
    steps = integer("steps", steps, low=1)
    ratio = ratio.to(torch.float32).reshape(-1)
    if isinstance(schedule, str) and schedule not in SCHEDULES:
        raise ValueError(f"schedule must be one of {SCHEDULES} or the steps + 1 = {steps + 1} exposure multiples, "
                         f"got {schedule!r:.80}")
    if schedule is None or isinstance(schedule, str):
        t = torch.linspace(0, 1, steps + 1, device=ratio.device, dtype=torch.float32)
        if schedule == "geometric":
            rho = ratio[:, None] ** t[None, :]
            # the ends exactly (pow rounds): 1 is the input, r the target exposure
            rho[:, 0] = 1
            rho[:, -1] = ratio
            return rho
        return 1 + (ratio[:, None] - 1) * t[None, :]
    try:
        rho = torch.as_tensor(schedule, dtype=torch.float32, device=ratio.device)
    except (TypeError, ValueError, RuntimeError):  # torch's own words ("new(): invalid data type 'str'") say nothing
        raise ValueError(f"schedule must be steps + 1 = {steps + 1} exposure multiples [1, rho_1, ..., r], increasing "
                         f"(numbers as a sequence or tensor, per sample [{ratio.numel()}, {steps + 1}]), "
                         f"got {schedule!r:.80}") from None
    if rho.dim() == 1:
        rho = rho.expand(ratio.numel(), -1)
    if rho.dim() != 2 or rho.shape != (ratio.numel(), steps + 1):
        raise ValueError(f"schedule must hold steps + 1 = {steps + 1} exposure multiples (per sample: "
                         f"[{ratio.numel()}, {steps + 1}]), got shape {tuple(rho.shape)}")
    if not torch.isfinite(rho).all():
        raise ValueError("schedule must be finite")
    if not torch.all(rho[:, 0] == 1):
        raise ValueError(f"schedule must start at exposure multiple 1 (the input), got {rho[:, 0].tolist()}")
    if steps > 1 and not torch.all(rho[:, 1:] > rho[:, :-1]):
        raise ValueError(f"schedule must increase strictly, got {rho.tolist()}")
    if not torch.allclose(rho[:, -1], ratio, rtol=1e-5, atol=0):
        raise ValueError(f"schedule must end at the exposure ratio {ratio.tolist()}, got {rho[:, -1].tolist()}")
    return rho.contiguous()


def pad_to_multiple(x: torch.Tensor, multiple: int = SIZE_MULTIPLE) -> tuple[torch.Tensor, tuple[int, int]]:
    """Reflect-pad ``[B, C, h, w]`` on the bottom/right to multiples of ``multiple``.

    Returns the padded tensor and the original (h, w) to crop back to. Reflection needs
    the pad to be smaller than the size; tiny frames fall back to edge replication.
    """
    h, w = x.shape[-2:]
    ph, pw = (-h) % multiple, (-w) % multiple
    if ph == 0 and pw == 0:
        return x, (h, w)
    mode = "reflect" if ph < h and pw < w else "replicate"
    channels_last = x.is_contiguous(memory_format=torch.channels_last) and not x.is_contiguous()
    padded = F.pad(x, (0, pw, 0, ph), mode=mode)
    return padded.contiguous(memory_format=torch.channels_last if channels_last else torch.contiguous_format), (h, w)


def _check_loop_values(ratio: torch.Tensor, K: torch.Tensor, rho: torch.Tensor, batch: int,
                       device: torch.device) -> None:
    """Every value the steps' ``exposure_step`` calls would check, read back in one go."""
    if not isinstance(rho, torch.Tensor) or rho.dim() != 2 or rho.shape[0] != batch or rho.shape[1] < 2:
        raise ValueError(f"rho must be a tensor [B = {batch}, steps + 1 >= 2] (exposure_schedule), got "
                         f"{tuple(rho.shape) if isinstance(rho, torch.Tensor) else type(rho).__name__}")
    if rho.device != device:
        raise ValueError(f"rho is on {rho.device} but the data is on {device}")
    checks = ValueChecks()
    per_sample("ratio", ratio, batch, device, positive=True, checks=checks)
    per_sample("K", K, batch, device, positive=True, checks=checks)
    # The evaluated multiples rho_0 .. rho_{n-1} are >= 1 and increase into rho_n = r. With
    # one step, rho_1 = r is never used (no draw after the last evaluation), so r <= 1 (a
    # plain denoise, or darkening) is allowed there, as docs/limits.md says.
    evaluated = rho[:, :-1]
    checks.require(lambda: torch.isfinite(rho) & (rho > 0), lambda: f"rho must be finite and > 0, got {rho.tolist()}")
    checks.require(lambda: evaluated >= 1, lambda: f"rho must be >= 1 at every evaluated step, got {rho.tolist()}")
    if rho.shape[1] > 2:
        checks.require(lambda: rho[:, 1:] > rho[:, :-1],
                       lambda: f"rho must increase strictly along the steps, got {rho.tolist()}")
    checks.run()


def run_exposure_diffusion(
    backbone: Callable[[torch.Tensor], torch.Tensor],
    first_input: torch.Tensor,
    *,
    ratio: torch.Tensor,
    K: torch.Tensor,
    rho: torch.Tensor,
    with_photon: bool,
    concat_origin: bool,
    stochastic: bool = True,
    generator: torch.Generator | None = None,
    seeds: torch.Tensor | None = None,
    accumulate: bool = False,
    dn_scale: float = DEFAULT_DN_SCALE,
    next_dtype: torch.dtype | None = None,
    memory_format: torch.memory_format = torch.contiguous_format,
    backend: str = "auto",
    progress: Callable[[int, int], None] | None = None,
) -> torch.Tensor:
    """Run the n-step exposure diffusion from the first network input.

    Args:
        backbone: maps ``[B, C, h, w]`` to ``[B, 9 or 4, h, w]`` (h, w multiples of 16), or
            to ``HeadFeatures`` (``engine.models.fused_unet``): then the head's 1x1
            convolution runs inside the fused step (``kernels.head_step``).
        first_input: ``[B, C, h, w]``: ``A_T`` (4 ch), then ``A_T / (r K)`` if with_photon,
            then ``A_T`` if concat_origin (as ``kernels.pack_bayer`` writes it).
        ratio, K: float32 ``[B]`` on the data's device.
        rho: float32 ``[B, n + 1]`` exposure multiples (``exposure_schedule``).
        stochastic: Poisson draws (False: their means, deterministic).
        generator: Philox keys drawn from it (one per step) unless ``seeds`` is given.
        seeds: int64 ``[n]`` device tensor of Philox keys, one per step: the CUDA-graph
            path rewrites it before each replay (no host work inside the graph). A step's
            key is shared by the batch and the draws are indexed within each sample, so a
            frame's result is the same alone or in any batch (``kernels.exposure_step``).
        next_dtype / memory_format: layout of the intermediate network inputs (fp16
            channels_last on the GPU path).
        progress: optional callable ``progress(step, steps)`` after each step's work is
            queued (step 1..n; on a GPU the work may still be running).

    Returns:
        The last estimate ``Y_{n-1}``: float32 ``[B, 4, h, w]``, normalised.
    """
    _check_loop_values(ratio, K, rho, first_input.shape[0], first_input.device)
    steps = rho.shape[1] - 1
    if seeds is None and stochastic:
        # One key per step, shared by the batch: a frame's result does not depend on the
        # other frames of its batch (the same keys as engine.inference.graphs draws: eager == graphs).
        seeds = torch.cat([philox_seed(generator, first_input.device) for _ in range(steps)])
    origin = first_input[:, :4]
    state, x = origin, first_input
    estimate = None
    # Each step's multiples as a 16-byte-aligned row (a column view of rho would start at a
    # different alignment at every step, and the step kernels would compile once per step).
    B = rho.shape[0]
    rho_rows = rho.new_zeros(steps + 1, -(-B // 4) * 4)
    rho_rows[:, :B] = rho.t()
    if seeds is not None:  # the same for the per-step Philox keys (int64: two to a row)
        seed_rows = seeds.new_zeros(steps, 2)
        seed_rows[:, 0] = seeds
    with value_checks_disabled():  # checked once above: no host read per step
        for i in range(steps):
            out = backbone(x)
            last = i == steps - 1
            step = dict(ratio=ratio, K=K, rho=rho_rows[i, :B], rho_next=None if last else rho_rows[i + 1, :B],
                        stochastic=stochastic, seed=None if last or not stochastic else seed_rows[i, :1],
                        accumulate=accumulate, with_photon=with_photon, concat_origin=concat_origin,
                        dn_scale=dn_scale, out_dtype=next_dtype, out_memory_format=memory_format, backend=backend)
            if isinstance(out, HeadFeatures):
                estimate, x = head_exposure_step(out.features, out.head, state, origin, **step)
            else:
                estimate, x = exposure_step(out, state, origin, **step)
            if not last:
                state = x[:, :4]
            if progress is not None:
                progress(i + 1, steps)
    return estimate
