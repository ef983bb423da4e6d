"""One timed training call on a GPU (issue 14): the CPU recipe at GPU scale, inside one device call.

    python training/recipes/gpu_train.py --out $OUT/run --seconds 420 \
        --init engine/data/default_model.pt --bank deadleaves_bank_256.npy

1. Clean scenes are rendered up front by CPU worker processes into one uint16 pool (the
   trainer draws its samples in-process, which a GPU step of ~60 ms would wait on): half
   procedural scenes (``training.synthetic.procedural_scene``), half finished dead-leaves
   scenes from ``--bank`` (``training.deadleaves_scenes``; without a bank, all procedural);
   with ``--textured`` a third each of procedural, dead-leaves (with a bank) and
   textured-leaves scenes (``training.textured_leaves``, rendered by the workers at
   ``2 x --patch`` pixels, about 1.5 CPU seconds each at the default patch, some 2 minutes of
   the budget for 4000 scenes on 14 workers; no bank to carry). ``--illumination crop`` lights
   both leaves families as crops of larger frames (``train --illumination``; default ``frame``).
   Scene ``i`` is a pure function of ``(--seed, i)``.
2. The production ``training.Trainer`` (device synthesis, unrolled steps, exact resume) runs
   the issue-14 recipe of the shipped model (fixed equal step weights, the local-mean term,
   3 steps, Poisson means between them on the inference schedule, bf16) from
   ``--init`` on the pool (flips and transposes on the device), until
   ``--seconds`` of wall time (the pool's time included) or ``--total-steps``; the learning
   rate halves at 50% and drops to 1/10 at 90% of ``--total-steps`` (default: as many steps
   as the budget allows, from a 20-step speed probe, so the schedule completes in the call).
3. ``<out>/model_fp16.pt`` (the engine's format, weights stored as float16, ~15.5 MB: small
   enough to come back through the device tool) and ``<out>/last.pt`` (full state; resumes)
   are written, with ``log.jsonl`` and ``summary.json`` (steps, seconds, ms per step).

Run again with the same ``--out`` to continue a stopped run exactly.
"""
from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import shutil
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from engine.argtypes import device_arg, integer_arg, real_arg, resolve_device  # noqa: E402
from engine.inference.loop import PHOTON_MODES  # noqa: E402
from engine.models.checkpoint import load_checkpoint, save_checkpoint  # noqa: E402
from training.options import ILLUMINATIONS, INNER_EXPOSURES  # noqa: E402
from training.patches import DEFAULT_BLACK, DEFAULT_WHITE, sample_rng, to_dn, torch_generator  # noqa: E402
from training.trainer import TrainConfig, Trainer  # noqa: E402

_TAG_POOL = 210  # a SeedSequence stream of its own (training's tags are 101..107, 201..209, 301)
_BANK = None


def _init_worker(bank_path):
    global _BANK
    torch.set_num_threads(1)
    _BANK = np.load(bank_path, mmap_mode="r") if bank_path else None


def _family(i: int, textured: bool) -> str:
    """Which family scene ``i`` of the pool comes from (see the module docstring)."""
    kinds = (["procedural"] + (["deadleaves"] if _BANK is not None else []) + (["textured"] if textured else []))
    return kinds[i % len(kinds)]


def _render(job) -> np.ndarray:
    """Scene ``i`` of the pool: uint16 DN ``[4, p, p]``."""
    i, patch, seed, textured, illumination = job
    g = torch_generator(sample_rng(seed, _TAG_POOL, i))
    family = _family(i, textured)
    if family == "deadleaves":
        from training.deadleaves_scenes import finish_scene

        k = int(torch.randint(0, len(_BANK), (1,), generator=g))
        x = finish_scene(torch.from_numpy(np.array(_BANK[k])), g, patch, illumination)
    elif family == "textured":
        from training.deadleaves_scenes import finish_scene
        from training.textured_leaves import render_textured_leaves

        image = render_textured_leaves(int(torch.randint(0, 2**62, (1,), generator=g)), 2 * patch)
        x = finish_scene(torch.from_numpy(image), g, patch, illumination)
    else:
        from training.synthetic import procedural_scene

        x = procedural_scene(g, patch)
    return to_dn(x).numpy()


