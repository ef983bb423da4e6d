"""An analysis, not a product feature: where does a model's 3-step output beat its 1-step output?

On a validation split (seed 7; never the hold-out or the photographs for decisions), each frame is
restored with 1 and with 3 steps as ``evaluate`` runs the model (its photon mode and schedule, the
fidelity step unless ``--no-fidelity``; illuminance-corrected), and the squared error of each output
is split two ways:

- by spatial band: ``e - B2(e)``, ``B2(e) - B4(e)``, ..., ``B32(e)`` with ``Bs`` a box mean over
  ``s x s`` packed pixels interpolated back (the finest band first);
- by the clean scene's local texture: the standard deviation of its luminance in 8 x 8 blocks, in
  tertiles over the split (smooth, middle, busy).

For each part it prints the part's share of the 1-step error and the 3-step output's gain there
(dB of mean squared error). NOTES.md ("Where the later steps help") has what it found::

    python training/recipes/where_steps_help.py --checkpoint CKPT [--scenes photo|textured] [--no-fidelity]
"""
from __future__ import annotations

import argparse
import math
import sys

import torch
import torch.nn.functional as F

BAND_SCALES = (1, 2, 4, 8, 16, 32)


def box_blur(x: torch.Tensor, scale: int) -> torch.Tensor:
    """Box means over ``scale x scale`` pixels, bilinearly interpolated back: ``[B, C, h, w]``
    (h, w multiples of ``scale``) -> same shape; ``scale`` 1 is the identity."""
    if scale == 1:
        return x
    return F.interpolate(F.avg_pool2d(x, scale), scale_factor=scale, mode="bilinear", align_corners=False)


def bands(e: torch.Tensor, scales=BAND_SCALES) -> list[torch.Tensor]:
    """``e`` split into ``len(scales)`` bands that sum to it: differences of successive box blurs,
    then the coarsest blur."""
    blurred = [box_blur(e, s) for s in scales]
    return [blurred[i] - blurred[i + 1] for i in range(len(scales) - 1)] + [blurred[-1]]


def texture_classes(clean: torch.Tensor, block: int = 8) -> torch.Tensor:
    """int64 ``[B, 4, h, w]``: 0 / 1 / 2 for pixels whose ``block``-pixel block has a luminance
    standard deviation in the lower / middle / upper third of the set's blocks."""
    lum = clean.mean(1, keepdim=True)
    sd = (F.avg_pool2d(lum * lum, block) - F.avg_pool2d(lum, block) ** 2).clamp_min(0).sqrt()
    q = torch.quantile(sd.flatten(), torch.tensor([1 / 3, 2 / 3], dtype=sd.dtype))
    cls = (sd > q[0]).long() + (sd > q[1]).long()
    return F.interpolate(cls.float(), scale_factor=block, mode="nearest").long().expand_as(clean)


def gain_db(mse_before: float, mse_after: float) -> float:
    """How much smaller ``mse_after`` is than ``mse_before``, in dB (positive: better)."""
    return 10 * math.log10(mse_before / mse_after)


def report(clean: torch.Tensor, one: torch.Tensor, three: torch.Tensor) -> list[str]:
    """Lines: the total gain, then per band and per texture tertile the 1-step error share and the gain.
    ``clean``, ``one``, ``three``: float32 ``[B, 4, h, w]``, h and w multiples of 32."""
    e1, e3 = one - clean, three - clean
    total1 = float((e1 ** 2).mean())
    lines = [f"total: 3-step gain {gain_db(total1, float((e3 ** 2).mean())):+.3f} dB (mean squared error)"]
    for s, b1, b3 in zip(BAND_SCALES, bands(e1), bands(e3)):
        m1, m3 = float((b1 ** 2).mean()), float((b3 ** 2).mean())
        lines.append(f"band from {s:>2} px: share of the 1-step error {m1 / total1:.3f}, gain {gain_db(m1, m3):+.3f} dB")
    cls = texture_classes(clean)
    for c, name in enumerate(("smooth", "middle", "busy")):
        m = cls == c
        m1, m3 = float((e1[m] ** 2).mean()), float((e3[m] ** 2).mean())
        lines.append(f"{name:>6} third: share of the 1-step error {float((e1[m] ** 2).sum()) / float((e1 ** 2).sum()):.3f}, "
                     f"gain {gain_db(m1, m3):+.3f} dB")
    return lines


def main(argv=None) -> int:
    from engine.inference.fidelity import low_frequency_fidelity
    from engine.inference.loop import use_draws
    from training.holdout_eval import (DEFAULT_FIDELITY_SCALE, _model_outputs, holdout_clean, load_models,
                                       make_noisy_holdout)
    from training.metrics import illuminance_correction

    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--checkpoint", required=True)
    parser.add_argument("--scenes", choices=("photo", "textured"), default="photo")
    parser.add_argument("--n", type=int, default=16)
    parser.add_argument("--patch", type=int, default=None, help="default 192 (photo), 128 (textured)")
    parser.add_argument("--seed", type=int, default=7, help="the validation split (default 7)")
    parser.add_argument("--ratios", type=float, nargs="+", default=[100.0, 300.0])
    parser.add_argument("--no-fidelity", action="store_true")
    args = parser.parse_args(argv)
    patch = args.patch or (192 if args.scenes == "photo" else 128)
    if patch % 32:
        parser.error(f"--patch must be a multiple of 32, got {patch}")
    (backbone, config, policy, mode, schedule), = load_models([("model", args.checkpoint)]).values()
    backbone.eval()
    clean = holdout_clean(args.scenes, args.n, patch, seed=args.seed)
    data = make_noisy_holdout(clean, args.ratios, seed=args.seed)
    for r in data.noisy:
        outs = []
        for steps in (1, 3):
            y, _ = _model_outputs(backbone, config, data, r, steps, batch=4, seed=args.seed, device="cpu",
                                  stochastic=use_draws(None, mode), policy=policy, schedule=schedule)
            if not args.no_fidelity:
                y = low_frequency_fidelity(y, data.unclipped[r], DEFAULT_FIDELITY_SCALE)
            outs.append(illuminance_correction(y, clean))
        print(f"{args.scenes} x{r:g} (seed {args.seed}, {args.n} scenes of {patch}^2, "
              f"fidelity {'off' if args.no_fidelity else 'on'}):")
        print("\n".join("  " + line for line in report(clean, *outs)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
