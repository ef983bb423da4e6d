"""Command line: ``exposure-diffusion enhance *.ARW --ratio 100 -o out/``.

This module holds the engine's subcommands (``add_engine_commands``); the installed
``exposure-diffusion`` program (``training.cli``) adds the training ones to them.

Each file is processed on its own: a file that fails (unreadable, unsupported sensor,
bad metadata, out of memory, ...) is reported with its reason and the batch goes on;
the exit status is 1 when any file failed, 2 for a usage error, 0 otherwise. Beside a
GPU, decoding and encoding run in worker processes overlapped with the device work
(``--workers``, ``engine.inference.batch``).

Outputs are named by ``engine.io.paths.output_names`` (distinct for every input). Before
any work the command refuses (exit 2) a file listed twice, an output that would replace
an input, and outputs that already exist unless ``--overwrite`` (replace them) or
``--skip-existing`` (enhance only the others: a run started again finishes what is left;
outputs are written atomically, so an existing one is complete), and an output folder it
cannot write into. The files come from the command line, standard input (``-``) or list
files (``@list.txt``); under torchrun or with ``--devices`` each process takes its share
(``engine.inference.shard``) and rank 0 prints the one summary, which lists every failed
file.

Options are checked while parsing (exit status 2, before anything is loaded): each value
by its ``type`` (``engine.argtypes``), and values against each other by ``Parser`` checks
(``--steps`` > 1 needs ``--ratio`` > 1). Importing this module, building the parser and
``--help`` import neither torch nor Triton (the limits come from ``engine.limits``): the
commands import what they need when they run.
"""
from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path
from typing import Callable