class PoolPatches:
    """A Trainer dataset over a pre-rendered uint16 pool ``[N, 4, p, p]``."""

    def __init__(self, raw: torch.Tensor):
        self.raw = raw

    def __len__(self) -> int:
        return len(self.raw)

    def __getitem__(self, key) -> dict:
        i = int(key[1] if isinstance(key, tuple) else key) % len(self.raw)
        return {"raw": self.raw[i], "black": torch.full((4,), DEFAULT_BLACK), "white": DEFAULT_WHITE, "index": i,
                "source": "pool"}


def render_pool(n: int, patch: int, seed: int, bank: str | None, workers: int, textured: bool = False,
                illumination: str = "frame") -> torch.Tensor:
    """The pool: uint16 DN ``[n, 4, patch, patch]``, scene ``i`` a pure function of ``(seed, i)``
    (and ``illumination``, ``"frame"`` or ``"crop"``: ``training.deadleaves_scenes._light_field``)."""
    jobs = [(i, patch, seed, textured, illumination) for i in range(n)]
    ctx = mp.get_context("fork")
    with ctx.Pool(workers, initializer=_init_worker, initargs=(bank,)) as pool:
        scenes = pool.map(_render, jobs, chunksize=8)
    return torch.from_numpy(np.stack(scenes))


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", required=True, help="run folder (resumed when it holds a last.pt)")
    ap.add_argument("--seconds", type=real_arg(0, low_open=True), default=420,
                    help="wall-clock budget from the start (pool, probe and training; saving comes after)")
    ap.add_argument("--init", default=None, help="engine checkpoint to start from")
    ap.add_argument("--bank", default=None, help="dead-leaves bank (.npy); none: procedural scenes only")
    ap.add_argument("--textured", action="store_true",
                    help="textured-leaves scenes too (training.textured_leaves): a third of the pool")
    ap.add_argument("--illumination", default="frame", choices=ILLUMINATIONS,
                    help="how the leaves scenes are lit (as train --illumination; default frame)")
    ap.add_argument("--scenes", type=integer_arg(1, 100000), default=4000,
                    help="clean scenes in the pool, 1..100000 (default 4000)")
    ap.add_argument("--patch", type=integer_arg(16, 1024, multiple=16), default=256,
                    help="packed patch side, a multiple of 16 in 16..1024 (default 256)")
    ap.add_argument("--batch", type=integer_arg(1, 4096), default=8, help="patches per step, 1..4096 (default 8)")
    ap.add_argument("--steps", type=integer_arg(1, 100), default=3, help="unrolled exposure steps, 1..100 (default 3)")
    ap.add_argument("--total-steps", type=integer_arg(0), default=0,
                    help="length of the LR schedule; 0: as many steps as --seconds allow, from a 20-step speed probe")
    ap.add_argument("--lr", type=real_arg(0, 1, low_open=True), default=1e-4,
                    help="Adam learning rate, in (0, 1] (default 1e-4)")
    ap.add_argument("--mean-loss", type=real_arg(0), default=2.0,
                    help="weight >= 0 of the local-mean (brightness) term (default 2)")
    ap.add_argument("--photons", choices=PHOTON_MODES, default="means",
                    help="between the unrolled steps: Poisson means (default; the shipped model's recipe, "
                         "train --mean-photons) or draws (SPEC)")
    ap.add_argument("--inner-exposures", choices=INNER_EXPOSURES, default="linspace",
                    help="the unrolled steps' exposure multiples: the inference schedule (default; the shipped "
                         "model's recipe) or random integers in [2, r - 1] (SPEC)")
    ap.add_argument("--anchor-states", action="store_true",
                    help="every intermediate estimate brought to the data's local means before the next state "
                         "(as train --anchor-states)")
    ap.add_argument("--amp", default="bf16", choices=("bf16", "fp16", "none"), help="autocast dtype (default bf16)")
    ap.add_argument("--workers", type=integer_arg(1, 1024), default=max(1, (mp.cpu_count() or 2) - 2),
                    help="CPU processes rendering the pool (default: cores - 2)")
    ap.add_argument("--seed", type=integer_arg(0, 2**63 - 1), default=0, help="seed of the pool and the run")
    ap.add_argument("--device", type=device_arg, default="cuda" if torch.cuda.is_available() else "cpu",
                    help="cuda (default where available), cuda:N, cpu or auto")
    args = ap.parse_args(argv)
    args.device = str(resolve_device(args.device))

    def config(total: int) -> TrainConfig:
        return TrainConfig(steps=args.steps, learnable_weights=False, mean_weight=args.mean_loss, mean_pool=8,
                           mean_photons=args.photons == "means", inner_exposures=args.inner_exposures,
                           anchor_states=args.anchor_states, init=args.init, patch=args.patch, batch=args.batch,
                           epochs=10, iters_per_epoch=max(1, total // 10), lr=args.lr,
                           amp=None if args.amp == "none" else args.amp, seed=args.seed, save_every=500, log_every=50)

    try:  # the options TrainConfig refuses (e.g. --anchor-states with --steps 1), before minutes of pool rendering
        config(10)
    except ValueError as e:
        ap.error(str(e))
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    t_start = time.time()
    raw = render_pool(args.scenes, args.patch, args.seed, args.bank, args.workers, args.textured, args.illumination)
    t_pool = time.time() - t_start
    print(f"pool: {len(raw)} scenes of {args.patch}^2 in {t_pool:.1f} s", file=sys.stderr, flush=True)

    total_steps = args.total_steps
    if total_steps <= 0 and not (out / "last.pt").is_file():  # a resumed run keeps its schedule
        probe = Trainer(config(1000), PoolPatches(raw), out / "probe", device=args.device, progress=False)
        order = probe._epoch_order(0)
        probe.train_step(order)  # warm-up (allocations, autotuning)
        if args.device.startswith("cuda"):
            torch.cuda.synchronize()
        t = time.time()
        for _ in range(20):
            probe.train_step(order)
        if args.device.startswith("cuda"):
            torch.cuda.synchronize()
        per_step = (time.time() - t) / 20
        total_steps = max(10, int(0.95 * (args.seconds - (time.time() - t_start)) / per_step))
        print(f"probe: {1000 * per_step:.1f} ms per step -> {total_steps} steps", file=sys.stderr, flush=True)
        del probe
        shutil.rmtree(out / "probe", ignore_errors=True)
    elif total_steps <= 0:
        total_steps = torch.load(out / "last.pt", weights_only=True)["config"]["iters_per_epoch"] * 10
    cfg = config(total_steps)
    iters = cfg.iters_per_epoch
    trainer = Trainer(cfg, PoolPatches(raw), out, device=args.device, progress=False)
    resumed = trainer.resume()
    trainer.model.train()
    total = cfg.epochs * iters
    t0, first, order, order_epoch, last = time.time(), trainer.global_step, None, None, {}
    while trainer.global_step < total and time.time() - t_start < args.seconds:
        if order_epoch != trainer.epoch:
            order, order_epoch = trainer._epoch_order(trainer.epoch), trainer.epoch
        last = trainer.train_step(order)
        if trainer.global_step % cfg.log_every == 0:
            last.update(global_step=trainer.global_step, seconds=round(time.time() - t0, 1))
            trainer._log(last)
            print(json.dumps(last), file=sys.stderr, flush=True)
        if trainer.global_step % cfg.save_every == 0:
            trainer.save()
    if args.device.startswith("cuda"):
        torch.cuda.synchronize()
    seconds = time.time() - t0
    trainer.save()
    model, config, meta = load_checkpoint(out / "model.pt")
    save_checkpoint(model.half(), config, out / "model_fp16.pt", meta={**{k: v for k, v in meta.items()
                    if k not in ("format", "stored_dtype")}, "trained_on": torch.cuda.get_device_name(0)
                    if args.device.startswith("cuda") else "cpu"})
    done = trainer.global_step - first
    summary = {"resumed": resumed, "global_step": trainer.global_step, "steps_this_call": done,
               "train_seconds": round(seconds, 1), "pool_seconds": round(t_pool, 1),
               "ms_per_step": round(1000 * seconds / max(done, 1), 1), "last": last, "config": cfg.to_dict(),
               "pool": {"scenes": len(raw), "bank": args.bank, "textured": args.textured,
                        "illumination": args.illumination}}
    (out / "summary.json").write_text(json.dumps(summary, indent=1))
    print(json.dumps({k: v for k, v in summary.items() if k != "config"}), file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
