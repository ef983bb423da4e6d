"""Timing helpers of the main job (bench/throughput.py): device synchronisation, wall
time of a function (medians with min/max, warm-up excluded, several launches per sync for
short CUDA kernels), interleaved timing of several functions (A B A B ...), CUDA device
time from the profiler, the progress bar, PSNR of two outputs and freeing device memory.
"""
from __future__ import annotations

import gc
import math
import statistics
import sys
import time

import torch
from tqdm import tqdm


# ---------------------------------------------------------------- timing
def summary(times_ms: list[float], warmup: int, **extra) -> dict:
    """The JSON record of a series of timings in ms: median, min, max, count, the warm-up
    runs left out, the raw values (and ``extra`` fields)."""
    return {"median_ms": statistics.median(times_ms), "min_ms": min(times_ms), "max_ms": max(times_ms),
            "repeats": len(times_ms), "warmup": warmup, **extra, "times_ms": times_ms}


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def time_fn(fn, device, repeats: int, warmup: int = 0, progress=None, label: str = "", inner: int = 1) -> dict:
    """Wall time of ``fn()`` in ms (median, min, max, all), warm-up runs excluded.

    ``inner`` calls run between two device synchronisations and the time is divided by
    it: for sub-millisecond CUDA kernels, where one sync per call would dominate
    (``inner=0``: calibrated so that one measurement lasts about 20 ms).
    """
    for i in range(warmup):
        if progress:
            progress.note(f"{label} warm-up {i + 1}/{warmup}")
        fn()
    sync(device)
    if inner == 0:
        t0 = time.perf_counter()
        fn()
        sync(device)
        inner = int(min(1000, max(1, 0.02 // max(time.perf_counter() - t0, 1e-6))))
    times = []
    for i in range(repeats):
        if progress:
            progress.note(f"{label} {i + 1}/{repeats}")
        t0 = time.perf_counter()
        for _ in range(inner):
            fn()
        sync(device)
        times.append((time.perf_counter() - t0) * 1e3 / inner)
    return summary(times, warmup, calls_per_measurement=inner)


class Progress:
    """One tqdm bar over the stages; the postfix says what runs now."""

    def __init__(self, stages: int, quiet: bool = False):
        self.bar = tqdm(total=stages, desc="bench", unit="stage", disable=quiet, file=sys.stderr)

    def note(self, text: str) -> None:
        self.bar.set_postfix_str(text, refresh=True)

    def done(self) -> None:
        self.bar.update()

    def close(self) -> None:
        self.bar.close()


def psnr(a: torch.Tensor, b: torch.Tensor) -> float | None:
    """PSNR in dB of two [0, 1] images; None when identical."""
    mse = float(((a.float() - b.float().to(a.device)) ** 2).mean())
    return None if mse == 0 else 10 * math.log10(1.0 / mse)


def free(device) -> None:
    gc.collect()
    if device.type == "cuda":
        torch.cuda.empty_cache()


def time_interleaved(fns: dict, device, repeats: int, warmup: int, progress, tag: str = "") -> dict:
    """``time_fn`` for several functions, their runs interleaved (A B C A B C ...), so that
    a change of machine load during the stage affects every side of a ratio alike."""
    for name, fn in fns.items():
        for i in range(warmup):
            progress.note(f"{name}{tag} warm-up {i + 1}/{warmup}")
            fn()
    times = {name: [] for name in fns}
    for i in range(repeats):
        for name, fn in fns.items():
            progress.note(f"{name}{tag} {i + 1}/{repeats}")
            sync(device)
            t0 = time.perf_counter()
            fn()
            sync(device)
            times[name].append((time.perf_counter() - t0) * 1e3)
    return {name: summary(t, warmup) for name, t in times.items()}


def device_time_ms(fn, device, calls: int, kernel: str | None = None) -> float | None:
    """CUDA: mean GPU time per call in ms, summed from the profiler's kernel, memcpy and
    memset records. Unlike wall time it leaves out launch latency and the host syncs that
    the ops' argument checks make, so it is the figure to compare with copy bandwidth.
    ``kernel``: count only the records whose name contains it (one Triton kernel, without
    the op's value checks and key draw). None when the profiler gives no device records."""
    if device.type != "cuda":
        return None
    from torch.autograd import DeviceType
    from torch.profiler import ProfilerActivity, profile
    try:
        sync(device)
        with profile(activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA]) as prof:
            for _ in range(calls):
                fn()
            sync(device)
        total_us = sum(e.time_range.elapsed_us() for e in prof.events()
                       if e.device_type == DeviceType.CUDA and not getattr(e, "is_user_annotation", False)
                       and (kernel is None or kernel in e.name))
    except Exception as e:  # a profiler problem must not stop the bench; wall times still stand
        print(f"warning: CUDA profiler failed ({e}); GB/s from wall time", file=sys.stderr)
        return None
    return total_us / calls / 1e3 if total_us > 0 else None
