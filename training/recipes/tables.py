"""Markdown tables from ``exposure-diffusion evaluate --json`` files (the model card's tables).

    python training/recipes/tables.py runs/default-model/final_photo.json [more.json ...]

One table per file: a row per method (noisy input, baselines, each model at each step
count), columns PSNR dB / SSIM per ratio, then the mean network evaluations and the mean
signed error (bias, before the illuminance correction) where the method has them.
"""
from __future__ import annotations

import json
import sys

import numpy as np


def table(path: str) -> str:
    d = json.loads(open(path).read())
    ratios = list(d["holdout"])
    methods = list(next(iter(d["holdout"].values())))
    s = d.get("settings", {})
    head = (f"{s.get('scenes', '?')} hold-out, {s.get('n', '?')} scenes of {s.get('patch', '?')}^2, "
            f"{s.get('noise_model', '?')} {s.get('camera', '?')} ISO {s.get('iso', '?')}")
    lines = [f"_{head}_ ({path})", "",
             "| method | " + " | ".join(f"x{float(r):g} PSNR / SSIM" for r in ratios) + " | evals | bias (x"
             + f"{float(ratios[0]):g} / x{float(ratios[-1]):g}) |",
             "|---|" + "---|" * (len(ratios) + 2)]
    for m in methods:
        cells, evals, bias = [], [], []
        for r in ratios:
            v = d["holdout"][r].get(m)
            if v is None:
                cells.append("-")
                continue
            cells.append(f"{np.mean(v['psnr']):.2f} / {np.mean(v['ssim']):.3f}")
            if "steps" in v:
                evals.append(f"{np.mean(v['steps']):.2f}")
            if "bias" in v:
                bias.append(f"{np.mean(v['bias']):+.4f}")
        lines.append(f"| {m} | " + " | ".join(cells) + f" | {' / '.join(evals) or ''} | {' / '.join(bias) or ''} |")
    for n in d.get("notes", []):
        lines.append(f"\nNote: {n}")
    return "\n".join(lines)


if __name__ == "__main__":
    print("\n\n".join(table(p) for p in sys.argv[1:]))
