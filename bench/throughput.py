"""Main job: side-by-side throughput of the fused ops against their baselines.

    python bench/throughput.py                # full-size (12 MP) on the best device
    python bench/throughput.py --quick        # small sizes, a few seconds
    python bench/throughput.py --device cpu --repeats 5 --json out.json

Every figure is a ratio measured in this one run against a baseline on the same input:
- each fused kernel against the composition of PyTorch ops it replaces (its reference,
  on the same device); GB/s and, on CUDA, the fraction of the measured copy bandwidth.
  On a CPU the production path *is* the reference, so only the reference is timed.
- noise synthesis (ELD P+G+r+u) against the per-sample numpy/scipy synthesis that the
  public reference code runs in its data loaders, in elements per second.
Warm-up runs are excluded; medians with min/max over the repeats. The engine end to end
(issue #3) joins this table when `engine.Pipeline` lands.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import time

import numpy as np
import scipy.stats
import torch
from tqdm import tqdm

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
import kernels  # noqa: E402
from kernels import exposure_step, pack_bayer, poisson, synthesize_noise  # noqa: E402

# Full-resolution default: a 12 MP Sony A7S2-like Bayer frame (4256 x 2848 sites).
FULL_H, FULL_W = 2848, 4256
QUICK_H, QUICK_W = 512, 768


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def time_fn(fn, device, repeats: int, warmup: int = 1) -> dict:
    """Median / min / max wall time of ``fn()`` in seconds, warm-up excluded."""
    for _ in range(warmup):
        fn()
    sync(device)
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        sync(device)
        times.append(time.perf_counter() - t0)
    return {"median_s": statistics.median(times), "min_s": min(times), "max_s": max(times), "repeats": repeats}


def copy_bandwidth(device: torch.device, nbytes: int, repeats: int) -> float:
    """Measured device copy bandwidth (read + write bytes per second) of a large clone."""
    src = torch.empty(nbytes // 4, dtype=torch.float32, device=device).uniform_()
    dst = torch.empty_like(src)
    t = time_fn(lambda: dst.copy_(src), device, repeats)
    return 2 * nbytes / t["median_s"]


# ---------------------------------------------------------------- baselines
def numpy_eld_synthesis(clean: np.ndarray, params: list[dict], dn_scale: float, rng: np.random.Generator) -> np.ndarray:
    """Per-sample numpy/scipy ELD P+G+r+u synthesis, as the public data loaders do it.

    clean: [B, 4, h, w] float32 normalised packed patches; one Python iteration per sample.
    """
    out = np.empty_like(clean)
    for b, p in enumerate(params):
        y = clean[b] * dn_scale / p["ratio"]
        z = rng.poisson(y / p["K"]).astype(np.float32) * p["K"]
        z += scipy.stats.tukeylambda.rvs(p["lam"], scale=p["sigma_TL"], size=y.shape, random_state=rng).astype(np.float32)
        # one row value per CFA row: planes (0, 1) share one, planes (2, 3) the other
        rows = rng.standard_normal((2, 1, y.shape[1], 1)).astype(np.float32) * p["sigma_r"]
        z += np.repeat(rows, 2, axis=0).reshape(4, y.shape[1], 1)
        z += rng.uniform(-0.5, 0.5, size=y.shape).astype(np.float32)
        out[b] = np.clip(z * p["ratio"] / dn_scale, 0, 1)
    return out


# ---------------------------------------------------------------- stages
def bench_kernels(device, H, W, repeats, bw) -> list[dict]:
    rows = []
    g = torch.Generator().manual_seed(0)
    h, w = H // 2, W // 2
    cfa = torch.randint(512, 16383, (1, H, W), generator=g, dtype=torch.int32).to(torch.uint16).to(device)
    clean = torch.rand(1, 4, h, w, generator=g).to(device)
    on_cuda = device.type == "cuda"

    def add(name, nbytes, fused, reference):
        ref_t = time_fn(reference, device, repeats)
        row = {"stage": name, "bytes": nbytes, "reference": ref_t, "reference_GBps": nbytes / ref_t["median_s"] / 1e9}
        if on_cuda:
            fus_t = time_fn(fused, device, repeats)
            row.update(fused=fus_t, fused_GBps=nbytes / fus_t["median_s"] / 1e9,
                       speedup=ref_t["median_s"] / fus_t["median_s"], fraction_of_copy_bw=nbytes / fus_t["median_s"] / bw)
        rows.append(row)

    n = clean.numel()
    add("pack_bayer (uint16 -> fp16, 4 ch)", cfa.numel() * 2 + n * 2,
        lambda: pack_bayer(cfa, "RGGB", 512, 16383, 100.0, out_dtype=torch.float16),
        lambda: pack_bayer(cfa, "RGGB", 512, 16383, 100.0, out_dtype=torch.float16, backend="torch"))
    add("poisson (mean ~ 1e3)", n * 8,
        lambda: poisson(clean * 1e3), lambda: poisson(clean * 1e3, backend="torch"))
    kw = dict(ratio=100.0, K=2.0, sigma_TL=3.0, lam=-0.1, sigma_r=1.0)
    add("synthesize_noise P+G+r+u (fp32 -> fp16, 12 ch)", n * 4 + n * 3 * 2,
        lambda: synthesize_noise(clean, "P+G+r+u", **kw, with_photon=True, concat_origin=True, out_dtype=torch.float16),
        lambda: synthesize_noise(clean, "P+G+r+u", **kw, with_photon=True, concat_origin=True, out_dtype=torch.float16, backend="torch"))
    net_out = torch.randn(1, 9, h, w, generator=g).to(device, torch.float16)
    state = clean.half()
    add("exposure_step (9 ch fp16 -> Y fp32 + 12 ch fp16)", n * 9 / 4 * 2 + n * 2 * 2 + n * 4 + n * 3 * 2,
        lambda: exposure_step(net_out, state, state, ratio=100.0, K=2.0, rho=1.0, rho_next=34.0, with_photon=True, concat_origin=True),
        lambda: exposure_step(net_out, state, state, ratio=100.0, K=2.0, rho=1.0, rho_next=34.0, with_photon=True, concat_origin=True, backend="torch"))
    return rows


def bench_synthesis_vs_numpy(device, H, W, repeats) -> dict:
    """Fused (or, on CPU, the batched reference) ELD synthesis vs the per-sample numpy loop."""
    h, w, batch = H // 2, W // 2, 1
    g = torch.Generator().manual_seed(1)
    clean = torch.rand(batch, 4, h, w, generator=g)
    params = [dict(ratio=100.0, K=2.0, sigma_TL=3.0, lam=-0.1, sigma_r=1.0)] * batch
    rng = np.random.default_rng(0)
    clean_np = clean.numpy()
    np_t = time_fn(lambda: numpy_eld_synthesis(clean_np, params, kernels.DEFAULT_DN_SCALE, rng), torch.device("cpu"), repeats)
    clean_dev = clean.to(device)
    ours_t = time_fn(lambda: synthesize_noise(clean_dev, "P+G+r+u", ratio=100.0, K=2.0, sigma_TL=3.0, lam=-0.1, sigma_r=1.0), device, repeats)
    elements = clean.numel()
    return {
        "stage": "noise synthesis P+G+r+u: ours vs per-sample numpy/scipy",
        "elements": elements,
        "numpy": np_t, "numpy_Melem_per_s": elements / np_t["median_s"] / 1e6,
        "ours": ours_t, "ours_Melem_per_s": elements / ours_t["median_s"] / 1e6,
        "speedup": np_t["median_s"] / ours_t["median_s"],
    }


def git_commit() -> str:
    try:
        return subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True,
                              cwd=os.path.dirname(os.path.abspath(__file__))).stdout.strip() or "unknown"
    except OSError:
        return "unknown"


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--device", default="auto", help="auto (cuda if available), cpu or cuda[:N]")
    ap.add_argument("--height", type=int, default=None, help="Bayer frame height in sites (default 2848; --quick 512)")
    ap.add_argument("--width", type=int, default=None, help="Bayer frame width in sites (default 4256; --quick 768)")
    ap.add_argument("--repeats", type=int, default=None, help="timed repeats per figure (default 5 on CUDA, 3 on CPU)")
    ap.add_argument("--quick", action="store_true", help="small frame and few repeats: a smoke run")
    ap.add_argument("--json", default=os.path.join("bench", "out", "throughput.json"), help="where to write the JSON results")
    args = ap.parse_args(argv)

    device = torch.device("cuda" if args.device == "auto" and torch.cuda.is_available() else ("cpu" if args.device == "auto" else args.device))
    H = args.height or (QUICK_H if args.quick else FULL_H)
    W = args.width or (QUICK_W if args.quick else FULL_W)
    if H < 2 or W < 2 or H % 2 or W % 2:
        ap.error(f"--height and --width must be even and >= 2, got {H} x {W}")
    repeats = args.repeats or (2 if args.quick else (5 if device.type == "cuda" else 3))
    if repeats < 1:
        ap.error("--repeats must be >= 1")

    info = {"date": time.strftime("%Y-%m-%d %H:%M:%S"), "commit": git_commit(), "device": str(device),
            "device_name": torch.cuda.get_device_name(device) if device.type == "cuda" else platform.processor() or platform.machine(),
            "torch": torch.__version__, "threads": torch.get_num_threads(), "frame": [H, W], "repeats": repeats}
    results = {"info": info}
    with tqdm(total=3, desc="bench", unit="stage") as bar:
        bar.set_postfix_str("copy bandwidth")
        bw = copy_bandwidth(device, 4 * (H // 2) * (W // 2) * 4, repeats)
        results["copy_bandwidth_GBps"] = bw / 1e9
        bar.update()
        bar.set_postfix_str("fused kernels")
        results["kernels"] = bench_kernels(device, H, W, repeats, bw)
        bar.update()
        bar.set_postfix_str("synthesis vs numpy")
        results["synthesis"] = bench_synthesis_vs_numpy(device, H, W, repeats)
        bar.update()

    print(f"\n{info['date']}  commit {info['commit']}  device {info['device']} ({info['device_name']})  frame {H}x{W}  repeats {repeats}")
    print(f"copy bandwidth: {results['copy_bandwidth_GBps']:.1f} GB/s")
    print(f"{'stage':52s} {'reference ms':>13s} {'fused ms':>9s} {'GB/s':>7s} {'x ref':>6s} {'of copy':>8s}")
    for r in results["kernels"]:
        ref_ms = r["reference"]["median_s"] * 1e3
        if "fused" in r:
            print(f"{r['stage']:52s} {ref_ms:13.2f} {r['fused']['median_s'] * 1e3:9.2f} {r['fused_GBps']:7.1f} {r['speedup']:6.1f} {r['fraction_of_copy_bw']:8.0%}")
        else:
            print(f"{r['stage']:52s} {ref_ms:13.2f} {'(CPU: reference is the production path)':>33s}")
    s = results["synthesis"]
    print(f"\n{s['stage']}: numpy {s['numpy_Melem_per_s']:.1f} M elem/s, ours {s['ours_Melem_per_s']:.1f} M elem/s, {s['speedup']:.1f}x")

    os.makedirs(os.path.dirname(os.path.abspath(args.json)), exist_ok=True)
    tmp = args.json + ".tmp"
    with open(tmp, "w") as f:
        json.dump(results, f, indent=1)
    os.replace(tmp, args.json)
    print(f"JSON written to {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
