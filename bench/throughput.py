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
  Weights: the same for every run: the shipped default model (``engine.inference.pipeline.
  DEFAULT_CHECKPOINT``) when it exists, else a randomly initialised default UNet
  (seeded); throughput does not depend on the weights' values. ``--checkpoint`` names
  other weights, ``--random-weights`` forces the random UNet.
- CUDA only (``bench/backbone_stage.py``): the backbone alone in fp16 channels_last, one
  frame's passes, cuDNN eager vs our fused Triton UNet vs ``torch.compile`` (default and
  max-autotune-no-cudagraphs, compile time reported), in TFLOP/s (2 x MACs, SPEC §5)
  against the device's measured fp16 matmul rate; a per-kernel table of the fused UNet
  (ms, TFLOP/s, GB/s, fractions of the matmul rate and copy bandwidth); the first frame
  of a fresh process and of a second one (``bench/first_frame.py``). The engine rows
  include the engine with the fused UNet and with cuDNN (the headline lets the engine
  choose, ``backbone_path="auto"``). ``--quick`` skips the compile rows and first frames.
- each fused kernel (pack_bayer, poisson, synthesize_noise, exposure_step, render_srgb)
  against the composition of PyTorch ops it replaces (its reference, same device): GB/s
  and, on CUDA, the fraction of the measured copy bandwidth. On a CPU the production
  path of these ops *is* the reference, so only the reference is timed.
- noise synthesis (ELD P+G+r+u, per-sample parameters from the camera profiles, a batch of
  training patches): fused (CUDA) / batched reference (CPU) against the per-sample
  numpy/scipy synthesis of the public data loaders, in elements/s. The numpy path is
  single-threaded (the share of one core it got is reported), so its rate is the
  single-core rate that issue #4's target refers to.
- a training step (``bench/training_stage.py``): the production trainer (synthesis on the
  device) against the same step fed by a CPU DataLoader doing the numpy synthesis in
  worker processes; ms per step, speedup, and the share of the step spent on data
  (issue #4's target on a GPU: under 5%). CUDA: 8 x 512^2 patches; CPU: 2 x 128^2.
- a file-to-file batch over a folder of DNGs (``bench/batch_stage.py``): PNG written one
  file after the other against decoding in worker processes and encoding in writer
  processes overlapped with the device work (same Pipeline, same bytes); then each output
  format (PNG, JPEG (nvJPEG on CUDA when torchvision works), TIFF, DNG) overlapped: files/s,
  bytes per file, where the main process waited, and on CUDA the GPU's busy share (NVML,
  sampled) and the device span of the groups (CUDA events); on a CPU also the PNG batch
  shared by 2 CPU processes (``enhance --devices cpu,cpu``). Targets of issue #13.

Timing: warm-up runs are excluded (CUDA: ``--warmup`` runs in the timed mode, default 2,
which also captures the CUDA graphs; CPU: default 0 extra, because the deterministic
PSNR run of each configuration precedes its timed runs and warms it); medians with
min/max over ``--repeats``; the runs of a baseline and of what it is compared with are
interleaved (A B A B ...), so that a change of machine load hits both sides alike.
CUDA kernels are timed with several launches per synchronisation, and their GB/s come
from the profiler's device time (launch latency and argument-check syncs left out). Targets of issues #3-#5 are printed beside each figure with
"met" / "missed by ..." (a ``--quick`` smoke run lists the speed targets unjudged: they are
defined for the full run). A table is printed at the end; JSON goes atomically to
``bench/out/throughput.json`` (``--json``; a ``--quick`` run writes
``bench/out/throughput_quick.json`` instead, never over the main run's figures). A stage that raises is reported (its error in
the table, its traceback on stderr and in the JSON) while the other stages still run,
and the exit status is then 1.

