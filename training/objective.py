"""The multi-step training objective of ExposureDiffusion (SPEC §4, Training).

Per sample, ``steps - 1`` distinct integers drawn from ``[2, r - 1]`` are the inner
exposure multiples; every step is unrolled with gradients, the Poisson draws pass them
straight through (``kernels.exposure_step``'s autograd), and the loss is
``sum_i w_i * (L_i + aux_i + lambda_mean * B_i)`` with ``L_i = mean|Y_i - gt|``, for the
adaptive residual head ``aux_i = mean(|x0 - gt| * M + |clip(R + A_i) - gt| * (1 - M))``,
and the local-mean (brightness) term ``B_i = mean|pool(Y_i) - pool(gt)|`` over
``mean_pool x mean_pool`` blocks of each plane (``lambda_mean = 0``: SPEC §4 as written).

Why the local-mean term (issue 14): an L1 loss makes each estimate the posterior *median*,
which for the right-skewed photon-count posteriors of dark pixels lies below the mean; the
next state is built from the estimate (``(rho_next - 1)`` of its ``rho_next`` exposures), so
that dark bias is carried into the state, and each further step adds its own: the estimates
drift darker step by step. The public reference code hides this by rescaling every step's
estimate with the ground-truth illuminance correction *inside* its loop (training and
evaluation), which an engine without ground truth cannot do. The block means of the error
average many pixels, so the L1 of them is minimised by a (nearly) mean-unbiased local
brightness; the pixel L1 keeps its edges.

Why ``detach_states`` (issue 14, session 4): with every later loss reaching the earlier
estimates through the straight-through draws, the first estimate is trained for what it
does to the later states as well as for itself. Measured on the photo hold-out: 1200 steps of
3-step training from the previous default lowered its 1-step PSNR at x100 (36.44 -> 35.32 dB)
while the same data with 1 step (5700 steps) reached 40.00 dB. With the states detached, each
evaluation is trained by its own step's loss only, on the inputs the loop gives it.

Why ``anchor`` (issue 23, session 13; NOTES.md, "Where the later steps help"): with Poisson
means between the steps, the state after step i is ``(A_T + (rho - 1) Y_i) / rho``, so from the
second evaluation on the data weigh ``1 / rho`` and each estimate's low-frequency error is
carried into the next state; the engine puts the data's local means back only after the last
step (``engine.inference.fidelity``). With ``anchor`` (the noisy input before its clip) every
intermediate estimate gets that fidelity step before its next state is made, in training only:
the network learns from states whose coarse content is the data's. The correction carries no
gradient (``Y + stop_gradient(F(Y) - Y)``). The engine's loop is unchanged: a network so trained
is better at x300 without anchoring at inference too (about + 0.25 dB at 3 steps on the photo-like
validation split, twice), but at x100 its third step gains nothing over its first, and on the
photographs it loses 0.12 dB there, so the shipped model is not trained so (NOTES.md).
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from engine.inference.fidelity import DEFAULT_SCALE as DEFAULT_ANCHOR_SCALE
from engine.inference.fidelity import low_frequency_fidelity
from kernels import exposure_step
from kernels._common import DEFAULT_DN_SCALE


def sample_inner_exposures(ratio: torch.Tensor, steps: int, generator: torch.Generator | None = None) -> torch.Tensor:
    """Training schedules ``[1, rho_1, ..., rho_{n-1}, r]`` per sample, float32 ``[B, n + 1]``.

    The inner multiples are ``n - 1`` distinct integers drawn uniformly from
    ``[2, ceil(r) - 1]``, sorted. Vectorised: every candidate gets a random key and the
    ``n - 1`` smallest keys among the valid candidates win. ``generator`` is a CPU
    generator; the result lands on ratio's device.
    """
    B = ratio.numel()
    r = ratio.detach().float().cpu()
    if steps == 1:
        return torch.stack([torch.ones(B), r], 1).to(ratio.device)
    top = torch.ceil(r).long() - 1  # largest candidate < r
    if int((top - 1).min()) < steps - 1:
        raise ValueError(f"ratio {float(r.min()):g} leaves fewer than steps - 1 = {steps - 1} integer "
                         "exposure multiples in [2, r - 1]; lower steps or raise the ratio")
    candidates = torch.arange(2, int(top.max()) + 1)
    keys = torch.rand(B, candidates.numel(), generator=generator)
    keys[candidates[None, :] > top[:, None]] = 2.0  # never chosen
    chosen = candidates[keys.argsort(dim=1)[:, : steps - 1]].sort(dim=1).values.float()
    rho = torch.cat([torch.ones(B, 1), chosen, r[:, None]], 1)
    return rho.to(ratio.device)


class StepWeights(nn.Module):
    """Loss weights of the steps: ``w_0 .. w_{n-2}`` (learnable, clipped to [0, 1], init
    ``1 / n``) and ``1 - sum`` for the last step; fixed equal weights ``1 / n``; or fixed
    given ``values`` (n numbers >= 0, normalised to sum 1: e.g. more on the last step, the
    output a multi-step run returns)."""

    def __init__(self, steps: int, learnable: bool = True, values=None):
        super().__init__()
        self.steps = steps
        self.learnable = learnable and values is None
        self.raw = nn.Parameter(torch.full((max(steps - 1, 0),), 1.0 / steps), requires_grad=self.learnable)
        fixed = torch.full((steps,), 1.0 / steps) if values is None else normalised_step_weights(values, steps)
        self.register_buffer("fixed", fixed, persistent=False)

    def forward(self) -> torch.Tensor:
        if not self.learnable:
            return self.fixed
        first = self.raw.clamp(0, 1)
        return torch.cat([first, (1 - first.sum()).reshape(1)])


def normalised_step_weights(values, steps: int) -> torch.Tensor:
    """``values`` (``steps`` finite numbers >= 0, not all 0) divided by their sum, float32
    ``[steps]``; anything else is a ``ValueError`` saying what is expected."""
    try:
        w = torch.as_tensor([float(v) for v in values], dtype=torch.float64)
    except (TypeError, ValueError):
        raise ValueError(f"step weights must be {steps} numbers >= 0, got {values!r:.80}") from None
    if w.numel() != steps or not torch.isfinite(w).all() or (w < 0).any() or w.sum() <= 0:
        raise ValueError(f"step weights must be {steps} finite numbers >= 0 (one per unrolled step), not all 0, "
                         f"got {[float(v) for v in w]}")
    return (w / w.sum()).float()


def _aux_loss(out: torch.Tensor, state: torch.Tensor, gt: torch.Tensor) -> torch.Tensor:
    m = torch.sigmoid(out[:, :1].float())
    x0, resid = out[:, 1:5].float(), out[:, 5:9].float()
    return torch.mean((x0 - gt).abs() * m + ((resid + state.float()).clamp(0, 1) - gt).abs() * (1 - m))


def local_mean_error(estimate: torch.Tensor, gt: torch.Tensor, pool: int) -> torch.Tensor:
    """``mean |avgpool(Y) - avgpool(gt)|`` over ``pool x pool`` blocks of every plane.

    Args: estimate, gt: ``[B, 4, h, w]`` (any float dtype; computed in float32), ``pool``
    >= 1 (1: the pixel L1). Blocks that do not fit at the bottom/right edges are dropped.
    Returns a float32 scalar (normalised units).
    """
    if pool < 1:
        raise ValueError(f"pool must be >= 1, got {pool}")
    e = estimate.float() - gt.float()
    return F.avg_pool2d(e, pool).abs().mean() if pool > 1 else e.abs().mean()


def network_input(unclipped: torch.Tensor, ratio: torch.Tensor, K: torch.Tensor, with_photon: bool,
                  concat_origin: bool) -> torch.Tensor:
    """The first network input from the noisy input before its clip, as ``kernels.synthesize_noise``
    writes it: ``A_T = clip(unclipped, 0, 1)``, then ``A_T / (r K)`` if ``with_photon``, then ``A_T``
    if ``concat_origin`` (float32 ``[B, 4 | 8 | 12, p, p]``; ``ratio``, ``K`` float32 ``[B]``)."""
    a_t = unclipped.clamp(0.0, 1.0)
    parts = [a_t] + ([a_t / (ratio * K).view(-1, 1, 1, 1)] if with_photon else []) + ([a_t] if concat_origin else [])
    return torch.cat(parts, 1)


def anchored_estimate(estimate: torch.Tensor, unclipped: torch.Tensor, scale: int = DEFAULT_ANCHOR_SCALE) -> torch.Tensor:
    """``estimate`` (float ``[B, 4, p, p]`` in [0, 1]) with its local means over ``scale``-pixel boxes
    brought to the data's (``engine.inference.fidelity.low_frequency_fidelity``, computed in float32
    outside autocast); the correction carries no gradient, so the result's gradient is the
    estimate's. ``unclipped``: float32 ``[B, 4, p, p]``, the noisy input ``z r / s`` before its clip."""
    with torch.no_grad(), torch.autocast(estimate.device.type, enabled=False):
        plain = estimate.detach().float()
        shift = low_frequency_fidelity(plain, unclipped, scale).sub_(plain)
    return estimate.float() + shift


