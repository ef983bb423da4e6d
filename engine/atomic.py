"""Atomic file writes: a file the engine writes is either complete or not there.

Every writer of the project (outputs, DNGs, checkpoints) writes to a temporary file in
the destination's directory, fsyncs it and renames it over the destination; on any
failure (including KeyboardInterrupt) the temporary file is removed and an existing
destination is left untouched.
"""
from __future__ import annotations

import os
import secrets
from contextlib import contextmanager
from pathlib import Path


@contextmanager
def atomic_path(path):
    """Yield a temporary path next to ``path``; on success fsync it and move it over
    ``path``; on failure remove it (``path`` is never left half-written)."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.{secrets.token_hex(6)}.tmp")
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
