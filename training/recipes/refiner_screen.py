"""A screening experiment, not a product feature: do weights of their own make the later steps better?

The method shares one network across every evaluation of the loop, so a model whose first evaluation
is trained to be good on its own (a 1-step run) has little left for the later ones (NOTES.md, "Where
the later steps help"). This screen gives every evaluation after the first a second copy of the
network, the *refiner*: it starts as the loaded network, the loaded network is frozen (a 1-step run
is the loaded model's exactly), and the ordinary ``train`` command trains the refiner alone on the
unrolled loss of steps 2 .. n. The refiner is saved beside the run's ``model.pt`` as
``model.refiner.pt``; ``evaluate`` loads ``<checkpoint stem>.refiner.pt`` when it exists.

The engine does not run such a model (its checkpoints hold one network); NOTES.md ("A refiner for
the later steps, screened") says what it measured. Usage::

    python training/recipes/refiner_screen.py -- train --out RUNS/refiner --init CKPT ...
    python training/recipes/refiner_screen.py -- evaluate --checkpoint RUNS/refiner/model.pt --seed 7 ...
"""
from __future__ import annotations

import argparse
import copy
import os
import sys
from pathlib import Path

import torch
from torch import nn

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
    plan = getattr(backbone, "_refiner_plan", None) or getattr(getattr(backbone, "module", None),
                                                              "_refiner_plan", None)
    if plan is not None:
        plan.steps, plan.calls = rho.shape[1] - 1, 0


def _patch_loops() -> None:
    """Every unrolled training loss and every evaluation run sets its plan first."""
    import training.evaluate as evaluate
    import training.objective as objective
    import training.trainer as trainer

    loss = objective.unrolled_loss
    run = evaluate.run_exposure_diffusion

    def planned_loss(backbone, *args, rho, **kwargs):
        set_plan(backbone, rho)
        return loss(backbone, *args, rho=rho, **kwargs)

    def planned_run(backbone, *args, rho, **kwargs):
        set_plan(backbone, rho)
        return run(backbone, *args, rho=rho, **kwargs)

    trainer.unrolled_loss = planned_loss
    evaluate.run_exposure_diffusion = planned_run


def _patch_trainer() -> None:
    import training.trainer as trainer
    from engine.io.atomic import atomic_path
    from engine.models.checkpoint import read_weights_only

    Trainer = trainer.Trainer
    init, state_dict, save, resume = Trainer.__init__, Trainer.state_dict, Trainer.save, Trainer.resume

    def patched_init(self, *args, **kwargs):
        init(self, *args, **kwargs)
        if self.cfg.steps < 2:
            raise SystemExit("refiner_screen: a refiner needs --steps >= 2")
        refiner = copy.deepcopy(self.model)
        self.model.requires_grad_(False)
        refiner.requires_grad_(True)
        self._refiner = refiner
        attach(self.model, refiner)
        # the loaded network's parameters stay in the optimizer without gradients: Adam skips them
        self.optimizer.add_param_group({"params": list(refiner.parameters())})

    def patched_state_dict(self):
        return {**state_dict(self), "refiner": self._refiner.state_dict()}

    def patched_save(self):
        save(self)
        if self.rank == 0:  # atomically, as the run's own files: a stopped run leaves no half-written file
            with atomic_path(self.out / f"model{SIDE_SUFFIX}") as tmp:
                torch.save(self._refiner.state_dict(), tmp)

    def patched_resume(self, path=None):
        resumed = resume(self, path)
        if resumed:
            self._refiner.load_state_dict(read_weights_only(path or (self.out / "last.pt"))["refiner"])
        return resumed

    Trainer.__init__, Trainer.state_dict, Trainer.save, Trainer.resume = (
        patched_init, patched_state_dict, patched_save, patched_resume)


def side_file(checkpoint) -> Path:
    """Where the refiner of ``checkpoint`` (a ``.pt`` file) is kept."""
    path = Path(checkpoint)
    return path.with_name(path.stem + SIDE_SUFFIX)


def _patch_loader() -> None:
    import engine.models.checkpoint as checkpoint

    load = checkpoint.load_checkpoint

    def patched_load(source, *args, **kwargs):
        model, config, meta = load(source, *args, **kwargs)
        side = side_file(source)
        if side.exists():
            refiner = copy.deepcopy(model)
            refiner.load_state_dict(checkpoint.read_weights_only(side))
            attach(model, refiner)
            print(f"refiner_screen: later steps through {side}", file=sys.stderr)
        return model, config, meta

    checkpoint.load_checkpoint = patched_load


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
    _patch_loops()
    if command[0] == "train":
        _patch_trainer()
    else:
        _patch_loader()
    from training.cli import main as cli_main

    return cli_main(command)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
