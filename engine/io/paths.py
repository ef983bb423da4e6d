"""Output paths of a batch: one distinct name per input, never an input, never an existing
file unless the user asks.

Names (``output_names``), for inputs enhanced into one folder with the output's extension
``ext``:

1. ``<stem><ext>``: ``DSC01.ARW`` -> ``DSC01.png``;
2. inputs whose level-1 names collide keep their raw extension: ``<name><ext>``
   (``x.ARW`` and ``x.NEF`` -> ``x.ARW.png``, ``x.NEF.png``);
3. inputs still colliding (the same file name in different folders) are prefixed by as
   many of their parent folders' names as make them distinct, joined by ``_``
   (``a/x.ARW``, ``b/x.ARW`` -> ``a_x.ARW.png``, ``b_x.ARW.png``).

Names are compared case-insensitively (``a.dng`` and ``a.DNG`` are one file on macOS and
Windows); where names of inputs at different levels clash, those at the lowest level move
up first. Names depend only on the set of inputs, not their order, so a run started again
on the same files (``--skip-existing``) finds the same outputs.

Refusals (``OutputPathError``, before any work): a file listed twice (through symlinks,
hard links or other spellings too), an output that is one of the inputs (``-o`` = the input
folder with ``--format dng`` would otherwise replace ``x.dng`` by its enhancement), names
that cannot be told apart.

Writers check again when they write (``engine.io.atomic.atomic_path(protect=...)``): a
file's identity (``FileIdentity``: resolved path, device and inode) is taken when it is read,
so an output that reaches it later (after ``os.chdir`` with a relative source path, through
a new symlink or hard link) is still refused.
"""
from __future__ import annotations

import os
from collections import defaultdict
from pathlib import Path
from typing import NamedTuple


class OutputPathError(ValueError):
    """The planned outputs would lose or mix up a user's files; nothing was written."""


class FileIdentity(NamedTuple):
    """Which file a path named when it was read: ``path`` resolved (absolute, symlinks
    followed), and the file's ``device`` / ``inode`` (None when it did not exist)."""

    path: str
    device: int | None = None
    inode: int | None = None


def file_identity(path) -> FileIdentity:
    """The identity of the file ``path`` names now (a ``FileIdentity`` is returned as is)."""
    if isinstance(path, FileIdentity):
        return path
    try:
        st = os.stat(path)
    except (OSError, ValueError):  # missing, or a name the OS refuses
        return FileIdentity(real(path))
    if st.st_ino == 0:  # file systems without inode numbers (some FUSE / SMB mounts) report 0 for every file
        return FileIdentity(real(path))
    return FileIdentity(real(path), st.st_dev, st.st_ino)


def names_file(path, identity: FileIdentity) -> bool:
    """True when ``path`` now names the file ``identity`` was taken of: the same resolved path,
    or the same device and inode (a hard link, a symlink made since, another spelling on a
    case-insensitive file system)."""
    if real(path) == identity.path:
        return True
    if identity.inode is None:
        return False
    try:
        st = os.stat(path)
    except (OSError, ValueError):
        return False
    return (st.st_dev, st.st_ino) == (identity.device, identity.inode)


def check_not_protected(output, protected, what: str = "input") -> None:
    """Refuse (``OutputPathError``) writing ``output`` when it names one of the ``protected``
    files (paths or ``FileIdentity``s: the inputs of the work that produced ``output``)."""
    for p in protected:
        identity = file_identity(p)
        if names_file(output, identity):
            shown = p if not isinstance(p, FileIdentity) else identity.path
            raise OutputPathError(f"the output {os.fspath(output)} would overwrite the {what} {os.fspath(shown)}; "
                                  "choose another output path")


def check_output_folder(folder) -> None:
    """Refuse an output folder path that cannot become a folder: an existing file, or a
    symlink to nothing (``mkdir`` would say only "File exists")."""
    folder = Path(folder)
    if os.path.islink(folder) and not folder.exists():
        raise OutputPathError(f"output folder {folder} is a symlink to {os.readlink(folder)}, which does not exist; "
                              "create the folder it points to, or name another output folder")
    if folder.exists() and not folder.is_dir():
        raise OutputPathError(f"output {folder} exists and is not a folder")


def real(path) -> str:
    """The path with symlinks resolved (the file it names), as a string."""
    return os.path.realpath(os.fspath(path))


