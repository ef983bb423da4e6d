"""The ``exposure-diffusion`` program: the engine's commands plus ``train`` and ``evaluate``.

    exposure-diffusion train --out runs/ed --epochs 300            # built-in synthetic data
    exposure-diffusion train --sid-root /data/SID --sid-list Sony_train_list.txt --out runs/sid
    torchrun --nproc_per_node 4 -m training train --sid-root /data/SID --out runs/sid
    exposure-diffusion evaluate --checkpoint runs/ed/model.pt --ratios 100 300
    exposure-diffusion enhance *.ARW --ratio 100 --checkpoint runs/ed/model.pt -o out/

Importing this module, building the parser and ``--help`` import neither torch nor Triton
(each command imports what it needs when it runs). Every output path (``train --out``,
``evaluate --json`` / ``--baseline-cache``, ``export --public``) is checked before any
work: a bad one stops with exit status 2 and one line, never a traceback after the work.
"""
from __future__ import annotations

import json
import os
import shlex
import signal
import sys
from pathlib import Path

from engine.argtypes import OutputPathProblem, check_output_file, check_output_folder

# A run folder's own files (training.trainer.RUN_FILES; kept here so the parser needs no torch).
RUN_FILES = ("last.pt", "model.pt", "log.jsonl")


def _distributed_setup(device_arg: str):
    """Under torchrun (WORLD_SIZE > 1): join the process group, return this rank's device."""
    import torch
    import torch.distributed as dist

    from engine.argtypes import resolve_device

    if int(os.environ.get("WORLD_SIZE", "1")) <= 1:
        return resolve_device(device_arg)
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    use_cuda = torch.cuda.is_available() and device_arg != "cpu"
    dist.init_process_group("nccl" if use_cuda else "gloo")
    if use_cuda:
        torch.cuda.set_device(local_rank)
        return torch.device("cuda", local_rank)
    return torch.device("cpu")


def check_run_folder(out) -> Path:
    """Refuse, before any data is read, a ``train --out`` that cannot hold a run: a file (not
    a folder), a folder that cannot be made or written into, or a run file (``last.pt``,
    ``model.pt``, ``log.jsonl``) that is a folder. ``OutputPathProblem`` names what is wrong."""
    out = check_output_folder(out, option="--out")
    for name in RUN_FILES:
        if (out / name).is_dir():
            raise OutputPathProblem(f"--out {out}: {out / name} is a folder, where the run keeps its {name} file; "
                                    "move it away or pick another --out")
    return out


def _resume_command(args) -> str:
    """The command that resumes this run: the one typed, less ``--restart`` (which would
    move the run aside and start over)."""
    argv = [a for a in getattr(args, "argv", None) or sys.argv[1:] if a != "--restart"]
    return "exposure-diffusion " + shlex.join(argv)


def train(args) -> int:
    try:
        check_run_folder(args.out)
    except OutputPathProblem as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    try:
        return _train(args)
    except KeyboardInterrupt as e:  # a second Ctrl-C / SIGTERM while stopping, or one before training began
        from .trainer import TrainingInterrupted

        signum = e.signum if isinstance(e, TrainingInterrupted) else signal.SIGINT
        print(f"\nstopped at once by {signal.Signals(signum).name}; the run folder {args.out} keeps its last "
              f"checkpoint, if any (to resume: {_resume_command(args)})", file=sys.stderr)
        return 128 + signum
    except OSError as e:  # a checkpoint or log that did not fit: say so, not torch's "[enforce fail ...]"
        from engine.io.atomic import DiskFullError

        if not isinstance(e, DiskFullError):
            raise
        print(f"error: {e}; the run folder {args.out} keeps its last complete checkpoint, if any", file=sys.stderr)
        return 1


