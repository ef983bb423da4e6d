"""The ExposureDiffusion training loop: synthesis on the device, unrolled steps, resume.

One iteration takes a *global batch* of clean uint16 patches, split into
``world_size * accumulate`` micro-batches. Every random choice of a micro-batch (its
augmentation, its noise parameters, the noise itself, the inner exposures and the
Poisson draws of the unrolled steps) comes from a generator keyed by
``(seed, global_step, micro-batch index)``, and the sample order from ``(seed, epoch)``;
so a run resumed from a checkpoint continues exactly as if it had not stopped, and a
DistributedDataParallel run on N processes computes the same update as one process
accumulating N micro-batches.

Checkpoints (``<out>/last.pt``, atomic) hold the model, the step weights, the
optimiser and scheduler, the epoch / iteration counters and the RNG state; they load
with ``torch.load(weights_only=True)``. ``<out>/model.pt`` is the model alone in the
engine's format (``engine.models.checkpoint``), what ``Pipeline.from_checkpoint`` reads.

``<out>/log.jsonl`` always describes the run the checkpoint continues: when a resumed
run starts, the records of steps after its checkpoint's step are dropped, with a notice
(those steps are trained again, exactly, and logged anew), so no step is logged twice. A
run that starts at step 0 in a folder holding an earlier run's files (a run stopped
before its first checkpoint left a ``log.jsonl``) first moves them into
``<out>/previous-N/`` (``archive_run``): no log is ever emptied or overwritten. An
unreadable ``last.pt`` stops with ``TrainingStateError`` instead of training from scratch
over it; ``archive_run`` (``train --restart``) moves the old files aside.

SIGINT (Ctrl-C) and SIGTERM during ``fit`` stop the run at the next step boundary with a
checkpoint (``Trainer.stopped_by`` names the signal; the ``train`` command exits 130 / 143
and says how to resume); the same signal again stops at once (``TrainingInterrupted``),
keeping the last checkpoint. Under DDP the ranks agree on the step to stop at.
"""
from __future__ import annotations

import contextlib
import dataclasses
import json
import math
import os
import signal
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor, wait
from pathlib import Path
from typing import Callable, NamedTuple

import numpy as np
import torch
import torch.distributed as dist
from torch import nn
from tqdm import tqdm

from engine.io.atomic import atomic_path, remove_stale_temporaries
from engine.models.backbones import BackboneConfig
from engine.models.checkpoint import CheckpointError, read_weights_only, save_checkpoint
from engine.inference.loop import SCHEDULES, exposure_schedule
from engine.inference.pipeline import MAX_RATIO
from kernels import sample_noise_params, synthesize_noise, value_checks_disabled
from kernels._common import DEFAULT_DN_SCALE, to_device
from kernels.noise_model import parse_noise_model
from kernels.numbers import integer
from kernels.profiles import CONTINUOUS_RATIO_RANGE, DEFAULT_RATIO_RANGE, _check_range

from .augment import augment_and_normalise
from .objective import (StepWeights, network_input, normalised_step_weights, sample_inner_exposures,
                        unrolled_loss)
from .options import INNER_EXPOSURES, LIMITS, check_epoch_size, check_option, check_ratio_steps
from .patches import collate_patches

TRAIN_STATE_FORMAT = "exposure-diffusion-train"
RUN_FILES = ("last.pt", "model.pt", "log.jsonl")  # what archive_run moves aside


# Signals that stop ``fit`` at a step boundary with a checkpoint (Ctrl-C; what schedulers,
# systemd and torchrun send to end a job).
STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM)


class TrainingInterrupted(KeyboardInterrupt):
    """A second SIGINT / SIGTERM while ``fit`` was already stopping: it stopped at once, in
    the middle of a step; the last checkpoint written is kept. ``signum``: the signal."""

    def __init__(self, signum: int):
        super().__init__(signal.Signals(signum).name)
        self.signum = signum


def _duration(seconds: float) -> str:
    """``seconds`` as a short human duration: 45 s, 12 min, 3.4 h, 17 days."""
    if seconds < 90:
        return f"{seconds:.0f} s"
    if seconds < 90 * 60:
        return f"{seconds / 60:.0f} min"
    if seconds < 48 * 3600:
        return f"{seconds / 3600:.1f} h"
    return f"{seconds / 86400:.0f} days"