def same_file(a, b) -> bool:
    """True when ``a`` and ``b`` name one file: the same resolved path, or (both existing)
    the same inode (hard links, case-insensitive file systems)."""
    if real(a) == real(b):
        return True
    try:
        return os.path.samefile(a, b)
    except OSError:  # one of them does not exist (yet)
        return False


def _name(path: Path, level: int, ext: str) -> str:
    if level == 0:
        return path.stem + ext
    parents = [p.name for p in path.parents if p.name][: level - 1]
    return "_".join([*reversed(parents), path.name]) + ext


def _max_level(path: Path) -> int:
    return 1 + sum(1 for p in path.parents if p.name)


def output_names(files, out_dir, ext: str) -> list[Path]:
    """Distinct output paths ``out_dir / name`` for ``files`` (rules in the module docstring).

    Args:
        files: input paths (any spelling; duplicates must have been refused already,
            ``check_inputs_distinct``).
        out_dir: the output folder.
        ext: the outputs' extension with its dot, e.g. ".png".

    Raises:
        OutputPathError: two inputs whose names stay equal whatever the level.
    """
    paths = [Path(real(f)) for f in files]
    levels = [0] * len(paths)
    while True:
        groups = defaultdict(list)
        for i, p in enumerate(paths):
            groups[_name(p, levels[i], ext).casefold()].append(i)
        clashes = [members for members in groups.values() if len(members) > 1]
        if not clashes:
            return [Path(out_dir) / _name(p, lvl, ext) for p, lvl in zip(paths, levels)]
        for members in clashes:
            movable = [i for i in members if levels[i] < _max_level(paths[i])]
            if not movable:
                names = ", ".join(str(files[i]) for i in members)
                raise OutputPathError(f"cannot give distinct output names to {names}; enhance them into different "
                                      "folders")
            # Only the lowest-level members move up: a name given at an earlier level stays.
            low = min(levels[i] for i in movable)
            for i in movable:
                if levels[i] == low:
                    levels[i] += 1


def check_inputs_distinct(files) -> None:
    """Refuse a file listed more than once (any spelling, through symlinks or hard links:
    the same resolved path, or the same device and inode)."""
    seen: dict = {}
    for f in files:
        identity = file_identity(f)
        keys = [identity.path] + ([(identity.device, identity.inode)] if identity.inode is not None else [])
        first = next((seen[k] for k in keys if k in seen), None)
        if first is not None:
            how = " (a hard link to the same file)" if real(f) != real(first) else ""
            raise OutputPathError(f"{os.fspath(f)} is listed more than once (also as {first}){how}")
        for k in keys:
            seen[k] = os.fspath(f)


def check_not_inputs(outputs, inputs) -> None:
    """Refuse an output path that is one of the inputs (through symlinks too)."""
    by_real = {real(f): f for f in inputs}
    for out in outputs:
        src = by_real.get(real(out))
        if src is None:
            src = next((f for f in inputs if same_file(f, out)), None) if os.path.lexists(out) else None
        if src is not None:
            raise OutputPathError(f"the output {out} would overwrite the input {src}; choose another output folder "
                                  "or format")


def existing(outputs) -> list[Path]:
    """The outputs that already exist (a file, a folder or a dangling symlink)."""
    return [Path(o) for o in outputs if os.path.lexists(o)]


def plan_outputs(files, outputs, *, overwrite: bool = False, skip_existing: bool = False) -> list[int]:
    """Check a batch's ``outputs`` (one per file) before any work; return the indices of
    the files to enhance.

    Refuses (``OutputPathError``) a file listed twice and an output that is an input;
    existing outputs raise ``FileExistsError`` (naming up to five) unless ``overwrite``
    (replace them) or ``skip_existing`` (leave them: those files are not in the result).
    """
    if overwrite and skip_existing:
        raise ValueError("overwrite and skip_existing exclude each other")
    if len(files) != len(outputs):
        raise ValueError(f"got {len(files)} files but {len(outputs)} output paths")
    check_inputs_distinct(files)
    check_inputs_distinct(outputs)
    check_not_inputs(outputs, files)
    present = {real(o) for o in existing(outputs)}
    if present and not (overwrite or skip_existing):
        listed = [str(o) for o in outputs if real(o) in present]
        shown = ", ".join(listed[:5]) + (f" and {len(listed) - 5} more" if len(listed) > 5 else "")
        raise FileExistsError(f"{len(listed)} output(s) already exist: {shown}; replace them with --overwrite "
                              "(overwrite=True) or enhance only the others with --skip-existing (skip_existing=True)")
    return [i for i, o in enumerate(outputs) if not (skip_existing and real(o) in present)]