class Parser(argparse.ArgumentParser):
    """An ``ArgumentParser`` that also checks options against each other once they are
    parsed: each of ``add_check``'s functions gets the namespace and returns a message (an
    argparse usage error, exit status 2) or None. Subcommands are parsers of this class too."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.checks: list[Callable[[argparse.Namespace], str | None]] = []

    def add_check(self, check: Callable[[argparse.Namespace], str | None]) -> None:
        self.checks.append(check)

    def parse_known_args(self, args=None, namespace=None):
        namespace, extras = super().parse_known_args(args, namespace)
        for check in self.checks:
            problem = check(namespace)
            if problem:
                self.error(problem)
        return namespace, extras


def _workers_arg(value: str) -> str:
    if value == "auto" or (value.isdigit() and int(value) >= 0):
        return value
    raise argparse.ArgumentTypeError(f"expected 'auto' or a number >= 0, got {value!r}")


def _batch_arg(value: str) -> str:
    if value == "auto" or (value.isdigit() and int(value) >= 1):
        return value
    raise argparse.ArgumentTypeError(f"expected 'auto' or a number >= 1, got {value!r}")


def _quality_arg(value: str) -> int:
    if value.isdigit() and 1 <= int(value) <= 100:
        return int(value)
    raise argparse.ArgumentTypeError(f"expected a JPEG quality 1..100, got {value!r}")


def _devices_arg(value: str) -> list[str]:
    devices = [d.strip() for d in value.split(",") if d.strip()]
    if not devices:
        raise argparse.ArgumentTypeError("expected devices separated by commas, e.g. cuda:0,cuda:1")
    return devices


def input_paths(args: list[str], stdin=None) -> list[Path]:
    """The files named on the command line: paths, ``-`` (one path per line on standard
    input) and ``@list.txt`` (one path per line in that file); empty lines are ignored."""
    from engine.io.paths import OutputPathError

    out: list[Path] = []
    for a in args:
        if a == "-":
            lines = (stdin or sys.stdin).read().splitlines()
        elif a.startswith("@") and len(a) > 1:
            try:
                lines = Path(a[1:]).read_text(encoding="utf-8").splitlines()
            except OSError as e:
                raise OutputPathError(f"cannot read the list of files {a[1:]}: {e.strerror or e}") from None
        else:
            lines = [a]
        out += [Path(line) for line in lines if line.strip()]
    return out


def _check_writable(folder: Path) -> None:
    """Refuse, before any work, an output folder this process cannot create files in."""
    from engine.argtypes import write_probe_error
    from engine.io.paths import OutputPathError

    problem = write_probe_error(folder)
    if problem is not None:
        raise OutputPathError(f"cannot write into the output folder {folder}: {problem}")


def enhance(args) -> int:
    from engine.io.output import OutputOptions
    from engine.io.paths import OutputPathError, check_inputs_distinct, check_output_folder, output_names, plan_outputs

    try:  # every refusal before the model is loaded or a folder made
        files = input_paths(args.files)
        if not files:
            raise OutputPathError("no input files (an empty list?)")
        out_dir = Path(args.output)
        check_output_folder(out_dir)  # a file, or a symlink to nothing (mkdir would say only "File exists")
        options = OutputOptions(format=args.format, bits=args.bits, quality=args.quality,
                                compression=args.compression,
                                jpeg_on_device={"auto": None, "gpu": True, "cpu": False}[args.jpeg_encoder])
        check_inputs_distinct(files)
        outputs = output_names(files, out_dir, options.extension)
        todo = plan_outputs(files, outputs, overwrite=args.overwrite, skip_existing=args.skip_existing)
        out_dir.mkdir(parents=True, exist_ok=True)
        _check_writable(out_dir)
    except (OutputPathError, FileExistsError, ValueError, OSError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    if args.devices:
        from engine.inference.shard import run_ranks

        return run_ranks(len(args.devices), _enhance_rank, args, files, outputs, options)
    return _enhance_rank(args, files, outputs, options, todo)


def _enhance_rank(args, files, outputs, options, todo=None) -> int:
    """This process's share of the files (all of them with one process; see
    ``engine.inference.shard``), then one summary from rank 0."""
    from tqdm import tqdm

    from engine.inference import shard
    from engine.inference.batch import enhance_files
    from engine.inference.pipeline import Pipeline
    from engine.io.paths import OutputPathError, plan_outputs

    rank = shard.current_rank()
    shard.join(rank)
    try:
        if todo is None:  # under torchrun each rank plans itself; the barrier keeps writes after every plan
            try:
                todo = plan_outputs(files, outputs, overwrite=args.overwrite, skip_existing=args.skip_existing)
            except (OutputPathError, FileExistsError) as e:
                print(f"error: {e}", file=sys.stderr)
                return 2
        shard.barrier(rank)
        skipped = len(files) - len(todo)
        if skipped and not args.quiet and rank.rank == 0:
            print(f"skipping {skipped} file(s) whose output exists (--skip-existing)", file=sys.stderr)
        mine = shard.shard(todo, rank)
        results, trouble = [], None
        try:
            device = shard.rank_device(rank, args.device, args.devices)
            if device.type == "cpu" and rank.local_world > 1:
                import torch

                torch.set_num_threads(shard.cpu_threads(rank))
            pipe = Pipeline.from_checkpoint(args.checkpoint, device=device, camera=args.camera, max_tile=args.max_tile,
                                            backbone_path=args.backbone)
        except (ValueError, OSError, RuntimeError) as e:
            trouble = f"cannot load the model: {e}"
        if trouble is None:
            workers = _workers(args.workers, pipe.device, rank.local_world, files=len(mine))
            if str(workers) != args.workers and args.workers != "auto" and not args.quiet and rank.rank == 0:
                print(f"--workers {args.workers}: using {workers} of each (at most one per file and one per core "
                      "of this process)", file=sys.stderr)
            batch = _batch(args.batch, pipe.device)
            where = f" (rank {rank.rank} of {rank.world})" if rank.distributed else ""
            bar = tqdm(total=len(mine), desc="enhance" + where, unit="file", disable=args.quiet or rank.rank != 0)
            finished = [0]  # files done; the bar shows finished + the share of the steps run in the current group

            def report(result) -> None:
                finished[0] += 1
                bar.update(finished[0] - bar.n)  # through update: tqdm's rate and time left follow
                bar.n = finished[0]  # exactly (an int: "3/3", not "3.0000000000000004/3")
                bar.set_postfix_str(result.source.name)  # refreshes the bar
                if result.error is not None:
                    tqdm.write(f"FAILED {result.source}: {result.error}", file=sys.stderr)
                elif args.ratio == "auto" and result.ratio is not None and not args.quiet:
                    tqdm.write(f"{result.source.name}: ratio {result.ratio:.3g} (auto)", file=sys.stderr)

            def step_done(step: int, steps: int, frames: int) -> None:
                # Inside a file (one step of a 24 MP frame takes tens of seconds on a CPU): the share
                # of the current group's steps, never a whole file before it is written.
                target = round(min(finished[0] + frames * step / steps, finished[0] + frames - 0.01), 2)
                if target > bar.n:
                    bar.update(target - bar.n)
                    bar.refresh()  # now: update() draws at most every 0.1 s

            try:
                results = enhance_files(pipe, [files[i] for i in mine], [outputs[i] for i in mine], fmt=options,
                                        workers=workers, batch=batch, on_done=report, overwrite=args.overwrite,
                                        on_step=None if bar.disable else step_done,
                                        ratio=args.ratio, steps=args.steps, K=args.K, iso=args.iso, seed=args.seed,
                                        stochastic=args.stochastic)
            except (OutputPathError, FileExistsError, ValueError) as e:
                trouble = str(e)
            bar.close()
        # Every rank reaches this gather, whatever happened to it, so none waits forever.
        parts = shard.gather((trouble, [(str(r.source), r.error) for r in results]), rank)
    finally:
        shard.leave(rank)
    troubles = [t for t, _ in parts if t is not None]
    if troubles:
        if rank.rank == 0:
            for t in dict.fromkeys(troubles):
                print(f"error: {t}", file=sys.stderr)
        return 2
    everyone = [r for _, part in parts for r in part]
    failures = [(src, err) for src, err in everyone if err is not None]
    if rank.rank == 0:
        done = len(everyone) - len(failures)
        print(f"{done} of {len(files)} files enhanced into {args.output}"
              + (f" by {rank.world} processes" if rank.distributed else "")
              + (f"; {skipped} skipped (output exists)" if skipped else "")
              + (f"; {len(failures)} failed:" if failures else ""), file=sys.stderr)
        for src, err in failures:
            print(f"  {src}: {err}", file=sys.stderr)
    return 1 if failures else 0


def _cores() -> int:
    """The cores this process may run on (its CPU affinity where the platform says)."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except (AttributeError, OSError):
        return max(1, os.cpu_count() or 1)


