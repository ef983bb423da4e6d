"""The ``exposure-diffusion calibrate`` subcommand: ``add_calibrate_command`` and its
handler ``run_calibrate``, a command-line front end to ``engine.calibration.calibrate``.

Registering the command imports nothing heavy (``--help`` without torch, issue 22 item 6);
``run_calibrate`` checks every output path (profile, report, plots) before reading a frame.
"""
from __future__ import annotations

import sys
from pathlib import Path

_CLI_HELP = """\
Calibrate a camera's noise profile from bias and flat frames (raw files rawpy reads).

Capture folder layout (FOLDER):
  FOLDER/bias/   bias frames: lens capped, shortest exposure, >= 2 per ISO
  FOLDER/flat/   flats: uniform steady light, >= 3 brightness levels per ISO (dark to
                 ~70% of the range), >= 2 frames per level, never saturated
Sub-folders are searched too. Each file's ISO comes from its metadata, else from an
ISO<n> folder or file name (bias/ISO800/...). Flat levels are found from exposure time and
brightness. Use bias and flats at >= 2 ISOs (4 or more spanning the camera's range).

The profile (shipped format) is used at once by `enhance --camera PROFILE.json`, by
Pipeline(camera=...) and by training's --camera.
"""


def add_calibrate_command(subparsers):
    """Register the ``calibrate`` subcommand on an argparse ``subparsers`` object; the
    handler (``args.func(args)``) returns 0, 1 when the frames cannot calibrate (the
    message says what to capture) or 2 for a usage error."""
    import argparse

    from engine.argtypes import integer_arg
    from engine.limits import PPCC_SAMPLES

    p = subparsers.add_parser("calibrate", help="calibrate a camera's noise profile from bias and flat frames",
                              description=_CLI_HELP, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("folder", nargs="?", help="capture folder holding bias/ and flat/ (see above)")
    p.add_argument("--bias", nargs="+", metavar="PATH", help="bias files or folders (instead of FOLDER/bias)")
    p.add_argument("--flat", nargs="+", metavar="PATH", help="flat files or folders (instead of FOLDER/flat)")
    p.add_argument("-o", "--out", required=True, metavar="PROFILE.json", help="camera profile to write")
    p.add_argument("--name", default=None, help="profile name (default: the files' make and model)")
    p.add_argument("--plots", metavar="DIR", default=None,
                   help="folder for the diagnostic PNGs (default: PROFILE_plots/ beside the profile)")
    p.add_argument("--no-plots", action="store_true", help="write no plots")
    p.add_argument("--report", metavar="FILE", default=None,
                   help="text report (default: PROFILE_report.txt beside the profile)")
    p.add_argument("--ppcc-samples", type=integer_arg(1000), default=PPCC_SAMPLES,
                   help=f"bias pixels per ISO for the Tukey-lambda fit, >= 1000 (default {PPCC_SAMPLES})")
    p.add_argument("--overwrite", action="store_true",
                   help="replace an existing profile, report or plots (default: refuse before reading any frame)")
    p.add_argument("-q", "--quiet", action="store_true", help="print only errors")
    p.set_defaults(func=run_calibrate)
    return p


def _check_outputs(out: Path, report: Path, plots: Path | None, overwrite: bool, inputs) -> None:
    """Refuse, before any frame is read, outputs that cannot be written at the end: the
    profile, report or plots a folder / a file where a folder is expected, a folder that
    cannot be created or written into, or an output that is one of the input frames (with
    ``--overwrite`` it would replace a bias raw). ``OutputPathProblem`` (a ValueError)."""
    from engine.argtypes import OutputPathProblem, check_output_file, check_output_folder
    from engine.io.paths import same_file

    from .plots import PLOT_FILES

    check_output_file(out, option="-o", overwrite=overwrite, make_folders=True)
    check_output_file(report, option="--report", overwrite=overwrite, make_folders=True)
    files = [("-o", out), ("--report", report)]
    if plots is not None:
        check_output_folder(plots, option="--plots")
        for name in PLOT_FILES:
            check_output_file(plots / name, option="--plots", overwrite=overwrite, make_folders=True)
            files.append(("--plots", plots / name))
    for option, path in files:
        for frame in inputs:
            if same_file(path, frame):
                raise OutputPathProblem(f"{option} {path} is the input frame {frame}; name another file")


def run_calibrate(args) -> int:
    """Handler of ``exposure-diffusion calibrate``."""
    from engine.argtypes import OutputPathProblem

    from .fit import CalibrationError, calibrate, find_frames, raw_files

    out = Path(args.out)
    if args.folder is None and not (args.bias and args.flat):
        print("error: give a capture FOLDER (with bias/ and flat/) or both --bias and --flat", file=sys.stderr)
        return 2
    try:
        if args.folder is not None and not Path(args.folder).is_dir():
            raise FileNotFoundError(f"capture folder {args.folder} does not exist")
        bias = flat = None
        if args.folder is not None and not (args.bias and args.flat):
            bias, flat = find_frames(args.folder)
        bias = [f for p in args.bias for f in raw_files(p)] if args.bias else bias
        flat = [f for p in args.flat for f in raw_files(p)] if args.flat else flat
    except (CalibrationError, OSError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    plots = None if args.no_plots else Path(args.plots or out.with_name(out.stem + "_plots"))
    report = Path(args.report) if args.report else out.with_name(out.stem + "_report.txt")  # calibrate()'s default
    try:
        _check_outputs(out, report, plots, args.overwrite, [*bias, *flat])
    except OutputPathProblem as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    say = None if args.quiet else (lambda msg: print(msg, file=sys.stderr))
    try:
        result = calibrate(bias, flat, out=out, camera_name=args.name, plots=plots, report=args.report,
                           ppcc_samples=args.ppcc_samples, progress=say, overwrite=args.overwrite)
    except (ValueError, OSError) as e:  # CalibrationError, unreadable raw files
        print(f"error: {e}", file=sys.stderr)
        return 1
    if not args.quiet:
        print(result.report(), end="")
    return 0
