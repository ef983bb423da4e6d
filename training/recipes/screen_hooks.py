"""What the screening experiments of ``training/recipes`` share: each adds something to the network
(per-step bias offsets, a refiner for the later steps) that the engine's checkpoints do not hold, and
runs the ordinary ``train`` / ``evaluate`` commands with it hooked in.

- ``split_command``: the screen's own options before ``--``, exposure-diffusion's command after it;
- ``patch_loops``: every unrolled training loss and every evaluation run tells the network the
  schedule of the run it starts (``set_plan(backbone, rho)``), so it knows which evaluation is which;
- ``patch_trainer``: the screen's extra module is built after ``Trainer.__init__``, kept in
  ``last.pt`` (exact resume) and saved beside the run's ``model.pt`` as ``model<suffix>``;
- ``patch_loader``: ``load_checkpoint`` attaches ``<checkpoint stem><suffix>`` when it exists;
- ``attached``: what a screen attached to a network, through a ``DistributedDataParallel`` wrapper too.

The patches replace module and class attributes for the rest of the process: a screen is a
command of its own, never imported by the product.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Callable

import torch
from torch import nn


def split_command(parser: argparse.ArgumentParser, argv: list[str], commands: tuple[str, ...],
                  hint: str = "") -> tuple[argparse.Namespace, list[str]]:
    """The screen's options (before ``--``) and exposure-diffusion's command (after it), which
    must start with one of ``commands``; anything else is a usage error (``SystemExit``)."""
    wanted = " or ".join(commands)
    if "--" not in argv:
        parser.error(f"after --, give exposure-diffusion's {wanted} command{hint}")
    split = argv.index("--")
    args, command = parser.parse_args(argv[:split]), argv[split + 1:]
    if not command or command[0] not in commands:
        parser.error(f"after --, give exposure-diffusion's {wanted} command{hint}")
    return args, command


def patch_loops(set_plan: Callable[[nn.Module, torch.Tensor], None]) -> None:
    """``training.trainer``'s unrolled loss and ``training.evaluate``'s loop call
    ``set_plan(backbone, rho)`` (``rho``: float32 ``[B, steps + 1]``) before each run."""
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


def attached(backbone: nn.Module, name: str):
    """What a screen attached to the network as ``name``, looked up on ``backbone`` or on the
    network a ``DistributedDataParallel`` wrapper holds (``backbone.module``); None when absent."""
    found = getattr(backbone, name, None)
    if found is None:
        found = getattr(getattr(backbone, "module", None), name, None)
    return found


def side_file(checkpoint, suffix: str) -> Path:
    """Where a screen keeps its extra module of ``checkpoint`` (a ``.pt`` file): ``<stem><suffix>``."""
    path = Path(checkpoint)
    return path.with_name(path.stem + suffix)


def patch_trainer(key: str, suffix: str, setup: Callable[[object], nn.Module]) -> None:
    """``Trainer`` runs with an extra module: ``setup(trainer)`` builds and hooks it once the trainer
    is made (and adds its parameters to the optimizer); it is kept in ``last.pt`` under ``key`` and
    written beside ``model.pt`` as ``model<suffix>`` whenever the run saves."""
    import training.trainer as trainer
    from engine.io.atomic import atomic_path
    from engine.models.checkpoint import read_weights_only

    Trainer = trainer.Trainer
    init, state_dict, save, resume = Trainer.__init__, Trainer.state_dict, Trainer.save, Trainer.resume

    def patched_init(self, *args, **kwargs):
        init(self, *args, **kwargs)
        self._screen_extra = setup(self)

    def patched_state_dict(self):
        return {**state_dict(self), key: self._screen_extra.state_dict()}

    def patched_save(self):
        save(self)
        if self.rank == 0:  # atomically, as the run's own files: a stopped run leaves no half-written file
            with atomic_path(self.out / f"model{suffix}") as tmp:
                torch.save(self._screen_extra.state_dict(), tmp)

    def patched_resume(self, path=None):
        resumed = resume(self, path)
        if resumed:
            self._screen_extra.load_state_dict(read_weights_only(path or (self.out / "last.pt"))[key])
        return resumed

    Trainer.__init__, Trainer.state_dict, Trainer.save, Trainer.resume = (
        patched_init, patched_state_dict, patched_save, patched_resume)


def patch_loader(suffix: str, attach_saved: Callable[[nn.Module, dict], None], what: str) -> None:
    """``engine.models.checkpoint.load_checkpoint`` calls ``attach_saved(model, state)`` with the
    state dict of ``<checkpoint stem><suffix>`` when that file exists, and says so on stderr."""
    import engine.models.checkpoint as checkpoint

    load = checkpoint.load_checkpoint

    def patched_load(source, *args, **kwargs):
        model, config, meta = load(source, *args, **kwargs)
        side = side_file(source, suffix)
        if side.exists():
            attach_saved(model, checkpoint.read_weights_only(side))
            print(f"{what} from {side}", file=sys.stderr)
        return model, config, meta

    checkpoint.load_checkpoint = patched_load
