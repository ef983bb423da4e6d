"""Make the documentation's figures: python docs/make_figures.py [--out docs/images].

before_after.png (README and docs home page): a crop of a dark raw frame three ways, side
by side:

1. as shot: the short exposure rendered as it is (what the camera's preview shows);
2. brightened x100: the same raw multiplied by the exposure ratio and clipped, with no
   denoising (the noise a plain exposure push shows);
3. enhanced: ``engine.Pipeline.from_checkpoint()`` (the shipped default model) at ratio 100
   with its default 3 steps.

The frame is the bench's built-in scene (``bench/scene.py``: a procedural test chart made
into a Sony-like DNG, darkened 100x with the ELD noise of the SonyA7S2 profile at ISO 3200),
so nothing is downloaded and the figure is the same on every machine (seeded, on the CPU,
PyTorch in fp32; about ten seconds on 2 cores). All three panels use the same colour rendering
(``engine.io.output.srgb_image``: the file's white balance and colour matrix, sRGB gamma).
"""
from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageDraw, ImageFont

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:  # run as a script from a checkout
    sys.path.insert(0, str(ROOT))

from bench.scene import write_scene_dng  # noqa: E402
from engine import Pipeline, read_raw  # noqa: E402
from engine.io.output import srgb_image  # noqa: E402
from kernels import pack_bayer  # noqa: E402

RATIO = 100
HEIGHT, WIDTH = 512, 768          # Bayer sites of the scene
CROP = (250, 120, 190, 210)       # top, left, height, width of each panel (the colour checker)
LABEL_H = 22
GAP = 4                           # white pixels between the panels
PANELS = ("as shot", f"brightened x{RATIO}", f"enhanced x{RATIO}, 3 steps")


def _rendered(frame, ratio: float) -> np.ndarray:
    """The raw frame amplified by ``ratio``, clipped, rendered to 8-bit sRGB (no denoising)."""
    black = torch.as_tensor(frame.black_level, dtype=torch.float32)
    packed = pack_bayer(frame.cfa, frame.pattern, black, float(frame.white_level), ratio=ratio)
    return srgb_image(packed[0].float(), frame).numpy()


def _crop(img: np.ndarray) -> np.ndarray:
    top, left, h, w = CROP
    return img[top:top + h, left:left + w]


def before_after(out: Path) -> Path:
    with tempfile.TemporaryDirectory() as tmp:
        source = write_scene_dng(Path(tmp) / "dark.dng", HEIGHT, WIDTH, ratio=RATIO, iso=3200)
        frame = read_raw(str(source))
        # PyTorch in fp32 on the CPU: the same pixels on any machine (the default would pick
        # bf16 or another runtime where the CPU offers one)
        pipe = Pipeline.from_checkpoint(device="cpu", precision="fp32", backbone_path="eager")
        result = pipe(str(source), ratio=RATIO, seed=0)
        panels = [_rendered(frame, 1.0), _rendered(frame, RATIO), result.srgb().numpy()]
    panels = [_crop(p) for p in panels]
    h, w = panels[0].shape[:2]
    gap = GAP
    sheet = Image.new("RGB", (3 * w + 2 * gap, h + LABEL_H), (255, 255, 255))
    draw = ImageDraw.Draw(sheet)
    try:
        font = ImageFont.load_default(size=14)
    except TypeError:  # Pillow < 10.1: one bitmap size
        font = ImageFont.load_default()
    for i, (panel, label) in enumerate(zip(panels, PANELS)):
        x = i * (w + gap)
        sheet.paste(Image.fromarray(np.ascontiguousarray(panel)), (x, LABEL_H))
        draw.text((x + 4, 3), label, fill=(0, 0, 0), font=font)
    out.mkdir(parents=True, exist_ok=True)
    path = out / "before_after.png"
    sheet.save(path, optimize=True)
    return path


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, default=ROOT / "docs" / "images", help="folder for the PNGs")
    args = parser.parse_args(argv)
    path = before_after(args.out)
    print(f"{path} ({path.stat().st_size / 1024:.0f} KiB)")


if __name__ == "__main__":
    main()
