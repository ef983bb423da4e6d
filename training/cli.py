"""The ``exposure-diffusion`` program: the engine's commands plus ``train`` and ``evaluate``.

    exposure-diffusion train --out runs/ed --epochs 300            # built-in synthetic data
    exposure-diffusion train --sid-root /data/SID --sid-list Sony_train_list.txt --out runs/sid
    torchrun --nproc_per_node 4 -m training train --sid-root /data/SID --out runs/sid
    exposure-diffusion evaluate --checkpoint runs/ed/model.pt --ratios 100 300
    exposure-diffusion enhance *.ARW --ratio 100 --checkpoint runs/ed/model.pt -o out/
"""
from __future__ import annotations

import json
import os
import sys

import torch
import torch.distributed as dist


def _device(value: str) -> torch.device:
    if value == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(value)


def _distributed_setup(device_arg: str) -> torch.device:
    """Under torchrun (WORLD_SIZE > 1): join the process group, return this rank's device."""
    if int(os.environ.get("WORLD_SIZE", "1")) <= 1:
        return _device(device_arg)
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    use_cuda = torch.cuda.is_available() and device_arg != "cpu"
    dist.init_process_group("nccl" if use_cuda else "gloo")
    if use_cuda:
        torch.cuda.set_device(local_rank)
        return torch.device("cuda", local_rank)
    return torch.device("cpu")


def train(args) -> int:
    from .data import build_training_dataset
    from .evaluate import evaluate_synthetic, format_table
    from .trainer import TrainConfig, Trainer

    device = _distributed_setup(args.device)
    try:
        cfg = TrainConfig(
            arch=args.arch, widths=tuple(args.widths) if args.widths else None, with_photon=not args.no_photon,
            concat_origin=args.concat_origin, steps=args.steps, learnable_weights=not args.fixed_weights,
            noise_model=args.noise_model, cameras=tuple(args.camera) if args.camera else None,
            ratio_range=tuple(args.ratio_range) if args.ratio_range else None, continuous=args.continuous,
            patch=args.patch, batch=args.batch, accumulate=args.accumulate, epochs=args.epochs,
            iters_per_epoch=args.iters_per_epoch, lr=args.lr, clip_grad=args.clip_grad, amp=args.amp,
            compile=args.compile, seed=args.seed, save_every=args.save_every, log_every=args.log_every,
            mean_weight=args.mean_loss, mean_pool=args.mean_pool, init=args.init)
        dataset = build_training_dataset(sid_root=args.sid_root, sid_list=args.sid_list, srgb_folder=args.srgb_folder,
                                         deadleaves_bank=args.deadleaves_bank,
                                         procedural=not (args.sid_root or args.srgb_folder or args.deadleaves_bank)
                                         or args.procedural,
                                         patch=args.patch, cache=None if args.cache == "none" else args.cache,
                                         cache_dir=args.cache_dir, seed=args.seed)
        trainer = Trainer(cfg, dataset, args.out, device=device, progress=not args.quiet)
        if trainer.resume():
            print(f"resumed from {args.out}/last.pt at epoch {trainer.epoch}, step {trainer.global_step}", file=sys.stderr)

        def on_log(rec):
            if args.eval_every and rec["global_step"] % args.eval_every == 0:
                table = evaluate_synthetic(trainer.model, trainer.backbone_config, steps=cfg.steps, n=8, patch=128,
                                           device=device)
                trainer.model.train()
                print(format_table(table, f"step {rec['global_step']}: synthetic hold-out (8 patches)"), file=sys.stderr)

        trainer.fit(max_steps=args.max_steps, on_log=on_log)
    finally:
        if dist.is_initialized():
            dist.destroy_process_group()
    return 0


def _steps_list(values) -> list:
    """``--steps`` values: integers >= 1 or "auto"."""
    out = []
    for v in values:
        if v == "auto":
            out.append(v)
            continue
        try:
            n = int(v)
        except ValueError:
            n = 0
        if n < 1:
            raise SystemExit(f"error: --steps takes integers >= 1 or 'auto', got {v!r}")
        out.append(n)
    return out


