"""Main job: every stage of ExposureDiffusion measured side by side against its baseline.

    python bench/throughput.py                  # best device; CPU: a 3 MP frame, a few minutes
    python bench/throughput.py --full           # the 12 MP frame (4256 x 2848) on any device
    python bench/throughput.py --quick          # tiny sizes, one repeat: a smoke run (< 1 min on CPU)
    python bench/throughput.py --device cpu --height 1424 --width 2128 --steps 3 --repeats 5 --json out.json

Input: a built-in procedural scene (``bench/scene.py``), written as a Sony-A7S-II-like DNG
(RGGB, black 512, white 16383, ISO 3200, ratio 100, ELD noise of the SonyA7S2 profile)
and read back through rawpy, so the measured path is the production path. No download.

Every figure is a ratio measured in this one run against a baseline on the same input
and the same weights:
- engine end to end (``engine.Pipeline``, ``steps`` evaluations) against a plain fp32
  eager implementation of the same loop (``bench/baseline.py``: reference pack, fp32
  contiguous backbone, reference exposure step, Python loop), with the frame already in
  device memory ("decode excluded") and from the file path ("decode included");
  ms/frame, megapixels/s (Bayer sites), speedup, achieved GFLOP/s of the loop, and the
  PSNR of each engine configuration against the baseline in deterministic mode
  (``stochastic=False``: Poisson means), which shows that the same computation is timed.
  CUDA: fp16 and fp32, each with and without CUDA graphs. CPU: fp32 and (where the engine
  accepts it: native bf16 in the CPU) bf16 autocast. The headline is the engine's
  default configuration (fp16 + CUDA graphs; on the CPU its default precision).
  Weights: the same for every run: the shipped default model (``engine.pipeline.
  DEFAULT_CHECKPOINT``) when it exists, else a randomly initialised default UNet
  (seeded); throughput does not depend on the weights' values. ``--checkpoint`` names
  other weights, ``--random-weights`` forces the random UNet.
- CUDA only: the backbone alone in fp16 channels_last, in TFLOP/s (2 x MACs per forward,
  SPEC §5), against the device's measured fp16 matmul rate.
- each fused kernel (pack_bayer, poisson, synthesize_noise, exposure_step, render_srgb)
  against the composition of PyTorch ops it replaces (its reference, same device): GB/s
  and, on CUDA, the fraction of the measured copy bandwidth. On a CPU the production
  path of these ops *is* the reference, so only the reference is timed.
- noise synthesis (ELD P+G+r+u, per-sample parameters from the camera profiles, a batch of
  training patches): fused (CUDA) / batched reference (CPU) against the per-sample
  numpy/scipy synthesis of the public data loaders, in elements/s. The numpy path is
  single-threaded (the share of one core it got is reported), so its rate is the
  single-core rate that issue #4's target refers to.
- a file-to-file batch over a folder of DNGs (written PNGs): decoding in worker processes
  and PNG encoding in writer processes, overlapped with the device work, against the same
  files done one after the other by the same Pipeline; files/s and speedup.

Timing: warm-up runs are excluded (CUDA: ``--warmup`` runs in the timed mode, default 2,
which also captures the CUDA graphs; CPU: default 0 extra, because the deterministic
PSNR run of each configuration precedes its timed runs and warms it); medians with
min/max over ``--repeats``; the runs of a baseline and of what it is compared with are
interleaved (A B A B ...), so that a change of machine load hits both sides alike.
CUDA kernels are timed with several launches per synchronisation, and their GB/s come
from the profiler's device time (launch latency and argument-check syncs left out). Targets of issues #3-#5 are printed beside each figure with
"met" / "missed by ...". A table is printed at the end; JSON goes atomically to
``bench/out/throughput.json`` (``--json``).

Default sizes. CUDA: the 12 MP frame (2848 x 4256 Bayer sites), 10 repeats, 8 batch files
of 12 MP. CPU: 1424 x 2128 (3 MP, a quarter of 12 MP, same aspect), 3 repeats, 6 batch
files of 768 x 1152. The CPU default is smaller because one 12 MP frame with 3 steps of
the full UNet is ~1.7 TMAC: on a 2-core CPU that is ~45 s per frame for the eager fp32
baseline, and the engine stage runs 18 frames (baseline, fp32 and bf16 engine: one
deterministic and 3 timed runs each, then 3 from the file for baseline and headline),
over 10 minutes at 12 MP. The 3 MP default takes about 2.5 minutes on a 2-core EPYC;
``--full --repeats 1`` gives the 12 MP figure there in about 4.5 minutes, with no
spread (one timed run). ``--quick`` takes under 10 s. See bench/RESULTS.md.
"""
from __future__ import annotations

import argparse
import concurrent.futures as cf
import copy
import dataclasses
import gc
import json
import math
import multiprocessing
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

BENCH_DIR = Path(__file__).resolve().parent
sys.path.insert(0, str(BENCH_DIR.parent))
import kernels  # noqa: E402
from bench.baseline import EagerLoop, numpy_eld_synthesis  # noqa: E402
from bench.scene import DEFAULT_ISO, DEFAULT_RATIO, write_scene_dng, write_scene_files  # noqa: E402
import engine.pipeline  # noqa: E402
from engine import BackboneConfig, Pipeline, RawFrame, load_checkpoint, read_raw  # noqa: E402
from engine.atomic import atomic_path  # noqa: E402
from engine.backbones import count_macs, unet_macs  # noqa: E402
from engine.camera import resolve_gain  # noqa: E402

FULL = (2848, 4256)  # 12 MP Sony A7S II-like Bayer frame
CPU_DEFAULT = (1424, 2128)  # a quarter of it (see the module docstring)
QUICK = (128, 192)
DEFAULT_JSON = BENCH_DIR / "out" / "throughput.json"
WEIGHTS_NOTE = ("random-init default UNet (seed {seed}), the same weights for the engine and the baseline: {why}, "
                "and throughput does not depend on the weights' values")
