"""Limits of the training options: one table that ``TrainConfig`` checks (Python API) and the
``train`` command parses with (``training.cli``), so both refuse the same values with the
same words.

Each entry: ``(kind, low, high, extra)``; kind ``"int"`` (a true integer) or ``"real"``
(a finite number, ``low`` excluded when ``extra == "open"``); ``None`` bounds are open-ended;
for ``patch`` ``extra`` is the multiple it must be (the backbones' 16-pixel granularity).

Importing this module imports no torch (``engine.limits``; ``kernels.numbers`` is imported
by the checks when they run): the ``train`` parser is built from it for ``--help``.
"""
from __future__ import annotations

import math
from typing import Any, Callable

from engine.argtypes import integer_arg, real_arg
from engine.limits import MAX_RATIO, MAX_SEED, MAX_STEPS

# Largest packed patch side: 8192^2 x 4 planes is 1 GB of fp32 per sample already.
MAX_PATCH = 8192
MAX_LR = 1.0  # Adam: 1e-4 in the recipe; above 1 every step jumps past any minimum
MAX_BATCH = 4096  # global batch and micro-batches accumulated; the recipe uses 1 .. 8
MAX_EPOCHS = 1_000_000
MAX_ITERS_PER_EPOCH = 10_000_000
# The sample order of an epoch is one int64 per sample (iters_per_epoch x batch): 800 MB here.
MAX_SAMPLES_PER_EPOCH = 100_000_000
# The evaluation hold-out set is built in memory (uint16, 4 planes): at most 4 GiB of it.
MAX_HOLDOUT_BYTES = 4 * 2**30
# TrainConfig.inner_exposures: SPEC §4's random integers in [2, r - 1], or the inference schedule.
INNER_EXPOSURES = ("random", "linspace", "geometric")
# How the leaves scenes' illumination field spans a scene (training.deadleaves_scenes._light_field):
# the whole frame, or a sensor-resolution crop of a larger one.
ILLUMINATIONS = ("frame", "crop")

LIMITS: dict[str, tuple[str, Any, Any, Any]] = {
    "steps": ("int", 1, MAX_STEPS, None),
    "patch": ("int", 16, MAX_PATCH, 16),
    "batch": ("int", 1, MAX_BATCH, None),
    "accumulate": ("int", 1, MAX_BATCH, None),
    "epochs": ("int", 1, MAX_EPOCHS, None),
    "iters_per_epoch": ("int", 1, MAX_ITERS_PER_EPOCH, None),
    "lr": ("real", 0.0, MAX_LR, "open"),
    # clip_grad is a norm: <= 0 would flip or zero the gradient (clip_grad_norm_ scales by max_norm / norm)
    "clip_grad": ("real", 0.0, None, "open"),
    "seed": ("int", 0, MAX_SEED, None),
    "save_every": ("int", 1, None, None),
    "log_every": ("int", 1, None, None),
}
OPTIONAL = {"iters_per_epoch", "clip_grad"}  # None: derived from the data / no clipping


def check_option(name: str, value: Any) -> Any:
    """``value`` of TrainConfig field ``name`` as a plain int / float, or ValueError."""
    from kernels.numbers import integer, real

    if value is None and name in OPTIONAL:
        return None
    kind, low, high, extra = LIMITS[name]
    if kind == "int":
        v = integer(name, value, low=low, high=high)
        if isinstance(extra, int) and v % extra:
            raise ValueError(f"{name} must be a multiple of {extra}, got {v}")
        return v
    return real(name, value, low=low, high=high, low_open=extra == "open")


def option_arg(name: str) -> Callable[[str], Any]:
    """The argparse ``type=`` of TrainConfig field ``name`` (same limits as ``check_option``)."""
    kind, low, high, extra = LIMITS[name]
    if kind == "int":
        return integer_arg(low, high, multiple=extra if isinstance(extra, int) else None)
    return real_arg(low, high, low_open=extra == "open")


def ratio_range_arg() -> Callable[[str], float]:
    """One end of ``--ratio-range``: an exposure ratio in (1, MAX_RATIO]."""
    return real_arg(1.0, MAX_RATIO, low_open=True)


def check_epoch_size(iters_per_epoch: int | None, batch: int) -> None:
    """The sample order of an epoch is materialised (``Trainer._epoch_order``): bound it."""
    if iters_per_epoch is not None and iters_per_epoch * batch > MAX_SAMPLES_PER_EPOCH:
        raise ValueError(f"iters_per_epoch x batch = {iters_per_epoch * batch} samples per epoch, above the limit of "
                         f"{MAX_SAMPLES_PER_EPOCH}; use fewer iterations per epoch and more epochs")


def check_holdout_size(n: int, patch: int) -> None:
    """The synthetic hold-out set (``training.synthetic.synthetic_holdout``) lives in memory."""
    nbytes = n * 4 * patch * patch * 2
    if nbytes > MAX_HOLDOUT_BYTES:
        raise ValueError(f"a hold-out of {n} patches of {patch}^2 would take {nbytes / 2**30:.1f} GiB of memory, "
                         f"above the limit of {MAX_HOLDOUT_BYTES / 2**30:.0f} GiB; use fewer or smaller patches")


def check_ratio_steps(ratio_low: float, steps: int) -> None:
    """Training draws ``steps - 1`` distinct integer exposure multiples in ``[2, ceil(r) - 1]``
    (``training.objective.sample_inner_exposures``): the lowest ratio must leave room."""
    room = math.ceil(ratio_low) - 2
    if steps > 1 and room < steps - 1:
        raise ValueError(f"the lowest exposure ratio {ratio_low:g} leaves {max(room, 0)} integer exposure multiples in "
                         f"[2, r - 1], fewer than steps - 1 = {steps - 1}; raise the ratio range or lower steps "
                         f"(ratio >= {steps + 1} is needed)")