def _train(args) -> int:
    import torch.distributed as dist

    from .data import build_training_dataset
    from .evaluate import evaluate_synthetic, format_table
    from .trainer import TrainConfig, Trainer

    device = _distributed_setup(args.device)
    try:
        try:  # options and data: a bad value is a usage error with a message, not a traceback
            cfg = TrainConfig(
                arch=args.arch, widths=tuple(args.widths) if args.widths else None, with_photon=not args.no_photon,
                concat_origin=args.concat_origin, steps=args.steps, learnable_weights=not args.fixed_weights,
                step_weights=tuple(args.step_weights) if args.step_weights else None,
                noise_model=args.noise_model, cameras=tuple(args.camera) if args.camera else None,
                ratio_range=tuple(args.ratio_range) if args.ratio_range else None, continuous=args.continuous,
                patch=args.patch, batch=args.batch, accumulate=args.accumulate, epochs=args.epochs,
                iters_per_epoch=args.iters_per_epoch, lr=args.lr, clip_grad=args.clip_grad, amp=args.amp,
                compile=args.compile, seed=args.seed, save_every=args.save_every, log_every=args.log_every,
                mean_weight=args.mean_loss, mean_pool=args.mean_pool, detach_states=args.detach_states,
                mean_photons=args.mean_photons, inner_exposures=args.inner_exposures,
                anchor_states=args.anchor_states, init=args.init, origin_share=args.origin_share)
            dataset = build_training_dataset(sid_root=args.sid_root, sid_list=args.sid_list,
                                             srgb_folder=args.srgb_folder, deadleaves_bank=args.deadleaves_bank,
                                             textured_bank=args.textured_bank, raw_folder=args.raw_folder,
                                             illumination=args.illumination,
                                             procedural=not (args.sid_root or args.srgb_folder or args.deadleaves_bank
                                                             or args.textured_bank or args.raw_folder)
                                             or args.procedural,
                                             patch=args.patch, cache=None if args.cache == "none" else args.cache,
                                             cache_dir=args.cache_dir, seed=args.seed)
            trainer = Trainer(cfg, dataset, args.out, device=device, progress=not args.quiet)
            if args.restart:
                moved = trainer.archive_run()
                if moved is not None:
                    print(f"--restart: the previous run's files are now in {moved}", file=sys.stderr)
            elif trainer.resume():
                print(f"resumed from {args.out}/last.pt at epoch {trainer.epoch}, step {trainer.global_step}",
                      file=sys.stderr)
        except (ValueError, OSError) as e:
            print(f"error: {e}", file=sys.stderr)
            return 2

        def on_log(rec):
            if args.eval_every and rec["global_step"] % args.eval_every == 0:
                table = evaluate_synthetic(trainer.model, trainer.backbone_config, steps=cfg.steps, n=8, patch=128,
                                           device=device, schedule=cfg.inference_schedule or "linspace")
                trainer.model.train()
                print(format_table(table, f"step {rec['global_step']}: synthetic hold-out (8 patches)"), file=sys.stderr)

        trainer.fit(max_steps=args.max_steps, on_log=on_log)
        if trainer.stopped_by is not None:
            if trainer.rank == 0:
                print(f"stopped by {signal.Signals(trainer.stopped_by).name} at step {trainer.global_step} (epoch "
                      f"{trainer.epoch}); checkpoint saved in {Path(args.out) / 'last.pt'}. To resume, run the same "
                      f"command again: {_resume_command(args)}", file=sys.stderr)
            return 128 + trainer.stopped_by
    finally:
        if dist.is_initialized():
            dist.destroy_process_group()
    return 0


def _compare_arg(text: str) -> tuple[str, str]:
    """--compare NAME=CHECKPOINT."""
    import argparse

    name, sep, path = text.partition("=")
    if not sep or not name or not path:
        raise argparse.ArgumentTypeError(f"expected NAME=CHECKPOINT, got {text!r}")
    return name, path