# Targets (issue #5; #3 for bf16 on CPU, #4 for synthesis). GPU targets are defined for an H100, 12 MP, 3 steps.
TARGET_MS = 20.0
TARGET_SPEEDUP_CUDA = 5.0
TARGET_SPEEDUP_CPU = 2.0
TARGET_COPY_FRACTION = 0.70
TARGET_SYNTH_VS_NUMPY = 1000.0
TARGET_BF16_PSNR_DB = 45.0
STAGES = ("engine", "backbone", "kernels", "synthesis", "batch")


# ---------------------------------------------------------------- timing
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
    return {"median_ms": statistics.median(times), "min_ms": min(times), "max_ms": max(times),
            "repeats": repeats, "warmup": warmup, "calls_per_measurement": inner, "times_ms": times}


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


def judge(value, target, kind: str) -> str:
    """"met" or "missed by ..." for a figure against its target.

    kind: "speedup" (higher is better, x), "ms" (lower is better), "fraction" (higher,
    shown in %), "dB" (higher)."""
    if value is None:
        return "n/a"
    if kind == "ms":
        return "met" if value <= target else f"missed by {value - target:.1f} ms ({value / target:.2f}x the target)"
    if value >= target:
        return "met"
    if kind == "fraction":
        return f"missed by {100 * (target - value):.0f} points"
    if kind == "dB":
        return f"missed by {target - value:.1f} dB"
    return f"missed by {100 * (1 - value / target):.1f}% (needs {target / value:.2f}x more)"


def psnr(a: torch.Tensor, b: torch.Tensor) -> float | None:
    """PSNR in dB of two [0, 1] images; None when identical."""
    mse = float(((a.float() - b.float().to(a.device)) ** 2).mean())
    return None if mse == 0 else 10 * math.log10(1.0 / mse)


def free(device) -> None:
    gc.collect()
    if device.type == "cuda":
        torch.cuda.empty_cache()


# ---------------------------------------------------------------- engine end to end
@dataclasses.dataclass
class Context:
    device: torch.device
    net: torch.nn.Module
    cfg: BackboneConfig
    ratio: float
    steps: int
    repeats: int
    warmup: int
    progress: Progress


def cpu_has_bf16() -> bool:
    """Whether the engine accepts precision="bf16" on this CPU (the engine's own test)."""
    test = getattr(engine.pipeline, "cpu_supports_bf16", None)
    if test is not None:
        return bool(test())
    checks = [getattr(torch.cpu, n, None) for n in ("_is_avx512_bf16_supported", "_is_amx_tile_supported")]
    return torch.backends.mkldnn.is_available() and any(c() for c in checks if c is not None)


def engine_configs(device) -> list[tuple[str, dict]]:
    """(name, Pipeline options); the first one is the headline: the engine's default."""
    if device.type == "cuda":
        return [("engine fp16 + CUDA graphs", dict(precision="fp16", cuda_graphs=True)),
                ("engine fp16, no graphs", dict(precision="fp16", cuda_graphs=False)),
                ("engine fp32 + CUDA graphs", dict(precision="fp32", cuda_graphs=True)),
                ("engine fp32, no graphs", dict(precision="fp32", cuda_graphs=False))]
    configs = [("engine fp32", dict(precision="fp32"))]
    if cpu_has_bf16():
        configs.append(("engine bf16 autocast", dict(precision="bf16")))
    default = getattr(engine.pipeline, "default_precision", lambda d: configs[-1][1]["precision"])(device)
    return sorted(configs, key=lambda c: c[1]["precision"] != default)