def evaluate(args) -> int:
    from engine.io.atomic import atomic_path
    from engine.models.checkpoint import load_checkpoint

    from .evaluate import evaluate_sid, format_table
    from .holdout_eval import evaluate_methods, format_results, holdout_clean, load_models, make_noisy_holdout
    from .sid import SIDPairDataset

    device = _device(args.device)
    steps = _steps_list(args.steps)
    named = [("model", args.checkpoint)]
    for spec in args.compare or []:
        name, sep, path = spec.partition("=")
        if not sep or not name or not path:
            raise SystemExit(f"error: --compare takes NAME=CHECKPOINT, got {spec!r}")
        named.append((name, path))
    models = load_models(named)
    clean = holdout_clean(args.scenes, args.holdout, args.patch, args.seed)
    data = make_noisy_holdout(clean, args.ratios, noise_model=args.noise_model, camera=args.camera,
                              iso=args.iso if args.iso > 0 else None, seed=args.seed)
    cache = None
    if args.baseline_cache:
        cache = json.loads(open(args.baseline_cache).read()) if os.path.isfile(args.baseline_cache) else {}
    baselines = [] if args.baselines == ["none"] else args.baselines
    progress = None if args.quiet else (lambda msg: print(msg, file=sys.stderr, flush=True))
    results = evaluate_methods(data, models, steps=steps, baselines=baselines, batch=args.batch, seed=args.seed,
                               device=device, stochastic=not args.deterministic, progress=progress,
                               baseline_cache=cache)
    if cache is not None:
        with atomic_path(args.baseline_cache) as tmp, open(tmp, "w") as f:
            json.dump(cache, f)
    iso = f"ISO {args.iso:g}" if args.iso > 0 else "gain over the camera's range"
    print(f"{args.scenes} hold-out: {args.holdout} scenes of {args.patch}^2 packed pixels (seed {args.seed}), "
          f"{args.noise_model} noise of {args.camera} at {iso}; "
          + ", ".join(f"{name} = {path}" for name, path in named))
    print(format_results(results, per_image=not args.means_only))
    out = {"holdout": {str(r): t for r, t in results["ratios"].items()}, "notes": results["notes"],
           "settings": {"scenes": args.scenes, "n": args.holdout, "patch": args.patch, "seed": args.seed,
                        "noise_model": args.noise_model, "camera": args.camera, "iso": args.iso,
                        "models": dict(named), "stochastic": not args.deterministic}}
    if args.sid_root:
        model, config, _ = load_checkpoint(args.checkpoint)
        pairs = SIDPairDataset(args.sid_root, args.sid_list, crop="center", patch=512)
        out["sid"] = {}
        for n in [v for v in steps if v != "auto"]:
            table = evaluate_sid(model, config, pairs, steps=n, camera=args.camera,
                                 correct_illuminance=args.illuminance_correction, device=device,
                                 progress=not args.quiet)
            out["sid"][str(n)] = {str(r): m for r, m in table.items()}
            print(format_table(table, f"SID ({len(pairs)} pairs, centre 512 crop"
                                      f"{', illuminance-corrected' if args.illuminance_correction else ''}), {n} steps"))
    if args.json:
        with atomic_path(args.json) as tmp, open(tmp, "w") as f:
            json.dump(out, f, indent=1)
    return 0


def export(args) -> int:
    """Write a checkpoint's model in the public ExposureDiffusion format ({'netG': ...})."""
    from engine.models.checkpoint import export_public, load_checkpoint

    model, config, meta = load_checkpoint(args.checkpoint)
    if config.concat_origin and not config.with_photon:  # 8 channels: reloads as a photon model
        print("error: an 8-channel origin-only model cannot be told apart from a photon model in the public "
              "format (it stores no options); keep our format", file=sys.stderr)
        return 1
    export_public(model, args.public, epoch=int(meta.get("epoch", 0)), iterations=int(meta.get("global_step", 0)))
    print(f"wrote {args.public} (public format, {config.arch} {config.in_channels} -> {config.out_channels} channels)",
          file=sys.stderr)
    return 0