def read_baseline_cache(path) -> dict:
    """``evaluate --baseline-cache``: the scores kept by earlier runs (``{}`` when the file
    does not exist yet), checked before any work: a JSON object mapping keys to
    ``{"psnr": [numbers], "ssim": [numbers]}``, as ``evaluate_methods`` writes it. Anything
    else (not JSON, cut short, another file) is an ``OutputPathProblem``: the cache is
    rewritten at the end, so reading it blindly would either fail after the evaluation
    or replace a file that is not a cache."""
    p = check_output_file(path, option="--baseline-cache", overwrite=True)
    if not p.exists():
        return {}
    problem = "delete it (it is only a cache) or name another file"
    try:
        cache = json.loads(p.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, ValueError) as e:
        raise OutputPathProblem(f"--baseline-cache {p} is not a readable baseline cache ({e}); {problem}") from None

    def score(v) -> bool:
        return isinstance(v, list) and all(isinstance(x, (int, float)) and not isinstance(x, bool) for x in v)

    if not isinstance(cache, dict) or not all(isinstance(v, dict) and {"psnr", "ssim"} <= set(v)
                                              and score(v["psnr"]) and score(v["ssim"]) for v in cache.values()):
        raise OutputPathProblem(f"--baseline-cache {p} is JSON but not a baseline cache (expected an object of "
                                '{"psnr": [...], "ssim": [...]} entries); ' + problem)
    return cache


def _check_evaluate_paths(args, checkpoints: list[str]) -> dict | None:
    """Every path ``evaluate`` writes, before minutes of evaluation; the baseline cache."""
    from engine.io.paths import same_file

    if args.json:
        check_output_file(args.json, option="--json", overwrite=args.overwrite)
        for path in checkpoints + ([args.baseline_cache] if args.baseline_cache else []):
            if same_file(args.json, path):
                raise OutputPathProblem(f"--json {args.json} is {path}, which the evaluation reads; name another file")
    cache = None
    if args.baseline_cache:
        cache = read_baseline_cache(args.baseline_cache)
        for path in checkpoints:
            if same_file(args.baseline_cache, path):
                raise OutputPathProblem(f"--baseline-cache {args.baseline_cache} is the model {path}; "
                                        "name another file")
    return cache


def evaluate(args) -> int:
    from engine.inference.loop import use_draws
    from engine.io.atomic import atomic_path
    from engine.limits import DEFAULT_CHECKPOINT

    from .evaluate import evaluate_sid, format_table
    from .holdout_eval import evaluate_methods, format_results, holdout_clean, load_models, make_noisy_holdout
    from .options import check_holdout_size
    from .sid import SIDPairDataset

    named = [("model", args.checkpoint or str(DEFAULT_CHECKPOINT))] + list(args.compare or [])
    try:  # before minutes of evaluation
        cache = _check_evaluate_paths(args, [path for _, path in named])
        check_holdout_size(args.holdout, args.patch)
    except ValueError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    device = _resolve(args.device)
    steps = args.steps
    try:
        models = load_models(named)
    except (ValueError, OSError) as e:  # CheckpointError names the file and the reason
        print(f"error: cannot load the model: {e}", file=sys.stderr)
        return 2
    clean = holdout_clean(args.scenes, args.holdout, args.patch, args.seed)
    data = make_noisy_holdout(clean, args.ratios, noise_model=args.noise_model, camera=args.camera,
                              iso=args.iso if args.iso > 0 else None, seed=args.seed)
    baselines = [] if args.baselines == ["none"] else args.baselines
    progress = None if args.quiet else (lambda msg: print(msg, file=sys.stderr, flush=True))
    results = evaluate_methods(data, models, steps=steps, baselines=baselines, batch=args.batch, seed=args.seed,
                               device=device, stochastic=args.stochastic, progress=progress,
                               baseline_cache=cache, fidelity_scale=None if args.no_fidelity else args.fidelity_scale)
    if cache is not None:
        with atomic_path(args.baseline_cache, overwrite=True) as tmp, open(tmp, "w") as f:  # a cache: rewritten
            json.dump(cache, f)
    iso = f"ISO {args.iso:g}" if args.iso > 0 else "gain over the camera's range"
    print(f"{args.scenes} hold-out: {args.holdout} scenes of {args.patch}^2 packed pixels (seed {args.seed}), "
          f"{args.noise_model} noise of {args.camera} at {iso}; "
          + ", ".join(f"{name} = {path}" for name, path in named))
    print(format_results(results, per_image=not args.means_only))
    out = {"holdout": {str(r): t for r, t in results["ratios"].items()}, "notes": results["notes"],
           "settings": {"scenes": args.scenes, "n": args.holdout, "patch": args.patch, "seed": args.seed,
                        "fidelity_scale": None if args.no_fidelity else args.fidelity_scale,
                        "noise_model": args.noise_model, "camera": args.camera, "iso": args.iso,
                        "models": dict(named),
                        "photons": {name: "draws" if use_draws(args.stochastic, models[name][3]) else "means"
                                    for name, _ in named}}}
    if args.sid_root:
        model, config = models["model"][:2]  # loaded above
        draws = use_draws(args.stochastic, models["model"][3])
        pairs = SIDPairDataset(args.sid_root, args.sid_list, crop="center", patch=512)
        out["sid"] = {}
        for n in [v for v in steps if v != "auto"]:
            table = evaluate_sid(model, config, pairs, steps=n, camera=args.camera,
                                 correct_illuminance=args.illuminance_correction, device=device,
                                 progress=not args.quiet, stochastic=draws, schedule=models["model"][4])
            out["sid"][str(n)] = {str(r): m for r, m in table.items()}
            print(format_table(table, f"SID ({len(pairs)} pairs, centre 512 crop"
                                      f"{', illuminance-corrected' if args.illuminance_correction else ''}), {n} steps"))
    if args.json:
        with atomic_path(args.json, overwrite=args.overwrite) as tmp, open(tmp, "w") as f:
            json.dump(out, f, indent=1)
    return 0


