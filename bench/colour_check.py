"""Colour of the enhanced bench chart: CIEDE2000 of each colour-checker patch against the clean
render.

    python bench/colour_check.py [--ratio 100] [--height 1024 --width 1536] [--steps 3]

The bench scene (``engine.scene``: a 24-patch colour checker among gradients, a Siemens star,
a grating and a texture) is rendered clean (the long exposure), darkened by ``--ratio`` with the
ELD noise of the SonyA7S2 profile at ISO 3200, written as a DNG, enhanced by the shipped model
(the engine's defaults, the fidelity step included unless ``--no-fidelity``), and both the clean
and the enhanced packed raw are rendered to sRGB with the frame's own colour data
(``engine.io.output.srgb_image``: the same white balance and matrix). Each patch's inner half
is averaged in CIELAB (scikit-image) and compared with CIEDE2000; prints every patch and the
mean / max, and writes ``bench/out/colour_check.json``.
"""
from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))


def patch_boxes(h: int, w: int) -> list[tuple[slice, slice]]:
    """The inner half of each of the 24 patches, in a frame of ``h x w`` pixels (row-major,
    as ``engine.scene.render_scene`` lays the checker out: 6 x 4 over rows 0.55-0.95 H and
    columns 0.05-0.45 W)."""
    boxes = []
    y0, y1, x0, x1 = 0.55 * h, 0.95 * h, 0.05 * w, 0.45 * w
    ph, pw = (y1 - y0) / 4, (x1 - x0) / 6
    for r in range(4):
        for c in range(6):
            cy, cx = y0 + (r + 0.5) * ph, x0 + (c + 0.5) * pw
            boxes.append((slice(int(cy - ph / 4), int(cy + ph / 4)), slice(int(cx - pw / 4), int(cx + pw / 4))))
    return boxes


def measure(height: int, width: int, ratio: float, steps: int, fidelity: bool, seed: int = 0) -> dict:
    import numpy as np
    import torch
    from skimage.color import deltaE_ciede2000, rgb2lab

    from bench.scene import write_cfa_dng
    from engine import Pipeline, read_raw
    from engine.io.output import srgb_image
    from engine.scene import clean_packed, render_scene, short_exposure_cfa

    clean = clean_packed(render_scene(height, width, seed))
    with tempfile.TemporaryDirectory() as tmp:
        path = write_cfa_dng(Path(tmp) / "chart.dng", short_exposure_cfa(clean, ratio=ratio, noise_seed=seed), ratio=ratio)
        frame = read_raw(str(path))
        pipe = Pipeline.from_checkpoint(device="cpu", fidelity_scale=32 if fidelity else None)
        out = pipe(frame, ratio=ratio, steps=steps)
    reference = srgb_image(clean[0], frame, torch.float32).numpy()
    enhanced = srgb_image(out.raw, frame, torch.float32).numpy()
    rows = []
    for i, (ys, xs) in enumerate(patch_boxes(*reference.shape[:2])):
        lab_ref = rgb2lab(reference[ys, xs].reshape(-1, 1, 3).mean(0, keepdims=True))
        lab_out = rgb2lab(enhanced[ys, xs].reshape(-1, 1, 3).mean(0, keepdims=True))
        rows.append({"patch": i + 1, "dE2000": float(deltaE_ciede2000(lab_ref, lab_out)[0, 0]),
                     "lab_clean": lab_ref[0, 0].round(2).tolist(), "lab_enhanced": lab_out[0, 0].round(2).tolist()})
    de = np.array([r["dE2000"] for r in rows])
    return {"frame": [height, width], "ratio": ratio, "steps": steps, "fidelity": fidelity, "patches": rows,
            "mean_dE2000": float(de.mean()), "max_dE2000": float(de.max())}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--ratio", type=float, default=100.0)
    ap.add_argument("--height", type=int, default=1024)
    ap.add_argument("--width", type=int, default=1536)
    ap.add_argument("--steps", type=int, default=3)
    ap.add_argument("--no-fidelity", action="store_true", help="the loop's estimate without the fidelity step")
    ap.add_argument("--json", type=Path, default=ROOT / "bench" / "out" / "colour_check.json")
    args = ap.parse_args(argv)
    if args.height < 64 or args.width < 64 or args.height % 2 or args.width % 2:
        ap.error("--height and --width must be even and >= 64")
    res = measure(args.height, args.width, args.ratio, args.steps, not args.no_fidelity)
    for r in res["patches"]:
        print(f"patch {r['patch']:2d}: dE2000 {r['dE2000']:5.2f}  clean Lab {r['lab_clean']}  enhanced {r['lab_enhanced']}")
    print(f"x{args.ratio:g}, {args.steps} steps, fidelity {'on' if res['fidelity'] else 'off'}: mean CIEDE2000 "
          f"{res['mean_dE2000']:.2f}, max {res['max_dE2000']:.2f} (24 patches)")
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(res, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
