"""First-frame latency of a new process: import, model load, first frame (Triton compiles,
autotuning, the backbone choice, CUDA-graph capture), second frame. Prints one JSON line.

    TRITON_CACHE_DIR=/tmp/empty EXPOSURE_DIFFUSION_CACHE=/tmp/empty2 python bench/first_frame.py

``bench/backbone_stage.py`` runs it twice: with empty caches (a fresh machine) and again
with the caches the first run left (a second process).
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

START = time.perf_counter()
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))


def main(argv=None) -> int:
    from engine.argtypes import device_arg, integer_arg  # light: the timed imports come after parsing

    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--height", type=integer_arg(16, 65535, multiple=2), default=2848,
                    help="Bayer rows, even, 16..65535 (default 2848: the 12 MP frame)")
    ap.add_argument("--width", type=integer_arg(16, 65535, multiple=2), default=4256,
                    help="Bayer columns, even, 16..65535 (default 4256)")
    ap.add_argument("--steps", type=integer_arg(1, 100), default=3, help="network evaluations, 1..100 (default 3)")
    ap.add_argument("--checkpoint", default=None, help="default: the shipped model")
    ap.add_argument("--device", type=device_arg, default="cuda", help="cuda (default), cuda:N or cpu")
    args = ap.parse_args(argv)

    import numpy as np
    import torch

    from engine import Pipeline

    imported = time.perf_counter()
    pipe = Pipeline.from_checkpoint(args.checkpoint, device=args.device)
    loaded = time.perf_counter()
    frame = np.random.default_rng(0).integers(512, 4000, (args.height, args.width)).astype(np.uint16)
    kw = dict(ratio=100, steps=args.steps, pattern="RGGB", black_level=512, white_level=16383, K=2.0)

    def sync():
        if pipe.device.type == "cuda":
            torch.cuda.synchronize(pipe.device)

    pipe(frame, **kw)
    sync()
    first = time.perf_counter()
    pipe(frame, **kw)
    sync()
    second = time.perf_counter()
    print(json.dumps({"import_s": imported - START, "load_s": loaded - imported, "first_frame_s": first - loaded,
                      "to_first_frame_s": first - START, "second_frame_ms": (second - first) * 1e3,
                      "backbone": sorted(set(pipe._chosen.values())) or pipe._candidate_names,
                      "timings_ms": list(pipe.backbone_timings.values())}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
