"""The CPU table: every backbone candidate of the engine's CPU choice side by side.

``bench_cpu(ctx, (H, W))`` measures, in one run on this CPU:

- the machine's fp32 matmul rate (torch, 2048^3, best of several): what a convolution
  network can at best reach here;
- per candidate of ``engine.inference.cpu_backends`` that is installed (eager fp32
  channels_last, eager bf16 where the CPU has bf16 instructions, torch.compile, ONNX Runtime
  fp32 / int8, OpenVINO fp32 / bf16 / int8) the time of a 3-step frame (the loop with the
  shipped model in the Poisson-means mode: ``steps`` network evaluations and the exposure
  steps between them) at the bench's frame (3 MP on a CPU) and at 12 MP, runs interleaved;
  its fraction of the matmul rate (2 x MACs of the loop's network evaluations per second);
  its PSNR against the eager fp32 loop's output, both finished by the engine's fidelity step
  (>= 45 dB makes it eligible);
- "3 plain fp32 eager passes": the network itself, fp32, contiguous (NCHW) memory, called
  ``steps`` times on the frame: the baseline of the CPU target (the engine's default call
  >= 1.5x faster, within 45 dB);
- the engine's default call (``Pipeline.from_checkpoint(device="cpu")`` with its default
  choice and memory budget) on the same frames, end to end from the decoded frame, with the
  candidate it chose and the choice's own timings;
- the engine's peak memory on a 12 MP frame as a new user meets it (a fresh process
  enhancing a 12 MP DNG into a PNG: ``VmHWM``), against the 1.5 GB target.

At 12 MP each candidate is built, run, timed once and released alone (the bench process
would otherwise hold every runtime's 12 MP buffers at once).
"""
from __future__ import annotations

import copy
import gc
import math
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import torch

from bench.stages import Context, loop_flops
from bench.timing import psnr, time_interleaved
from engine import Pipeline
from engine.inference.cpu_backends import build, cpu_candidates
from engine.inference.cpu_features import cpu_flags, cpu_model_name
from engine.inference.fidelity import SENSOR_CLIP, low_frequency_fidelity
from engine.inference.loop import exposure_schedule, pad_to_multiple, run_exposure_diffusion
from engine.scene import BLACK_LEVEL, WHITE_LEVEL, clean_packed, noise_parameters, render_scene, short_exposure_cfa
from kernels import pack_bayer

FULL_12MP = (2848, 4256)
MEMORY_TARGET = 1.5e9
ROOT = Path(__file__).resolve().parent.parent


def matmul_rate(repeats: int = 5, n: int = 2048) -> float:
    """fp32 GFLOP/s of torch's matmul on this CPU (best of ``repeats``)."""
    a, b = torch.rand(n, n), torch.rand(n, n)
    a @ b
    best = math.inf
    for _ in range(repeats):
        t0 = time.perf_counter()
        a @ b
        best = min(best, time.perf_counter() - t0)
    return 2 * n**3 / best / 1e9


def _frame(H: int, W: int, ratio: float):
    """The bench scene's noisy mosaic (uint16 [H, W]) and its first network input."""
    cfa = short_exposure_cfa(clean_packed(render_scene(H, W, 0)), ratio=ratio)
    return cfa