Default sizes. CUDA: the 12 MP frame (2848 x 4256 Bayer sites), 10 repeats, 16 batch files
of 12 MP (batch 4, (cores - 1) // 2 decoder and writer processes each). CPU: 1424 x 2128 (3 MP, a quarter of 12 MP, same aspect), 3 repeats, 6 batch
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
import os
import platform
import shutil
import sys
import tempfile
import time
import traceback
from pathlib import Path

import torch

BENCH_DIR = Path(__file__).resolve().parent
sys.path.insert(0, str(BENCH_DIR.parent))
from bench.report import FULL, device_name, git_commit, report, targets, write_json  # noqa: E402
from bench.scene import DEFAULT_ISO, DEFAULT_RATIO, write_scene_dng  # noqa: E402
from bench.backbone_stage import COMPILE_MODES, bench_backbone  # noqa: E402
from bench.batch_stage import bench_batch  # noqa: E402
from bench.cpu_stage import bench_cpu  # noqa: E402
from bench.stages import (Context, bench_engine, bench_kernels, bench_synthesis,  # noqa: E402
                          copy_bandwidth, cpu_has_bf16)
from bench.timing import Progress  # noqa: E402
from bench.training_stage import bench_training, training_sizes  # noqa: E402
import engine.inference.pipeline  # noqa: E402
from engine.argtypes import device_arg, integer_arg, real_arg, resolve_device  # noqa: E402
from engine.inference.pipeline import MAX_RATIO, MAX_SEED, MAX_STEPS  # noqa: E402
from engine import BackboneConfig, load_checkpoint  # noqa: E402

CPU_DEFAULT = (1424, 2128)  # a quarter of FULL (see the module docstring)
QUICK = (136, 200)  # packed 68 x 100: not multiples of 16, so the padding paths run too
DEFAULT_JSON = BENCH_DIR / "out" / "throughput.json"
QUICK_JSON = BENCH_DIR / "out" / "throughput_quick.json"  # a smoke run never replaces the main run's figures
WEIGHTS_NOTE = ("random-init default UNet (seed {seed}), the same weights for the engine and the baseline: {why}, "
                "and throughput does not depend on the weights' values")
STAGES = ("engine", "cpu", "backbone", "kernels", "synthesis", "training", "batch")


# ---------------------------------------------------------------- main
def parse_args(argv):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--device", type=device_arg, default="auto", help="auto (cuda if available), cpu or cuda[:N]")
    ap.add_argument("--height", type=integer_arg(32), help="frame height in Bayer sites (CUDA 2848, CPU 1424, --quick 136)")
    ap.add_argument("--width", type=integer_arg(32), help="frame width in Bayer sites (CUDA 4256, CPU 2128, --quick 200)")
    ap.add_argument("--full", action="store_true", help="the 12 MP frame (2848 x 4256) on any device")
    ap.add_argument("--steps", type=integer_arg(1, MAX_STEPS), default=3, help="network evaluations per frame (default 3)")
    ap.add_argument("--ratio", type=real_arg(0, MAX_RATIO, low_open=True), default=DEFAULT_RATIO, help="exposure ratio of the scene (default 100)")
    ap.add_argument("--repeats", type=integer_arg(1), help="timed runs per figure (CUDA 10, CPU 3, --quick 1)")
    ap.add_argument("--warmup", type=integer_arg(0), help="extra warm-up runs per figure (CUDA 2, CPU 0: see the docstring)")
    ap.add_argument("--quick", action="store_true", help="tiny sizes, one repeat: a smoke run")
    ap.add_argument("--batch-files", type=integer_arg(1), help="files in the file-to-file batch (CUDA 16, CPU 6, --quick 4)")
    ap.add_argument("--batch-height", type=integer_arg(32), help="batch frame height (CUDA: the frame's; CPU 768; --quick 96)")
    ap.add_argument("--batch-width", type=integer_arg(32), help="batch frame width (CUDA: the frame's; CPU 1152; --quick 128)")
    ap.add_argument("--workers", type=integer_arg(1),
                    help="decode and write processes each (default: CUDA (cores - 1) // 2 as enhance --workers auto; "
                         "CPU 1)")
    ap.add_argument("--batch", type=integer_arg(1), help="same-size frames per device call in the file batch (CUDA 4, CPU 1)")
    ap.add_argument("--ranks", type=integer_arg(0), default=None,
                    help="CPU: also run the PNG file batch shared between this many processes (default 2; 0: no)")
    ap.add_argument("--checkpoint", help="weights to use (default: the shipped default model when it exists, "
                                         "else a random-init default UNet, see --seed)")
    ap.add_argument("--random-weights", action="store_true", help="random-init default UNet even when a default model is shipped")
    ap.add_argument("--seed", type=integer_arg(0, MAX_SEED), default=0, help="seed of the random-init weights and the scene")
    ap.add_argument("--skip", default="", help=f"comma-separated stages to skip: {','.join(STAGES)}")
    ap.add_argument("--keep", help="keep the scene, batch inputs and PNG outputs in this folder (default: a temp folder)")
    ap.add_argument("--json", default=None,
                    help=f"JSON output (default {DEFAULT_JSON.relative_to(BENCH_DIR.parent)}; with --quick "
                         f"{QUICK_JSON.relative_to(BENCH_DIR.parent)})")
    ap.add_argument("--quiet", action="store_true", help="no progress bar")
    ap.add_argument("--no-tf32", action="store_true",
                    help="CUDA: strict fp32 convolutions for the fp32 runs (PyTorch's default lets cuDNN use TF32)")
    args = ap.parse_args(argv)
    skip = {s for s in args.skip.split(",") if s}
    if skip - set(STAGES):
        ap.error(f"--skip: unknown stage(s) {sorted(skip - set(STAGES))}; stages are {', '.join(STAGES)}")
    args.skip = skip
    if args.json is None:
        args.json = str(QUICK_JSON if args.quick else DEFAULT_JSON)
    device = resolve_device(args.device)
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
    args.batch_files = args.batch_files if args.batch_files is not None else (4 if args.quick else (16 if cuda else 6))
    args.workers = args.workers or (max(1, ((os.cpu_count() or 2) - 1) // 2) if cuda else 1)
    args.batch = args.batch or (4 if cuda else 1)
    args.ranks = (0 if (cuda or args.quick) else 2) if args.ranks is None else args.ranks
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
    shipped = getattr(engine.inference.pipeline, "DEFAULT_CHECKPOINT", None)
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
    stages = [s for s in STAGES if s not in args.skip and (s != "backbone" or device.type == "cuda")
              and (s != "cpu" or device.type == "cpu")]
    progress = Progress(1 + len(stages), args.quiet)
    ctx = Context(device, net, cfg, args.ratio, args.steps, args.repeats, args.warmup, progress)
    workdir = Path(args.keep) if args.keep else Path(tempfile.mkdtemp(prefix="exposure_bench_"))
    workdir.mkdir(parents=True, exist_ok=True)
    failed: dict[str, str] = {}
    running: list[str] = []  # the stage in progress, if any

    def save_so_far() -> None:
        """The JSON of the stages finished so far (replaced after each stage): a run stopped
        later, even by SIGKILL, keeps what it measured."""
        write_json(Path(args.json), {**results, "failed_stages": failed, "partial": True})

    def stage(name: str, measure) -> None:
        """Run one stage; a failure is recorded (JSON, table, exit status) and the others still run,
        so one broken path does not cost the figures of every other stage."""
        running[:] = [name]
        try:
            results[name] = measure()
        except Exception as e:  # noqa: BLE001 - reported, never swallowed: the run exits 1
            failed[name] = f"{type(e).__name__}: {e}"
            results[name] = {"error": failed[name], "traceback": traceback.format_exc()}
            print(f"\nbench stage '{name}' FAILED:\n{results[name]['traceback']}", file=sys.stderr)
        running.clear()
        progress.done()
        save_so_far()

    stopped = None
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
            stage("engine", lambda: bench_engine(ctx, path))
        if "cpu" in stages:
            stage("cpu", lambda: bench_cpu(ctx, (H, W), include_12mp=not args.quick))
        if "backbone" in stages:
            stage("backbone", lambda: bench_backbone(ctx, H, W, results["copy_bandwidth"]["GBps"],
                                                     compile_modes=() if args.quick else COMPILE_MODES,
                                                     first_frame=not args.quick))
        if "kernels" in stages:
            stage("kernels", lambda: bench_kernels(ctx, H, W, results["copy_bandwidth"]["GBps"] * 1e9))
        if "synthesis" in stages:
            batch, size = (2, 128) if args.quick else ((16, 512) if device.type == "cuda" else (8, 512))
            stage("synthesis", lambda: bench_synthesis(ctx, batch, size))
        if "training" in stages:
            sizes = training_sizes(device, args.quick, os.cpu_count() or 1)
            amp = "bf16" if device.type == "cuda" or cpu_has_bf16() else None
            stage("training", lambda: bench_training(ctx, amp=amp, **sizes))
        if "batch" in stages:
            stage("batch", lambda: bench_batch(ctx, workdir, args.batch_files, bh, bw, args.workers,
                                               min(args.repeats, 2), batch=args.batch, ranks=args.ranks))
    except KeyboardInterrupt:
        # Ctrl-C, or SIGINT from a time limit (bench/gpu_check.sh): report and keep the stages
        # already measured; the stage in progress and those after it have no figures.
        where = running[0] if running else "set-up"
        stopped = f"stopped by SIGINT during '{where}'; stages not reached: " + (
            ", ".join(s for s in stages if s not in results and s != where) or "none")
        failed[where] = "stopped by SIGINT before it finished (no figures)"
        results[where] = {"error": failed[where]}
        print(f"\nbench {stopped}", file=sys.stderr)
    finally:
        progress.close()
        if not args.keep:
            shutil.rmtree(workdir, ignore_errors=True)
    if device.type != "cuda":
        results["backbone"] = {"skipped": "CUDA only (the fp16 matrix rate is a GPU figure)"}
    info["load_average_at_end"] = os.getloadavg()
    results["failed_stages"] = failed
    if stopped:
        results["stopped"] = stopped
    measured = {k: v for k, v in results.items() if k not in failed}
    results["targets"] = targets(measured, device, (H, W) == FULL, args.steps, smoke=args.quick)
    print(report(results))
    write_json(Path(args.json), results)
    print(f"\nJSON written to {args.json}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