def loop_flops(cfg: BackboneConfig, net, h: int, w: int, steps: int) -> int:
    """FLOPs (2 x MACs) of ``steps`` backbone forwards on a packed h x w frame (padded to 16)."""
    hp, wp = -(-h // 16) * 16, -(-w // 16) * 16
    if cfg.arch == "unet":
        macs = unet_macs(hp, wp, cfg.in_channels, cfg.out_channels, widths=cfg.options["widths"])
    else:
        macs = count_macs(net, (1, cfg.in_channels, hp, wp))
    return 2 * macs * steps


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
    return {name: {"median_ms": statistics.median(t), "min_ms": min(t), "max_ms": max(t), "repeats": repeats,
                   "warmup": warmup, "times_ms": t} for name, t in times.items()}


def bench_engine(ctx: Context, path: Path) -> dict:
    dev, p = ctx.device, ctx.progress
    frame = read_raw(str(path)).to(dev)  # "decode excluded": the RawFrame already in device memory
    H, W = frame.shape
    mp = H * W / 1e6
    K = resolve_gain(iso=frame.iso, make=frame.make, model=frame.model, source=str(path))
    flops = loop_flops(ctx.cfg, ctx.net, H // 2, W // 2, ctx.steps)
    kw = dict(ratio=ctx.ratio, steps=ctx.steps)
    base = "eager fp32 baseline"
    eager = EagerLoop(ctx.net, ctx.cfg, dev)
    configs = engine_configs(dev)
    headline = configs[0][0]
    # A private copy per Pipeline, so no configuration can touch the module the others use.
    pipes = {name: Pipeline(copy.deepcopy(ctx.net), ctx.cfg, device=dev, **opts) for name, opts in configs}

    def engine_run(pipe, source, **extra):
        res = pipe(source, **kw, **extra)
        if abs(res.K - K) > 1e-6 * K:
            raise RuntimeError(f"engine resolved K = {res.K}, the baseline {K}: not the same computation")
        return res.raw

    # Deterministic outputs (Poisson means) for the PSNR check; on the CPU also each side's warm-up.
    outputs = {}
    for name in [base] + list(pipes):
        p.note(f"{name}, deterministic run")
        outputs[name] = (eager(frame, K=K, stochastic=False, **kw) if name == base
                         else engine_run(pipes[name], frame, stochastic=False))
    reference = outputs.pop(base)
    psnrs = {name: psnr(out, reference) for name, out in outputs.items()}
    del outputs, reference
    free(dev)

    fns = {base: lambda: eager(frame, K=K, **kw)}
    fns.update({name: (lambda pipe=pipe: engine_run(pipe, frame)) for name, pipe in pipes.items()})
    times = time_interleaved(fns, dev, ctx.repeats, ctx.warmup, p)
    # Decode included: the file path in; rawpy decode and the host -> device copy are timed too.
    t_decode = time_fn(lambda: read_raw(str(path)), torch.device("cpu"), max(ctx.repeats, 3), 1, p, "rawpy decode")
    from_file = time_interleaved({base: lambda: eager(str(path), **kw),
                                  headline: lambda: engine_run(pipes[headline], str(path))},
                                 dev, ctx.repeats, 0, p, " from file")

    def row(name, t, decode, base_ms):
        ms = t["median_ms"]
        r = {"name": name, "decode_included": decode, "time": t, "ms_per_frame": ms, "MP_per_s": mp / ms * 1e3,
             "loop_GFLOP_per_s": flops / ms / 1e6}
        if name != base:
            r.update(speedup_vs_eager=base_ms / ms, options=dict(configs)[name])
            if not decode:
                r["psnr_vs_eager_dB"] = psnrs[name]
        return r

    rows = [row(n, t, False, times[base]["median_ms"]) for n, t in times.items()]
    rows += [row(n, t, True, from_file[base]["median_ms"]) for n, t in from_file.items()]
    del pipes, eager, fns
    free(dev)
    return {"frame": [H, W], "megapixels": mp, "K": K, "steps": ctx.steps, "ratio": ctx.ratio,
            "loop_GFLOP": flops / 1e9, "headline": headline, "decode_alone": t_decode, "rows": rows,
            "timing": "runs of the baseline and each configuration interleaved, repeat by repeat"}


# ---------------------------------------------------------------- backbone (CUDA)
def bench_backbone(ctx: Context, H: int, W: int) -> dict:
    """fp16 channels_last backbone forward in TFLOP/s against a large fp16 matmul."""
    dev = ctx.device
    n = 8192
    a = torch.randn(n, n, device=dev, dtype=torch.float16)
    b = torch.randn(n, n, device=dev, dtype=torch.float16)
    t_mm = time_fn(lambda: torch.matmul(a, b), dev, ctx.repeats, 3, ctx.progress, "fp16 matmul", inner=0)
    mm_rate = 2 * n ** 3 / (t_mm["median_ms"] / 1e3)
    del a, b
    hp, wp = -(-(H // 2) // 16) * 16, -(-(W // 2) // 16) * 16
    net = copy.deepcopy(ctx.net).to(dev).half().to(memory_format=torch.channels_last).eval()
    x = torch.rand(1, ctx.cfg.in_channels, hp, wp, device=dev, dtype=torch.float16).contiguous(memory_format=torch.channels_last)
    flops = loop_flops(ctx.cfg, net, hp, wp, 1)

    def forward():
        with torch.inference_mode():
            net(x)

    t = time_fn(forward, dev, ctx.repeats, max(ctx.warmup, 2), ctx.progress, "backbone fp16")
    rate = flops / (t["median_ms"] / 1e3)
    del net, x
    free(dev)
    return {"input": [1, ctx.cfg.in_channels, hp, wp], "GFLOP_per_forward": flops / 1e9, "time": t,
            "TFLOP_per_s": rate / 1e12, "matmul_fp16": t_mm, "matmul_fp16_TFLOP_per_s": mm_rate / 1e12,
            "fraction_of_matmul": rate / mm_rate}


# ---------------------------------------------------------------- fused kernels
def device_time_ms(fn, device, calls: int) -> float | None:
    """CUDA: mean GPU time per call in ms, summed from the profiler's kernel, memcpy and
    memset records. Unlike wall time it leaves out launch latency and the host syncs that
    the ops' argument checks make, so it is the figure to compare with copy bandwidth.
    None when the profiler gives no device records."""
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
                       if e.device_type == DeviceType.CUDA and not getattr(e, "is_user_annotation", False))
    except Exception as e:  # a profiler problem must not stop the bench; wall times still stand
        print(f"warning: CUDA profiler failed ({e}); GB/s from wall time", file=sys.stderr)
        return None
    return total_us / calls / 1e3 if total_us > 0 else None


def copy_bandwidth(device: torch.device, nbytes: int, repeats: int) -> dict:
    """Device copy bandwidth (read + write bytes per second) of a large copy."""
    src = torch.empty(nbytes // 4, dtype=torch.float32, device=device).uniform_()
    dst = torch.empty_like(src)
    copy = lambda: dst.copy_(src)  # noqa: E731
    t = time_fn(copy, device, max(repeats, 3), 2, inner=0 if device.type == "cuda" else 1)
    dev_ms = device_time_ms(copy, device, 20)
    ms = dev_ms or t["median_ms"]
    return {"bytes_copied": nbytes, "time": t, "device_ms": dev_ms, "GBps": 2 * nbytes / ms / 1e6}


def bench_kernels(ctx: Context, H: int, W: int, bw: float) -> list[dict]:
    dev, on_cuda = ctx.device, ctx.device.type == "cuda"
    g = torch.Generator().manual_seed(0)
    h, w = H // 2, W // 2
    cfa = torch.randint(512, 16383, (1, H, W), generator=g, dtype=torch.int32).to(torch.uint16).to(dev)
    clean = torch.rand(1, 4, h, w, generator=g).to(dev)
    mu = (clean * 1e3).contiguous()
    n = clean.numel()
    rows = []
    warm = max(ctx.warmup, 1)
    inner = 0 if on_cuda else 1  # CUDA: several launches per sync (kernels take well under a millisecond)

    def add(name, nbytes, fused, reference):
        short = name.split(" ")[0]
        ref_t = time_fn(reference, dev, ctx.repeats, warm, ctx.progress, short + " reference", inner)
        r = {"stage": name, "bytes": nbytes, "reference": ref_t, "reference_GBps": nbytes / ref_t["median_ms"] / 1e6}
        if on_cuda:
            t = time_fn(fused, dev, ctx.repeats, warm, ctx.progress, short + " fused", inner)
            ctx.progress.note(short + " device time (profiler)")
            dev_ms, ref_dev_ms = device_time_ms(fused, dev, 20), device_time_ms(reference, dev, 5)
            gbps = nbytes / (dev_ms or t["median_ms"]) / 1e6
            r.update(fused=t, fused_device_ms=dev_ms, reference_device_ms=ref_dev_ms, fused_GBps=gbps,
                     GBps_from="device time" if dev_ms else "wall time",
                     speedup=ref_t["median_ms"] / t["median_ms"],
                     speedup_device_time=(ref_dev_ms / dev_ms) if (dev_ms and ref_dev_ms) else None,
                     fraction_of_copy_bw=gbps * 1e9 / bw)
        rows.append(r)

    add("pack_bayer (uint16 -> fp16, 4 ch)", cfa.numel() * 2 + n * 2,
        lambda: kernels.pack_bayer(cfa, "RGGB", 512, 16383, 100.0, out_dtype=torch.float16),
        lambda: kernels.pack_bayer(cfa, "RGGB", 512, 16383, 100.0, out_dtype=torch.float16, backend="torch"))
    add("poisson (mean ~ 1e3, fp32)", n * 8, lambda: kernels.poisson(mu), lambda: kernels.poisson(mu, backend="torch"))
    kw = dict(ratio=100.0, K=2.0, sigma_TL=3.0, lam=-0.1, sigma_r=1.0, with_photon=True, concat_origin=True,
              out_dtype=torch.float16)
    add("synthesize_noise P+G+r+u (fp32 -> fp16, 12 ch)", n * 4 + n * 3 * 2,
        lambda: kernels.synthesize_noise(clean, "P+G+r+u", **kw),
        lambda: kernels.synthesize_noise(clean, "P+G+r+u", **kw, backend="torch"))
    net_out = torch.randn(1, 9, h, w, generator=g).to(dev, torch.float16)
    state = clean.half()
    skw = dict(ratio=100.0, K=2.0, rho=1.0, rho_next=34.0, with_photon=True, concat_origin=True)
    add("exposure_step (9 ch fp16 -> Y fp32 + 12 ch fp16)", n * 9 // 4 * 2 + n * 2 * 2 + n * 4 + n * 3 * 2,
        lambda: kernels.exposure_step(net_out, state, state, **skw),
        lambda: kernels.exposure_step(net_out, state, state, **skw, backend="torch"))
    wb = torch.tensor([2.0, 1.0, 1.5, 1.0], device=dev)
    ccm = torch.tensor([[1.6, -0.4, -0.2], [-0.3, 1.5, -0.2], [0.0, -0.5, 1.5]], device=dev)
    add("render_srgb (fp32 4 ch -> uint8 RGB, full res)", n * 4 + H * W * 3,
        lambda: kernels.render_srgb(clean, "RGGB", wb, ccm),
        lambda: kernels.render_srgb(clean, "RGGB", wb, ccm, backend="torch"))
    return rows


# ---------------------------------------------------------------- synthesis vs numpy
def bench_synthesis(ctx: Context, batch: int, size: int) -> dict:
    """A training batch of clean packed patches -> noisy inputs, per-sample ELD parameters."""
    dev = ctx.device
    g = torch.Generator().manual_seed(1)
    clean = torch.rand(batch, 4, size, size, generator=g)
    params = kernels.sample_noise_params(batch, model="P+G+r+u", generator=g)
    per_sample = [{k: float(getattr(params, k)[b]) for k in ("ratio", "K", "sigma_TL", "lam", "sigma_r")}
                  for b in range(batch)]
    rng = np.random.default_rng(0)
    clean_np = clean.numpy()
    numpy_eld_synthesis(clean_np[:1, :, :8, :8], per_sample[:1], kernels.DEFAULT_DN_SCALE, rng)  # scipy's first call
    cpu0 = time.thread_time()  # numpy / scipy run in this thread only (no BLAS, no threads)
    t_np = time_fn(lambda: numpy_eld_synthesis(clean_np, per_sample, kernels.DEFAULT_DN_SCALE, rng),
                   torch.device("cpu"), min(ctx.repeats, 3), 0, ctx.progress, "numpy synthesis")
    cpu_share = (time.thread_time() - cpu0) / (sum(t_np["times_ms"]) / 1e3)  # < 1: other processes took the core
    clean_dev, params_dev = clean.to(dev), params.to(dev)
    t_ours = time_fn(lambda: kernels.synthesize_noise(clean_dev, "P+G+r+u", params=params_dev), dev,
                     ctx.repeats, max(ctx.warmup, 1), ctx.progress,
                     "synthesis " + ("fused" if dev.type == "cuda" else "reference"), inner=0 if dev.type == "cuda" else 1)
    n = clean.numel()
    np_rate, our_rate = n / t_np["median_ms"] * 1e3, n / t_ours["median_ms"] * 1e3
    return {"batch": [batch, 4, size, size], "elements": n, "model": "P+G+r+u",
            "ours": "fused Triton kernel" if dev.type == "cuda" else f"batched PyTorch reference ({torch.get_num_threads()} threads)",
            "numpy": t_np, "numpy_Melem_per_s": np_rate / 1e6, "numpy_single_core_Melem_per_s": np_rate / 1e6,
            "numpy_cpu_share_of_one_core": cpu_share,
            "ours_time": t_ours, "ours_Melem_per_s": our_rate / 1e6, "speedup": our_rate / np_rate,
            "speedup_vs_single_core_numpy": our_rate / np_rate}


# ---------------------------------------------------------------- file-to-file batch
def _warm_worker(_) -> int:
    """Imports what the workers need (spawned processes start bare) and holds the worker briefly."""
    import engine.rawio  # noqa: F401
    from PIL import Image  # noqa: F401
    time.sleep(0.3)
    return os.getpid()


def _decode_worker(path: str) -> dict:
    """rawpy decode in a worker process: the RawFrame's fields, pixels as numpy."""
    frame = read_raw(path)
    fields = {f.name: getattr(frame, f.name) for f in dataclasses.fields(frame)}
    fields["cfa"] = frame.cfa.numpy()
    return fields


def _write_png_worker(path: str, img: np.ndarray) -> str:
    """8-bit sRGB PNG, written atomically (as ``EnhancedFrame.save`` does)."""
    from PIL import Image
    with atomic_path(Path(path)) as tmp:
        Image.fromarray(img, mode="RGB").save(tmp, format="PNG")
    return path


def bench_batch(ctx: Context, workdir: Path, count: int, H: int, W: int, workers: int, repeats: int) -> dict:
    """A folder of DNGs -> PNGs: one after the other, against decode / write in worker
    processes overlapped with the device work; same Pipeline, same seeds, same outputs.
    The two modes alternate ``repeats`` times; worker start-up is excluded."""
    dev, p = ctx.device, ctx.progress
    p.note(f"writing {count} DNG files of {H}x{W}")
    files = write_scene_files(workdir / "batch_in", count, H, W, ratio=ctx.ratio, iso=DEFAULT_ISO)
    name, opts = engine_configs(dev)[0]
    pipe = Pipeline(copy.deepcopy(ctx.net), ctx.cfg, device=dev, **opts)
    kw = dict(ratio=ctx.ratio, steps=ctx.steps)
    p.note("batch warm-up")
    pipe(str(files[0]), seed=0, **kw)  # shape warm-up (and CUDA graph capture) excluded
    seq_dir, ovl_dir = workdir / "batch_out_sequential", workdir / "batch_out_overlapped"
    seq_dir.mkdir(parents=True, exist_ok=True)
    ovl_dir.mkdir(parents=True, exist_ok=True)

    def sequential():
        for i, f in enumerate(files):
            pipe(str(f), seed=i, **kw).save(seq_dir / (f.stem + ".png"))

    def overlapped(decoders, writers):
        decoded = [decoders.submit(_decode_worker, str(f)) for f in files]  # decoders run ahead of the device
        written = []
        for i, (f, fut) in enumerate(zip(files, decoded)):
            fields = fut.result()
            frame = RawFrame(**{**fields, "cfa": torch.from_numpy(fields["cfa"])})
            img = pipe(frame, seed=i, **kw).srgb().cpu().numpy()
            written.append(writers.submit(_write_png_worker, str(ovl_dir / (f.stem + ".png")), img))
        for w in written:
            w.result()

    spawn = multiprocessing.get_context("spawn")  # no fork of a process holding CUDA / OpenMP state
    with cf.ProcessPoolExecutor(workers, mp_context=spawn) as decoders, \
            cf.ProcessPoolExecutor(workers, mp_context=spawn) as writers:
        p.note("batch: starting worker processes")
        warm = [pool.submit(_warm_worker, i) for pool in (decoders, writers) for i in range(workers)]
        for w in warm:
            w.result()
        times = time_interleaved({"sequential": sequential, "overlapped": lambda: overlapped(decoders, writers)},
                                 dev, repeats, 0, p, " batch")
    identical = all((seq_dir / (f.stem + ".png")).read_bytes() == (ovl_dir / (f.stem + ".png")).read_bytes() for f in files)
    del pipe
    free(dev)
    t_seq, t_ovl = times["sequential"]["median_ms"] / 1e3, times["overlapped"]["median_ms"] / 1e3
    return {"files": count, "frame": [H, W], "engine": name, "workers_decode": workers, "workers_write": workers,
            "sequential": times["sequential"], "overlapped": times["overlapped"],
            "sequential_s": t_seq, "overlapped_s": t_ovl, "sequential_files_per_s": count / t_seq,
            "overlapped_files_per_s": count / t_ovl, "speedup": t_seq / t_ovl, "outputs_identical": identical,
            "output_format": "png"}


# ---------------------------------------------------------------- report
def device_name(device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    try:
        for line in open("/proc/cpuinfo"):
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip() + f", {os.cpu_count()} logical CPUs"
    except OSError:
        pass
    return (platform.processor() or platform.machine()) + f", {os.cpu_count()} logical CPUs"


def git_commit() -> str:
    try:
        out = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True, cwd=BENCH_DIR)
        return out.stdout.strip() or "unknown"
    except OSError:
        return "unknown"


def targets(res: dict, device, full_size: bool, steps: int) -> list[dict]:
    out = []

    def add(what, value, target, kind, shown):
        out.append({"what": what, "value": value, "target": target, "kind": kind, "shown": shown,
                    "status": judge(value, target, kind)})

    eng = res.get("engine")
    if eng:
        head = next(r for r in eng["rows"] if r["name"] == eng["headline"] and not r["decode_included"])
        if device.type == "cuda":
            cond = "" if (full_size and steps == 3) else " [target is for 12 MP, 3 steps]"
            add(f"engine ms/frame (12 MP, 3 steps, H100){cond}", head["ms_per_frame"], TARGET_MS, "ms",
                f"{head['ms_per_frame']:.1f} ms")
            add(f"engine vs eager fp32{cond}", head["speedup_vs_eager"], TARGET_SPEEDUP_CUDA, "speedup",
                f"{head['speedup_vs_eager']:.2f}x")
        else:
            add("engine vs eager fp32 (CPU)", head["speedup_vs_eager"], TARGET_SPEEDUP_CPU, "speedup",
                f"{head['speedup_vs_eager']:.2f}x")
            for r in eng["rows"]:
                if "bf16" in r["name"] and not r["decode_included"]:
                    v = r["psnr_vs_eager_dB"]
                    add("bf16 output within 45 dB PSNR of fp32 (issue #3)", 999.0 if v is None else v,
                        TARGET_BF16_PSNR_DB, "dB", "identical" if v is None else f"{v:.1f} dB")
    if device.type == "cuda":
        for k in res.get("kernels", []):
            add(f"{k['stage'].split(' ')[0]} of copy bandwidth", k["fraction_of_copy_bw"], TARGET_COPY_FRACTION,
                "fraction", f"{k['fraction_of_copy_bw']:.0%}")
        s = res.get("synthesis")
        if s:
            add("synthesis vs single-core numpy (H100)", s["speedup_vs_single_core_numpy"], TARGET_SYNTH_VS_NUMPY,
                "speedup", f"{s['speedup_vs_single_core_numpy']:.0f}x")
    return out


def fmt_t(t: dict, scale: float = 1.0, digits: int = 1) -> str:
    """"median [min-max]" of a timing dict, in ms times ``scale``."""
    v = [t[k] * scale for k in ("median_ms", "min_ms", "max_ms")]
    return f"{v[0]:.{digits}f} [{v[1]:.{digits}f}-{v[2]:.{digits}f}]"


def table(headers: list[str], rows: list[list[str]]) -> str:
    widths = [max(len(str(x)) for x in col) for col in zip(headers, *rows)]
    line = lambda cells: "  ".join(str(c).ljust(w) if i == 0 else str(c).rjust(w)  # noqa: E731
                                   for i, (c, w) in enumerate(zip(cells, widths)))
    return "\n".join([line(headers), "  ".join("-" * w for w in widths)] + [line(r) for r in rows])


def report(res: dict) -> str:
    info, out = res["info"], []
    out.append(f"\n{info['date']}  commit {info['commit']}  device {info['device']} ({info['device_name']})")
    out.append(f"torch {info['torch']}, {info['threads']} threads; frame {info['frame'][0]}x{info['frame'][1]} Bayer "
               f"({info['frame'][0] * info['frame'][1] / 1e6:.2f} MP), steps {info['steps']}, ratio {info['ratio']:g}, "
               f"repeats {info['repeats']} (medians [min-max], warm-up excluded)")
    out.append(f"weights: {info['weights']}")
    if info["device"] == "cpu" and not info["quick"] and info["frame"] != list(FULL):
        out.append("frame: the CPU default is a quarter of the 12 MP frame (--full for 12 MP; see the docstring)")
    load = info.get("load_average_at_start"), info.get("load_average_at_end")
    if load[0] is not None:
        out.append(f"load average (1 min) at start {load[0][0]:.2f}, at end {load[1][0]:.2f} ({os.cpu_count()} logical "
                   "CPUs; the end value includes this run; where it exceeds the CPUs, other processes slowed the timings)")
    if "cudnn_allow_tf32" in info:
        out.append(f"fp32 convolutions (baseline and engine fp32) use TF32: {info['cudnn_allow_tf32']} "
                   "(PyTorch's default is True; --no-tf32 for strict fp32)")
    eng = res.get("engine")
    if eng:
        out.append(f"\nEngine end to end (decode {eng['decode_alone']['median_ms']:.1f} ms alone, rawpy; "
                   f"{eng['loop_GFLOP']:.0f} GFLOP per frame in the backbone; PSNR in deterministic mode)")
        rows = [[r["name"], "included" if r["decode_included"] else "excluded", fmt_t(r["time"]), f"{r['MP_per_s']:.2f}",
                 f"{r['speedup_vs_eager']:.2f}x" if "speedup_vs_eager" in r else "1 (baseline)",
                 ("identical" if r["psnr_vs_eager_dB"] is None else f"{r['psnr_vs_eager_dB']:.1f}") if "psnr_vs_eager_dB" in r else "-",
                 f"{r['loop_GFLOP_per_s']:.0f}"] for r in eng["rows"]]
        out.append(table(["run", "decode", "ms/frame", "MP/s", "vs eager", "PSNR dB", "GFLOP/s"], rows))
    bb = res.get("backbone")
    if bb and "TFLOP_per_s" in bb:
        out.append(f"\nBackbone fp16 channels_last {bb['input']}: {fmt_t(bb['time'])} ms, {bb['TFLOP_per_s']:.1f} TFLOP/s "
                   f"= {bb['fraction_of_matmul']:.0%} of the measured fp16 matmul rate ({bb['matmul_fp16_TFLOP_per_s']:.1f} TFLOP/s)")
    if res.get("kernels"):
        cb = res["copy_bandwidth"]
        out.append(f"\nFused kernels vs the PyTorch ops they replace (copy bandwidth {cb['GBps']:.1f} GB/s"
                   + (", GB/s and 'of copy' from profiler device time; ms are wall time per call)" if cb["device_ms"] else ")"))
        rows = []
        for k in res["kernels"]:
            if "fused" in k:
                dms = k["fused_device_ms"]
                rows.append([k["stage"], fmt_t(k["reference"]), fmt_t(k["fused"]), "-" if dms is None else f"{dms:.3f}",
                             f"{k['fused_GBps']:.1f}", f"{k['speedup']:.1f}x", f"{k['fraction_of_copy_bw']:.0%}"])
            else:
                rows.append([k["stage"], fmt_t(k["reference"]), "(CPU: the reference is the production path)", "-",
                             f"{k['reference_GBps']:.1f}", "-", "-"])
        out.append(table(["kernel", "reference ms", "fused ms", "fused device ms", "GB/s", "x ref", "of copy"], rows))
    s = res.get("synthesis")
    if s:
        out.append(f"\nNoise synthesis {s['model']} on {s['batch']} ({s['elements'] / 1e6:.1f} M elements), per-sample parameters")
        out.append(table(["path", "ms", "M elem/s", "speedup"], [
            ["numpy/scipy per sample (public loaders)", fmt_t(s["numpy"]), f"{s['numpy_Melem_per_s']:.1f}", "1"],
            [f"ours: {s['ours']}", fmt_t(s["ours_time"]), f"{s['ours_Melem_per_s']:.1f}", f"{s['speedup']:.1f}x"]]))
        out.append(f"the numpy path is single-threaded (it got {s['numpy_cpu_share_of_one_core']:.0%} of one core's time): "
                   f"single-core numpy rate {s['numpy_single_core_Melem_per_s']:.1f} M elem/s; "
                   f"ours = {s['speedup_vs_single_core_numpy']:.1f}x single-core numpy")
    b = res.get("batch")
    if b:
        out.append(f"\nFile-to-file batch: {b['files']} DNGs of {b['frame'][0]}x{b['frame'][1]} -> PNG, {b['engine']} "
                   f"(median of {b['sequential']['repeats']} alternating runs)")
        out.append(table(["mode", "s per batch", "files/s", "speedup"], [
            ["sequential (decode, enhance, write)", fmt_t(b["sequential"], 1e-3, 2), f"{b['sequential_files_per_s']:.2f}", "1"],
            [f"overlapped ({b['workers_decode']} decode + {b['workers_write']} write processes)",
             fmt_t(b["overlapped"], 1e-3, 2), f"{b['overlapped_files_per_s']:.2f}", f"{b['speedup']:.2f}x"]]))
        out.append(f"outputs of both modes identical: {b['outputs_identical']}")
    if res.get("targets"):
        out.append("\nTargets")
        out.append(table(["figure", "value", "target", "status"],
                         [[t["what"], t["shown"], ("<= " if t["kind"] == "ms" else ">= ") +
                           (f"{t['target']:.0%}" if t["kind"] == "fraction" else f"{t['target']:g}" +
                            {"ms": " ms", "dB": " dB", "speedup": "x"}[t["kind"]]), t["status"]] for t in res["targets"]]))
    return "\n".join(out)


def write_json(path: Path, data: dict) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(path) as tmp:
        Path(tmp).write_text(json.dumps(data, indent=1, default=str))


# ---------------------------------------------------------------- main
def parse_args(argv):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--device", default="auto", help="auto (cuda if available), cpu or cuda[:N]")
    ap.add_argument("--height", type=int, help="frame height in Bayer sites (CUDA 2848, CPU 1424, --quick 128)")
    ap.add_argument("--width", type=int, help="frame width in Bayer sites (CUDA 4256, CPU 2128, --quick 192)")
    ap.add_argument("--full", action="store_true", help="the 12 MP frame (2848 x 4256) on any device")
    ap.add_argument("--steps", type=int, default=3, help="network evaluations per frame (default 3)")
    ap.add_argument("--ratio", type=float, default=DEFAULT_RATIO, help="exposure ratio of the scene (default 100)")
    ap.add_argument("--repeats", type=int, help="timed runs per figure (CUDA 10, CPU 3, --quick 1)")
    ap.add_argument("--warmup", type=int, help="extra warm-up runs per figure (CUDA 2, CPU 0: see the docstring)")
    ap.add_argument("--quick", action="store_true", help="tiny sizes, one repeat: a smoke run")
    ap.add_argument("--batch-files", type=int, help="files in the file-to-file batch (CUDA 8, CPU 6, --quick 4)")
    ap.add_argument("--batch-height", type=int, help="batch frame height (CUDA: the frame's; CPU 768; --quick 96)")
    ap.add_argument("--batch-width", type=int, help="batch frame width (CUDA: the frame's; CPU 1152; --quick 128)")
    ap.add_argument("--workers", type=int, help="decode and write processes each (default: cores / 4, 1 to 4)")
    ap.add_argument("--checkpoint", help="weights to use (default: the shipped default model when it exists, "
                                         "else a random-init default UNet, see --seed)")
    ap.add_argument("--random-weights", action="store_true", help="random-init default UNet even when a default model is shipped")
    ap.add_argument("--seed", type=int, default=0, help="seed of the random-init weights and the scene")
    ap.add_argument("--skip", default="", help=f"comma-separated stages to skip: {','.join(STAGES)}")
    ap.add_argument("--keep", help="keep the scene, batch inputs and PNG outputs in this folder (default: a temp folder)")
    ap.add_argument("--json", default=str(DEFAULT_JSON), help=f"JSON output (default {DEFAULT_JSON})")
    ap.add_argument("--quiet", action="store_true", help="no progress bar")
    ap.add_argument("--no-tf32", action="store_true",
                    help="CUDA: strict fp32 convolutions for the fp32 runs (PyTorch's default lets cuDNN use TF32)")
    args = ap.parse_args(argv)
    skip = {s for s in args.skip.split(",") if s}
    if skip - set(STAGES):
        ap.error(f"--skip: unknown stage(s) {sorted(skip - set(STAGES))}; stages are {', '.join(STAGES)}")
    args.skip = skip
    if args.device == "auto":
        args.device = "cuda" if torch.cuda.is_available() else "cpu"
    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        ap.error("--device cuda: CUDA is not available on this machine")
    if device.type not in ("cpu", "cuda"):
        ap.error(f"--device must be cpu or cuda[:N], got {args.device}")
    cuda = device.type == "cuda"
    default = QUICK if args.quick else (FULL if (cuda or args.full) else CPU_DEFAULT)
    H, W = args.height or default[0], args.width or default[1]
    if args.full and (args.height or args.width or args.quick):
        ap.error("--full fixes the frame at 2848 x 4256: leave out --height / --width / --quick")
    bh = args.batch_height or (96 if args.quick else (H if cuda else min(H, 768)))
    bw = args.batch_width or (128 if args.quick else (W if cuda else min(W, 1152)))
    for name, v in (("--height", H), ("--width", W), ("--batch-height", bh), ("--batch-width", bw)):
        if v < 32 or v % 2:
            ap.error(f"{name} must be even and >= 32 Bayer sites, got {v}")
    args.repeats = args.repeats if args.repeats is not None else (1 if args.quick else (10 if cuda else 3))
    args.warmup = args.warmup if args.warmup is not None else (2 if cuda else 0)
    args.batch_files = args.batch_files if args.batch_files is not None else (4 if args.quick else (8 if cuda else 6))
    args.workers = args.workers or max(1, min(4, (os.cpu_count() or 1) // 4))
    if args.repeats < 1 or args.warmup < 0 or args.batch_files < 1 or args.steps < 1:
        ap.error("--repeats, --batch-files and --steps must be >= 1, --warmup >= 0")
    if args.steps > 1 and args.ratio <= 1:
        ap.error("--ratio must be > 1 for more than one step")
    return args, device, (H, W), (bh, bw)


def main(argv=None) -> int:
    args, device, (H, W), (bh, bw) = parse_args(argv)
    torch.manual_seed(args.seed)
    if args.no_tf32:
        torch.backends.cudnn.allow_tf32 = False
        torch.backends.cuda.matmul.allow_tf32 = False
    shipped = getattr(engine.pipeline, "DEFAULT_CHECKPOINT", None)
    checkpoint = args.checkpoint or (shipped if shipped is not None and Path(shipped).is_file()
                                     and not args.random_weights else None)
    if checkpoint:
        net, cfg, _ = load_checkpoint(checkpoint)
        weights = (f"checkpoint {checkpoint} ({cfg.arch}, {cfg.in_channels} -> {cfg.out_channels} channels, "
                   f"{cfg.options}), the same weights for the engine and the baseline")
    else:
        cfg = BackboneConfig()
        net = cfg.build()
        weights = WEIGHTS_NOTE.format(seed=args.seed, why="--random-weights given" if args.random_weights
                                      else "the default trained model does not exist yet")
    net.eval()
    info = {"date": time.strftime("%Y-%m-%d %H:%M:%S %Z"), "commit": git_commit(), "device": str(device),
            "device_name": device_name(device), "torch": torch.__version__, "python": platform.python_version(),
            "threads": torch.get_num_threads(), "frame": [H, W], "steps": args.steps, "ratio": args.ratio,
            "repeats": args.repeats, "warmup": args.warmup, "quick": args.quick, "weights": weights,
            "backbone": cfg.to_dict(), "load_average_at_start": os.getloadavg(), "command": "python bench/throughput.py " + " ".join(sys.argv[1:] if argv is None else argv)}
    if device.type == "cuda":
        info.update(cudnn_allow_tf32=torch.backends.cudnn.allow_tf32, matmul_allow_tf32=torch.backends.cuda.matmul.allow_tf32,
                    cudnn_benchmark=torch.backends.cudnn.benchmark, cuda=torch.version.cuda)
    else:
        info["cpu_bf16"] = cpu_has_bf16()
    results = {"info": info}
    stages = [s for s in STAGES if s not in args.skip and (s != "backbone" or device.type == "cuda")]
    progress = Progress(1 + len(stages), args.quiet)
    ctx = Context(device, net, cfg, args.ratio, args.steps, args.repeats, args.warmup, progress)
    workdir = Path(args.keep) if args.keep else Path(tempfile.mkdtemp(prefix="exposure_bench_"))
    workdir.mkdir(parents=True, exist_ok=True)
    try:
        progress.note(f"writing the {H}x{W} scene DNG")
        t0 = time.perf_counter()
        path = write_scene_dng(workdir / "scene.dng", H, W, ratio=args.ratio, iso=DEFAULT_ISO, seed=args.seed)
        results["scene"] = {"file": str(path) if args.keep else path.name, "frame": [H, W], "ratio": args.ratio,
                            "iso": DEFAULT_ISO, "camera": "Sony ILCE-7SM2 (profile SonyA7S2)", "pattern": "RGGB",
                            "bytes": path.stat().st_size, "made_in_s": time.perf_counter() - t0}
        progress.done()
        progress.note("copy bandwidth")
        results["copy_bandwidth"] = copy_bandwidth(device, 4 * (H // 2) * (W // 2) * 4, args.repeats)
        if "engine" in stages:
            results["engine"] = bench_engine(ctx, path)
            progress.done()
        if "backbone" in stages:
            results["backbone"] = bench_backbone(ctx, H, W)
            progress.done()
        if "kernels" in stages:
            results["kernels"] = bench_kernels(ctx, H, W, results["copy_bandwidth"]["GBps"] * 1e9)
            progress.done()
        if "synthesis" in stages:
            batch, size = (2, 128) if args.quick else ((16, 512) if device.type == "cuda" else (8, 512))
            results["synthesis"] = bench_synthesis(ctx, batch, size)
            progress.done()
        if "batch" in stages:
            results["batch"] = bench_batch(ctx, workdir, args.batch_files, bh, bw, args.workers, min(args.repeats, 2))
            progress.done()
    finally:
        progress.close()
        if not args.keep:
            shutil.rmtree(workdir, ignore_errors=True)
    if device.type != "cuda":
        results["backbone"] = {"skipped": "CUDA only (the fp16 matrix rate is a GPU figure)"}
    info["load_average_at_end"] = os.getloadavg()
    results["targets"] = targets(results, device, (H, W) == FULL, args.steps)
    print(report(results))
    write_json(Path(args.json), results)
    print(f"\nJSON written to {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