def add_training_commands(sub) -> None:
    t = sub.add_parser("train", help="train a backbone (built-in synthetic data unless a dataset is given)")
    t.add_argument("--out", required=True, help="run folder: checkpoints (last.pt, model.pt) and log.jsonl")
    t.add_argument("--sid-root", default=None, help="SID dataset root (Sony/long, Sony/short)")
    t.add_argument("--sid-list", default=None, help="SID list file (default: every file in Sony/long)")
    t.add_argument("--srgb-folder", default=None, help="a folder of sRGB photos turned into raw")
    t.add_argument("--deadleaves-bank", default=None,
                   help="dead-leaves scenes from this bank (.npy of training.deadleaves_scenes.render_bank)")
    t.add_argument("--procedural", action="store_true", help="add procedural scenes to a dataset given above")
    t.add_argument("--cache", default="memory", choices=("memory", "disk", "none"), help="SID long-exposure cache")
    t.add_argument("--cache-dir", default=None, help="folder of the on-disk cache")
    t.add_argument("--arch", default="unet", choices=("unet", "nafnet"))
    t.add_argument("--widths", type=int, nargs=5, default=None, help="UNet widths (default 32 64 128 256 512)")
    t.add_argument("--no-photon", action="store_true", help="no photon channel in the network input")
    t.add_argument("--concat-origin", action="store_true", help="concatenate the noisy input to every step's input")
    t.add_argument("--steps", type=int, default=3, help="unrolled exposure steps (1 = one-shot baseline)")
    t.add_argument("--fixed-weights", action="store_true", help="equal, fixed step weights instead of learnable ones")
    t.add_argument("--mean-loss", type=float, default=0.0,
                   help="weight of the local-mean (brightness) term of each step's loss (0: SPEC as written)")
    t.add_argument("--mean-pool", type=int, default=8, help="block side of the local-mean term (packed pixels)")
    t.add_argument("--init", default=None, help="start from this engine checkpoint's weights (fine-tuning)")
    t.add_argument("--noise-model", default="P+G+r+u", help="ELD components, e.g. P+g or P+G+r+u")
    t.add_argument("--camera", action="append", default=None, help="camera profile (name or JSON; repeatable)")
    t.add_argument("--ratio-range", type=float, nargs=2, default=None, help="exposure ratio range (default 100 300)")
    t.add_argument("--continuous", action="store_true", help="continuous ratio range U(20, 300)")
    t.add_argument("--patch", type=int, default=512, help="packed patch side")
    t.add_argument("--batch", type=int, default=1, help="global batch size")
    t.add_argument("--accumulate", type=int, default=1, help="micro-batches accumulated per step (per process)")
    t.add_argument("--epochs", type=int, default=300)
    t.add_argument("--iters-per-epoch", type=int, default=None, help="default: dataset size / batch")
    t.add_argument("--max-steps", type=int, default=None, help="stop after this many optimiser steps (resumable)")
    t.add_argument("--lr", type=float, default=1e-4)
    t.add_argument("--clip-grad", type=float, default=None, help="clip the gradient norm")
    t.add_argument("--amp", default=None, choices=("bf16", "fp16"), help="mixed precision")
    t.add_argument("--compile", action="store_true", help="torch.compile the backbone")
    t.add_argument("--seed", type=int, default=0)
    t.add_argument("--save-every", type=int, default=200, help="checkpoint every N steps")
    t.add_argument("--log-every", type=int, default=20, help="log every N steps")
    t.add_argument("--eval-every", type=int, default=0, help="evaluate on 8 hold-out patches every N steps")
    t.add_argument("--device", default="auto")
    t.add_argument("-q", "--quiet", action="store_true")
    t.set_defaults(func=train)

    e = sub.add_parser("evaluate", help="the model beside the noisy input, wavelet and BM3D on a hold-out set "
                                        "(and, optionally, SID pairs)")
    e.add_argument("--checkpoint", required=True)
    e.add_argument("--compare", action="append", default=None, metavar="NAME=CHECKPOINT",
                   help="another model evaluated on the same inputs (repeatable), e.g. onestep=runs/onestep/model.pt")
    e.add_argument("--ratios", type=float, nargs="+", default=[100, 300])
    e.add_argument("--steps", nargs="+", default=["1", "2", "3", "5"],
                   help="step counts of each model (integers, or 'auto': engine.inference.adaptive)")
    e.add_argument("--scenes", default="photo", choices=("photo", "procedural", "skimage"),
                   help="hold-out scenes: photograph-like (training.holdout), procedural, or scikit-image's "
                        "photographs unprocessed to raw (at most 6; evaluation only)")
    e.add_argument("--holdout", type=int, default=16, help="hold-out scenes")
    e.add_argument("--patch", type=int, default=192, help="hold-out scene side (packed pixels)")
    e.add_argument("--seed", type=int, default=0, help="seed of the hold-out scenes and their noise")
    e.add_argument("--noise-model", default="P+G+r+u")
    e.add_argument("--camera", default="SonyA7S2", help="camera profile of the hold-out noise / SID gains")
    e.add_argument("--iso", type=float, default=3200, help="ISO of the hold-out noise (0: gain over the camera's range)")
    e.add_argument("--baselines", nargs="+", default=["wavelet", "bm3d"], choices=("wavelet", "bm3d", "none"),
                   help="classical denoisers to run beside the models ('none': skip)")
    e.add_argument("--baseline-cache", default=None, help="JSON file keeping baseline scores between runs")
    e.add_argument("--deterministic", action="store_true", help="Poisson means instead of draws in the steps")
    e.add_argument("--batch", type=int, default=4, help="frames per network call")
    e.add_argument("--means-only", action="store_true", help="no per-image table")
    e.add_argument("--sid-root", default=None)
    e.add_argument("--sid-list", default=None)
    e.add_argument("--illuminance-correction", action="store_true", help="SID protocol's ground-truth rescaling")
    e.add_argument("--json", default=None, help="also write the tables as JSON")
    e.add_argument("--device", default="auto")
    e.add_argument("-q", "--quiet", action="store_true")
    e.set_defaults(func=evaluate)

    x = sub.add_parser("export", help="write a checkpoint in the public ExposureDiffusion format ({'netG': ...})")
    x.add_argument("--checkpoint", required=True, help="our-format checkpoint (e.g. runs/ed/model.pt)")
    x.add_argument("--public", required=True, help="output path of the public-format file")
    x.set_defaults(func=export)


def main(argv=None) -> int:
    """The installed program: the engine's commands plus ``train`` and ``evaluate``."""
    from engine.cli import main as engine_main

    return engine_main(argv, add_training_commands)


if __name__ == "__main__":
    sys.exit(main())
