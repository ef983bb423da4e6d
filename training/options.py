"""Limits of the training options: one table that ``TrainConfig`` checks (Python API) and the
``train`` command parses with (``training.cli``), so both refuse the same values with the
same words.

Each entry: ``(kind, low, high, extra)``; kind ``"int"`` (a true integer) or ``"real"``
(a finite number, ``low`` excluded when ``extra == "open"``); ``None`` bounds are open-ended;
for ``patch`` ``extra`` is the multiple it must be (the backbones' 16-pixel granularity).
"""
from __future__ import annotations

import math
from typing import Any, Callable

from engine.argtypes import integer_arg, real_arg
from engine.inference.pipeline import MAX_RATIO, MAX_SEED, MAX_STEPS
from kernels.numbers import integer, real

# Largest packed patch side: 8192^2 x 4 planes is 1 GB of fp32 per sample already.
MAX_PATCH = 8192
MAX_LR = 1.0  # Adam: 1e-4 in the recipe; above 1 every step jumps past any minimum

LIMITS: dict[str, tuple[str, Any, Any, Any]] = {
    "steps": ("int", 1, MAX_STEPS, None),
    "patch": ("int", 16, MAX_PATCH, 16),
    "batch": ("int", 1, None, None),
    "accumulate": ("int", 1, None, None),
    "epochs": ("int", 1, None, None),
    "iters_per_epoch": ("int", 1, None, None),
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


def check_ratio_steps(ratio_low: float, steps: int) -> None:
    """Training draws ``steps - 1`` distinct integer exposure multiples in ``[2, ceil(r) - 1]``
    (``training.objective.sample_inner_exposures``): the lowest ratio must leave room."""
    room = math.ceil(ratio_low) - 2
    if steps > 1 and room < steps - 1:
        raise ValueError(f"the lowest exposure ratio {ratio_low:g} leaves {max(room, 0)} integer exposure multiples in "
                         f"[2, r - 1], fewer than steps - 1 = {steps - 1}; raise the ratio range or lower steps "
                         f"(ratio >= {steps + 1} is needed)")
