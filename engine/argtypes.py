"""argparse ``type=`` functions: every numeric or named option is checked while the command
line is parsed, so a bad value ends in ``error: argument --batch: ...`` (exit status 2)
before anything is loaded, never in a traceback halfway through a run.

Each factory returns a function ``str -> value`` that raises ``argparse.ArgumentTypeError``
with what was wrong and what is expected; the range checks are those of
``kernels.numbers`` (the API refuses the same values with the same words).

Nothing here imports torch when the module is imported: ``kernels.numbers`` (torch) is
imported by a parse function when it first runs, so ``--help`` and the parser itself stay
fast (issue 22, item 6). ``check_output_file`` / ``check_run_folder`` check output paths
given on a command line before any work (exit status 2, no traceback).
"""
from __future__ import annotations

import argparse
import os
import tempfile
from pathlib import Path
from typing import Callable


def integer_arg(low: int | None = None, high: int | None = None, *, multiple: int | None = None,
                what: str = "") -> Callable[[str], int]:
    """An integer in [low, high] (either bound optional), a multiple of ``multiple`` if given."""

    def parse(text: str) -> int:
        try:
            value = int(text.strip(), 10)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected an integer{what}, got {text!r}") from None
        from kernels.numbers import integer  # here, not at import: torch only once a value is checked

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
        from kernels.numbers import real  # here, not at import: torch only once a value is checked

        try:
            return real("value", value, low=low, high=high, low_open=low_open)
        except ValueError as e:
            raise argparse.ArgumentTypeError(str(e).replace("value must be", "must be") + what) from None

    parse.__name__ = "number"
    return parse


def ratio_arg(high: float) -> Callable[[str], float | str]:
    """``auto`` or an exposure ratio in (0, ``high``] whose float32 value (the precision of the
    photon maths) is still > 0: ``1e-320`` passes a plain range check and then fails every
    file; the float32 value is what ``Pipeline`` and the kernels see."""
    number = real_arg(0, high, low_open=True)

    def parse(text: str):
        if text.strip() == "auto":
            return "auto"
        try:
            value = number(text)
        except argparse.ArgumentTypeError as e:
            raise argparse.ArgumentTypeError(f"{e} (or 'auto')") from None
        if float32(value) <= 0:
            raise argparse.ArgumentTypeError(f"{value!r} is 0 in float32 (the photon maths' precision): "
                                             f"the smallest ratio is {FLOAT32_TINY:g}")
        return value

    parse.__name__ = "ratio"
    return parse


# The smallest positive normal float32.
FLOAT32_TINY = 1.1754943508222875e-38


def float32(value: float) -> float:
    """``value`` rounded to float32 (what a float32 tensor holds)."""
    import struct

    return struct.unpack("f", struct.pack("f", value))[0] if abs(value) < 3.4e38 else value


def device_arg(text: str) -> str:
    """``auto`` or a torch device string (``cpu``, ``cuda``, ``cuda:1``); not ``meta``. A CUDA
    device is refused here, while parsing, when this machine has no CUDA (or no such GPU):
    ``train`` / ``evaluate`` would otherwise stop with torch's ``AssertionError`` traceback
    after loading their data (issue 22, class G)."""
    if text == "auto":
        return text
    import torch

    try:
        device = torch.device(text)
    except (RuntimeError, ValueError):
        raise argparse.ArgumentTypeError(f"expected auto, cpu, cuda or cuda:N, got {text!r}") from None
    if device.type == "meta":
        raise argparse.ArgumentTypeError("'meta' holds no data; expected auto, cpu, cuda or cuda:N")
    if device.type == "cuda":
        if not torch.cuda.is_available():
            build = "this torch build has no CUDA" if torch.version.cuda is None else "no CUDA GPU is visible"
            raise argparse.ArgumentTypeError(f"{text!r}: CUDA is not available on this machine ({build}); "
                                             "use --device cpu (or auto)")
        count = torch.cuda.device_count()
        if device.index is not None and device.index >= count:
            raise argparse.ArgumentTypeError(f"{text!r}: this machine has {count} CUDA device(s), "
                                             f"cuda:0 .. cuda:{count - 1}")
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


# ------------------------------------------------------------------ output paths
class OutputPathProblem(ValueError):
    """An output path given on the command line cannot be written (a folder where a file is
    expected, a missing or read-only folder, an existing file without ``--overwrite``);
    found before any work, so the command stops with exit status 2 and nothing written."""


def _existing_ancestor(path: Path) -> Path:
    """The nearest of ``path``'s parents that exists (the folder new folders would go in)."""
    for parent in path.parents:
        if os.path.lexists(parent):
            return parent
    return Path(".")


def write_probe_error(folder) -> str | None:
    """Why this process cannot create files in ``folder`` (the OS's words), or None when it
    can: a probe file, removed at once (permission bits do not tell, e.g. for root or on a
    read-only mount)."""
    try:
        fd, probe = tempfile.mkstemp(prefix=".write-test-", suffix=".tmp", dir=folder)
    except OSError as e:
        return str(e.strerror or e)
    os.close(fd)
    os.unlink(probe)
    return None


def _check_can_create_in(folder: Path, what: str) -> None:
    """Refuse ``folder`` unless this process can create files in it."""
    if not folder.is_dir():
        raise OutputPathProblem(f"{what}: {folder} is not a folder")
    problem = write_probe_error(folder)
    if problem is not None:
        raise OutputPathProblem(f"{what}: cannot write into {folder} ({problem})")


def check_output_file(path, *, option: str, overwrite: bool = False, make_folders: bool = False,
                      hint: str = "use --overwrite to replace it") -> Path:
    """Refuse, before any work, an output file a command could not write when it ends.

    Args:
        path: the file the command will write (atomically, through a temporary beside it).
        option: the option naming it, for the message (e.g. ``"--json"``).
        overwrite: an existing file may be replaced; else it is refused (``hint`` says how).
        make_folders: the command creates missing folders above the file; else a missing
            folder is refused (a typo in a folder name is found before the work, not after).

    Returns:
        ``path`` as a ``Path``. Raises ``OutputPathProblem`` naming the option, the path and
        what is wrong: a folder of that name, an existing file without ``overwrite``, a
        missing folder (or one of its parents a file), a folder this process cannot write in.
    """
    p = Path(path)
    if p.is_dir():
        raise OutputPathProblem(f"{option} {p} is a folder; expected a file name (e.g. {p / 'NAME'})")
    if os.path.lexists(p) and not overwrite:
        raise OutputPathProblem(f"{option} {p} already exists; {hint}")
    folder = p.parent
    if not folder.is_dir():
        if os.path.lexists(folder) or not make_folders:
            state = "is not a folder" if os.path.lexists(folder) else "does not exist"
            raise OutputPathProblem(f"{option} {p}: the folder {folder} {state}"
                                    + ("" if os.path.lexists(folder) else "; create it first"))
        folder = _existing_ancestor(p)
    _check_can_create_in(folder, f"{option} {p}")
    return p


def check_output_folder(path, *, option: str) -> Path:
    """Refuse, before any work, an output folder that cannot be made or written into: an
    existing file of that name, a file among its parents, a read-only place. Creates
    nothing. Returns ``path`` as a ``Path``; raises ``OutputPathProblem``."""
    p = Path(path)
    if os.path.lexists(p) and not p.is_dir():
        raise OutputPathProblem(f"{option} {p} is a file, not a folder; name a folder (it is created if missing)")
    _check_can_create_in(p if p.is_dir() else _existing_ancestor(p), f"{option} {p}")
    return p
