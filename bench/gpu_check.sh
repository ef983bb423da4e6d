#!/usr/bin/env bash
# One full pass on a CUDA machine: environment, the CUDA-only tests, the whole suite on
# CUDA, then the main job at 12 MP. Every log and the bench JSON go to $OUT (default
# bench/out/gpu); nothing stops at the first failure, so one call gives everything.
#
#   bash bench/gpu_check.sh              # from the repository root, package installed
#   OUT=/somewhere bash bench/gpu_check.sh
#   bash bench/gpu_check.sh cuda bench   # only some parts: cuda (tests/test_cuda.py),
#                                        # suite (every test), bench (the main job),
#                                        # folder (issue 13: the file-to-file stage alone,
#                                        # the encoders at 12 MP, enhance under torchrun)
#
# On a machine where the package cannot be pip-installed (no network), put the
# repository on PYTHONPATH and carry the missing wheels (rawpy, nvtx, imagecodecs,
# torchvision, nvidia-ml-py): NOTES.md, "GPU session runbook", has the exact commands.
set -uo pipefail
OUT=${OUT:-bench/out/gpu}
PY=${PYTHON:-python3}
mkdir -p "$OUT"
export PYTHONUNBUFFERED=1
status=0

{
  date -u +"%Y-%m-%dT%H:%M:%SZ"
  git rev-parse HEAD 2>/dev/null || echo "commit: unknown (not a git checkout)"
  nvidia-smi --query-gpu=name,memory.total,driver_version,clocks.max.sm --format=csv 2>&1
  "$PY" - <<'EOF'
import platform, torch, triton, numpy
print("python", platform.python_version(), "| torch", torch.__version__, "| triton", triton.__version__,
      "| numpy", numpy.__version__)
print("cuda", torch.version.cuda, "| device", torch.cuda.get_device_name(0) if torch.cuda.is_available() else None)
for name in ("rawpy", "nvtx", "imagecodecs", "torchvision", "pynvml", "cupy", "tifffile", "skimage", "scipy", "tqdm"):
    try:
        module = __import__(name)
        print(f"{name} {getattr(module, '__version__', '?')}")
    except Exception as e:  # report, do not stop: the tests say what is missing
        print(f"{name} MISSING ({type(e).__name__}: {e})")
EOF
} 2>&1 | tee "$OUT/env.txt"

parts=" ${*:-cuda suite bench folder} "
# 1. the CUDA-only engine checks (graphs vs eager, replays, fp16, GPU vs CPU), verbose
if [[ $parts == *" cuda "* ]]; then
  "$PY" -m pytest -v -rs tests/test_cuda.py 2>&1 | tee "$OUT/pytest_cuda.log" || status=1
fi
# 2. the whole suite with the kernels compiled for this GPU (conftest leaves the interpreter off)
if [[ $parts == *" suite "* ]]; then
  "$PY" -m pytest -q -rs -p no:cacheprovider 2>&1 | tee "$OUT/pytest_all.log" || status=1
fi
# 3. the main job: 12 MP default on CUDA, every stage against its baseline
if [[ $parts == *" bench "* ]]; then
  "$PY" bench/throughput.py --json "$OUT/bench.json" 2>&1 | tee "$OUT/bench.log" || status=1
fi

# 4. issue 13: the folder run alone (every output format, GPU busy share), the encoders'
#    CPU cost at 12 MP, and the CLI under torchrun (one rank per GPU) on 8 scene files
if [[ $parts == *" folder "* ]]; then
  "$PY" bench/throughput.py --skip engine,backbone,kernels,synthesis,training --repeats 2 \
      --json "$OUT/folder.json" 2>&1 | tee "$OUT/folder.log" || status=1
  "$PY" bench/encoders.py --height 2848 --width 4256 --repeats 3 --json "$OUT/encoders.json" 2>&1 \
      | tee "$OUT/encoders.log" || status=1
  "$PY" -c "import sys; from bench.scene import write_scene_files; write_scene_files(sys.argv[1], 8, 2848, 4256)" \
      "$OUT/torchrun_in" || status=1
  gpus=$("$PY" -c 'import torch; print(max(1, torch.cuda.device_count()))')
  "$PY" -m torch.distributed.run --standalone --nproc_per_node "$gpus" -m training enhance "$OUT"/torchrun_in/*.dng \
      --ratio 100 --format jpeg -o "$OUT/torchrun_out" --overwrite 2>&1 | tee "$OUT/torchrun.log" || status=1
  rm -rf "$OUT/torchrun_in" "$OUT/torchrun_out"
fi

echo "gpu_check: exit status $status (logs in $OUT)"
exit $status
