"""A screening experiment, not a product feature: does a step embedding make later steps better?

Every convolution of the UNet (the 1x1 head included) gets a bias *offset* that depends on the
step's place in the loop, ``t = (rho_i - 1) / (r - 1)`` (0 at the first evaluation; on SPEC's
linspace schedule with 3 steps 0, 1/3, 2/3): ``ANCHORS`` offset vectors per layer at
``t = k / ANCHORS``, interpolated linearly between them (clamped at the last), scaled by
``--scale`` (so Adam moves them ``scale`` times faster than the weights). With the offsets at
zero the network is the one it was loaded as. The offsets are trained with the ordinary
``train`` command (``--freeze-base``: them alone; ``--keep-first``: the first step's anchor stays
zero, so a 1-step run is the loaded model's exactly) and saved beside the run's ``model.pt`` as
``model.stepbias.pt``; ``evaluate`` loads ``<checkpoint stem>.stepbias.pt`` when it exists.

The engine does not run such a model (its checkpoints have no step-dependent weights); NOTES.md
("A step embedding, screened") says what it measured and why it stopped here. Usage::

    python training/recipes/step_bias_screen.py --freeze-base --keep-first -- train --out RUNS/sb ...
    python training/recipes/step_bias_screen.py -- evaluate --checkpoint RUNS/sb/model.pt --seed 7 ...
"""
from __future__ import annotations

import argparse
import os
import sys

import torch
from torch import nn

from training.recipes import screen_hooks

ANCHORS = 3
SIDE_SUFFIX = ".stepbias.pt"


class StepBias(nn.Module):
    """The offsets of every conv / transposed conv of ``net``: float32 ``[anchors, out_channels]``
    each (zeros at construction), and the step plan of the run in progress."""

    def __init__(self, net: nn.Module, anchors: int = ANCHORS, scale: float = 10.0):
        super().__init__()
        if anchors < 2:
            raise ValueError(f"anchors must be >= 2, got {anchors}")
        self.anchors, self.scale = int(anchors), float(scale)
        convs = {n: m for n, m in net.named_modules() if isinstance(m, (nn.Conv2d, nn.ConvTranspose2d))}
        self.layers = list(convs)
        # ParameterDict keys may not hold dots: conv names of the UNet have none
        self.offsets = nn.ParameterDict({n: nn.Parameter(torch.zeros(self.anchors, m.out_channels))
                                         for n, m in convs.items()})
        self.plan: torch.Tensor | None = None  # float32 [B, steps]: t of every evaluation of the run
        self.calls = 0
        self.mix: torch.Tensor | None = None  # float32 [B, anchors]: the current evaluation's weights

    def anchor_weights(self, t: torch.Tensor) -> torch.Tensor:
        """Linear interpolation weights ``[B, anchors]`` of the step places ``t`` ``[B]`` (in [0, 1])."""
        pos = (t.float() * self.anchors).clamp(0, self.anchors - 1)
        lo = pos.floor().long().clamp(max=self.anchors - 2)
        frac = (pos - lo.float())[:, None]
        w = torch.zeros(t.numel(), self.anchors, device=t.device)
        w.scatter_(1, lo[:, None], 1 - frac)
        w.scatter_add_(1, lo[:, None] + 1, frac)
        return w

    def offset(self, layer: str) -> torch.Tensor:
        """The current evaluation's offset of ``layer``: ``[B, C]``."""
        return (self.mix.to(self.offsets[layer].device) @ self.offsets[layer]) * self.scale


def attach(net: nn.Module, anchors: int = ANCHORS, scale: float = 10.0) -> StepBias:
    """Hooks the offsets into ``net`` (each forward pass is the next evaluation of the plan set by
    ``set_plan``); returns them. They are kept off ``net``'s own modules, so its state dict (the
    engine's checkpoint) is unchanged."""
    sb = StepBias(net, anchors, scale)
    object.__setattr__(net, "_step_bias", sb)

    def next_evaluation(module, args):
        if sb.plan is None:
            raise RuntimeError("step_bias_screen: no step plan set for this run (set_plan)")
        sb.mix = sb.anchor_weights(sb.plan[:, sb.calls % sb.plan.shape[1]])
        sb.calls += 1

    net.register_forward_pre_hook(next_evaluation)

    def add_offset(name):
        return lambda module, inputs, out: out + sb.offset(name)[:, :, None, None].to(out.dtype)

    for name in sb.layers:
        net.get_submodule(name).register_forward_hook(add_offset(name))
    return sb


def keep_first_anchor(sb: StepBias) -> None:
    """The first anchor's offsets get no gradient, so Adam leaves them where they are (zero): the
    first evaluation stays the loaded network's."""
    for p in sb.parameters():
        p.register_hook(lambda g: g.index_fill(0, torch.tensor([0], device=g.device), 0.0))


def set_plan(backbone, rho: torch.Tensor) -> None:
    """The step places of a run on the schedule ``rho`` ``[B, steps + 1]`` (no-op for a network
    without offsets)."""
    sb = screen_hooks.attached(backbone, "_step_bias")
    if sb is None:
        return
    r = rho[:, -1:]
    sb.plan = ((rho[:, :-1] - 1) / (r - 1).clamp(min=1e-6)).detach()
    sb.calls = 0


def _setup(anchors: int, scale: float, freeze_base: bool, keep_first: bool):
    """``setup(trainer)`` for ``screen_hooks.patch_trainer``: the offsets hooked into the trainer's
    network and added to its optimizer (with ``freeze_base``, them alone)."""
    def setup(trainer) -> StepBias:
        sb = attach(trainer.model, anchors, scale).to(next(trainer.model.parameters()).device)
        if freeze_base:
            trainer.model.requires_grad_(False)
        if keep_first:
            keep_first_anchor(sb)
        trainer.optimizer.add_param_group({"params": list(sb.parameters())})
        return sb

    return setup


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     usage="%(prog)s [options] -- train|evaluate ARGS (exposure-diffusion's own)")
    parser.add_argument("--anchors", type=int, default=ANCHORS, help="offset vectors per layer (default 3)")
    parser.add_argument("--scale", type=float, default=10.0, help="offset multiplier (default 10)")
    parser.add_argument("--freeze-base", action="store_true", help="train the offsets alone")
    parser.add_argument("--keep-first", action="store_true", help="the first step's offsets stay zero")
    parser.add_argument("--threads", type=int, default=int(os.environ.get("THREADS", 1)))
    args, command = screen_hooks.split_command(parser, argv, ("train", "evaluate"))
    torch.set_num_threads(args.threads)
    screen_hooks.patch_loops(set_plan)
    if command[0] == "train":
        screen_hooks.patch_trainer("step_bias", SIDE_SUFFIX,
                                   _setup(args.anchors, args.scale, args.freeze_base, args.keep_first))
    else:
        screen_hooks.patch_loader(SIDE_SUFFIX, lambda model, state: attach(model, args.anchors, args.scale)
                                  .load_state_dict(state), "step_bias_screen: offsets")
    from training.cli import main as cli_main

    return cli_main(command)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
