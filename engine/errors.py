"""The project's exceptions for raw input.

All of them subclass :class:`ValueError` (a bad input is a bad value), so a caller that
only knows ``ValueError`` still catches them, and the CLI can catch :class:`RawInputError`
to report one file and carry on with the next. Each message names the input (a file path
or a description such as ``"numpy array"``) and the reason, e.g.::

    RawDecodeError: shots/DSC01234.ARW: truncated or unreadable raw file (LibRaw: Input/output error)

The input and the bare reason are also kept as attributes (``source``, ``reason``) for
callers that format their own report.
"""
from __future__ import annotations

import os
import sys
import sysconfig
import warnings

__all__ = ["RawInputError", "RawDecodeError", "UnsupportedSensorError", "InvalidRawError", "RawInputWarning",
           "warn_input"]


class RawInputError(ValueError):
    """Base class: a raw input (file, rawpy object or array) that the engine cannot use."""

    def __init__(self, source, reason: str):
        self.source = _describe(source)
        self.reason = reason
        super().__init__(f"{self.source}: {reason}")

    def __reduce__(self):  # picklable across worker processes (DataLoader, multiprocessing)
        return (type(self), (self.source, self.reason))


class RawDecodeError(RawInputError):
    """The file is empty, truncated, corrupt, or not a raw file LibRaw can decode correctly
    (an encoding it would turn into wrong pixels without an error: floating-point or signed
    samples, lossy JPEG, multi-strip lossless JPEG, data shorter than the declared image)."""


class UnsupportedSensorError(RawInputError):
    """A readable raw whose sensor layout is not a 2x2 Bayer CFA: X-Trans (6x6), Foveon,
    linear / 3-channel DNG, monochrome, CMYG, or any other colour filter array."""


class InvalidRawError(RawInputError):
    """Bad pixel data or metadata: wrong dtype, rank or size, absurd dimensions,
    black level >= white level, missing metadata for an array input."""


class RawInputWarning(UserWarning):
    """A raw input that was read but looks wrong (an all-zero frame, rows of zeros at the
    end, an unusable colour matrix that was ignored). ``str()`` reads ``<source>: <reason>``."""

    def __init__(self, source, reason: str):
        self.source = _describe(source)
        self.reason = reason
        super().__init__(f"{self.source}: {reason}")

    def __reduce__(self):
        return (type(self), (self.source, self.reason))


def warn_input(source, reason: str) -> None:
    """Issue ``RawInputWarning(source, reason)`` at the first caller outside this project and
    Python's own library, never at an engine line.

    ``warnings`` prints the file, line and source line of the frame ``stacklevel`` names; a
    fixed stacklevel lands inside the engine whenever the reader is reached through another
    path (``read_raw`` -> ``_read_path`` -> ..., ``Pipeline``, a worker process), which showed
    users a line of our code. A library user sees their own call (``script.py:12: ...
    frame = read_raw(path)``), as numpy / pandas report theirs. With no such caller (the
    ``exposure-diffusion`` command, ``python -m``, a worker process of a folder run) the
    warning is issued above the outermost frame, which Python prints as ``sys:1:`` with no
    source line, its convention for warnings that have no location in user code.
    """
    warn_at_caller(RawInputWarning(source, reason))


def warn_at_caller(message, category: type[Warning] | None = None) -> None:
    """``warnings.warn(message, category)`` located at the first caller outside this project
    and Python's own library (see ``warn_input``): every warning the engine issues to a user."""
    frame, level = sys._getframe(0), 1  # stacklevel 1 is this function
    while frame is not None and _internal(frame.f_code.co_filename):
        frame, level = frame.f_back, level + 1
    if frame is None:
        level += 1  # past the outermost frame: "sys:1", no source line
    warnings.warn(message, category, stacklevel=level)


def _project_dirs() -> tuple[str, ...]:
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    ours = tuple(os.path.join(root, package) + os.sep for package in ("engine", "kernels", "training"))
    paths = sysconfig.get_paths()
    # site-packages lies under the standard library's folder in most layouts: it is user code.
    stdlib = tuple({paths[k] + os.sep for k in ("stdlib", "platstdlib")})
    sites = tuple({paths[k] + os.sep for k in ("purelib", "platlib")})
    scripts = (paths["scripts"] + os.sep,)  # console scripts ("exposure-diffusion") are ours too
    return ours, stdlib, sites, scripts


_OURS, _STDLIB, _SITES, _SCRIPTS = _project_dirs()


def _internal(filename: str) -> bool:
    """A frame of this project, of Python's standard library or of a console script."""
    if filename.startswith("<frozen "):  # runpy, importlib
        return True
    path = os.path.abspath(filename) if not filename.startswith("<") else filename
    if path.startswith(_OURS) or path.startswith(_SCRIPTS):
        return True
    return path.startswith(_STDLIB) and not path.startswith(_SITES)


def _describe(source) -> str:
    """A path as its string, any other description (e.g. "numpy array") as given."""
    return os.fspath(source) if isinstance(source, os.PathLike) else str(source)
