"""The file-to-file stage of the main job (bench/throughput.py): a folder of DNGs through
the product path (``engine.inference.batch.enhance_files``), sequential against
overlapped, every output format, the GPU's busy share, and CPU processes sharing the files.
"""
from __future__ import annotations

import contextlib
import copy
import dataclasses
import math
import os
import time
from pathlib import Path

import numpy as np
import torch

from bench.scene import DEFAULT_ISO, write_scene_files
from bench.stages import Context, engine_configs
from bench.timing import free, time_interleaved
from engine import Pipeline
from engine.inference.batch import enhance_files, worker_pool
from engine.io.output import OutputOptions


# ---------------------------------------------------------------- file-to-file batch
BATCH_FORMATS = (("png", OutputOptions("png")), ("jpeg", OutputOptions("jpeg")), ("tiff", OutputOptions("tiff")),
                 ("dng", OutputOptions("dng")))


def _warm_worker(_) -> int:
    """Imports what the workers need (a spawned process starts bare) and holds the worker briefly."""
    import engine.inference.batch  # noqa: F401
    from PIL import Image  # noqa: F401
    import imagecodecs  # noqa: F401
    time.sleep(0.3)
    return os.getpid()


class GpuBusy:
    """NVML's utilization of a CUDA device ("percent of time over the past sample period
    during which one or more kernels was executing"), sampled every ``period`` s in a
    thread while the block runs; ``mean`` is None where NVML cannot be read (pynvml, the
    nvidia-ml-py package, missing)."""

    def __init__(self, device, period: float = 0.05):
        self.device, self.period, self.samples, self.error = device, period, [], None

    def __enter__(self):
        import threading

        self._stop = threading.Event()
        try:
            torch.cuda.utilization(self.device)
        except Exception as e:  # noqa: BLE001 - reported, not fatal
            self.error = f"{type(e).__name__}: {e}"
            return self
        self._thread = threading.Thread(target=self._sample, daemon=True)
        self._thread.start()
        return self

    def _sample(self):
        while not self._stop.wait(self.period):
            self.samples.append(torch.cuda.utilization(self.device))

    def __exit__(self, *exc):
        self._stop.set()
        if getattr(self, "_thread", None) is not None:
            self._thread.join()

    @property
    def mean(self):
        return sum(self.samples) / len(self.samples) / 100 if self.samples else None


def bench_batch(ctx: Context, workdir: Path, count: int, H: int, W: int, workers: int, repeats: int,
                batch: int = 1, ranks: int = 0) -> dict:
    """A folder of DNGs through ``engine.inference.batch.enhance_files``, the product path of
    ``exposure-diffusion enhance``: same Pipeline, same seeds.

    1. PNG (the default output): one file after the other ("sequential", ``workers=0``)
       against decode / write in worker processes overlapped with the device work; the two
       modes alternate ``repeats`` times and must write the same bytes.
    2. Every output format (PNG, JPEG, TIFF, DNG), overlapped: files/s, bytes per file, and
       where the main process's time went; on CUDA the GPU's busy share (NVML) and the
       device span of the groups (CUDA events).
    3. ``ranks`` > 1 (CPU only): the same PNG batch shared between that many CPU processes
       (``enhance --devices cpu,cpu``: one torch thread per core each), for comparison.

    Worker start-up is excluded (the pools are started and warmed first); the shape
    warm-up (and CUDA graph capture) too.
    """
    dev, p = ctx.device, ctx.progress
    p.note(f"writing {count} DNG files of {H}x{W}")
    files = write_scene_files(workdir / "batch_in", count, H, W, ratio=ctx.ratio, iso=DEFAULT_ISO)
    name, opts = engine_configs(dev)[0]
    pipe = Pipeline(copy.deepcopy(ctx.net), ctx.cfg, device=dev, **opts)
    # Poisson means between the steps, as the shipped model runs (its meta["photons"]); the same
    # for the CPU processes (--deterministic), so that their outputs can be compared byte for byte
    kw = dict(ratio=ctx.ratio, steps=ctx.steps, seed=0, stochastic=False)
    p.note("batch warm-up")
    for n in sorted({batch, count % batch or batch}):  # every group size the runs will use
        pipe([str(f) for f in files[:n]] if n > 1 else str(files[0]), **kw)

    def run(out_dir, options, workers, pools=None, stats=None):
        out_dir.mkdir(parents=True, exist_ok=True)
        results = enhance_files(pipe, files, [out_dir / (f.stem + options.extension) for f in files], fmt=options,
                                workers=workers, pools=pools, batch=batch, overwrite=True, stats=stats, **kw)
        errors = [r.error for r in results if r.error is not None]
        if errors:
            raise RuntimeError(f"batch: {len(errors)} file(s) failed: {errors[0]}")

    seq_dir, ovl_dir = workdir / "batch_out_sequential", workdir / "batch_out_overlapped"
    formats = {}
    with worker_pool(workers) as decoders, worker_pool(workers) as writers:  # as the product starts them
        p.note("batch: starting worker processes")
        warm = [pool.submit(_warm_worker, i) for pool in (decoders, writers) for i in range(workers)]
        for w in warm:
            w.result()
        png = BATCH_FORMATS[0][1]
        times = time_interleaved({"sequential": lambda: run(seq_dir, png, 0),
                                  "overlapped": lambda: run(ovl_dir, png, workers, (decoders, writers))},
                                 dev, repeats, 0, p, " batch")
        for fmt, options in BATCH_FORMATS:
            p.note(f"batch: {fmt}, overlapped")
            stats, out_dir = {}, workdir / f"batch_out_{fmt}"
            busy = GpuBusy(dev) if dev.type == "cuda" else None
            t0 = time.perf_counter()
            with busy or contextlib.nullcontext():
                run(out_dir, options, workers, (decoders, writers), stats)
            wall = time.perf_counter() - t0
            sizes = [f.stat().st_size for f in out_dir.iterdir() if f.is_file()]
            formats[fmt] = {"options": dataclasses.asdict(options), "s": wall, "files_per_s": count / wall,
                            "bytes_per_file": sum(sizes) / len(sizes), "main_process": stats,
                            "gpu_busy": busy.mean if busy else None,
                            "gpu_busy_error": busy.error if busy else None,
                            "device_span_share": stats["device_busy_s"] / wall if "device_busy_s" in stats else None}
    identical = all((seq_dir / (f.stem + ".png")).read_bytes() == (ovl_dir / (f.stem + ".png")).read_bytes() for f in files)
    ranks_row = None
    if ranks > 1 and dev.type == "cpu":
        p.note(f"batch: {ranks} CPU processes")
        ranks_row = _bench_ranks(ctx, files, workdir / "batch_out_ranks", ranks, batch, kw)
        pairs = [(seq_dir / (f.stem + ".png"), workdir / "batch_out_ranks" / (f.stem + ".png")) for f in files]
        ranks_row["outputs_identical"] = all(a.read_bytes() == b.read_bytes() for a, b in pairs)
        # Each process times the CPU candidates with its own thread count and may choose another
        # backbone (each within 45 dB of fp32): then the bytes differ, and this says by how much.
        ranks_row["outputs_min_psnr_dB"] = None if ranks_row["outputs_identical"] else min(
            _png_psnr(a, b) for a, b in pairs)
    del pipe
    free(dev)
    t_seq, t_ovl = times["sequential"]["median_ms"] / 1e3, times["overlapped"]["median_ms"] / 1e3
    return {"files": count, "frame": [H, W], "engine": name, "workers_decode": workers, "workers_write": workers,
            "batch": batch, "sequential": times["sequential"], "overlapped": times["overlapped"],
            "sequential_s": t_seq, "overlapped_s": t_ovl, "sequential_files_per_s": count / t_seq,
            "overlapped_files_per_s": count / t_ovl, "speedup": t_seq / t_ovl, "outputs_identical": identical,
            "output_format": "png", "formats": formats, "ranks": ranks_row}


