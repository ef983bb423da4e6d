"""Atomic file writes: a file the engine writes is either complete or not there.

Every writer of the project (outputs, DNGs, checkpoints) writes to a temporary file in
the destination's directory, fsyncs it and renames it over the destination; on any
failure (including KeyboardInterrupt) the temporary file is removed and an existing
destination is left untouched.
"""
from __future__ import annotations

import os
import re
import secrets
from contextlib import contextmanager
from pathlib import Path

_TOKEN_HEX = 6  # bytes of randomness in a temporary name (12 hex digits)


@contextmanager
def atomic_path(path):
    """Yield a temporary path next to ``path``; on success fsync it and move it over
    ``path``; on failure remove it (``path`` is never left half-written)."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.{secrets.token_hex(_TOKEN_HEX)}.tmp")
    with open(tmp, "xb"):  # created with the usual umask permissions, unlike mkstemp's 0600
        pass
    try:
        yield tmp
        with open(tmp, "rb+") as f:
            os.fsync(f.fileno())
        os.replace(tmp, path)
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