def _workers(value: str, device, ranks_here: int = 1, files: int | None = None) -> int:
    """--workers: decoder and writer processes, N of each. A number is capped at this rank's
    share of the cores and, with ``files``, at the number of files (each worker holds a
    decoded frame, ~0.2 GB for a 24 MP raw: ``--workers 16`` for 2 files started 28
    processes, issue 22). "auto": beside a GPU, (cores - 1) / 2 of this rank's share (one
    core left for the process driving the device), at least one of each; on a CPU none
    (they would take cores from the enhancement itself)."""
    cores = max(1, _cores() // max(1, ranks_here))
    if value != "auto":
        wanted = min(int(value), cores)
    elif device.type != "cuda":
        return 0
    else:
        wanted = max(1, (cores - 1) // 2)
    return wanted if files is None else min(wanted, files)


def _batch(value: str, device) -> int:
    """--batch: a number, or "auto": 4 same-size frames per graph replay on CUDA, 1 on a CPU."""
    if value != "auto":
        return int(value)
    return 4 if device.type == "cuda" else 1


def add_engine_commands(sub) -> None:
    """Register the engine's subcommands (``enhance``, ``calibrate``) on an argparse
    subparsers object."""
    from engine.argtypes import (add_photon_options, camera_arg, device_arg, integer_arg, ratio_arg, real_arg,
                                 steps_or_auto_arg)
    from engine.calibration.cli import add_calibrate_command
    from engine.limits import K_RANGE, MAX_RATIO, MAX_SEED, MAX_STEPS, SIZE_MULTIPLE

    e = sub.add_parser("enhance", help="enhance raw files (any format rawpy reads)")
    e.add_argument("files", nargs="+",
                   help="raw files (ARW, NEF, CR2, DNG, ...); '-' reads one path per line from standard input, "
                        "'@list.txt' from that file (for folders too large for a command line)")
    e.add_argument("--ratio", type=ratio_arg(MAX_RATIO), required=True,
                   help=f"exposure ratio to brighten by, in (0, {MAX_RATIO:g}] (e.g. 100, 300); > 1 when --steps > 1 "
                        "(the default 3); with --steps 1 any ratio, <= 1 being a plain denoise; or 'auto': per file, "
                        "the frame's median brought to 12%% of white (printed per file, in its metadata)")
    e.add_argument("-o", "--output", default=".", help="output folder (created if missing; default: .)")
    e.add_argument("--checkpoint", default=None,
                   help="model checkpoint (public {'netG': ...} format or ours; default: the shipped model)")
    e.add_argument("--device", default="auto", type=device_arg,
                   help="auto, cpu, cuda or cuda:N (under torchrun, auto / cuda take each rank's local GPU)")
    e.add_argument("--devices", type=_devices_arg, default=None,
                   help="several devices, one process each, the files shared out between them "
                        "(e.g. cuda:0,cuda:1; or start the same command under torchrun --nproc_per_node N)")
    e.add_argument("--steps", type=steps_or_auto_arg(MAX_STEPS), default=3,
                   help=f"network evaluations, 1..{MAX_STEPS} (default 3; 1 = one-shot), or auto: per file from its "
                        "expected quality (engine.inference.adaptive)")
    e.add_argument("--camera", default=None, type=camera_arg,
                   help="camera profile for ISO -> gain (shipped name or JSON path)")
    e.add_argument("--iso", type=real_arg(0, low_open=True), default=None, help="override the files' ISO (> 0)")
    e.add_argument("--K", type=real_arg(*K_RANGE), default=None,
                   help=f"system gain in DN per photo-electron, in [{K_RANGE[0]:g}, {K_RANGE[1]:g}] (overrides ISO)")
    e.add_argument("--seed", type=integer_arg(0, MAX_SEED), default=None,
                   help="fixed seed, an integer in [0, 2**64 - 1]: repeatable outputs")
    add_photon_options(e, scope="between the steps")
    e.add_argument("--format", default="png", type=str.lower, choices=("png", "jpeg", "jpg", "tiff", "tif", "dng"),
                   help="output format (default png): png / jpeg / tiff are sRGB renderings, dng the linear "
                        "mosaic for raw editors; every one carries the source's capture metadata (EXIF)")
    e.add_argument("--bits", type=int, choices=(8, 16), default=None,
                   help="sample depth: png 8 (default) or 16, tiff 16 (default) or 8")
    e.add_argument("--quality", type=_quality_arg, default=95, help="JPEG quality 1..100 (default 95)")
    e.add_argument("--compression", choices=("fast", "small"), default="fast",
                   help="fast (default: PNG zlib level 1, TIFF uncompressed) or small (PNG level 9, TIFF deflate)")
    e.add_argument("--jpeg-encoder", choices=("auto", "gpu", "cpu"), default="auto",
                   help="JPEG on the GPU (nvJPEG through torchvision) or the CPU (Pillow); auto: the GPU when "
                        "the device is CUDA and torchvision works, else the CPU")
    e.add_argument("--batch", default="auto", type=_batch_arg,
                   help="same-size frames per device call (default auto: 4 on CUDA, 1 on a CPU)")
    e.add_argument("--max-tile", type=integer_arg(SIZE_MULTIPLE, multiple=SIZE_MULTIPLE), default=None,
                   help=f"process in tiles of at most this many packed pixels (a multiple of {SIZE_MULTIPLE})")
    e.add_argument("--backbone", default=None, choices=BACKBONES,
                   help="what runs the network: auto (default, or $EXPOSURE_DIFFUSION_BACKEND; on a GPU the fastest "
                        "of our fused Triton UNet and PyTorch's, timed at the first frame of each size; on a CPU the "
                        "fastest installed of PyTorch fp32 / bf16, torch.compile, ONNX Runtime fp32 / int8 and "
                        "OpenVINO fp32 / bf16 / int8, each held to 45 dB of fp32, timed once per CPU and model; "
                        "cached), or one of them by name")
    e.add_argument("--workers", default="auto", type=_workers_arg,
                   help="decoder and writer processes (N of each) overlapping the device work (default auto: beside a GPU "
                        "(cores per GPU process - 1) / 2, at least 1; 0 on a CPU, whose cores the enhancement uses); "
                        "N is capped at the number of files and at the cores of each process")
    existing_outputs = e.add_mutually_exclusive_group()
    existing_outputs.add_argument("--overwrite", action="store_true",
                                  help="replace outputs that already exist (default: refuse, before any work)")
    existing_outputs.add_argument("--skip-existing", action="store_true",
                                  help="enhance only the files whose output does not exist yet (resume a run)")
    e.add_argument("-q", "--quiet", action="store_true", help="no progress bar")
    e.set_defaults(func=enhance)
    if isinstance(e, Parser):
        e.add_check(_ratio_fits_steps)
    add_calibrate_command(sub)


# engine.inference.backbone_choice.BACKBONE_PATHS (written out: importing it would load torch)
BACKBONES = ("auto", "fused", "eager", "compile", "eager-bf16", "onnxruntime", "onnxruntime-int8", "openvino",
             "openvino-bf16", "openvino-int8")


def _ratio_fits_steps(args) -> str | None:
    """More than one step needs the exposure to grow between them (``Pipeline`` refuses
    ratio <= 1 with steps > 1 per file, at run time: refused here, while parsing, instead).
    ``--steps auto`` at ratio <= 1 runs one step, as ``Pipeline`` does. The float32 value is
    compared: 1 + 2**-52 is 1 for the photon maths."""
    from engine.argtypes import float32

    if isinstance(args.steps, int) and args.steps > 1 and args.ratio != "auto" and float32(args.ratio) <= 1:
        return (f"argument --ratio: must be > 1 with --steps {args.steps} (the exposure must grow between steps), "
                f"got {args.ratio!r}" + (" (= 1 in float32)" if args.ratio > 1 else "") +
                "; at a ratio <= 1 use --steps 1 (a plain denoise)")
    return None


def build_parser(*more_commands) -> argparse.ArgumentParser:
    """The ``exposure-diffusion`` parser: the engine's commands, then each of
    ``more_commands`` (functions registering subcommands, e.g. the training ones)."""
    ap = Parser(prog="exposure-diffusion", description="ExposureDiffusion raw low-light enhancement")
    sub = ap.add_subparsers(dest="command", required=True)
    add_engine_commands(sub)
    for add in more_commands:
        add(sub)
    return ap


def main(argv=None, *more_commands) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    args = build_parser(*more_commands).parse_args(argv)
    args.argv = argv  # what was typed: `train` says how to resume with it
    try:
        return args.func(args)
    except KeyboardInterrupt:  # Ctrl-C: one line instead of a traceback (files are written atomically)
        print("\ninterrupted (Ctrl-C); every output already written is complete", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
