"""How long a fresh process compiles the engine's kernels before its first frame, measured on
any machine (no GPU needed): ``python bench/compile_time.py [--arch 90] [--workers N]``.

The engine (``Pipeline`` on CUDA, first frame of a shape) records every autotuned launch its
backbone candidates' loops would make (the fused UNet's convolutions, the head step, the
PyTorch path's exposure step) and compiles every configuration the tuners will try, in
parallel, before timing anything (``kernels._tuning.precompile``). This script makes the same
plan on the CPU (Triton's interpreter records the launches), turns each planned compilation
into the specialisation the JIT would compile (``kernels.aot.launch_spec``) and compiles them
all for a real GPU architecture with Triton's own compiler and ptxas, ``--workers`` at a time
(default: one per core), timing the wall clock against the 60 s first-frame target.

The plan is made on a small frame: the kernels specialise on sizes only through their
divisibility by 16 (and the convolutions not at all), and the engine pads every frame to a
multiple of 16, so a 12 MP frame compiles exactly the same kernels. Writes
``bench/out/compile_time.json``.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
TARGET_S = 60.0


def plan(steps: int = 3, stochastic: bool = False) -> list[dict]:
    """The first frame's compilations as picklable descriptions (module, kernel, signature,
    constexprs, aligned arguments, warps, stages), made under Triton's interpreter."""
    os.environ["TRITON_INTERPRET"] = "1"
    import torch

    from engine.inference.loop import exposure_schedule, run_exposure_diffusion
    from engine.inference.pipeline import DEFAULT_CHECKPOINT
    from engine.models.checkpoint import load_checkpoint
    from engine.models.fused_unet import FusedUNet
    from kernels import aot
    from kernels._tuning import _jit_and_heuristics, precompile_plan, recorded_launches

    net, cfg, meta = load_checkpoint(DEFAULT_CHECKPOINT)
    net = net.float().eval()
    channels = 4 + 4 * cfg.with_photon + 4 * cfg.concat_origin
    fused = FusedUNet(net, torch.float16, backend="triton")
    first = torch.rand(1, channels, 64, 96).half().contiguous(memory_format=torch.channels_last)
    ratio = torch.tensor([100.0])

    def eager(x):  # the PyTorch candidate as it runs on a GPU: fp16 out, channels_last
        return net(x.float()).half().contiguous(memory_format=torch.channels_last)

    with recorded_launches() as launches, torch.no_grad():
        for candidate in (fused, eager):
            run_exposure_diffusion(candidate, first, ratio=ratio, K=torch.tensor([2.0]),
                                   rho=exposure_schedule(ratio, steps), with_photon=cfg.with_photon,
                                   concat_origin=cfg.concat_origin, stochastic=stochastic,
                                   generator=torch.Generator().manual_seed(0), next_dtype=torch.float16,
                                   memory_format=torch.channels_last, backend="triton")
    jobs = []
    for i, (tuner, args, config, options) in enumerate(precompile_plan(launches)):
        fn = _jit_and_heuristics(tuner)[0].fn
        spec = aot.launch_spec(f"{fn.__name__}#{i}", tuner, args, config, options)
        jobs.append({"module": fn.__module__, "kernel": fn.__name__, "name": spec.name, "signature": spec.signature,
                     "constexprs": spec.constexprs, "aligned": list(spec.divisible_by_16),
                     "num_warps": spec.num_warps, "num_stages": spec.num_stages})
    return jobs


def _compile(job_arch) -> dict:
    """Compile one planned job for ``arch`` (in a worker process, interpreter off)."""
    job, arch = job_arch
    import importlib

    from kernels import aot

    kernel = getattr(importlib.import_module(job["module"]), job["kernel"])
    spec = aot.AotSpec(job["name"], kernel, job["signature"], job["constexprs"], job["num_warps"],
                       divisible_by_16=tuple(job["aligned"]), num_stages=job["num_stages"])
    start = time.perf_counter()
    try:
        aot.compile_spec(spec, arch)
        error = None
    except Exception as e:  # noqa: BLE001 - reported per kernel
        error = f"{type(e).__name__}: {e}"
    return {"name": job["name"], "kernel": job["kernel"], "seconds": time.perf_counter() - start, "error": error}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--arch", type=int, choices=(80, 90), default=90, help="GPU architecture (default 90)")
    parser.add_argument("--workers", type=int, default=os.cpu_count() or 1,
                        help="compilations at a time (default: one per core)")
    parser.add_argument("--steps", type=int, default=3, help="steps of the planned loop (default 3)")
    parser.add_argument("--draws", action="store_true", help="plan Poisson draws (default: means, the shipped model)")
    parser.add_argument("--sample", type=int, default=0,
                        help="compile only the first N planned kernels of each kind (a quick check; default: all)")
    parser.add_argument("--json", type=Path, default=ROOT / "bench" / "out" / "compile_time.json")
    args = parser.parse_args(argv)
    if args.workers < 1:
        parser.error(f"argument --workers: must be >= 1, got {args.workers}")
    if args.sample < 0 or args.steps < 1:
        parser.error("--sample must be >= 0 and --steps >= 1")
    jobs = plan(args.steps, args.draws)
    if args.sample:
        seen: dict = {}
        sampled = []
        for job in jobs:
            seen[job["kernel"]] = seen.get(job["kernel"], 0) + 1
            if seen[job["kernel"]] <= args.sample:
                sampled.append(job)
        jobs = sampled
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    env.setdefault("TRITON_DEFAULT_FP_FUSION", "1")
    os.environ.clear()
    os.environ.update(env)  # the workers compile for the GPU, not the interpreter
    import concurrent.futures as cf
    import multiprocessing

    start = time.perf_counter()
    with cf.ProcessPoolExecutor(args.workers, mp_context=multiprocessing.get_context("spawn")) as pool:
        results = list(pool.map(_compile, [(job, args.arch) for job in jobs]))
    wall = time.perf_counter() - start
    by_kernel: dict = {}
    for r in results:
        entry = by_kernel.setdefault(r["kernel"], {"count": 0, "seconds": 0.0})
        entry["count"] += 1
        entry["seconds"] += r["seconds"]
    failures = [r for r in results if r["error"]]
    print(f"first-frame compilations for sm_{args.arch}: {len(results)} kernels, {args.workers} at a time")
    for name, entry in sorted(by_kernel.items()):
        print(f"  {name:28s} {entry['count']:3d} kernels  {entry['seconds']:7.1f} s of compiling")
    print(f"wall time {wall:.1f} s (target <= {TARGET_S:.0f} s: {'met' if wall <= TARGET_S else 'NOT met'}); "
          f"{sum(r['seconds'] for r in results):.1f} s if compiled one after another")
    for r in failures:
        print(f"  FAILED {r['name']}: {r['error']}")
    report = {"arch": args.arch, "workers": args.workers, "cpu": _cpu_name(), "kernels": len(results),
              "sample": args.sample,
              "wall_s": wall, "serial_s": sum(r["seconds"] for r in results), "by_kernel": by_kernel,
              "failures": failures, "target_s": TARGET_S}
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(report, indent=1))
    return 1 if failures else 0


def _cpu_name() -> str:
    from engine.inference.cpu_features import cpu_model_name

    return cpu_model_name()


if __name__ == "__main__":
    sys.path.insert(0, str(ROOT))
    sys.exit(main())
