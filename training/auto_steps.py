"""Calibrating ``steps="auto"`` (``engine.inference.adaptive``) for one model.

On calibration scenes that are *not* the evaluation hold-out (a validation split: the
photograph-like generator of ``training.holdout`` with its own seed, ``CALIBRATION_SEED``
= 7, where the hold-out is seed 0; or procedural scenes), at
several ratios and the hold-out's camera / ISO, every frame is restored at each candidate
step count; its expected input PSNR (``adaptive.input_psnr``) and its PSNR per count
are recorded. The policy's thresholds are then chosen by a grid search over the recorded
input PSNRs: among the policies whose mean PSNR at every ratio is within ``tolerance``
dB of the best fixed count at that ratio, the one with the fewest mean evaluations wins
(ties: the higher PSNR); when none is, the one with the smallest worst-case shortfall. The
result goes into the checkpoint's metadata (``auto_steps``), where ``Pipeline.from_checkpoint``
and the evaluation find it. The frames run in the model's photon mode (``--photons``: the
checkpoint's ``meta["photons"]``, else Poisson draws), which the written checkpoint records.

    python -m training.auto_steps --checkpoint runs/mix/model.pt --write runs/mix/model_auto.pt
"""
from __future__ import annotations

import argparse
import itertools
import json
import os
import sys

import numpy as np
import torch

from engine.argtypes import device_arg, integer_arg, real_arg, resolve_device
from engine.inference.adaptive import AutoStepsPolicy, input_psnr
from engine.inference.loop import PHOTON_MODES, photon_mode_from_meta, schedule_from_meta
from engine.inference.pipeline import MAX_STEPS
from engine.io.atomic import atomic_path
from engine.models.checkpoint import load_checkpoint, save_checkpoint

from engine.inference.fidelity import DEFAULT_SCALE as DEFAULT_FIDELITY_SCALE
from engine.inference.fidelity import low_frequency_fidelity

from .holdout_eval import _model_outputs, holdout_clean, make_noisy_holdout
from .metrics import illuminance_correction, psnr

__all__ = ["measure", "fit_policy", "CALIBRATION_SEED"]

CALIBRATION_SEED = 7


def measure(backbone, config, *, counts=(1, 2, 3), ratios=(50, 100, 200, 300), n: int = 12, patch: int = 128,
            iso: float = 3200, camera: str = "SonyA7S2", seed: int = CALIBRATION_SEED, scenes: str = "photo",
            device="cpu", stochastic: bool = True, fidelity_scale: int | None = DEFAULT_FIDELITY_SCALE,
            schedule: str = "linspace") -> dict:
    """Per ratio: ``{"input_psnr": [n], "psnr": {count: [n]}}`` on the calibration scenes
    (``stochastic``: Poisson draws between the steps, else their means; on the named inference
    ``schedule``, the model's own); the outputs go through the engine's fidelity step as
    ``Pipeline`` runs them (``fidelity_scale``; None: not)."""
    if seed == 0 and scenes == "photo":
        raise ValueError("seed 0 of the photo scenes is the evaluation hold-out: calibrate on another seed")
    clean = holdout_clean(scenes, n, patch, seed)
    data = make_noisy_holdout(clean, ratios, camera=camera, iso=iso, seed=seed)
    out = {}
    for r in data.noisy:
        p = data.params[r]
        rec = {"input_psnr": input_psnr(data.noisy[r], p.ratio, p.K).tolist(), "psnr": {}}
        for c in counts:
            y, _ = _model_outputs(backbone, config, data, r, c, batch=4, seed=seed, device=device,
                                  stochastic=stochastic, schedule=schedule)
            if fidelity_scale is not None:
                y = low_frequency_fidelity(y, data.unclipped[r], fidelity_scale)
            rec["psnr"][c] = psnr(illuminance_correction(y, clean), clean).tolist()
        out[r] = rec
    return out


def fit_policy(measured: dict, counts=(1, 2, 3), tolerance: float = 0.05) -> tuple[AutoStepsPolicy, dict]:
    """The cheapest policy within ``tolerance`` dB of the best fixed count at every ratio
    (else the one that falls least short of it at its worst ratio).

    Returns the policy and a report ``{ratio: {"best_fixed": (count, psnr), "auto": (psnr,
    mean evaluations)}}``.
    """
    counts = tuple(sorted(counts))
    values = sorted({e for rec in measured.values() for e in rec["input_psnr"]})
    grid = [float(v) for v in np.unique(np.quantile(values, np.linspace(0, 1, 30)))] + [1e12]
    best = None
    for ths in itertools.combinations_with_replacement(sorted(grid, reverse=True), len(counts) - 1):
        policy = AutoStepsPolicy(ths, counts)
        deficit, evals, score = 0.0, [], []
        for rec in measured.values():
            chosen = [policy.steps(e) for e in rec["input_psnr"]]
            auto = float(np.mean([rec["psnr"][c][i] for i, c in enumerate(chosen)]))
            fixed = max(float(np.mean(v)) for v in rec["psnr"].values())
            deficit = max(deficit, fixed - auto)
            evals.append(float(np.mean(chosen)))
            score.append(auto)
        # within tolerance: fewest evaluations; otherwise: smallest worst-case deficit first
        key = (0.0 if deficit <= tolerance else deficit, float(np.mean(evals)), -float(np.mean(score)))
        if best is None or key < best[0]:
            best = (key, policy)
    policy = best[1]
    report = {}
    for r, rec in measured.items():
        chosen = [policy.steps(e) for e in rec["input_psnr"]]
        means = {c: float(np.mean(v)) for c, v in rec["psnr"].items()}
        c_best = max(means, key=means.get)
        report[r] = {"best_fixed": (c_best, means[c_best]),
                     "auto": (float(np.mean([rec["psnr"][c][i] for i, c in enumerate(chosen)])), float(np.mean(chosen)))}
    return policy, report