def _png_psnr(a: Path, b: Path) -> float:
    """PSNR in dB between two 8-bit PNGs of one size (inf when equal)."""
    from PIL import Image

    x, y = (np.asarray(Image.open(f), dtype=np.float64) / 255 for f in (a, b))
    mse = float(np.mean((x - y) ** 2))
    return math.inf if mse == 0 else 10 * math.log10(1 / mse)


def _bench_ranks(ctx: Context, files, out_dir: Path, ranks: int, batch: int, kw: dict) -> dict:
    """The PNG batch shared between ``ranks`` CPU processes (``engine.inference.shard``),
    each with its share of the cores as torch threads; start-up included (processes are
    spawned per run, as ``enhance --devices`` does), so this is a whole command's time, after
    an untimed warm-up command that leaves each process's backbone choice in the disk cache."""
    from engine.cli import main as cli_main
    from engine.models.checkpoint import save_checkpoint

    out_dir.mkdir(parents=True, exist_ok=True)
    ckpt = out_dir.parent / "batch_ranks_model.pt"
    save_checkpoint(ctx.net, ctx.cfg, ckpt, overwrite=True)
    def argv(inputs, out):
        return ["enhance", *map(str, inputs), "-o", str(out), "--checkpoint", str(ckpt), "--devices",
                ",".join(["cpu"] * ranks), "--ratio", str(kw["ratio"]), "--steps", str(kw["steps"]), "--seed",
                str(kw["seed"]), "--batch", str(batch), "--overwrite", "-q"] + (["--deterministic"] if kw.get(
                    "stochastic") is False else [])

    # Untimed: one file per process first, so that each process's backbone choice (for its own
    # thread count, once per machine, ~20-60 s) is in the disk cache before the timed command.
    warm_dir = out_dir.parent / "batch_out_ranks_warm"
    warm_dir.mkdir(parents=True, exist_ok=True)
    if cli_main(argv(files[:ranks], warm_dir)) != 0:
        raise RuntimeError(f"batch warm-up with {ranks} CPU processes failed")
    t0 = time.perf_counter()
    code = cli_main(argv(files, out_dir))
    wall = time.perf_counter() - t0
    if code != 0:
        raise RuntimeError(f"batch with {ranks} CPU processes exited {code}")
    return {"processes": ranks, "s": wall, "files_per_s": len(files) / wall, "startup_included": True}
