"""A screening experiment, not a product feature: do later steps gain when every state is anchored to the data?

Why (NOTES.md, "Where the later steps help"): with Poisson means between the steps, the state after
step i is ``A_{i+1} = (A_T + (rho_{i+1} - 1) Y_i) / rho_{i+1}``, so from the second evaluation on the
data enter with weight ``1 / rho`` (1/34 at x100 with 3 steps) and the estimate's own low-frequency
errors are carried from state to state; the engine's fidelity step
(``engine.inference.fidelity.low_frequency_fidelity``) brings the local means back to the data's only
after the last step. Measured on the validation split, the 3-step output's error at 8-32 packed
pixels is *larger* than the 1-step output's, and that costs about as much as the later steps gain at
the finest scales. Here every intermediate estimate gets the fidelity step before the next state is
made from it, in training (the unrolled loss) and in evaluation alike; the last estimate is handled as
before (the loss on the network's estimate; the evaluation's fidelity step after the loop). The
correction's own gradient is not followed (the next state is ``Y + stop_gradient(F(Y) - Y)``): the
estimate is trained through the states as before.

A 1-step run is unchanged by construction (no intermediate estimate). The training half is now an
option of ``train`` (``--anchor-states``, ``training.objective``); it is kept here because the recipe arm
``textured-anchored`` ran through it (the option's losses agree with it to about 1e-5 after a few steps,
not to the bit), and for the evaluation half, which the engine has no option for. Usage::

    python training/recipes/step_fidelity_screen.py -- train --out RUNS/sf ... (train's options)
    python training/recipes/step_fidelity_screen.py -- evaluate --checkpoint RUNS/sf/model.pt --seed 7 ...

The engine does not run models this way; NOTES.md says what the screen measured.
"""
from __future__ import annotations

import argparse
import os
import sys

import torch

from engine.inference.fidelity import DEFAULT_SCALE, low_frequency_fidelity
from kernels import exposure_step
from kernels._common import DEFAULT_DN_SCALE


def anchored(estimate: torch.Tensor, unclipped: torch.Tensor, scale: int = DEFAULT_SCALE) -> torch.Tensor:
    """``estimate`` float32 ``[B, 4, h, w]`` with its local means brought to the unclipped data's
    (the engine's fidelity step); the correction carries no gradient."""
    with torch.no_grad(), torch.autocast(estimate.device.type, enabled=False):  # the shift in float32
        shift = low_frequency_fidelity(estimate.detach().float(), unclipped, scale) - estimate.detach().float()
    return estimate.float() + shift


def anchored_next_input(estimate, unclipped, state, origin, **step) -> torch.Tensor:
    """The next network input made from the anchored estimate (``exposure_step`` with the
    estimate as a plain 4-channel head output, whose estimate is ``clip(out, 0, 1)``)."""
    _, nxt = exposure_step(anchored(estimate, unclipped), state, origin, **step)
    return nxt


def unrolled_loss_anchored(backbone, first_input, gt, unclipped, *, ratio, K, rho, weights, with_photon,
                           concat_origin, generator=None, mean_weight=0.0, mean_pool=8, stochastic=True,
                           dn_scale=DEFAULT_DN_SCALE, memory_format=torch.channels_last):
    """``training.objective.unrolled_loss`` (reference-code form, states not detached) with every
    intermediate estimate anchored before its next state is made. ``unclipped``: float32
    ``[B, 4, p, p]``, the noisy input ``z r / s`` before the clip."""
    from training.objective import _aux_loss, local_mean_error

    steps = rho.shape[1] - 1
    origin = first_input[:, :4]
    state, x = origin, first_input.contiguous(memory_format=memory_format)
    total = first_input.new_zeros((), dtype=torch.float32)
    per_step = []
    for i in range(steps):
        out = backbone(x)
        last = i == steps - 1
        common = dict(ratio=ratio, K=K, rho=rho[:, i], stochastic=stochastic, generator=generator,
                      with_photon=with_photon, concat_origin=concat_origin, dn_scale=dn_scale,
                      out_dtype=torch.float32, out_memory_format=memory_format)
        estimate, _ = exposure_step(out, state, origin, rho_next=None, **common)
        l1 = (estimate - gt).abs().mean()
        aux = _aux_loss(out, state, gt) if out.shape[1] == 9 else torch.zeros_like(l1)
        if mean_weight:
            aux = aux + mean_weight * local_mean_error(estimate, gt, mean_pool)
        total = total + weights[i] * (l1 + aux)
        per_step.append(l1.detach().float())
        if not last:
            nxt = anchored_next_input(estimate, unclipped, state, origin, rho_next=rho[:, i + 1], **common)
            state, x = nxt[:, :4], nxt
    return total, torch.stack(per_step)


