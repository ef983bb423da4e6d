"""A screening experiment, not a product feature: do weights of their own make the later steps better?

The method shares one network across every evaluation of the loop, so a model whose first evaluation
is trained to be good on its own (a 1-step run) has little left for the later ones (NOTES.md, "Where
the later steps help"). This screen gives every evaluation after the first a second copy of the
network, the *refiner*: it starts as the loaded network, the loaded network is frozen (a 1-step run
is the loaded model's exactly), and the ordinary ``train`` command trains the refiner alone on the
unrolled loss of steps 2 .. n. The refiner is saved beside the run's ``model.pt`` as
``model.refiner.pt``; ``evaluate`` loads ``<checkpoint stem>.refiner.pt`` when it exists.

The engine does not run such a model (its checkpoints hold one network); NOTES.md ("The steps'
estimates combined; a refiner for the later steps") says what it measured. Usage::

    python training/recipes/refiner_screen.py -- train --out RUNS/refiner --init CKPT ...
    python training/recipes/refiner_screen.py -- evaluate --checkpoint RUNS/refiner/model.pt --seed 7 ...
"""
from __future__ import annotations

import argparse
import copy
import os
import sys

import torch
from torch import nn

from training.recipes import screen_hooks

SIDE_SUFFIX = ".refiner.pt"


class StepPlan:
    """Which evaluation of the run in progress comes next: ``calls`` so far of ``steps`` per run."""

    def __init__(self) -> None:
        self.steps: int | None = None
        self.calls = 0


def attach(net: nn.Module, refiner: nn.Module) -> StepPlan:
    """Routes every evaluation after the first of each run (``set_plan``) through ``refiner``.

    ``refiner`` is kept off ``net``'s modules, so ``net``'s state dict (the engine's checkpoint) is
    unchanged; ``net.train(mode)`` sets both."""
    plan = StepPlan()
    first_forward, first_train = net.forward, net.train
    object.__setattr__(net, "_refiner", refiner)
    object.__setattr__(net, "_refiner_plan", plan)

    def forward(x, *args, **kwargs):
        if plan.steps is None:
            raise RuntimeError("refiner_screen: no step plan set for this run (set_plan)")
        first = plan.calls % plan.steps == 0
        plan.calls += 1
        return first_forward(x, *args, **kwargs) if first else refiner(x, *args, **kwargs)

    def train(mode: bool = True):
        refiner.train(mode)
        return first_train(mode)

    net.forward, net.train = forward, train
    return plan


def set_plan(backbone, rho: torch.Tensor) -> None:
    """A run of ``rho.shape[1] - 1`` evaluations starts (no-op for a network without a refiner)."""
    plan = screen_hooks.attached(backbone, "_refiner_plan")
    if plan is not None:
        plan.steps, plan.calls = rho.shape[1] - 1, 0


def _setup_refiner(trainer) -> nn.Module:
    """The refiner of a ``Trainer`` just made: a copy of its network, trained alone (the loaded
    network frozen; its parameters stay in the optimizer without gradients, which Adam skips)."""
    if trainer.cfg.steps < 2:
        raise SystemExit("refiner_screen: a refiner needs --steps >= 2")
    refiner = copy.deepcopy(trainer.model)
    trainer.model.requires_grad_(False)
    refiner.requires_grad_(True)
    attach(trainer.model, refiner)
    trainer.optimizer.add_param_group({"params": list(refiner.parameters())})
    return refiner


def _attach_saved(model: nn.Module, state: dict) -> None:
    refiner = copy.deepcopy(model)
    refiner.load_state_dict(state)
    attach(model, refiner)


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     usage="%(prog)s [options] -- train|evaluate ARGS (exposure-diffusion's own)")
    parser.add_argument("--threads", type=int, default=int(os.environ.get("THREADS", 1)))
    args, command = screen_hooks.split_command(parser, argv, ("train", "evaluate"))
    torch.set_num_threads(args.threads)
    screen_hooks.patch_loops(set_plan)
    if command[0] == "train":
        screen_hooks.patch_trainer("refiner", SIDE_SUFFIX, _setup_refiner)
    else:
        screen_hooks.patch_loader(SIDE_SUFFIX, _attach_saved, "refiner_screen: later steps through the refiner")
    from training.cli import main as cli_main

    return cli_main(command)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
