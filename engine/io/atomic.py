"""Atomic file writes: a file the engine writes is either complete or not there.

Every writer of the project (outputs, DNGs, checkpoints) writes to a temporary file in
the destination's directory, fsyncs it and renames it over the destination; on any
failure (including KeyboardInterrupt) the temporary file is removed and an existing
destination is left untouched.

With ``overwrite=False`` an existing destination is never replaced, not even by a file
that appears while the temporary is being written (another process): the temporary is
hard-linked to the destination name, which fails if the name exists, instead of renamed
over it. Public writers default to that (``refuse_existing``); a user asks for
replacement explicitly (``overwrite=True``, ``--overwrite``).

``protect``: the files the written one was made from (paths or ``engine.io.paths.
FileIdentity``); the destination may not be one of them, checked before the work and again
just before the finished file takes its name (``OutputPathError``, whatever ``overwrite``).

A write that fails for want of space (a full disk, a quota, a file-size limit) raises
``DiskFullError`` ("disk full (or file size limit) writing X"), also where the library that
wrote gave no error number (numpy's "98304 requested and 61104 written", torch's
"[enforce fail at inline_container.cc]"): the temporary file is probed before it is removed.

Temporary names are ``.<name>.<12 hex digits>.tmp``, with ``<name>`` shortened where the whole
would exceed the file system's limit on a name (255 bytes): any legal name can be written.
"""
from __future__ import annotations

import errno
import os
import re
import secrets
from contextlib import contextmanager
from pathlib import Path

from .paths import check_not_protected, file_identity

__all__ = ["atomic_path", "refuse_existing", "remove_stale_temporaries", "DiskFullError", "temporary_prefix"]

_TOKEN_HEX = 6  # bytes of randomness in a temporary name (12 hex digits)
_SUFFIX_BYTES = 1 + 1 + 2 * _TOKEN_HEX + 4  # "." before the name, "." before the token, the token, ".tmp"
_SPACE_ERRORS = (errno.ENOSPC, errno.EDQUOT, errno.EFBIG)
_PROBE_BYTES = 1 << 16  # more than a file system block's slack, so a full disk refuses it


class DiskFullError(OSError):
    """A write that ran out of space: a full disk, a quota or a file-size limit (``errno``
    ENOSPC, EDQUOT or EFBIG; ``filename`` the destination). Nothing was left under its name."""

    def __str__(self) -> str:
        return (f"disk full (or file size limit) writing {self.filename}: {self.strerror}; nothing was written "
                f"under that name (a file already there is unchanged)")


def temporary_prefix(name: str, folder=".") -> str:
    """``.<name>.``, with ``name`` cut (at a character boundary) so that a temporary name
    built on it stays within the file system's limit on one name (``NAME_MAX``, 255 bytes on
    Linux / macOS file systems)."""
    try:
        limit = os.pathconf(folder, "PC_NAME_MAX")
    except (OSError, ValueError, AttributeError):  # no such folder (yet), or no pathconf (Windows)
        limit = 255
    room = max(1, limit - _SUFFIX_BYTES)
    kept, size = [], 0
    for ch in name:
        n = len(os.fsencode(ch))  # a byte of a non-UTF-8 name (surrogate escape) is one byte
        if size + n > room:
            break
        kept.append(ch)
        size += n
    return "." + "".join(kept) + "."


def _space_error(e: BaseException, tmp: Path, path: Path) -> DiskFullError | None:
    """The ``DiskFullError`` for a failed write, or None when it was not for want of space.

    An OSError with ENOSPC / EDQUOT / EFBIG says so itself. Libraries that lose the number
    (numpy's ``tofile`` in tifffile, torch's zip writer) are judged by probing: appending
    ``_PROBE_BYTES`` to the temporary file fails the same way if space (or the size limit)
    was the cause."""
    if isinstance(e, OSError) and e.errno in _SPACE_ERRORS:
        return DiskFullError(e.errno, e.strerror, os.fspath(path))
    if not (isinstance(e, OSError) and e.errno is None or isinstance(e, RuntimeError)):
        return None
    try:
        with open(tmp, "ab") as f:
            f.write(bytes(_PROBE_BYTES))
            f.flush()
            os.fsync(f.fileno())
    except OSError as probe:
        if probe.errno in _SPACE_ERRORS:
            return DiskFullError(probe.errno, probe.strerror, os.fspath(path))
    return None


