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

__all__ = ["RawInputError", "RawDecodeError", "UnsupportedSensorError", "InvalidRawError", "RawInputWarning"]


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


def _describe(source) -> str:
    """A path as its string, any other description (e.g. "numpy array") as given."""
    return os.fspath(source) if isinstance(source, os.PathLike) else str(source)