def build_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog="python -m training.auto_steps", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--checkpoint", required=True, help="the model to calibrate (ours or the public {'netG': ...} format)")
    ap.add_argument("--write", default=None,
                    help="write the checkpoint with the calibrated policy here (an existing file is refused)")
    ap.add_argument("--counts", type=integer_arg(1, MAX_STEPS), nargs="+", default=[1, 2, 3],
                    help=f"candidate step counts, each 1..{MAX_STEPS} (default 1 2 3)")
    ap.add_argument("--ratios", type=real_arg(1, 10000, low_open=True), nargs="+", default=[50, 100, 200, 300],
                    help="exposure ratios of the calibration frames, each in (1, 10000] (default 50 100 200 300)")
    ap.add_argument("--n", type=integer_arg(1, 1000), default=12, help="calibration scenes, 1..1000 (default 12)")
    ap.add_argument("--patch", type=integer_arg(16, 1024, multiple=16), default=128,
                    help="scene side in packed pixels, a multiple of 16 in 16..1024 (default 128)")
    ap.add_argument("--scenes", default="photo", choices=("photo", "procedural"),
                    help="photograph-like scenes of training.holdout (default) or procedural ones")
    ap.add_argument("--seed", type=integer_arg(0, 2**63 - 1), default=CALIBRATION_SEED,
                    help=f"seed of the calibration scenes and noise (default {CALIBRATION_SEED}; 0 is the evaluation "
                         f"hold-out's and is refused for the photo scenes)")
    ap.add_argument("--tolerance", type=real_arg(0, 10), default=0.05,
                    help="dB a policy may fall below the best fixed count at a ratio, in [0, 10] (default 0.05)")
    ap.add_argument("--device", type=device_arg, default="cpu", help="cpu (default), cuda, cuda:N or auto")
    ap.add_argument("--photons", choices=PHOTON_MODES, default=None,
                    help="Poisson draws or their means between the steps, for the calibration and recorded in the "
                         "written checkpoint (meta['photons']; default: the checkpoint's own mode, else draws)")
    ap.add_argument("--fp16", action="store_true", help="store the written weights as float16 (the shipped format)")
    ap.add_argument("--measured", default=None,
                    help="JSON of the measurements: read if it exists (no network runs), else written")
    return ap


def main(argv=None) -> int:
    ap = build_parser()
    args = ap.parse_args(argv)
    if args.seed == 0 and args.scenes == "photo":
        ap.error("--seed 0 of the photo scenes is the evaluation hold-out: calibrate on another seed")
    if args.write and os.path.exists(args.write):
        ap.error(f"--write {args.write} exists; choose another name (a calibrated checkpoint is never replaced)")
    device = resolve_device(args.device)
    model, config, meta = load_checkpoint(args.checkpoint)
    try:
        photons = args.photons or photon_mode_from_meta(meta)
    except ValueError as e:
        ap.error(f"--checkpoint {args.checkpoint}: {e}; give --photons")
    try:
        schedule = schedule_from_meta(meta)
    except ValueError as e:
        ap.error(f"--checkpoint {args.checkpoint}: {e}")
    if args.measured and os.path.isfile(args.measured):
        raw = json.loads(open(args.measured).read())
        recorded = raw.pop("photons", "draws")  # files written before the photon modes: draws
        if recorded != photons:
            ap.error(f"--measured {args.measured} was measured with Poisson {recorded}, this calibration uses "
                     f"{photons}; give another file or --photons {recorded}")
        recorded = raw.pop("schedule", "linspace")  # files written before the named schedules: linspace
        if recorded != schedule:
            ap.error(f"--measured {args.measured} was measured on the {recorded} schedule, this model runs on "
                     f"{schedule} (meta['schedule']); give another file")
        measured = {float(r): {"input_psnr": v["input_psnr"], "psnr": {int(c): p for c, p in v["psnr"].items()}}
                    for r, v in raw.items()}
    else:
        measured = measure(model, config, counts=args.counts, ratios=args.ratios, n=args.n, patch=args.patch,
                           scenes=args.scenes, seed=args.seed, device=device, stochastic=photons == "draws",
                           schedule=schedule)
        if args.measured:
            with atomic_path(args.measured, overwrite=False) as tmp, open(tmp, "w") as f:
                json.dump({"photons": photons, "schedule": schedule, **{str(r): v for r, v in measured.items()}}, f)
    policy, report = fit_policy(measured, args.counts, args.tolerance)
    print(json.dumps({"policy": policy.to_meta(), "report": {str(k): v for k, v in report.items()}}, indent=1))
    if args.write:
        stored = next(iter(model.state_dict().values())).dtype
        keep = {k: v for k, v in meta.items() if k not in ("format", "stored_dtype")}
        dtype = torch.float16 if args.fp16 or meta.get("stored_dtype") == "float16" else stored
        save_checkpoint(model.to(dtype), config, args.write,
                        meta={**keep, "auto_steps": policy.to_meta(), "photons": photons})
    return 0


if __name__ == "__main__":
    sys.exit(main())