@torch.inference_mode()
def restore_anchored(backbone, config, first_input, unclipped, *, ratio, K, steps, stochastic=True, generator=None,
                     dn_scale=DEFAULT_DN_SCALE, schedule="linspace"):
    """``training.evaluate.restore`` with every intermediate estimate anchored (any h, w)."""
    from engine.inference.loop import exposure_schedule, pad_to_multiple

    padded, (h, w) = pad_to_multiple(first_input)
    unclipped_padded, _ = pad_to_multiple(unclipped)
    rho = exposure_schedule(ratio, steps, schedule)
    origin = padded[:, :4]
    state, x = origin, padded
    estimate = None
    for i in range(steps):
        out = backbone(x)
        common = dict(ratio=ratio, K=K, rho=rho[:, i], stochastic=stochastic, generator=generator,
                      with_photon=config.with_photon, concat_origin=config.concat_origin, dn_scale=dn_scale)
        estimate, _ = exposure_step(out, state, origin, rho_next=None, **common)
        if i < steps - 1:
            # the padded border's data are the replicated / zero padding of the input: anchoring
            # there is as (in)correct as the network's own estimate of it, and it is cropped away
            x = anchored_next_input(estimate, unclipped_padded, state, origin, rho_next=rho[:, i + 1], **common)
            state = x[:, :4]
    return estimate[:, :, :h, :w]


def _patch_trainer() -> None:
    """The trainer's micro-batch loss: the same synthesis with its unclipped values kept, then the
    anchored unrolled loss."""
    import training.trainer as trainer
    from kernels import sample_noise_params, synthesize_noise, value_checks_disabled
    from training.augment import augment_and_normalise
    from engine.inference.loop import exposure_schedule

    Trainer = trainer.Trainer

    def micro_loss(self, batch, m):
        cfg = self.cfg
        if cfg.inner_exposures == "random" or cfg.accumulate_form or cfg.detach_states or cfg.concat_origin:
            raise SystemExit("step_fidelity_screen: only linspace-type inner exposures, the reference form, "
                             "undetached states and no origin channel are screened")
        g = trainer._generator(cfg.seed, 2, self.global_step, m)
        b = batch.to(self.device)
        clean = augment_and_normalise(b.raw, b.black, b.white, generator=g)
        p = sample_noise_params(len(b), cfg.cameras, model=cfg.noise_model, K_range=cfg.K_range,
                                ratio_range=cfg.ratio_range, continuous=cfg.continuous, generator=g).to(self.device)
        with value_checks_disabled():
            dn = synthesize_noise(clean, cfg.noise_model, params=p, output="dn", black_level=0.0, generator=g)
        unclipped = dn * p.ratio.view(-1, 1, 1, 1) / DEFAULT_DN_SCALE
        a_t = unclipped.clamp(0, 1)
        first = torch.cat([a_t, a_t / (p.ratio * p.K).view(-1, 1, 1, 1)], 1) if cfg.with_photon else a_t
        rho = exposure_schedule(p.ratio, cfg.steps, cfg.inner_exposures)
        autocast = torch.autocast(self.device.type, dtype=torch.bfloat16 if cfg.amp == "bf16" else torch.float16,
                                  enabled=cfg.amp is not None)
        with value_checks_disabled(), autocast:
            return unrolled_loss_anchored(self.net, first, clean, unclipped, ratio=p.ratio, K=p.K, rho=rho,
                                          weights=self.weights(), with_photon=cfg.with_photon,
                                          concat_origin=cfg.concat_origin, generator=g,
                                          mean_weight=cfg.mean_weight, mean_pool=cfg.mean_pool,
                                          stochastic=not cfg.mean_photons)

    Trainer._micro_loss = micro_loss


def _patch_evaluation() -> None:
    """``evaluate``'s model runs (``training.holdout_eval._model_outputs``) anchor every state."""
    import training.holdout_eval as holdout_eval

    def model_outputs(backbone, config, data, r, steps, *, batch, seed, device, stochastic, policy=None,
                      schedule="linspace"):
        if steps == "auto":
            raise SystemExit("step_fidelity_screen: give fixed step counts")
        p, noisy, unclipped = data.params[r], data.noisy[r], data.unclipped[r]
        gen = torch.Generator().manual_seed(seed * 1000 + int(r) + 500)
        outs = []
        for start in range(0, noisy.shape[0], batch):
            sl = slice(start, start + batch)
            a_t = noisy[sl].to(device)
            ratio, K = p.ratio[sl].to(device), p.K[sl].to(device)
            first = torch.cat([a_t] + ([a_t / (ratio * K).view(-1, 1, 1, 1)] if config.with_photon else []) +
                              ([a_t] if config.concat_origin else []), 1)
            outs.append(restore_anchored(backbone, config, first, unclipped[sl].to(device), ratio=ratio, K=K,
                                         steps=int(steps), generator=gen, stochastic=stochastic,
                                         schedule=schedule).cpu())
        return torch.cat(outs), [int(steps)] * noisy.shape[0]

    holdout_eval._model_outputs = model_outputs


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     usage="%(prog)s [options] -- train|evaluate ARGS (exposure-diffusion's own)")
    parser.add_argument("--threads", type=int, default=int(os.environ.get("THREADS", 1)))
    if "--" not in argv:
        parser.error("after --, give exposure-diffusion's train or evaluate command")
    split = argv.index("--")
    args, command = parser.parse_args(argv[:split]), argv[split + 1:]
    if not command or command[0] not in ("train", "evaluate"):
        parser.error("after --, give exposure-diffusion's train or evaluate command")
    torch.set_num_threads(args.threads)
    if command[0] == "train":
        _patch_trainer()
    else:
        _patch_evaluation()
    from training.cli import main as cli_main

    return cli_main(command)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
