"""Encoder costs: seconds and bytes of each output format for one enhanced frame.

    python bench/encoders.py                      # the CPU default batch frame (768 x 1152 Bayer sites)
    python bench/encoders.py --height 2848 --width 4256 --repeats 3   # 12 MP

The frame is the bench scene (``bench/scene.py``) enhanced by the shipped model (or a
random UNet, ``--random-weights``), rendered to sRGB by the engine, then encoded the way
the writer processes encode it (``engine.io.encode``), with its EXIF. For PNG the
zlib levels 1, 6 and 9 of Pillow (its default is 6) are timed beside the settings the
engine uses ("fast": imagecodecs level 1 + RLE + Sub filter; "small": Pillow level 9 for
8-bit, imagecodecs level 9 with every filter for 16-bit).

Per encoder: the median over ``--repeats`` of the wall time and of the CPU time of this
process (``time.process_time``: all its threads), and the file size. CPU time is what a
writer process spends per file, so ``writers / cpu_s`` is the file rate a pool of writers
can sustain; it is also the figure least disturbed by other load on a shared machine.
"""
from __future__ import annotations

import argparse
import io
import json
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from bench.report import device_name, git_commit, table  # noqa: E402
from bench.scene import DEFAULT_ISO, write_scene_dng  # noqa: E402
from engine import BackboneConfig, Pipeline  # noqa: E402
from engine.argtypes import integer_arg  # noqa: E402
from engine.io.exif import Provenance, exif_tags, pillow_exif  # noqa: E402
from engine.io.output import OutputOptions, encode_srgb  # noqa: E402


def _pillow_png(img, tags, level):
    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(img, mode="RGB").save(buf, format="PNG", compress_level=level, exif=pillow_exif(tags))
    return buf.getvalue()


def encoders(img8, img16, tags) -> list[tuple[str, str, object]]:
    """(name, what the engine uses it for, function returning bytes)."""
    out = [(f"PNG 8-bit Pillow zlib level {lvl}", "" if lvl != 9 else "--compression small",
            lambda lvl=lvl: _pillow_png(img8, tags, lvl)) for lvl in (1, 6, 9)]
    for name, opts, img in (("PNG 8-bit fast (imagecodecs L1 RLE Sub)", OutputOptions("png"), img8),
                            ("PNG 16-bit fast", OutputOptions("png", bits=16), img16),
                            ("PNG 16-bit small (imagecodecs L9, all filters)",
                             OutputOptions("png", bits=16, compression="small"), img16),
                            ("JPEG quality 95 (Pillow, CPU)", OutputOptions("jpeg"), img8),
                            ("TIFF 16-bit uncompressed", OutputOptions("tiff"), img16),
                            ("TIFF 16-bit deflate", OutputOptions("tiff", compression="small"), img16),
                            ("TIFF 8-bit uncompressed", OutputOptions("tiff", bits=8), img8)):
        use = "default" if name in ("PNG 8-bit fast (imagecodecs L1 RLE Sub)", "JPEG quality 95 (Pillow, CPU)",
                                    "TIFF 16-bit uncompressed") else f"--bits {opts.bits} --compression {opts.compression}"
        out.append((name, f"--format {opts.format} {use}", lambda opts=opts, img=img: encode_srgb(img, opts, tags)))
    return out


def measure(fn, repeats: int) -> dict:
    walls, cpus, size = [], [], None
    for _ in range(repeats):
        w0, c0 = time.perf_counter(), time.process_time()
        data = fn()
        walls.append(time.perf_counter() - w0)
        cpus.append(time.process_time() - c0)
        size = len(data)
    return {"wall_s": statistics.median(walls), "cpu_s": statistics.median(cpus), "bytes": size,
            "wall_all_s": walls, "cpu_all_s": cpus}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--height", type=integer_arg(16, 65535, multiple=2), default=768, help="Bayer sites (default 768, the CPU batch frame)")
    ap.add_argument("--width", type=integer_arg(16, 65535, multiple=2), default=1152, help="Bayer sites (default 1152)")
    ap.add_argument("--repeats", type=integer_arg(1, 1000), default=5, help="timed runs per encoder, 1..1000 (default 5)")
    ap.add_argument("--random-weights", action="store_true", help="a random UNet instead of the shipped model")
    ap.add_argument("--json", help="also write the figures here")
    args = ap.parse_args(argv)
    with tempfile.TemporaryDirectory() as tmp:
        src = write_scene_dng(Path(tmp) / "scene.dng", args.height, args.width, ratio=100, iso=DEFAULT_ISO)
        if args.random_weights:
            torch.manual_seed(0)
            cfg = BackboneConfig()
            pipe = Pipeline(cfg.build(), cfg, device="cpu")
        else:
            pipe = Pipeline.from_checkpoint(device="cpu")
        result = pipe(str(src), ratio=100, steps=3, seed=0)
    img8, img16 = result.srgb(torch.uint8).numpy(), result.srgb(torch.uint16).numpy()
    tags = exif_tags(result.frame, Provenance(100, 3))
    rows = []
    for name, use, fn in encoders(img8, img16, tags):
        fn()  # warm-up (imports, first allocation)
        rows.append({"encoder": name, "use": use, **measure(fn, args.repeats)})
    base = next(r for r in rows if r["encoder"] == "PNG 8-bit Pillow zlib level 6")
    info = {"date": time.strftime("%Y-%m-%d %H:%M:%S %Z"), "commit": git_commit(),
            "machine": device_name(torch.device("cpu")), "python": platform.python_version(),
            "frame": [args.height, args.width], "megapixels": args.height * args.width / 1e6,
            "repeats": args.repeats, "load_average": __import__("os").getloadavg()}
    print(f"{info['date']}  commit {info['commit']}  {info['machine']}; frame {args.height}x{args.width} "
          f"({info['megapixels']:.2f} MP), medians of {args.repeats}; load average {info['load_average'][0]:.2f}")
    print(table(["encoder", "engine option", "wall ms", "CPU ms", "kB", "CPU vs PNG L6", "size vs PNG L6"],
                [[r["encoder"], r["use"], f"{r['wall_s'] * 1e3:.0f}", f"{r['cpu_s'] * 1e3:.0f}",
                  f"{r['bytes'] / 1e3:.0f}", f"{r['cpu_s'] / base['cpu_s']:.2f}x", f"{r['bytes'] / base['bytes']:.2f}x"]
                 for r in rows]))
    if args.json:
        Path(args.json).write_text(json.dumps({"info": info, "rows": rows}, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