def unrolled_loss(backbone: nn.Module, first_input: torch.Tensor, gt: torch.Tensor, *, ratio: torch.Tensor,
                  K: torch.Tensor, rho: torch.Tensor, weights: torch.Tensor, with_photon: bool, concat_origin: bool,
                  generator: torch.Generator | None = None, accumulate: bool = False,
                  mean_weight: float = 0.0, mean_pool: int = 8, detach_states: bool = False,
                  stochastic: bool = True, dn_scale: float = DEFAULT_DN_SCALE,
                  memory_format: torch.memory_format = torch.channels_last, anchor: torch.Tensor | None = None,
                  anchor_scale: int = DEFAULT_ANCHOR_SCALE) -> tuple[torch.Tensor, torch.Tensor]:
    """Loss of one batch with all steps unrolled (gradients through every step).

    Args:
        first_input: ``[B, C, p, p]`` network input at rho_0 = 1 (from
            ``kernels.synthesize_noise``); gt: clean ``[B, 4, p, p]`` float32.
        ratio, K: float32 ``[B]``; rho: ``[B, n + 1]`` (``sample_inner_exposures``);
        weights: ``[n]`` step weights (``StepWeights()``).
        mean_weight, mean_pool: weight and block size of the local-mean term (module docstring).
        detach_states: stop the gradient between steps (each evaluation is trained by its own
            step's loss only; the module docstring says why one would); False: SPEC §4, every
            later loss reaches the earlier estimates through the straight-through draws.
        stochastic: Poisson draws between the steps (SPEC §4); False: their means, as the
            engine's ``stochastic=False`` inference uses them (gradients flow through the mean).
        memory_format: layout of the intermediate network inputs (channels_last: the
            faster convolution layout on GPUs and oneDNN CPUs).
        anchor: float32 ``[B, 4, p, p]``, the noisy input before its clip (``z r / s``): every
            intermediate estimate is brought to its local means over ``anchor_scale``-pixel boxes
            before the next state is made from it (module docstring); None: not (SPEC §4).

    Returns:
        (total loss, per-step L1 values: detached float32 ``[n]`` on the data's device, for
        logging; kept on the device so that the loss makes no host synchronisation).
    """
    steps = rho.shape[1] - 1
    origin = first_input[:, :4]
    state, x = origin, first_input.contiguous(memory_format=memory_format)
    total = first_input.new_zeros((), dtype=torch.float32)
    per_step = []
    for i in range(steps):
        out = backbone(x)
        last = i == steps - 1
        step = dict(ratio=ratio, K=K, rho=rho[:, i], stochastic=stochastic, generator=generator, accumulate=accumulate,
                    with_photon=with_photon, concat_origin=concat_origin, dn_scale=dn_scale, out_dtype=torch.float32,
                    out_memory_format=memory_format)
        if anchor is None or last:
            estimate, nxt = exposure_step(out, state, origin, rho_next=None if last else rho[:, i + 1], **step)
        else:  # the estimate, then the next state from its anchored copy (a plain 4-channel "head output")
            estimate, _ = exposure_step(out, state, origin, rho_next=None, **step)
            _, nxt = exposure_step(anchored_estimate(estimate, anchor, anchor_scale), state, origin,
                                   rho_next=rho[:, i + 1], **step)
        l1 = (estimate - gt).abs().mean()
        aux = _aux_loss(out, state, gt) if out.shape[1] == 9 else torch.zeros_like(l1)
        if mean_weight:
            aux = aux + mean_weight * local_mean_error(estimate, gt, mean_pool)
        total = total + weights[i] * (l1 + aux)
        per_step.append(l1.detach().float())
        if not last:
            if detach_states:
                nxt = nxt.detach()
            state, x = nxt[:, :4], nxt
    return total, torch.stack(per_step)
