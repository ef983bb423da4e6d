"""A screening experiment, not a product feature: evaluation with every state anchored to the data.

Why (NOTES.md, "Where the later steps help"): with Poisson means between the steps, the state after
step i is ``A_{i+1} = (A_T + (rho_{i+1} - 1) Y_i) / rho_{i+1}``, so from the second evaluation on the
data enter with weight ``1 / rho`` (1/34 at x100 with 3 steps) and the estimate's own low-frequency
errors are carried from state to state; the engine's fidelity step
(``engine.inference.fidelity.low_frequency_fidelity``) brings the local means back to the data's only
after the last step. Training with every intermediate estimate given that fidelity step before its next
state is made is ``train --anchor-states`` (``training.objective.anchored_estimate``). This script runs
``evaluate`` with the same anchoring in the restoration loop, which the engine has no option for; the
last estimate is handled as before (the evaluation's fidelity step after the loop). A 1-step run is
unchanged by construction (no intermediate estimate). Usage::

    python training/recipes/step_fidelity_screen.py -- evaluate --checkpoint RUNS/sf/model.pt --seed 7 ...

Session 13 also trained through this script (its own copy of the anchored loss, since replaced by
``train --anchor-states``: the same gradients to 3e-8 in float32; the runs' bf16 losses differ by about
1e-5 after a few steps). NOTES.md says what it measured.
"""
from __future__ import annotations

import argparse
import os
import sys

import torch

from kernels import exposure_step
from kernels._common import DEFAULT_DN_SCALE
from training.objective import anchored_estimate
from training.recipes import screen_hooks


def anchored_next_input(estimate, unclipped, state, origin, **step) -> torch.Tensor:
    """The next network input made from the anchored estimate (``exposure_step`` with the
    estimate as a plain 4-channel head output, whose estimate is ``clip(out, 0, 1)``)."""
    _, nxt = exposure_step(anchored_estimate(estimate, unclipped), state, origin, **step)
    return nxt


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
                                     usage="%(prog)s [options] -- evaluate ARGS (exposure-diffusion's own)")
    parser.add_argument("--threads", type=int, default=int(os.environ.get("THREADS", 1)))
    args, command = screen_hooks.split_command(parser, argv, ("evaluate",), " (train: train --anchor-states)")
    torch.set_num_threads(args.threads)
    _patch_evaluation()
    from training.cli import main as cli_main

    return cli_main(command)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
