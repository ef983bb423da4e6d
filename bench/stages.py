"""The measured stages of the main job (bench/throughput.py): the engine end to end
against the eager fp32 baseline, the backbone alone (CUDA), the device copy bandwidth,
each fused kernel against its PyTorch reference, noise synthesis against the per-sample
numpy path (the file-to-file batch is in ``bench/batch_stage.py``). Each stage takes a
``Context`` and returns a JSON-ready dict (or list of dicts).
"""
from __future__ import annotations

import copy
import dataclasses
import time
from pathlib import Path

import numpy as np
import torch

import kernels
from bench.baseline import EagerLoop, numpy_eld_synthesis
from bench.timing import Progress, device_time_ms, free, psnr, time_fn, time_interleaved
import engine.inference.pipeline
from engine import BackboneConfig, Pipeline, read_raw
from engine.models.backbones import count_macs, unet_macs
from engine.camera import resolve_gain


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
    test = getattr(engine.inference.pipeline, "cpu_supports_bf16", None)
    if test is not None:
        return bool(test())
    checks = [getattr(torch.cpu, n, None) for n in ("_is_avx512_bf16_supported", "_is_amx_tile_supported")]
    return torch.backends.mkldnn.is_available() and any(c() for c in checks if c is not None)


def engine_configs(device) -> list[tuple[str, dict]]:
    """(name, Pipeline options); the first one is the headline: the engine's default."""
    if device.type == "cuda":
        return [("engine fp16 + CUDA graphs", dict(precision="fp16", cuda_graphs=True)),
                ("engine fp16 + CUDA graphs, fused UNet", dict(precision="fp16", cuda_graphs=True, backbone_path="fused")),
                ("engine fp16 + CUDA graphs, cuDNN UNet", dict(precision="fp16", cuda_graphs=True, backbone_path="eager")),
                ("engine fp16, no graphs", dict(precision="fp16", cuda_graphs=False)),
                ("engine fp32 + CUDA graphs", dict(precision="fp32", cuda_graphs=True)),
                ("engine fp32, no graphs", dict(precision="fp32", cuda_graphs=False))]
    # The default: the CPU backbone chosen at the first frame (engine.inference.cpu_backends),
    # then the PyTorch module in each precision the CPU runs natively.
    configs = [("engine default", dict(backbone_path="auto")), ("engine fp32", dict(precision="fp32"))]
    if cpu_has_bf16():
        configs.append(("engine bf16 autocast", dict(precision="bf16")))
    return configs


