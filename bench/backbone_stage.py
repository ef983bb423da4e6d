"""The backbone stage of the main job (CUDA only): what runs the SID UNet, side by side.

On the engine's padded packed frame in fp16 channels_last, ``steps`` forward passes of:

- PyTorch eager (cuDNN), what the engine ran before the fused kernels;
- our fused Triton UNet (``engine.models.fused_unet``): 22 kernels; its 1x1 head runs
  inside the exposure step in the engine, so here the head is timed apart and added;
- ``torch.compile`` of the same module, "default" and "max-autotune-no-cudagraphs" (what a
  user gets off the shelf), with the time each took to compile (and autotune).

Each in TFLOP/s (2 x MACs) against the device's measured fp16 matmul rate, all interleaved
run by run. Then a per-layer table of the fused UNet: each kernel's ms, TFLOP/s and
fraction of the matmul rate, GB/s and fraction of the copy bandwidth. And the first
frame of a fresh process (compile + autotune: empty Triton and engine caches) and of a
second process (the caches of the first), from ``bench/first_frame.py``.
"""
from __future__ import annotations

import copy
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

from bench.timing import free, sync, time_fn, time_interleaved
from engine.models.fused_unet import FusedUNet
from engine.models.unet import unet_macs
from kernels.head_step import head_output_reference

COMPILE_MODES = ("default", "max-autotune-no-cudagraphs")
BENCH_DIR = Path(__file__).resolve().parent


def matmul_rate(dev, repeats: int, progress) -> tuple[dict, float]:
    """Measured fp16 matmul rate (FLOP/s) of an 8192^3 product: the tensor cores' practical peak."""
    n = 8192
    a = torch.randn(n, n, device=dev, dtype=torch.float16)
    b = torch.randn(n, n, device=dev, dtype=torch.float16)
    t = time_fn(lambda: torch.matmul(a, b), dev, repeats, 3, progress, "fp16 matmul", inner=0)
    return t, 2 * n ** 3 / (t["median_ms"] / 1e3)