def refuse_existing(path, hint: str = "pass overwrite=True to replace it") -> None:
    """Raise ``FileExistsError`` naming ``path`` if something already has that name."""
    if os.path.lexists(path):
        raise FileExistsError(f"{os.fspath(path)} already exists; {hint}")


@contextmanager
def atomic_path(path, *, overwrite: bool = True, protect=()):
    """Yield a temporary path next to ``path``; on success fsync it and move it to
    ``path``; on failure remove it (``path`` is never left half-written).

    overwrite: False refuses an existing ``path`` (``FileExistsError``), before the
        work and again, atomically, when the finished file takes its name.
    protect: files ``path`` must not be (the inputs: paths or ``FileIdentity``s, taken
        now for paths); ``OutputPathError`` before the work and just before the rename.

    Raises:
        DiskFullError: the write ran out of space (disk, quota, file-size limit).
    """
    path = Path(path)
    protected = [file_identity(p) for p in protect]
    check_not_protected(path, protected)
    if not overwrite:
        refuse_existing(path)
    tmp = path.with_name(temporary_prefix(path.name, path.parent) + f"{secrets.token_hex(_TOKEN_HEX)}.tmp")
    with open(tmp, "xb"):  # created with the usual umask permissions, unlike mkstemp's 0600
        pass
    try:
        yield tmp
        with open(tmp, "rb+") as f:
            os.fsync(f.fileno())
        # Again at the last moment: the name may have come to reach an input while the file
        # was being made (a symlink or hard link created, a relative name, another process).
        check_not_protected(path, protected)
        if overwrite:
            os.replace(tmp, path)
        else:
            _link_without_replacing(tmp, path)
    except BaseException as e:
        full = _space_error(e, tmp, path)
        tmp.unlink(missing_ok=True)
        if full is not None:  # the diagnosis replaces the library's report (numpy's, torch's C++ trace)
            raise full from None
        raise
    try:  # make the rename itself durable; not possible on every platform / filesystem
        fd = os.open(path.parent, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def _link_without_replacing(tmp: Path, path: Path) -> None:
    """Give ``tmp`` the name ``path`` unless ``path`` exists (then FileExistsError), atomically.

    A hard link fails with EEXIST if the name is taken, where a rename would replace it.
    File systems without hard links (some FUSE / network mounts) fall back to a check
    followed by a rename: the window between them is the only one left.
    """
    try:
        os.link(tmp, path)
    except FileExistsError:
        raise FileExistsError(f"{path} already exists (it appeared while being written); "
                              "pass overwrite=True to replace it") from None
    except OSError:
        refuse_existing(path)
        os.replace(tmp, path)
        return
    tmp.unlink()


def remove_stale_temporaries(path) -> list[Path]:
    """Remove the temporary files that writers of ``path`` killed mid-write left behind.

    A process killed by SIGKILL (or a power cut) cannot run ``atomic_path``'s clean-up:
    its ``.<name>.<hex>.tmp`` stays next to ``path`` (``path`` itself is intact: the old
    version or none). Call this only where one process owns ``path`` (a training run's
    checkpoint directory), since another writer's temporary file would match too.
    Returns the removed paths.
    """
    path = Path(path)
    prefix = temporary_prefix(path.name, path.parent)
    pattern = re.compile(rf"{re.escape(prefix)}[0-9a-f]{{{2 * _TOKEN_HEX}}}\.tmp")
    removed = []
    if path.parent.is_dir():
        for candidate in path.parent.iterdir():
            if pattern.fullmatch(candidate.name) and candidate.is_file():
                candidate.unlink(missing_ok=True)
                removed.append(candidate)
    return removed