def loop_flops(cfg: BackboneConfig, net, h: int, w: int, steps: int) -> int:
    """FLOPs (2 x MACs) of ``steps`` backbone forwards on a packed h x w frame (padded to 16)."""
    hp, wp = -(-h // 16) * 16, -(-w // 16) * 16
    if cfg.arch == "unet":
        macs = unet_macs(hp, wp, cfg.in_channels, cfg.out_channels, widths=cfg.options["widths"])
    else:
        macs = count_macs(net, (1, cfg.in_channels, hp, wp))
    return 2 * macs * steps


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
        if name != base and dev.type == "cpu" and not ctx.warmup:
            # the first frame of the timed photon mode: its backbone choice (~20 s on 2 cores) is a
            # once-per-machine cost, not a frame's
            p.note(f"{name}, first frame of the timed mode (backbone choice)")
            engine_run(pipes[name], frame)
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


# ---------------------------------------------------------------- fused kernels
def copy_bandwidth(device: torch.device, nbytes: int, repeats: int) -> dict:
    """Device copy bandwidth (read + write bytes per second) of a large copy."""
    src = torch.empty(nbytes // 4, dtype=torch.float32, device=device).uniform_()
    dst = torch.empty_like(src)
    copy = lambda: dst.copy_(src)  # noqa: E731
    t = time_fn(copy, device, max(repeats, 3), 2, inner=0 if device.type == "cuda" else 1)
    dev_ms = device_time_ms(copy, device, 20)
    ms = dev_ms or t["median_ms"]
    return {"bytes_copied": nbytes, "time": t, "device_ms": dev_ms, "GBps": 2 * nbytes / ms / 1e6}


# Device time per call of the whole op (value checks, key draw and kernel) measured on an
# H200 at the 12 MP default (2848 x 4256), commit b6a82fd, 2026-11-30
# (the first GPU run's bench.log, RESULTS.md), before the sampler was rewritten (issue 11).
RECORDED_2026_11_30_DEVICE_MS = {"_poisson_kernel": 0.918, "_synthesize_kernel": 1.019, "_exposure_fwd_kernel": 0.861}
RECORDED_FRAME = (2848, 4256)


def sampler_stats(dev, fused, sampler, op_device_ms, frame) -> dict:
    """Poisson draws per second of one sampler kernel (its own device time), the launch
    configuration autotune chose, and, on an H200 at the recorded frame size, the ratio to
    the 2026-11-30 whole-op device time (a cross-run comparison: same device model, frame
    and inputs, another process and day)."""
    name, draws = sampler
    kernel_ms = device_time_ms(fused, dev, 20, kernel=name)
    out = {"sampler_kernel": name, "sampler_kernel_ms": kernel_ms, "poisson_draws": draws,
           "G_draws_per_s": (draws / kernel_ms / 1e6) if kernel_ms else None,
           "autotuned_config": tuned_config(name)}
    if "H200" in torch.cuda.get_device_name(dev) and tuple(frame) == RECORDED_FRAME and op_device_ms:
        out["vs_2026_11_30_recorded"] = RECORDED_2026_11_30_DEVICE_MS[name] / op_device_ms
    return out


def tuned_config(kernel_name: str) -> str | None:
    """The configuration triton.autotune picked for the last key it tuned (None: not tuned)."""
    from kernels import exposure, noise
    import importlib

    tuner = {"_poisson_kernel": importlib.import_module("kernels.poisson")._poisson_tuned,
             "_synthesize_kernel": noise._synthesize_tuned, "_exposure_fwd_kernel": exposure._exposure_fwd_tuned}[kernel_name]
    best = getattr(tuner, "best_config", None)
    return None if best is None else f"{best.kwargs} num_warps={best.num_warps}"


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

    def add(name, nbytes, fused, reference, sampler=None):
        """sampler: (Triton kernel name, Poisson draws per call) for the ops built on
        kernels.poisson.poisson_sample: adds that kernel's own device time and draws/s."""
        short = name.split(" ")[0]
        ref_t = time_fn(reference, dev, ctx.repeats, warm, ctx.progress, short + " reference", inner)
        r = {"stage": name, "bytes": nbytes, "reference": ref_t, "reference_GBps": nbytes / ref_t["median_ms"] / 1e6}
        if on_cuda:
            t = time_fn(fused, dev, ctx.repeats, warm, ctx.progress, short + " fused", inner)  # warm-up autotunes
            ctx.progress.note(short + " device time (profiler)")
            dev_ms, ref_dev_ms = device_time_ms(fused, dev, 20), device_time_ms(reference, dev, 5)
            gbps = nbytes / (dev_ms or t["median_ms"]) / 1e6
            r.update(fused=t, fused_device_ms=dev_ms, reference_device_ms=ref_dev_ms, fused_GBps=gbps,
                     GBps_from="device time" if dev_ms else "wall time",
                     speedup=ref_t["median_ms"] / t["median_ms"],
                     speedup_device_time=(ref_dev_ms / dev_ms) if (dev_ms and ref_dev_ms) else None,
                     fraction_of_copy_bw=gbps * 1e9 / bw)
            if sampler is not None:
                r.update(sampler_stats(dev, fused, sampler, dev_ms, (H, W)))
        rows.append(r)

    add("pack_bayer (uint16 -> fp16, 4 ch)", cfa.numel() * 2 + n * 2,
        lambda: kernels.pack_bayer(cfa, "RGGB", 512, 16383, 100.0, out_dtype=torch.float16),
        lambda: kernels.pack_bayer(cfa, "RGGB", 512, 16383, 100.0, out_dtype=torch.float16, backend="torch"))
    add("poisson (mean ~ 1e3, fp32)", n * 8, lambda: kernels.poisson(mu), lambda: kernels.poisson(mu, backend="torch"),
        sampler=("_poisson_kernel", n))
    if on_cuda:  # the 2026-11-30 sampler, same input, same run: the speed-up of the sampler itself
        from bench.legacy_poisson import poisson_2026_11_30

        key = kernels._common.philox_seed(None, dev)
        legacy = lambda: poisson_2026_11_30(mu, key)  # noqa: E731
        t = time_fn(legacy, dev, ctx.repeats, warm, ctx.progress, "poisson 2026-11-30 sampler", inner)
        ms = device_time_ms(legacy, dev, 20) or t["median_ms"]
        r = rows[-1]
        r.update(legacy_sampler_kernel_ms=ms, legacy_sampler_G_per_s=n / ms / 1e6,
                 sampler_speedup_same_run=(ms / r["sampler_kernel_ms"]) if r.get("sampler_kernel_ms") else None)
    kw = dict(ratio=100.0, K=2.0, sigma_TL=3.0, lam=-0.1, sigma_r=1.0, with_photon=True, concat_origin=True,
              out_dtype=torch.float16)
    add("synthesize_noise P+G+r+u (fp32 -> fp16, 12 ch)", n * 4 + n * 3 * 2,
        lambda: kernels.synthesize_noise(clean, "P+G+r+u", **kw),
        lambda: kernels.synthesize_noise(clean, "P+G+r+u", **kw, backend="torch"), sampler=("_synthesize_kernel", n))
    net_out = torch.randn(1, 9, h, w, generator=g).to(dev, torch.float16)
    state = clean.half()
    skw = dict(ratio=100.0, K=2.0, rho=1.0, rho_next=34.0, with_photon=True, concat_origin=True)
    add("exposure_step (9 ch fp16 -> Y fp32 + 12 ch fp16)", n * 9 // 4 * 2 + n * 2 * 2 + n * 4 + n * 3 * 2,
        lambda: kernels.exposure_step(net_out, state, state, **skw),
        lambda: kernels.exposure_step(net_out, state, state, **skw, backend="torch"), sampler=("_exposure_fwd_kernel", n))
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