def bench_backbone(ctx, H: int, W: int, copy_GBps: float, compile_modes=COMPILE_MODES, first_frame: bool = True) -> dict:
    dev = ctx.device
    t_mm, mm_rate = matmul_rate(dev, ctx.repeats, ctx.progress)
    hp, wp = -(-(H // 2) // 16) * 16, -(-(W // 2) // 16) * 16
    out = _time_backbones(ctx, hp, wp, mm_rate, copy_GBps, compile_modes)  # its tensors die with its frame
    free(dev)
    out.update(matmul_fp16=t_mm, matmul_fp16_TFLOP_per_s=mm_rate / 1e12)
    if first_frame:
        out["first_frame"] = first_frame_latency(H, W, ctx.steps, ctx.progress)
    return out


def _time_backbones(ctx, hp: int, wp: int, mm_rate: float, copy_GBps: float, compile_modes) -> dict:
    dev, p, steps = ctx.device, ctx.progress, ctx.steps
    net = copy.deepcopy(ctx.net).to(dev).half().to(memory_format=torch.channels_last).eval()
    x = torch.rand(1, ctx.cfg.in_channels, hp, wp, device=dev, dtype=torch.float16)
    x = x.contiguous(memory_format=torch.channels_last)
    is_unet = ctx.cfg.arch == "unet"
    flops = 2 * unet_macs(hp, wp, ctx.cfg.in_channels, ctx.cfg.out_channels, widths=ctx.cfg.options["widths"]) \
        if is_unet else None
    fns, compile_s, notes = {}, {}, {}

    def passes(forward):
        def run():
            with torch.inference_mode():
                for _ in range(steps):
                    forward(x)
        return run

    fns["cuDNN eager"] = passes(net)
    fused = None
    if is_unet:
        fused = FusedUNet(net, torch.float16)
        fns["fused Triton UNet"] = passes(lambda t: head_output_reference(fused.features(t), fused.head))
        notes["fused Triton UNet"] = ("22 kernels + the 1x1 head as a PyTorch conv here; in the engine the head runs "
                                      "inside the exposure-step kernel")
        t0 = time.perf_counter()
        with torch.inference_mode():
            fused.features(x)  # compile + autotune (cached on disk for the next process)
        sync(dev)
        compile_s["fused Triton UNet"] = time.perf_counter() - t0
    for mode in compile_modes:
        name = f"torch.compile {mode}"
        p.note(f"compiling the backbone: {name}")
        compiled = torch.compile(copy.deepcopy(net), mode=mode)
        t0 = time.perf_counter()
        with torch.inference_mode():
            compiled(x)
        sync(dev)
        compile_s[name] = time.perf_counter() - t0
        fns[name] = passes(compiled)
    times = time_interleaved(fns, dev, ctx.repeats, max(ctx.warmup, 1), p, " backbone")
    rows = []
    for name, t in times.items():
        ms = t["median_ms"]
        row = {"name": name, "time": t, "ms_per_pass": ms / steps, "passes": steps,
               "compile_s": compile_s.get(name), "note": notes.get(name)}
        if flops:
            row.update(TFLOP_per_s=flops * steps / (ms / 1e3) / 1e12, fraction_of_matmul=flops * steps / (ms / 1e3) / mm_rate)
        rows.append(row)
    compiled_rows = [r for r in rows if r["name"].startswith("torch.compile")]
    best_compile = min(compiled_rows, key=lambda r: r["time"]["median_ms"]) if compiled_rows else None
    layers = _per_layer(fused, x, dev, ctx.repeats, mm_rate, copy_GBps, p) if fused is not None else []
    return {"input": [1, ctx.cfg.in_channels, hp, wp], "GFLOP_per_pass": flops / 1e9 if flops else None, "rows": rows,
            "best_compile": best_compile["name"] if best_compile else None,
            "best_compile_ms_per_frame": best_compile["time"]["median_ms"] if best_compile else None,
            "layers": layers, "timing": f"{steps} passes per run (one frame's backbone work), runs interleaved"}


def _per_layer(fused, x, dev, repeats, mm_rate, copy_GBps, p) -> list[dict]:
    calls = []
    with torch.inference_mode():
        fused.features(x, record=calls)
    rows = []
    for call in calls:
        t = time_fn(call.run, dev, max(repeats, 3), 2, p, call.name, inner=0)
        s = t["median_ms"] / 1e3
        rows.append({"layer": call.name, "time": t, "GFLOP": 2 * call.macs / 1e9,
                     "TFLOP_per_s": 2 * call.macs / s / 1e12, "fraction_of_matmul": 2 * call.macs / s / mm_rate,
                     "GB": call.bytes / 1e9, "GBps": call.bytes / s / 1e9, "fraction_of_copy": call.bytes / s / 1e9 / copy_GBps})
    return rows


def first_frame_latency(H: int, W: int, steps: int, p) -> dict:
    """Seconds from process start to the first enhanced frame (``bench/first_frame.py``):
    a fresh process (empty Triton and engine caches) and a second one with those caches."""
    with tempfile.TemporaryDirectory(prefix="first_frame_") as tmp:
        env = {**os.environ, "TRITON_CACHE_DIR": os.path.join(tmp, "triton"),
               "EXPOSURE_DIFFUSION_CACHE": os.path.join(tmp, "engine")}
        out = {}
        for run in ("fresh process", "second process"):
            p.note(f"first frame: {run}")
            t0 = time.perf_counter()
            proc = subprocess.run([sys.executable, str(BENCH_DIR / "first_frame.py"), "--height", str(H), "--width",
                                   str(W), "--steps", str(steps)], env=env, capture_output=True, text=True)
            wall = time.perf_counter() - t0
            if proc.returncode != 0:
                raise RuntimeError(f"bench/first_frame.py failed ({run}): {proc.stderr[-2000:]}")
            out[run] = {"wall_s": wall, **json.loads(proc.stdout.strip().splitlines()[-1])}
        return out
