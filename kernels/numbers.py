"""Numbers as a Python user passes them: the one place that turns them into ``float`` / ``int``.

What counts as a number everywhere in the project (ratios, gains, ISO, steps, seeds, sizes):
Python ``int`` / ``float``, numpy scalars (``np.float32(100)``, ``np.int64(3)``) and 0-d
numpy arrays or torch tensors (read back to the host once). Refused with a ``ValueError``
that names the parameter, what was given and what is expected: ``bool`` (``True`` is not a
ratio), strings, complex numbers, arrays / tensors with more than one element, ``meta``
tensors (they hold no value), NaN / infinity, values outside the documented range, and,
where an integer is expected, non-integers (``1.5`` or ``2.0``: as Python's ``range``
refuses them; integer-valued floats are not silently truncated either).

``real`` / ``integer`` check one value (``scalar`` only unwraps it); ``is_number`` says
whether a value is a scalar they accept (callers that also take sequences or per-sample
tensors use it to decide).
"""
from __future__ import annotations

import math
import numbers
from typing import Any

import numpy as np
import torch

__all__ = ["NotANumberError", "is_number", "scalar", "real", "integer"]

_EXPECTED = "a number (int, float, a numpy scalar or a 0-d array / tensor)"


class NotANumberError(ValueError, TypeError):
    """A value of the wrong kind where a number is expected (a str, a bool, an array, a meta
    tensor...). Both a ``ValueError`` (the project's rule for bad input) and a ``TypeError``
    (Python's for a wrong type), so either ``except`` catches it."""


def is_number(value: Any) -> bool:
    """True for a scalar ``real`` / ``integer`` would read (not a meta or multi-element tensor)."""
    if isinstance(value, (bool, np.bool_)):
        return False
    if isinstance(value, numbers.Real):  # int, float, numpy integer / floating scalars
        return True
    if isinstance(value, torch.Tensor):
        return value.ndim == 0 and not value.is_meta and value.dtype != torch.bool and not value.dtype.is_complex
    if isinstance(value, np.ndarray):
        return value.ndim == 0 and value.dtype.kind in "iuf"
    return False


def scalar(name: str, value: Any) -> int | float:
    """The Python int / float inside ``value``, or a ValueError saying why there is none."""
    if isinstance(value, (bool, np.bool_)):
        raise NotANumberError(f"{name} must be {_EXPECTED}, got the bool {bool(value)}")
    if isinstance(value, torch.Tensor):
        if value.is_meta:
            raise NotANumberError(f"{name} is a meta tensor, which holds no value; pass a number or a tensor with data")
        if value.numel() != 1 or value.ndim != 0:
            raise NotANumberError(f"{name} must be {_EXPECTED}, got a tensor of shape {tuple(value.shape)}")
        if value.dtype == torch.bool or value.dtype.is_complex:
            raise NotANumberError(f"{name} must be {_EXPECTED}, got a {str(value.dtype).replace('torch.', '')} tensor")
        return value.item()
    if isinstance(value, np.ndarray):
        if value.ndim != 0:
            raise NotANumberError(f"{name} must be {_EXPECTED}, got an array of shape {value.shape}")
        if value.dtype.kind not in "iuf":
            raise NotANumberError(f"{name} must be {_EXPECTED}, got a 0-d array of dtype {value.dtype}")
        return value.item()
    if isinstance(value, numbers.Integral):
        return int(value)
    if isinstance(value, numbers.Real):
        return float(value)
    raise NotANumberError(f"{name} must be {_EXPECTED}, got {type(value).__name__} {value!r:.80}")


def _range_text(low, high, low_open: bool, high_open: bool) -> str:
    def fmt(x) -> str:
        return str(x) if isinstance(x, int) else f"{x:g}"

    if low is not None and high is not None:
        return f"in {'(' if low_open else '['}{fmt(low)}, {fmt(high)}{')' if high_open else ']'}"
    if low is not None:
        return f"{'>' if low_open else '>='} {fmt(low)}"
    return f"{'<' if high_open else '<='} {fmt(high)}"


def real(name: str, value: Any, *, low: float | None = None, high: float | None = None,
         low_open: bool = False, high_open: bool = False, unit: str = "") -> float:
    """``value`` as a finite Python float within [low, high] (``low_open`` / ``high_open``:
    the bound itself excluded). ``unit`` is appended to the range in the message."""
    v = scalar(name, value)
    v = float(v)
    bad_low = low is not None and (v <= low if low_open else v < low)
    bad_high = high is not None and (v >= high if high_open else v > high)
    if not math.isfinite(v) or bad_low or bad_high:
        limits = "" if low is None and high is None else " " + _range_text(low, high, low_open, high_open)
        raise ValueError(f"{name} must be a finite number{limits}{unit}, got {v:g}")
    return v


def integer(name: str, value: Any, *, low: int | None = None, high: int | None = None) -> int:
    """``value`` as a Python int within [low, high]; floats (even 2.0) are refused."""
    v = scalar(name, value)
    if not isinstance(v, int):
        raise NotANumberError(f"{name} must be an integer, got {v!r}")
    if (low is not None and v < low) or (high is not None and v > high):
        raise ValueError(f"{name} must be an integer {_range_text(low, high, False, False)}, got {v}")
    return v