def bench_cpu(ctx: Context, frame_hw: tuple[int, int], include_12mp: bool = True) -> dict:
    p, net, cfg = ctx.progress, ctx.net, ctx.cfg
    K = noise_parameters()["K"]
    rate = matmul_rate()
    sizes = [tuple(frame_hw)] + ([FULL_12MP] if include_12mp and tuple(frame_hw) != FULL_12MP else [])
    reference_net = copy.deepcopy(net).float().eval().to(memory_format=torch.channels_last)
    plain_net = copy.deepcopy(net).float().eval()  # NCHW: "plain fp32 eager"
    names = cpu_candidates(compile_candidate=True)
    p.note("building the CPU candidates")
    built, build_s, failed = {}, {}, {}
    for name in names:
        t0 = time.perf_counter()
        try:
            built[name] = build(name, reference_net, cfg)
            build_s[name] = time.perf_counter() - t0
        except Exception as e:  # noqa: BLE001 - reported in the table
            failed[name] = f"{type(e).__name__}: {e}"
    engine = Pipeline(copy.deepcopy(net), cfg, device="cpu", backbone_path="auto")  # its default choice
    per_size = []
    for H, W in sizes:
        cfa = _frame(H, W, ctx.ratio)
        first = pack_bayer(torch.from_numpy(cfa.astype(np.int32))[None], "RGGB", float(BLACK_LEVEL),
                           float(WHITE_LEVEL), ctx.ratio, K=K, with_photon=cfg.with_photon,
                           concat_origin=cfg.concat_origin).contiguous(memory_format=torch.channels_last)
        first, (h, w) = pad_to_multiple(first)  # as the engine pads (the UNet needs multiples of 16)
        r = torch.tensor([ctx.ratio])
        loop_kw = dict(ratio=r, K=torch.tensor([K]), rho=exposure_schedule(r, ctx.steps), with_photon=cfg.with_photon,
                       concat_origin=cfg.concat_origin, stochastic=False)
        flops = loop_flops(cfg, net, H // 2, W // 2, ctx.steps)
        # PSNRs compare finished frames: every loop's estimate through the engine's fidelity step
        noisy = pack_bayer(torch.from_numpy(cfa.astype(np.int32))[None], "RGGB", float(BLACK_LEVEL), float(WHITE_LEVEL),
                           ctx.ratio, clip=False)
        finish = lambda y: low_frequency_fidelity(y[..., :h, :w], noisy, engine.fidelity_scale,  # noqa: E731
                                                  sensor_clipped=noisy >= ctx.ratio * SENSOR_CLIP)
        p.note(f"{H}x{W}: fp32 reference")
        large = (H, W) != tuple(frame_hw)
        with torch.inference_mode():
            reference = finish(run_exposure_diffusion(reference_net, first, **loop_kw))
            outputs, runs, times = {}, {}, {}
            if large:
                # 12 MP, one timed run each: every candidate built, run, timed and released
                # alone, so that the bench process does not hold every runtime's 12 MP
                # buffers at once (~19 GB on a 2-core machine with 24 GB)
                built.clear()
                gc.collect()
                for name in [n for n in names if n not in failed]:
                    p.note(f"{H}x{W}: {name} (build and first run)")
                    try:
                        backbone = build(name, reference_net, cfg)
                        outputs[name] = finish(run_exposure_diffusion(backbone, first, **loop_kw))
                        times.update(time_interleaved({name: lambda b=backbone: run_exposure_diffusion(b, first, **loop_kw)},
                                                      torch.device("cpu"), 1, 0, p, f" {H}x{W}"))
                    except Exception as e:  # noqa: BLE001 - reported in the table
                        failed[name] = f"{type(e).__name__}: {e}"
                    backbone = None
                    gc.collect()
            else:
                for name, backbone in built.items():
                    p.note(f"{H}x{W}: {name} (first run)")
                    try:
                        outputs[name] = finish(run_exposure_diffusion(backbone, first, **loop_kw))
                    except Exception as e:  # noqa: BLE001
                        failed[name] = f"{type(e).__name__}: {e}"
                        continue
                    runs[name] = (lambda b=backbone: run_exposure_diffusion(b, first, **loop_kw))
            plain_x = first.contiguous()
            runs["3 plain fp32 eager passes"] = lambda: [plain_net(plain_x) for _ in range(ctx.steps)]
            engine_kw = dict(ratio=ctx.ratio, steps=ctx.steps, K=K, pattern="RGGB", black_level=BLACK_LEVEL,
                             white_level=WHITE_LEVEL, stochastic=False)
            p.note(f"{H}x{W}: the engine's default call (first frame: its choice)")
            t0 = time.perf_counter()
            engine_out = engine(cfa, **engine_kw).raw
            first_call_s = time.perf_counter() - t0
            runs["engine default call"] = lambda: engine(cfa, **engine_kw)
            repeats = 1 if large else ctx.repeats
            times.update(time_interleaved(runs, torch.device("cpu"), repeats, 0, p, f" {H}x{W}"))
        base_ms = times["3 plain fp32 eager passes"]["median_ms"]
        rows = []
        for name, t in times.items():
            ms = t["median_ms"]
            row = {"name": name, "time": t, "ms_per_frame": ms, "speedup_vs_plain_eager": base_ms / ms,
                   "fraction_of_matmul_rate": flops / (ms / 1e3) / 1e9 / rate}
            if name in outputs:
                row["psnr_vs_fp32_dB"] = psnr(outputs[name][0], reference[0])
                row["build_s"] = build_s.get(name)
            if name == "engine default call":
                row["psnr_vs_fp32_dB"] = psnr(engine_out, reference[0])
                row["first_call_s"] = first_call_s
            rows.append(row)
        per_size.append({"frame": [H, W], "megapixels": H * W / 1e6, "loop_GFLOP": flops / 1e9, "rows": rows})
    chosen = sorted(set(engine._chosen.values()))
    return {"cpu": cpu_model_name(), "threads": torch.get_num_threads(),
            "bf16_instructions": bool({"avx512_bf16", "amx_bf16", "bf16"} & set(cpu_flags())),
            "vnni": bool({"avx512_vnni", "avx_vnni"} & set(cpu_flags())), "matmul_fp32_GFLOPs": rate,
            "candidates": names, "failed": failed, "engine_choice": chosen,
            "choice_timings_ms": next(iter(engine.backbone_timings.values()), {}),
            "sizes": per_size, "peak_memory_12MP": peak_memory_12mp() if include_12mp else None}


def peak_memory_12mp(timeout: float = 900) -> dict:
    """A new user's 12 MP frame in a fresh process: the engine's default pipeline
    (``Pipeline.from_checkpoint(device="cpu")``, its backbone choice in a child process of its
    own where the disk cache does not know it) enhancing a 12 MP DNG and saving the result as
    a PNG. Peak resident memory from ``VmHWM`` (the process's own high-water mark; Linux's
    ``ru_maxrss`` would carry the bench process's peak across fork and exec)."""
    import tempfile

    from bench.scene import write_scene_dng

    with tempfile.TemporaryDirectory(prefix="bench-12mp-") as folder:
        dng = Path(folder) / "frame12mp.dng"
        write_scene_dng(dng, *FULL_12MP)
        code = ("import resource, sys, time; sys.path.insert(0, %r)\n"
                "from engine import Pipeline\n"
                "t0 = time.perf_counter()\n"
                "pipe = Pipeline.from_checkpoint(device='cpu')\n"
                "pipe(sys.argv[1], ratio=100.0, steps=3).save(sys.argv[2])\n"
                "seconds = time.perf_counter() - t0\n"
                "try:\n"
                "    peak = next(int(l.split()[1]) * 1024 for l in open('/proc/self/status') if l.startswith('VmHWM'))\n"
                "except (OSError, StopIteration):\n"
                "    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024\n"
                "print(peak, seconds, sorted(set(pipe._chosen.values())))\n") % str(ROOT)
        out = subprocess.run([sys.executable, "-c", code, str(dng), str(Path(folder) / "out.png")],
                             capture_output=True, text=True, timeout=timeout)
    if out.returncode != 0:
        return {"error": out.stderr[-2000:]}
    peak, seconds, chosen = out.stdout.strip().splitlines()[-1].split(" ", 2)
    return {"peak_bytes": int(peak), "target_bytes": MEMORY_TARGET, "met": int(peak) <= MEMORY_TARGET,
            "seconds": float(seconds), "engine_choice": chosen, "what": "enhance a 12 MP DNG and save a PNG"}
