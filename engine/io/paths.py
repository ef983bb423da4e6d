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

Refusals (``OutputPathError``, before any work): a file listed twice (through symlinks or
other spellings too), an output that is one of the inputs (``-o`` = the input folder with
``--format dng`` would otherwise replace ``x.dng`` by its enhancement), names that cannot
be told apart.
"""
from __future__ import annotations

import os
from collections import defaultdict
from pathlib import Path


class OutputPathError(ValueError):
    """The planned outputs would lose or mix up a user's files; nothing was written."""


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
    """Refuse a file listed more than once (any spelling, through symlinks)."""
    seen: dict[str, str] = {}
    for f in files:
        key = real(f)
        if key in seen:
            raise OutputPathError(f"{f} is listed more than once (also as {seen[key]})")
        seen[key] = os.fspath(f)


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