def _resolve(device: str):
    from engine.argtypes import resolve_device

    return resolve_device(device)


def export(args) -> int:
    """Write a checkpoint's model as other programs read it: the public ExposureDiffusion
    format (``--public``, ``{'netG': ...}``), the backbone as ONNX (``--onnx``) and the whole
    means-mode loop as one ONNX graph (``--onnx-loop``, ``--steps``): ``engine.models.onnx_export``."""
    from engine.io.paths import same_file

    outputs = [(option, path) for option, path in (("--public", args.public), ("--onnx", args.onnx),
                                                   ("--onnx-loop", args.onnx_loop)) if path]
    try:  # before the checkpoint is read
        if not outputs:
            raise OutputPathProblem("nothing to write: give --public, --onnx and / or --onnx-loop")
        for option, path in outputs:
            check_output_file(path, option=option, overwrite=args.overwrite)
            if args.checkpoint and same_file(path, args.checkpoint):
                raise OutputPathProblem(f"{option} {path} is the checkpoint being exported; name another file")
        if len({str(path) for _, path in outputs}) < len(outputs):
            raise OutputPathProblem("two outputs name the same file")
    except OutputPathProblem as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    from engine.inference.pipeline import DEFAULT_CHECKPOINT, inference_settings
    from engine.models.checkpoint import export_public, load_checkpoint

    source = args.checkpoint or DEFAULT_CHECKPOINT
    try:
        model, config, meta = load_checkpoint(source)
        _, photons, schedule = inference_settings(meta, source)
    except (ValueError, OSError) as e:
        print(f"error: cannot load the model: {e}", file=sys.stderr)
        return 2
    if args.onnx_loop and photons != "means":
        print(f"error: --onnx-loop writes the loop with Poisson means between the steps, but {source} runs with "
              "draws (meta['photons'] is 'draws' or absent: SPEC's stochastic loop, which a graph cannot hold with "
              "the same results); export its backbone with --onnx instead", file=sys.stderr)
        return 2
    if args.public and config.concat_origin and not config.with_photon:  # 8 channels: reloads as a photon model
        print("error: an 8-channel origin-only model cannot be told apart from a photon model in the public "
              "format (it stores no options); keep our format", file=sys.stderr)
        return 1
    try:  # protect: checked again as the file takes its name; a full disk is a message, not a traceback
        if args.public:
            export_public(model, args.public, epoch=int(meta.get("epoch", 0)),
                          iterations=int(meta.get("global_step", 0)), overwrite=args.overwrite, protect=[source])
            print(f"wrote {args.public} (public format, {config.arch} {config.in_channels} -> "
                  f"{config.out_channels} channels)", file=sys.stderr)
        if args.onnx or args.onnx_loop:
            from engine.models.onnx_export import OPSET, export_backbone, export_loop
        if args.onnx:
            export_backbone(model, config, args.onnx)
            print(f"wrote {args.onnx} (ONNX opset {OPSET}, the backbone: input 'input' [N, {config.in_channels}, H, W], "
                  f"output 'output' [N, {config.out_channels}, H, W], H and W multiples of 16)", file=sys.stderr)
        if args.onnx_loop:
            export_loop(model, config, args.onnx_loop, steps=args.steps, schedule=schedule)
            print(f"wrote {args.onnx_loop} (ONNX opset {OPSET}, the {args.steps}-step loop with Poisson means on the "
                  f"{schedule} schedule: inputs "
                  "'raw' [N, 4, h, w] (packed R, G1, B, G2, (D - black) / (white - black)), 'ratio' [N], 'gain' [N] "
                  "(K, DN per photo-electron); output 'output' [N, 4, h, w] in [0, 1])", file=sys.stderr)
    except ImportError as e:
        print(f"error: ONNX export needs the onnx extra: pip install 'exposure-diffusion[onnx]' ({e})",
              file=sys.stderr)
        return 1
    except (OSError, ValueError) as e:  # engine.io.atomic.DiskFullError, OutputPathError
        print(f"error: {e}", file=sys.stderr)
        return 1
    return 0