class TrainingStateError(ValueError):
    """A run folder's ``last.pt`` cannot be resumed (unreadable, another project's, other
    options); the message says what is wrong and how to go on."""


class MicroInputs(NamedTuple):
    """One micro-batch ready for the unrolled loss, on the device.

    first: first network input ``[b, C, p, p]``; clean: ground truth ``[b, 4, p, p]``
    float32; ratio, K: float32 ``[b]``; rho: float32 ``[b, steps + 1]``; generator: the
    micro-batch's CPU generator (its Poisson draws in the steps come from it too);
    unclipped: with ``anchor_states``, the noisy input before its clip, float32
    ``[b, 4, p, p]`` (``z r / s``), else None.
    """

    first: torch.Tensor
    clean: torch.Tensor
    ratio: torch.Tensor
    K: torch.Tensor
    rho: torch.Tensor
    generator: torch.Generator
    unclipped: torch.Tensor | None = None


@dataclasses.dataclass
class TrainConfig:
    """Everything a run depends on (saved in its checkpoints).

    Noise: ``noise_model`` ("P+g", "P+G+r+u", ...), ``cameras`` (profile names/paths;
    None = all shipped), ``K_range`` ((lo, hi) or "camera"), ``ratio_range`` or the
    ``continuous`` range (SPEC §3). Schedule: ``steps`` unrolled evaluations, step weights
    ``learnable_weights`` or fixed given ``step_weights`` (normalised to sum 1); ``mean_weight`` /
    ``mean_pool``: the local-mean (brightness) term of ``training.objective`` (0: SPEC §4 as written); ``detach_states``: no gradient between
    steps (``training.objective.unrolled_loss``; False: SPEC §4); ``mean_photons``: the unrolled steps
    add the Poisson means instead of draws (``model.pt`` then records ``meta["photons"] = "means"``, the
    mode a ``Pipeline`` runs it in by default; False: SPEC §4); ``inner_exposures``: "random" (SPEC §4:
    distinct integers from ``[2, r - 1]``, ``training.objective.sample_inner_exposures``) or an inference
    schedule, "linspace" or "geometric" (``engine.inference.loop.exposure_schedule``: the states the engine's
    loop will give the network; ``model.pt`` records it, ``meta["schedule"]``, the schedule a ``Pipeline``
    runs it with by default). ``anchor_states``: every intermediate estimate is brought to the noisy
    input's local means before the next state is made from it (``training.objective.unrolled_loss``'s
    ``anchor``; needs ``steps`` >= 2; the model runs in the engine's ordinary loop). ``init``: an engine checkpoint whose
    weights start the run (fine-tuning; ignored when resuming, which loads ``last.pt``); the run may add
    input groups the checkpoint lacks (``training.init_weights``: zero weights for them, so the run starts
    from the same function; ``origin_share`` > 0: an added origin group starts from that share of the
    state columns, ``training.init_weights``). Optimiser: Adam ``lr`` (betas 0.9, 0.999) multiplied by ``lr_factors`` after
    the epoch fractions ``lr_milestones`` (SPEC §4: halved at epoch 150 and 1e-5 from epoch 270 of 300).
    ``batch`` is the global batch.
    """

    arch: str = "unet"
    widths: tuple | None = None
    with_photon: bool = True
    concat_origin: bool = False
    out_channels: int = 9
    steps: int = 3
    learnable_weights: bool = True
    step_weights: tuple | None = None
    accumulate_form: bool = False
    mean_weight: float = 0.0
    mean_pool: int = 8
    detach_states: bool = False
    mean_photons: bool = False
    inner_exposures: str = "random"
    anchor_states: bool = False
    init: str | None = None
    origin_share: float = 0.0
    noise_model: str = "P+G+r+u"
    cameras: tuple | None = None
    K_range: tuple | str = (0.1, 30.0)
    ratio_range: tuple | None = None
    continuous: bool = False
    patch: int = 512
    batch: int = 1
    accumulate: int = 1
    epochs: int = 300
    iters_per_epoch: int | None = None
    lr: float = 1e-4
    lr_milestones: tuple = (0.5, 0.9)
    lr_factors: tuple = (0.5, 0.1)
    clip_grad: float | None = None
    amp: str | None = None  # None | "bf16" | "fp16"
    compile: bool = False
    seed: int = 0
    save_every: int = 200
    log_every: int = 20

    def __post_init__(self) -> None:
        """Refuse out-of-range options at once (limits in ``training.options``), not at the
        first optimiser step or the first checkpoint (a ZeroDivisionError, or a negative
        ``clip_grad`` silently turning the gradient around)."""
        for name in LIMITS:
            setattr(self, name, check_option(name, getattr(self, name)))
        if not 0.0 <= float(self.origin_share) <= 1.0:
            raise ValueError(f"origin_share must be in [0, 1], got {self.origin_share!r}")
        if self.origin_share and not (self.concat_origin and self.init):
            raise ValueError("origin_share starts an added origin group from the init's state columns: it needs "
                             "concat_origin and an init checkpoint without the origin")
        if self.step_weights is not None:
            self.step_weights = tuple(float(w) for w in normalised_step_weights(self.step_weights, self.steps))
        if self.anchor_states and self.steps < 2:
            raise ValueError(f"anchor_states anchors the states between steps: it needs steps >= 2, got {self.steps}")
        if self.inner_exposures not in INNER_EXPOSURES:
            raise ValueError(f"inner_exposures must be one of {INNER_EXPOSURES}, got {self.inner_exposures!r}")
        if self.amp not in (None, "bf16", "fp16"):
            raise ValueError(f"amp must be None, 'bf16' or 'fp16', got {self.amp!r}")
        parse_noise_model(self.noise_model)
        if self.ratio_range is not None:
            lo, hi = _check_range("ratio_range", self.ratio_range)
            if hi > MAX_RATIO:
                raise ValueError(f"ratio_range must lie within (0, {MAX_RATIO:g}], got {self.ratio_range!r}")
        else:
            lo = (CONTINUOUS_RATIO_RANGE if self.continuous else DEFAULT_RATIO_RANGE)[0]
        check_ratio_steps(lo, self.steps)
        check_epoch_size(self.iters_per_epoch, self.batch)
        if self.K_range != "camera":
            _check_range("K_range", self.K_range)
        self.backbone_config()  # widths, channels and size limits (engine.models.backbones)

    @property
    def inference_schedule(self) -> str | None:
        """The named inference schedule the run trains on ("linspace" / "geometric"), which its
        model records and runs with; None for SPEC's random inner exposures (the model then runs
        on linspace, the engine's default)."""
        return self.inner_exposures if self.inner_exposures in SCHEDULES else None

    def backbone_config(self) -> BackboneConfig:
        options = {"widths": tuple(self.widths)} if self.widths else {}
        return BackboneConfig(arch=self.arch, out_channels=self.out_channels, with_photon=self.with_photon,
                              concat_origin=self.concat_origin, options=options)

    def to_dict(self) -> dict:
        return {k: (list(v) if isinstance(v, tuple) else v) for k, v in dataclasses.asdict(self).items()}

    @classmethod
    def from_dict(cls, d: dict) -> "TrainConfig":
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = set(d) - names
        if unknown:
            raise ValueError(f"unknown training options {sorted(unknown)}")
        return cls(**{k: tuple(v) if isinstance(v, list) else v for k, v in d.items()})


