"""argparse ``type=`` functions: every numeric or named option is checked while the command
line is parsed, so a bad value ends in ``error: argument --batch: ...`` (exit status 2)
before anything is loaded, never in a traceback halfway through a run.

Each factory returns a function ``str -> value`` that raises ``argparse.ArgumentTypeError``
with what was wrong and what is expected; the range checks are those of
``kernels.numbers`` (the API refuses the same values with the same words).
"""
from __future__ import annotations

import argparse
from typing import Callable

from kernels.numbers import integer, real


def integer_arg(low: int | None = None, high: int | None = None, *, multiple: int | None = None,
                what: str = "") -> Callable[[str], int]:
    """An integer in [low, high] (either bound optional), a multiple of ``multiple`` if given."""

    def parse(text: str) -> int:
        try:
            value = int(text.strip(), 10)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected an integer{what}, got {text!r}") from None
        try:
            value = integer("value", value, low=low, high=high)
        except ValueError as e:
            raise argparse.ArgumentTypeError(str(e).replace("value must be", "must be") + what) from None
        if multiple and value % multiple:
            raise argparse.ArgumentTypeError(f"must be a multiple of {multiple}{what}, got {value}")
        return value

    parse.__name__ = "integer"  # argparse names the type in some messages
    return parse


def steps_or_auto_arg(high: int) -> Callable[[str], int | str]:
    """A step count in [1, high], or ``auto`` (``engine.inference.adaptive`` chooses)."""
    count = integer_arg(1, high)

    def parse(text: str) -> int | str:
        if text.strip() == "auto":
            return "auto"
        try:
            return count(text)
        except argparse.ArgumentTypeError as e:
            raise argparse.ArgumentTypeError(f"{e} (or 'auto')") from None

    parse.__name__ = "steps"
    return parse


def real_arg(low: float | None = None, high: float | None = None, *, low_open: bool = False,
             what: str = "") -> Callable[[str], float]:
    """A finite number in [low, high] (``low_open``: low itself excluded)."""

    def parse(text: str) -> float:
        try:
            value = float(text.strip())
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected a number{what}, got {text!r}") from None
        try:
            return real("value", value, low=low, high=high, low_open=low_open)
        except ValueError as e:
            raise argparse.ArgumentTypeError(str(e).replace("value must be", "must be") + what) from None

    parse.__name__ = "number"
    return parse


def device_arg(text: str) -> str:
    """``auto`` or a torch device string (``cpu``, ``cuda``, ``cuda:1``); not ``meta``."""
    if text == "auto":
        return text
    import torch

    try:
        device = torch.device(text)
    except (RuntimeError, ValueError):
        raise argparse.ArgumentTypeError(f"expected auto, cpu, cuda or cuda:N, got {text!r}") from None
    if device.type == "meta":
        raise argparse.ArgumentTypeError("'meta' holds no data; expected auto, cpu, cuda or cuda:N")
    return text


def resolve_device(text: str):
    """The ``torch.device`` a ``device_arg`` value names: ``auto`` is CUDA where available, else the CPU."""
    import torch

    if text == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(text)


def camera_arg(text: str) -> str:
    """A shipped camera name or a profile JSON file, loaded once to check it (``ValueError``
    of ``kernels.profiles.load_profile`` -> the option's error)."""
    from kernels.profiles import load_profile

    try:
        load_profile(text)
    except (ValueError, TypeError, OSError) as e:
        raise argparse.ArgumentTypeError(str(e)) from None
    return text


def noise_model_arg(text: str) -> str:
    """An ELD noise model name such as ``P+g`` or ``P+G+r+u``."""
    from kernels.noise_model import parse_noise_model

    try:
        parse_noise_model(text)
    except ValueError as e:
        raise argparse.ArgumentTypeError(str(e)) from None
    return text


def add_photon_options(parser: argparse.ArgumentParser, *, scope: str) -> None:
    """``--deterministic`` (Poisson means) / ``--draws`` (SPEC §4), mutually exclusive, into
    ``args.stochastic``: False / True, or None (neither given): each model's own photon mode
    (``meta["photons"]``, else draws; the shipped default model: means). ``scope`` says where
    the choice applies, e.g. "between the steps"."""
    group = parser.add_mutually_exclusive_group()
    group.add_argument("--deterministic", dest="stochastic", action="store_false", default=None,
                       help=f"Poisson means instead of draws {scope} (results independent of the seed)")
    group.add_argument("--draws", dest="stochastic", action="store_true", default=None,
                       help=f"Poisson draws {scope} (SPEC). Default: the model's own mode (meta['photons'], else "
                            "draws; the shipped default model: means, engine/data/README.md)")