def add_training_commands(sub) -> None:
    """Register ``train``, ``evaluate`` and ``export``. Every numeric option is checked while
    parsing (``training.options`` / ``engine.argtypes``): a bad value stops with exit status 2
    and a message naming the option, before anything is loaded."""
    from engine.argtypes import (
        add_photon_options,
        camera_arg,
        device_arg,
        integer_arg,
        noise_model_arg,
        real_arg,
        steps_or_auto_arg,
    )
    from engine.limits import MAX_RATIO, MAX_STEPS

    from .options import (
        ILLUMINATIONS,
        INNER_EXPOSURES,
        MAX_BATCH,
        MAX_EPOCHS,
        MAX_ITERS_PER_EPOCH,
        MAX_LR,
        MAX_PATCH,
        MAX_SAMPLES_PER_EPOCH,
        option_arg,
        ratio_range_arg,
    )

    t = sub.add_parser("train", help="train a backbone (built-in synthetic data unless a dataset is given)")
    t.add_argument("--out", required=True,
                   help="run folder: checkpoints (last.pt, model.pt) and log.jsonl; the same command again resumes "
                        "the run it holds (Ctrl-C / SIGTERM stop a run after the current step with a checkpoint)")
    t.add_argument("--restart", action="store_true",
                   help="start over even if --out holds a run: its last.pt, model.pt and log.jsonl are first moved "
                        "into --out/previous-N/ (nothing is deleted); needed when last.pt is unreadable")
    t.add_argument("--sid-root", default=None, help="SID dataset root (Sony/long, Sony/short)")
    t.add_argument("--sid-list", default=None, help="SID list file (default: every file in Sony/long)")
    t.add_argument("--srgb-folder", default=None, help="a folder of sRGB photos turned into raw")
    t.add_argument("--raw-folder", default=None,
                   help="a folder of your own clean raws (low ISO, any format LibRaw reads) as ground truth; the "
                        "noise comes from --camera (your calibrated profile, exposure-diffusion calibrate)")
    t.add_argument("--deadleaves-bank", default=None,
                   help="dead-leaves scenes from this bank (.npy of training.deadleaves_scenes.render_bank)")
    t.add_argument("--textured-bank", default=None,
                   help="textured-leaves scenes from this bank (.npy of python -m training.textured_leaves)")
    t.add_argument("--illumination", default="frame", choices=ILLUMINATIONS,
                   help="how the dead- and textured-leaves scenes are lit: 'frame' (default), each scene a whole "
                        "frame under a smooth field ~17x across it; 'crop', each a sensor-resolution crop of a frame "
                        "up to 6000 pixels wide, seeing only its part of that frame's field")
    t.add_argument("--procedural", action="store_true", help="add procedural scenes to a dataset given above")
    t.add_argument("--cache", default="memory", choices=("memory", "disk", "none"),
                   help="SID long-exposure cache (default memory)")
    t.add_argument("--cache-dir", default=None, help="folder of the on-disk cache (with --cache disk)")
    t.add_argument("--arch", default="unet", choices=("unet", "nafnet"), help="backbone (default unet)")
    t.add_argument("--widths", type=integer_arg(1, 4096), nargs=5, default=None, metavar="W",
                   help="UNet level widths, each 1..4096 (default 32 64 128 256 512)")
    t.add_argument("--no-photon", action="store_true", help="no photon channel in the network input")
    t.add_argument("--concat-origin", action="store_true", help="concatenate the noisy input to every step's input")
    t.add_argument("--steps", type=option_arg("steps"), default=3,
                   help=f"unrolled exposure steps, 1..{MAX_STEPS} (default 3; 1 = one-shot baseline)")
    t.add_argument("--fixed-weights", action="store_true", help="equal, fixed step weights instead of learnable ones")
    t.add_argument("--noise-model", default="P+G+r+u", type=noise_model_arg,
                   help="ELD components joined by '+', e.g. P+g or P+G+r+u (default)")
    t.add_argument("--camera", action="append", default=None, type=camera_arg,
                   help="camera noise profile: a shipped name or a JSON file (repeatable; default: all shipped)")
    t.add_argument("--ratio-range", type=ratio_range_arg(), nargs=2, default=None, metavar=("LOW", "HIGH"),
                   help=f"exposure ratio range, 1 < LOW <= HIGH <= {MAX_RATIO:g} (default 100 300); LOW must leave "
                        f"steps - 1 integer multiples in [2, LOW - 1]")
    t.add_argument("--mean-loss", type=real_arg(0), default=0.0,
                   help="weight >= 0 of the local-mean (brightness) term of each step's loss (default 0: SPEC as "
                        "written; the shipped model used it, see engine/data/README.md)")
    t.add_argument("--mean-pool", type=integer_arg(1, 512), default=8,
                   help="block side of the local-mean term, in packed pixels, 1..512 (default 8)")
    t.add_argument("--detach-states", action="store_true",
                   help="no gradient between the unrolled steps: each network evaluation is trained by its own "
                        "step's loss only (default: SPEC, straight through every step; training/objective.py)")
    t.add_argument("--mean-photons", action="store_true",
                   help="the unrolled steps add the Poisson means instead of draws; the model records it "
                        "(meta['photons']) and runs with means by default (default: SPEC, draws)")
    t.add_argument("--anchor-states", action="store_true",
                   help="bring every intermediate estimate to the noisy input's local means (the engine's fidelity "
                        "step) before the next state is made from it; training only, the model runs in the "
                        "ordinary loop (needs --steps >= 2; training/objective.py)")
    t.add_argument("--inner-exposures", choices=INNER_EXPOSURES, default="random",
                   help="the unrolled steps' exposure multiples: random distinct integers in [2, r - 1] (default, "
                        "SPEC) or an inference schedule, linspace(1, r, steps + 1) or geometric r ** (i / steps), "
                        "which the model records (meta['schedule']) and runs with by default")
    t.add_argument("--step-weights", type=float, nargs="+", default=None, metavar="W",
                   help="fixed loss weights of the unrolled steps, one per step, >= 0, normalised to sum 1 (e.g. "
                        "0.2 0.3 0.5: more on the last step, the output a multi-step run returns; default: "
                        "learnable, or equal with --fixed-weights)")
    t.add_argument("--init", default=None, help="start from this engine checkpoint's weights (fine-tuning)")
    t.add_argument("--origin-share", type=float, default=0.0, metavar="S",
                   help="with --init and --concat-origin from a checkpoint without the origin: its columns start "
                        "as S times the state's and the state keeps 1 - S (the first step's function unchanged; "
                        "default 0: zeros; training/init_weights.py)")
    t.add_argument("--continuous", action="store_true", help="continuous ratio range U(20, 300)")
    t.add_argument("--patch", type=option_arg("patch"), default=512,
                   help=f"packed patch side, a multiple of 16 in 16..{MAX_PATCH} (default 512)")
    t.add_argument("--batch", type=option_arg("batch"), default=1,
                   help=f"global batch size, 1..{MAX_BATCH}, a multiple of processes x --accumulate (default 1)")
    t.add_argument("--accumulate", type=option_arg("accumulate"), default=1,
                   help=f"micro-batches accumulated per step (per process), 1..{MAX_BATCH} (default 1)")
    t.add_argument("--epochs", type=option_arg("epochs"), default=300,
                   help=f"epochs, 1..{MAX_EPOCHS} (default 300, the paper's recipe: sized for a GPU, days to weeks "
                        "on a CPU; the run states its expected time after its first steps)")
    t.add_argument("--iters-per-epoch", type=option_arg("iters_per_epoch"), default=None,
                   help=f"optimiser steps per epoch, 1..{MAX_ITERS_PER_EPOCH}, at most "
                        f"{MAX_SAMPLES_PER_EPOCH:.0e} samples with --batch (default: dataset size / batch)")
    t.add_argument("--max-steps", type=integer_arg(1), default=None,
                   help="stop after this many more optimiser steps, >= 1 (the run resumes later)")
    t.add_argument("--lr", type=option_arg("lr"), default=1e-4,
                   help=f"Adam learning rate, in (0, {MAX_LR:g}] (default 1e-4)")
    t.add_argument("--clip-grad", type=option_arg("clip_grad"), default=None,
                   help="clip the gradient norm to this value > 0 (default: no clipping)")
    t.add_argument("--amp", default=None, choices=("bf16", "fp16"), help="mixed precision (default: fp32)")
    t.add_argument("--compile", action="store_true", help="torch.compile the backbone")
    t.add_argument("--seed", type=option_arg("seed"), default=0,
                   help="seed of weights, data order and noise, an integer in [0, 2**64 - 1] (default 0)")
    t.add_argument("--save-every", type=option_arg("save_every"), default=200,
                   help="checkpoint every N optimiser steps, N >= 1 (default 200); a stop by Ctrl-C / SIGTERM "
                        "also saves one")
    t.add_argument("--log-every", type=option_arg("log_every"), default=20,
                   help="append to log.jsonl every N optimiser steps, N >= 1 (default 20)")
    t.add_argument("--eval-every", type=integer_arg(0), default=0,
                   help="evaluate on 8 hold-out patches every N steps (default 0: never)")
    t.add_argument("--device", default="auto", type=device_arg, help="auto (default), cpu, cuda or cuda:N")
    t.add_argument("-q", "--quiet", action="store_true", help="no progress bar")
    t.set_defaults(func=train)

    e = sub.add_parser("evaluate", help="the model beside the noisy input, wavelet and BM3D on a hold-out set "
                                        "(and, optionally, SID pairs)")
    e.add_argument("--checkpoint", default=None,
                   help="model checkpoint (ours or the public {'netG': ...} format; default: the shipped model)")
    e.add_argument("--compare", action="append", default=None, metavar="NAME=CHECKPOINT", type=_compare_arg,
                   help="another model evaluated on the same inputs (repeatable), e.g. onestep=runs/onestep/model.pt")
    e.add_argument("--ratios", type=real_arg(1.0, MAX_RATIO, low_open=True), nargs="+", default=[100, 300],
                   help=f"exposure ratios to evaluate, each in (1, {MAX_RATIO:g}] (default 100 300)")
    e.add_argument("--steps", nargs="+", type=steps_or_auto_arg(MAX_STEPS), default=[1, 2, 3, 5],
                   help=f"step counts of each model, 1..{MAX_STEPS} or 'auto' (engine.inference.adaptive) "
                        "(default 1 2 3 5)")
    e.add_argument("--scenes", default="photo", choices=("photo", "procedural", "textured", "skimage"),
                   help="hold-out scenes: photograph-like (training.holdout, default), procedural, textured leaves "
                        "(training.textured_leaves, images no training bank holds), or scikit-image's photographs "
                        "unprocessed to raw (at most 6; evaluation only)")
    e.add_argument("--holdout", type=integer_arg(1), default=16,
                   help="hold-out scenes, >= 1, at most 4 GiB of them in memory (default 16)")
    e.add_argument("--patch", type=integer_arg(16, MAX_PATCH, multiple=16), default=192,
                   help=f"hold-out scene side in packed pixels, a multiple of 16 in 16..{MAX_PATCH} (default 192)")
    e.add_argument("--seed", type=integer_arg(0, 2**32 - 1), default=0,
                   help="seed of the hold-out scenes and their noise (default 0)")
    e.add_argument("--noise-model", default="P+G+r+u", type=noise_model_arg,
                   help="ELD noise of the hold-out, e.g. P+g or P+G+r+u (default)")
    e.add_argument("--camera", default="SonyA7S2", type=camera_arg,
                   help="camera profile of the hold-out noise / SID gains (default SonyA7S2)")
    e.add_argument("--iso", type=real_arg(0), default=3200,
                   help="ISO of the hold-out noise (default 3200; 0: gains over the camera's range)")
    e.add_argument("--baselines", nargs="+", default=["wavelet", "bm3d"], choices=("wavelet", "bm3d", "none"),
                   help="classical denoisers run beside the models (default wavelet bm3d; 'none': skip)")
    e.add_argument("--baseline-cache", default=None,
                   help="JSON file keeping baseline scores between runs (created if missing, checked before the "
                        "evaluation)")
    add_photon_options(e, scope="in every model's steps")
    e.add_argument("--batch", type=integer_arg(1, 4096), default=4, help="frames per network call (default 4)")
    e.add_argument("--means-only", action="store_true", help="no per-image table")
    e.add_argument("--fidelity-scale", type=integer_arg(2, 4096), default=32,
                   help="the models' outputs go through the engine's low-frequency fidelity step at this scale in "
                        "packed pixels, as Pipeline runs them (default 32)")
    e.add_argument("--no-fidelity", action="store_true", help="score the loop's raw estimate (no fidelity step)")
    e.add_argument("--sid-root", default=None, help="SID dataset root: also evaluate on its test pairs")
    e.add_argument("--sid-list", default=None, help="SID list file of the pairs (default: every pair found)")
    e.add_argument("--illuminance-correction", action="store_true",
                   help="with --sid-root: apply the SID protocol's ground-truth rescaling to the SID pairs' scores "
                        "(the hold-out tables always apply it)")
    e.add_argument("--json", default=None,
                   help="also write the tables as JSON to this file (its folder must exist; checked before the "
                        "evaluation)")
    e.add_argument("--overwrite", action="store_true", help="replace an existing --json file (default: refuse)")
    e.add_argument("--device", default="auto", type=device_arg, help="auto (default), cpu, cuda or cuda:N")
    e.add_argument("-q", "--quiet", action="store_true", help="no progress bar")
    e.set_defaults(func=evaluate)

    x = sub.add_parser("export", help="write a model in the public ExposureDiffusion format ({'netG': ...}) and / or "
                                      "as ONNX graphs (the backbone; the whole means-mode loop)")
    x.add_argument("--checkpoint", help="the model: our format or the public one (default: the shipped model)")
    x.add_argument("--public", help="write the public-format file here")
    x.add_argument("--onnx", help="write the backbone as ONNX here (fp32, opset 17; input 'input' [N, C, H, W], "
                                  "output 'output', N, H, W dynamic)")
    x.add_argument("--onnx-loop", help="write the whole loop of a means-mode model (the shipped one) as one ONNX graph "
                                       "here: packed raw, ratio and gain in, the enhanced packed raw out")
    x.add_argument("--steps", type=integer_arg(1, MAX_STEPS), default=3,
                   help="network evaluations in the --onnx-loop graph (default 3)")
    x.add_argument("--overwrite", action="store_true", help="replace existing output files (default: refuse)")
    x.set_defaults(func=export)


def main(argv=None) -> int:
    """The installed program: the engine's commands plus ``train`` and ``evaluate``."""
    from engine.cli import main as engine_main

    return engine_main(argv, add_training_commands)


if __name__ == "__main__":
    sys.exit(main())
