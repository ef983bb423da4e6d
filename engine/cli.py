"""Command line: ``exposure-diffusion enhance *.ARW --ratio 100 -o out/``.

This module holds the engine's subcommands (``add_engine_commands``); the installed
``exposure-diffusion`` program (``training.cli``) adds the training ones to them.

Each file is processed on its own: a file that fails (unreadable, unsupported sensor,
bad metadata, out of memory, ...) is reported with its reason and the batch goes on;
the exit status is 1 when any file failed, 2 for a usage error, 0 otherwise. Beside a
GPU, decoding and encoding run in worker processes overlapped with the device work
(``--workers``, ``engine.inference.batch``).
"""
from __future__ import annotations

import argparse
import os
import sys
from collections import Counter
from pathlib import Path

from tqdm import tqdm


def _device(value: str) -> str:
    if value == "auto":
        import torch

        return "cuda" if torch.cuda.is_available() else "cpu"
    return value


def _workers_arg(value: str) -> str:
    if value == "auto" or (value.isdigit() and int(value) >= 0):
        return value
    raise argparse.ArgumentTypeError(f"expected 'auto' or a number >= 0, got {value!r}")


def _output_names(files: list[Path], out_dir: Path, fmt: str) -> list[Path]:
    """``out/<stem>.<fmt>``; inputs sharing a stem keep their extension (a.ARW.png)."""
    stems = Counter(f.stem for f in files)
    ext = {"png": ".png", "tiff": ".tiff", "dng": ".dng"}[fmt]
    return [out_dir / ((f.stem if stems[f.stem] == 1 else f.name) + ext) for f in files]


def enhance(args) -> int:
    from engine.inference.pipeline import Pipeline

    files = [Path(f) for f in args.files]
    out_dir = Path(args.output)
    if not out_dir.is_dir():
        if out_dir.exists():
            print(f"error: output {out_dir} exists and is not a folder", file=sys.stderr)
            return 2
        out_dir.mkdir(parents=True)
    if len(set(files)) != len(files):
        print("error: a file is listed more than once", file=sys.stderr)
        return 2
    try:
        pipe = Pipeline.from_checkpoint(args.checkpoint, device=_device(args.device), camera=args.camera,
                                        max_tile=args.max_tile)
    except (ValueError, OSError) as e:
        print(f"error: cannot load the model: {e}", file=sys.stderr)
        return 2
    from engine.inference.batch import enhance_files

    workers = _workers(args.workers, pipe.device)
    outputs = _output_names(files, out_dir, args.format)
    bar = tqdm(total=len(files), desc="enhance", unit="file", disable=args.quiet)

    def report(result) -> None:
        bar.update(1)
        bar.set_postfix_str(result.source.name)
        if result.error is not None:
            tqdm.write(f"FAILED {result.source}: {result.error}", file=sys.stderr)

    results = enhance_files(pipe, files, outputs, fmt=args.format, workers=workers, on_done=report, ratio=args.ratio,
                            steps=args.steps, K=args.K, iso=args.iso, seed=args.seed,
                            stochastic=not args.deterministic)
    bar.close()
    failures = [r for r in results if r.error is not None]
    done = len(files) - len(failures)
    print(f"{done} of {len(files)} files enhanced into {out_dir}" + (f"; {len(failures)} failed" if failures else ""),
          file=sys.stderr)
    return 1 if failures else 0


def _steps(value: str):
    """--steps: an integer >= 1 or "auto"."""
    if value == "auto":
        return value
    try:
        n = int(value)
    except ValueError:
        n = 0
    if n < 1:
        raise argparse.ArgumentTypeError(f"an integer >= 1 or 'auto', got {value!r}")
    return n


def _workers(value: str, device) -> int:
    """--workers: a number, or "auto": decode / encode processes only beside a GPU (on a
    CPU they would take cores from the enhancement itself)."""
    if value != "auto":
        return int(value)
    return min(4, max(1, (os.cpu_count() or 2) - 2)) if device.type == "cuda" else 0


def add_engine_commands(sub) -> None:
    """Register the engine's subcommands (``enhance``, ``calibrate``) on an argparse
    subparsers object."""
    from engine.calibration.cli import add_calibrate_command

    e = sub.add_parser("enhance", help="enhance raw files (any format rawpy reads)")
    e.add_argument("files", nargs="+", help="raw files: ARW, NEF, CR2, DNG, ...")
    e.add_argument("--ratio", type=float, required=True, help="exposure ratio to brighten by (e.g. 100, 300)")
    e.add_argument("-o", "--output", default=".", help="output folder (created if missing; default: .)")
    e.add_argument("--checkpoint", default=None,
                   help="model checkpoint (public {'netG': ...} format or ours; default: the shipped model)")
    e.add_argument("--device", default="auto", help="auto, cpu, cuda or cuda:N")
    e.add_argument("--steps", type=_steps, default=3,
                   help="network evaluations (default 3; 1 = one-shot; auto: per file, engine.inference.adaptive)")
    e.add_argument("--camera", default=None, help="camera profile for ISO -> gain (shipped name or JSON path)")
    e.add_argument("--iso", type=float, default=None, help="override the files' ISO")
    e.add_argument("--K", type=float, default=None, help="system gain in DN per photo-electron (overrides ISO)")
    e.add_argument("--seed", type=int, default=None, help="fixed seed: repeatable outputs")
    e.add_argument("--deterministic", action="store_true", help="use Poisson means instead of draws")
    e.add_argument("--format", default="png", choices=("png", "tiff", "dng"), help="output format (default png)")
    e.add_argument("--max-tile", type=int, default=None, help="process in tiles of at most this many packed pixels")
    e.add_argument("--workers", default="auto", type=_workers_arg,
                   help="decoder / writer processes overlapping the device work (default auto: up to 4 beside "
                        "a GPU, 0 on a CPU)")
    e.add_argument("-q", "--quiet", action="store_true", help="no progress bar")
    e.set_defaults(func=enhance)
    add_calibrate_command(sub)


def build_parser(*more_commands) -> argparse.ArgumentParser:
    """The ``exposure-diffusion`` parser: the engine's commands, then each of
    ``more_commands`` (functions registering subcommands, e.g. the training ones)."""
    ap = argparse.ArgumentParser(prog="exposure-diffusion", description="ExposureDiffusion raw low-light enhancement")
    sub = ap.add_subparsers(dest="command", required=True)
    add_engine_commands(sub)
    for add in more_commands:
        add(sub)
    return ap


def main(argv=None, *more_commands) -> int:
    args = build_parser(*more_commands).parse_args(argv)
    return args.func(args)


if __name__ == "__main__":
    sys.exit(main())