def _generator(*key: int) -> torch.Generator:
    """A CPU generator that is a pure function of the integers ``key``."""
    seed = np.random.SeedSequence([int(k) for k in key]).generate_state(2, np.uint32)
    return torch.Generator().manual_seed(int(seed[0]) << 32 | int(seed[1]))


def lr_factor(cfg: TrainConfig, epoch: int) -> float:
    """Learning-rate multiplier at ``epoch`` (piecewise constant)."""
    factor = 1.0
    for frac, f in zip(cfg.lr_milestones, cfg.lr_factors):
        if epoch >= math.floor(frac * cfg.epochs):
            factor = f
    return factor


class Trainer:
    """Trains a backbone on a dataset of clean packed patches.

    Args:
        cfg: the run's options.
        dataset: indexable by ``(epoch, index)`` (or ``index``) returning item dicts of
            ``training.patches`` (uint16 ``[4, p, p]`` patches with levels).
        out_dir: where checkpoints and ``log.jsonl`` go.
        device: the training device (CUDA rank-local under torchrun).
        prefetch: read and collate the next step's patches in a background thread while
            the device runs the current step (into pinned memory on CUDA, so the copy does
            not block either); default: on for CUDA. Results do not depend on it: a batch
            is a pure function of (epoch, iteration).
    """

    def __init__(self, cfg: TrainConfig, dataset, out_dir, *, device=None, progress: bool = True,
                 prefetch: bool | None = None):
        self.cfg = cfg
        self.dataset = dataset
        self.out = Path(out_dir)
        self.device = torch.device(device) if device is not None else torch.device("cuda" if torch.cuda.is_available() else "cpu")
        self.progress = progress
        self.distributed = dist.is_available() and dist.is_initialized()
        self.rank = dist.get_rank() if self.distributed else 0
        self.world = dist.get_world_size() if self.distributed else 1
        if cfg.batch % (self.world * cfg.accumulate):
            raise ValueError(f"global batch {cfg.batch} must split into world_size x accumulate = "
                             f"{self.world} x {cfg.accumulate} equal micro-batches")
        self.micro = cfg.batch // (self.world * cfg.accumulate)
        self.iters_per_epoch = cfg.iters_per_epoch or max(1, len(dataset) // cfg.batch)
        torch.manual_seed(cfg.seed)  # identical initial weights on every rank
        self.backbone_config = cfg.backbone_config()
        self.model = self.backbone_config.build()
        if cfg.init:
            from engine.models.checkpoint import load_checkpoint

            from .init_weights import init_state_dict

            init_model, init_config, _ = load_checkpoint(cfg.init)
            try:
                state = init_state_dict(init_model.state_dict(), init_config, self.backbone_config,
                                        self.model.state_dict(), origin_share=cfg.origin_share)
            except ValueError as e:
                raise ValueError(f"init checkpoint {cfg.init}: {e}") from None
            self.model.load_state_dict(state)
        self.model = self.model.to(self.device).to(memory_format=torch.channels_last)
        self.weights = StepWeights(cfg.steps, learnable=cfg.learnable_weights,
                                   values=cfg.step_weights).to(self.device)
        params = list(self.model.parameters()) + ([self.weights.raw] if self.weights.learnable else [])
        self.optimizer = torch.optim.Adam(params, lr=cfg.lr, betas=(0.9, 0.999))
        self.scaler = torch.amp.GradScaler(self.device.type, enabled=cfg.amp == "fp16")
        self.net = self.model
        if self.distributed:
            self.net = nn.parallel.DistributedDataParallel(self.model, device_ids=[self.device.index] if self.device.type == "cuda" else None)
        if cfg.compile:
            self.net = torch.compile(self.net)
        self.epoch, self.iteration, self.global_step = 0, 0, 0
        self.saved_step: int | None = None  # global_step of the last checkpoint written (or resumed from)
        self.stop_signal: int | None = None  # a stop signal received during fit, not acted on yet
        self.stopped_by: int | None = None  # the signal that stopped the last fit (None: it ran to its end)
        self.prefetch = self.device.type == "cuda" if prefetch is None else bool(prefetch)
        self._pin = self.device.type == "cuda"
        self._orders: dict[int, torch.Tensor] = {}
        self._prefetcher: ThreadPoolExecutor | None = None
        self._prefetched = None  # (epoch, iteration, order, future) of the next step's batches

    # ------------------------------------------------------------ state
    def state_dict(self) -> dict:
        return {"format": TRAIN_STATE_FORMAT, "version": 1, "config": self.cfg.to_dict(),
                "model": self.model.state_dict(), "step_weights": self.weights.state_dict(),
                "optimizer": self.optimizer.state_dict(), "scaler": self.scaler.state_dict(),
                "epoch": self.epoch, "iteration": self.iteration, "global_step": self.global_step}

    def save(self) -> None:
        """Write ``last.pt`` (training state) and ``model.pt`` (engine format), atomically;
        ``model.pt`` records the photon mode and the inference schedule it was trained with
        (``meta["photons"]``, ``meta["schedule"]``), which a ``Pipeline`` made from it runs by default."""
        self.saved_step = self.global_step
        if self.rank != 0:
            return
        self.out.mkdir(parents=True, exist_ok=True)
        with atomic_path(self.out / "last.pt") as tmp:
            torch.save(self.state_dict(), tmp)
        save_checkpoint(self.model, self.backbone_config, self.out / "model.pt",
                        meta={"epoch": self.epoch, "iteration": self.iteration, "global_step": self.global_step,
                              "noise_model": self.cfg.noise_model, "steps": self.cfg.steps,
                              "step_weights": [float(w) for w in self.weights().detach().cpu()],
                              "photons": "means" if self.cfg.mean_photons else "draws",
                              # the inference schedule it was trained on, which a Pipeline then runs by
                              # default; SPEC's random multiples leave linspace (no key)
                              **({"schedule": self.cfg.inference_schedule} if self.cfg.inference_schedule else {})},
                        overwrite=True)  # the run's own file, replaced at every save

    def resume(self, path=None) -> bool:
        """Load ``path`` (default ``<out>/last.pt``) if it exists; True when resumed.

        Raises ``TrainingStateError`` when the file exists but cannot be used (truncated or
        corrupt, not a training state, written with other options): never silently
        trains from scratch over a run.
        """
        if self.rank == 0:  # a run killed mid-save leaves its temporary files: the directory is ours
            for name in ("last.pt", "model.pt"):
                remove_stale_temporaries(self.out / name)
        path = Path(path) if path is not None else self.out / "last.pt"
        if not path.is_file():
            return False
        restart = (f"to start over, run again with --restart (Trainer.archive_run(): moves last.pt, model.pt "
                   f"and log.jsonl into {self.out}/previous-N/), or pick another --out")
        try:
            state = read_weights_only(path, map_location=self.device)
        except CheckpointError as e:
            raise TrainingStateError(f"cannot resume: {e}; {restart}") from None
        if not isinstance(state, dict) or state.get("format") != TRAIN_STATE_FORMAT:
            raise TrainingStateError(f"cannot resume: {path} is not a training checkpoint of this project; {restart}")
        saved = state.get("config") if isinstance(state.get("config"), dict) else {}
        # Options added after a run was written have their defaults there (the old behaviour).
        saved = {**{k: v for k, v in TrainConfig().to_dict().items() if k not in saved}, **saved}
        if saved != self.cfg.to_dict():
            diff = {k: (saved.get(k), v) for k, v in self.cfg.to_dict().items() if saved.get(k) != v}
            raise TrainingStateError(f"cannot resume: {path} was written with other options (saved, now): {diff}; "
                                     f"use the same options, or {restart}")
        try:
            self.model.load_state_dict(state["model"])
            self.weights.load_state_dict(state["step_weights"])
            self.optimizer.load_state_dict(state["optimizer"])
            self.scaler.load_state_dict(state["scaler"])
            self.epoch, self.iteration, self.global_step = state["epoch"], state["iteration"], state["global_step"]
            self.saved_step = self.global_step
        except (KeyError, RuntimeError, ValueError, TypeError) as e:
            raise TrainingStateError(f"cannot resume: {path} is incomplete or does not fit this model "
                                     f"({type(e).__name__}: {str(e).splitlines()[0] if str(e) else e}); {restart}") from None
        return True

    def archive_run(self) -> Path | None:
        """Move this run's ``last.pt``, ``model.pt`` and ``log.jsonl`` into a new
        ``<out>/previous-N/`` (nothing is deleted) so training starts over; the folder, or
        None when there was nothing to move. Rank 0 only (others return None)."""
        present = [self.out / n for n in RUN_FILES if (self.out / n).exists()]
        if self.rank != 0 or not present:
            return None
        n = 1
        while (self.out / f"previous-{n}").exists():
            n += 1
        folder = self.out / f"previous-{n}"
        folder.mkdir()
        for f in present:
            f.replace(folder / f.name)
        return folder

    def _trim_log(self) -> int:
        """Keep only the log records of steps up to ``global_step`` (where a resumed run
        starts): the steps after it will be trained, and logged, again. A line cut short by a
        kill is dropped with them. Rewritten atomically; untouched when nothing is dropped.
        Returns the number of lines dropped. Never called at step 0: a fresh start moves an
        earlier log aside instead (``fit``), it never empties one."""
        log = self.out / "log.jsonl"
        if self.rank != 0 or not log.is_file():
            return 0
        lines = log.read_text().splitlines(keepends=True)
        kept = []
        for line in lines:
            try:
                record = json.loads(line)
            except json.JSONDecodeError:
                continue  # cut short mid-write
            if isinstance(record, dict) and isinstance(record.get("global_step"), int) \
                    and record["global_step"] <= self.global_step and line.endswith("\n"):
                kept.append(line)
        if kept != lines:
            with atomic_path(log) as tmp:
                Path(tmp).write_text("".join(kept))
        return len(lines) - len(kept)

    def _say(self, message: str) -> None:
        """A notice for the person running the training (rank 0, standard error)."""
        if self.rank == 0:
            tqdm.write(message, file=sys.stderr)

    def _start_log(self) -> None:
        """Before the first step of ``fit``: never train over an earlier run's files (see the
        module docstring), and say what happened to the log."""
        if self.global_step == 0:
            moved = self.archive_run()
            if moved is not None:
                self._say(f"{self.out} held files of an earlier run that this run does not continue (none resumed; "
                          f"e.g. a run stopped before its first save): moved them into {moved}; starting at step 0")
        else:
            dropped = self._trim_log()
            if dropped:
                self._say(f"log.jsonl: {dropped} record(s) of steps after the checkpoint's step {self.global_step} "
                          "dropped: those steps are trained again (the run resumes exactly) and logged anew")

    # ------------------------------------------------------------ signals
    @contextlib.contextmanager
    def _stop_on_signals(self, enabled: bool):
        """While training: SIGINT / SIGTERM ask for a stop at the next step boundary
        (``stop_signal``); the same again stops at once (``TrainingInterrupted``). Python
        delivers signals to the main thread only: elsewhere (or ``enabled`` False) nothing
        is installed. The previous handlers come back afterwards."""
        self.stop_signal = None
        if not enabled or threading.current_thread() is not threading.main_thread():
            yield
            return

        def handler(signum, frame):
            if self.stop_signal is not None:
                raise TrainingInterrupted(signum)
            self.stop_signal = signum
            if self.rank == 0:  # os.write: a print here could re-enter a print the signal interrupted
                os.write(2, (f"\n{signal.Signals(signum).name} received: stopping after this step with a checkpoint "
                             "(send it again to stop at once, keeping only the last checkpoint)\n").encode())

        previous = {s: signal.signal(s, handler) for s in STOP_SIGNALS}
        try:
            yield
        finally:
            for s, h in previous.items():
                signal.signal(s, h)

    def _agreed_stop(self) -> int | None:
        """The stop signal this step boundary acts on: this process's, or under DDP the one
        any rank received (the ranks must stop at the same step, or the others would wait
        forever in the next all-reduce)."""
        if not self.distributed:
            return self.stop_signal
        flag = torch.tensor([self.stop_signal or 0], dtype=torch.int64, device=self.device)
        dist.all_reduce(flag, op=dist.ReduceOp.MAX)
        return int(flag.item()) or None

    # ------------------------------------------------------------ data
    def _epoch_order(self, epoch: int) -> torch.Tensor:
        """The sample order of ``epoch`` (the same tensor object while it is current, so a
        prefetch made for it is recognised)."""
        if epoch not in self._orders:
            n = len(self.dataset)
            g = _generator(self.cfg.seed, 1, epoch)
            reps = math.ceil(self.iters_per_epoch * self.cfg.batch / n)
            self._orders = {epoch: torch.cat([torch.randperm(n, generator=g) for _ in range(reps)])}
        return self._orders[epoch]

    def _micro_batches(self, order: torch.Tensor, epoch: int | None = None, iteration: int | None = None) -> list:
        """This rank's micro-batches of an iteration (default: the current one): a list of
        (micro index, PackedBatch), collated into pinned memory on CUDA."""
        epoch = self.epoch if epoch is None else epoch
        start = (self.iteration if iteration is None else iteration) * self.cfg.batch
        out = []
        for a in range(self.cfg.accumulate):
            m = self.rank * self.cfg.accumulate + a
            idx = order[start + m * self.micro : start + (m + 1) * self.micro].tolist()
            out.append((m, collate_patches([self.dataset[(epoch, i)] for i in idx], pin_memory=self._pin)))
        return out

    def _take_batches(self, order: torch.Tensor) -> list:
        """The current iteration's micro-batches: the prefetched ones when they were made
        for this (epoch, iteration, order), else read now."""
        pre, self._prefetched = self._prefetched, None
        if pre is not None and pre[:2] == (self.epoch, self.iteration) and pre[2] is order:
            return pre[3].result()
        if pre is not None:  # made for another step (a resume, another order): let it finish unused
            wait([pre[3]])
        return self._micro_batches(order)

    def _prefetch_next(self, order: torch.Tensor) -> None:
        """Start reading the (new) current iteration's batches in the background thread."""
        if not self.prefetch:
            return
        if self.iteration == 0:  # a new epoch: its order
            order = self._epoch_order(self.epoch)
        if self._prefetcher is None:
            self._prefetcher = ThreadPoolExecutor(1, thread_name_prefix="prefetch")
        epoch, iteration = self.epoch, self.iteration
        self._prefetched = (epoch, iteration, order,
                            self._prefetcher.submit(self._micro_batches, order, epoch, iteration))

    # ------------------------------------------------------------ one step
    def prepare_inputs(self, batch, m: int) -> MicroInputs:
        """The data side of micro-batch ``m`` of this step, on the device: augmentation,
        per-sample noise parameters, the fused synthesis of the first network input and
        the inner exposure schedule (no network). ``bench/`` times it alone."""
        cfg = self.cfg
        g = _generator(cfg.seed, 2, self.global_step, m)
        b = batch.to(self.device, non_blocking=True)
        clean = augment_and_normalise(b.raw, b.black, b.white, generator=g)
        # Parameters and schedules are drawn on the CPU generator and sent with non-blocking
        # copies: nothing in a training step waits for the device until the loss is logged.
        params_host = sample_noise_params(len(b), cfg.cameras, model=cfg.noise_model, K_range=cfg.K_range,
                                          ratio_range=cfg.ratio_range, continuous=cfg.continuous, generator=g)
        params = params_host.to(self.device, non_blocking=True)
        # sample_noise_params and sample_inner_exposures produce valid values by construction:
        # the ops' value checks (one host read per op call on a GPU) are skipped here.
        unclipped = None
        with value_checks_disabled():
            if cfg.anchor_states:  # the same draws as DN above black, then the network input from them
                dn = synthesize_noise(clean, cfg.noise_model, params=params, output="dn", black_level=0.0, generator=g)
                unclipped = dn.mul_(params.ratio.view(-1, 1, 1, 1)).div_(DEFAULT_DN_SCALE)
                first = network_input(unclipped, params.ratio, params.K, cfg.with_photon, cfg.concat_origin)
            else:
                first = synthesize_noise(clean, cfg.noise_model, params=params, with_photon=cfg.with_photon,
                                         concat_origin=cfg.concat_origin, generator=g)
        if cfg.inner_exposures == "random":
            rho_host = sample_inner_exposures(params_host.ratio, cfg.steps, g)
        else:  # an inference schedule; draws nothing, so the other draws keep their stream
            rho_host = exposure_schedule(params_host.ratio, cfg.steps, cfg.inner_exposures)
        rho = to_device(rho_host, self.device, non_blocking=True)
        return MicroInputs(first, clean, params.ratio, params.K, rho, g, unclipped)

    def _micro_loss(self, batch, m: int) -> tuple[torch.Tensor, torch.Tensor]:
        cfg = self.cfg
        x = self.prepare_inputs(batch, m)
        autocast = torch.autocast(self.device.type, dtype=torch.bfloat16 if cfg.amp == "bf16" else torch.float16,
                                  enabled=cfg.amp is not None)
        with value_checks_disabled(), autocast:
            return unrolled_loss(self.net, x.first, x.clean, ratio=x.ratio, K=x.K, rho=x.rho, weights=self.weights(),
                                 with_photon=cfg.with_photon, concat_origin=cfg.concat_origin, generator=x.generator,
                                 accumulate=cfg.accumulate_form, mean_weight=cfg.mean_weight, mean_pool=cfg.mean_pool,
                                 detach_states=cfg.detach_states, stochastic=not cfg.mean_photons, anchor=x.unclipped)

    def train_step(self, order: torch.Tensor) -> dict:
        """One optimiser step over the global batch; returns the logged values."""
        for group in self.optimizer.param_groups:
            group["lr"] = self.cfg.lr * lr_factor(self.cfg, self.epoch)
        self.optimizer.zero_grad(set_to_none=True)
        losses, steps_l1 = [], []
        micro = self._take_batches(order)
        for j, (m, batch) in enumerate(micro):
            sync = not self.distributed or j == len(micro) - 1
            ctx = self.net.no_sync() if not sync else contextlib.nullcontext()
            with ctx:
                loss, per_step = self._micro_loss(batch, m)
                self.scaler.scale(loss / self.cfg.accumulate).backward()
            losses.append(loss.detach().float())
            steps_l1.append(per_step)
        if self.weights.learnable and self.distributed and self.weights.raw.grad is not None:
            dist.all_reduce(self.weights.raw.grad)
            self.weights.raw.grad /= self.world
        if self.cfg.clip_grad:
            self.scaler.unscale_(self.optimizer)
            torch.nn.utils.clip_grad_norm_(self.model.parameters(), self.cfg.clip_grad)
        self.scaler.step(self.optimizer)
        self.scaler.update()
        self.global_step += 1
        self.iteration += 1
        if self.iteration >= self.iters_per_epoch:
            self.epoch, self.iteration = self.epoch + 1, 0
        # the next step's patches are read and collated while the device runs this one
        self._prefetch_next(order)
        # the step's only host read: the logged values
        return {"loss": float(torch.stack(losses).mean()), "l1_per_step": torch.stack(steps_l1).mean(0).tolist()}

    def fit(self, max_steps: int | None = None, on_log: Callable[[dict], None] | None = None, *,
            stop_on_signals: bool = True) -> dict:
        """Train until ``cfg.epochs`` (or ``max_steps`` more optimiser steps); checkpoints
        every ``save_every`` steps and at the end. Returns the last logged values.

        ``stop_on_signals``: SIGINT / SIGTERM stop the run at the next step boundary with a
        checkpoint (``stopped_by`` then names the signal; see the module docstring).
        """
        if max_steps is not None:
            max_steps = integer("max_steps", max_steps, low=1)
        self.model.train()
        self.stopped_by = None
        self._start_log()
        total = self.cfg.epochs * self.iters_per_epoch
        todo = total - self.global_step if max_steps is None else min(max_steps, total - self.global_step)
        if self.progress and todo == 0:
            self._say(f"train: the run in {self.out} has done its {total} steps already; nothing to train")
        elif self.progress:
            self._say(f"train: steps {self.global_step + 1}..{self.global_step + todo} of {total} ({self.cfg.epochs} "
                      f"epochs x {self.iters_per_epoch}) on {self.device}, a checkpoint every {self.cfg.save_every} "
                      f"steps in {self.out / 'last.pt'}; Ctrl-C (or SIGTERM) stops after the current step with a "
                      "checkpoint, and the same command resumes")
        bar = tqdm(total=todo, desc="train", unit="it", disable=not self.progress or self.rank != 0 or todo == 0)
        last, t0, order_epoch, order = {}, time.time(), None, None
        timed_from = None  # the clock after the first step (which also pays one-off costs)
        with self._stop_on_signals(stop_on_signals):
            for done in range(1, todo + 1):
                if order_epoch != self.epoch:
                    order, order_epoch = self._epoch_order(self.epoch), self.epoch
                last = self.train_step(order)
                last.update(epoch=self.epoch, iteration=self.iteration, global_step=self.global_step,
                            lr=self.optimizer.param_groups[0]["lr"], seconds=round(time.time() - t0, 2),
                            step_weights=[round(float(w), 4) for w in self.weights().detach().cpu()])
                bar.update()
                bar.set_postfix(loss=f"{last['loss']:.4f}", epoch=self.epoch)
                if self.rank == 0 and (self.global_step % self.cfg.log_every == 0):
                    self._log(last)
                    if on_log:
                        on_log(last)
                if self.global_step % self.cfg.save_every == 0:
                    self.save()
                if done == 1:
                    timed_from = time.perf_counter()
                elif done == 3 and todo > 3 and self.progress:
                    self._estimate((time.perf_counter() - timed_from) / 2, todo - done)
                self.stopped_by = self._agreed_stop()
                if self.stopped_by is not None:
                    break
            bar.close()
            if self.saved_step != self.global_step:
                self.save()
        return last

    def _estimate(self, seconds_per_step: float, remaining: int) -> None:
        """Say how long the run will take (issue 22: the recipe's 300 epochs of 512^2 patches
        are 60000 steps, weeks on a CPU, where the bar's ETA was the only hint)."""
        eta = seconds_per_step * remaining
        message = (f"train: {seconds_per_step:.3g} s per step on {self.device}: about {_duration(eta)} for the "
                   f"{remaining} steps left")
        if self.device.type == "cpu" and eta > 24 * 3600:
            message += ("; the recipe's defaults are sized for a GPU: on a CPU try --patch 128 and fewer --epochs / "
                        "--iters-per-epoch, or --max-steps N (a run stopped by --max-steps or Ctrl-C resumes "
                        "with the same command)")
        self._say(message)

    def _log(self, record: dict) -> None:
        self.out.mkdir(parents=True, exist_ok=True)
        with open(self.out / "log.jsonl", "a") as f:
            f.write(json.dumps(record) + "\n")
