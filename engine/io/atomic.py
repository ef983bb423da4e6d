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
"""
from __future__ import annotations

import os
import re
import secrets
from contextlib import contextmanager
from pathlib import Path

_TOKEN_HEX = 6  # bytes of randomness in a temporary name (12 hex digits)


def refuse_existing(path, hint: str = "pass overwrite=True to replace it") -> None:
    """Raise ``FileExistsError`` naming ``path`` if something already has that name."""
    if os.path.lexists(path):
        raise FileExistsError(f"{os.fspath(path)} already exists; {hint}")


@contextmanager
def atomic_path(path, *, overwrite: bool = True):
    """Yield a temporary path next to ``path``; on success fsync it and move it to
    ``path``; on failure remove it (``path`` is never left half-written).

    overwrite: False refuses an existing ``path`` (``FileExistsError``), before the
        work and again, atomically, when the finished file takes its name.
    """
    path = Path(path)
    if not overwrite:
        refuse_existing(path)
    tmp = path.with_name(f".{path.name}.{secrets.token_hex(_TOKEN_HEX)}.tmp")
    with open(tmp, "xb"):  # created with the usual umask permissions, unlike mkstemp's 0600
        pass
    try:
        yield tmp
        with open(tmp, "rb+") as f:
            os.fsync(f.fileno())
        if overwrite:
            os.replace(tmp, path)
        else:
            _link_without_replacing(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
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
    pattern = re.compile(rf"\.{re.escape(path.name)}\.[0-9a-f]{{{2 * _TOKEN_HEX}}}\.tmp")
    removed = []
    if path.parent.is_dir():
        for candidate in path.parent.iterdir():
            if pattern.fullmatch(candidate.name) and candidate.is_file():
                candidate.unlink(missing_ok=True)
                removed.append(candidate)
    return removed
