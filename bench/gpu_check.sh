#!/usr/bin/env bash
# One full pass on a CUDA machine: environment, the CUDA-only tests, the whole suite on
# CUDA, then the main job at 12 MP. Every log and the bench JSON go to $OUT (default
# bench/out/gpu); nothing stops at the first failure, so one call gives everything.
#
#   bash bench/gpu_check.sh              # from the repository root, package installed
#   OUT=/somewhere bash bench/gpu_check.sh
#   bash bench/gpu_check.sh cuda bench   # only some parts: cuda (tests/test_cuda.py),
#                                        # suite (every test), bench (the main job)
#   BANK=deadleaves_bank_256.npy TRAIN_SECONDS=420 bash bench/gpu_check.sh train
#                                        # issue 14's training call (not in the default parts):
#                                        # training/recipes/gpu_train.py from the shipped model,
#                                        # model_fp16.pt (<= 16 MB) + last.pt + logs in $OUT/train
#
# On a machine where the package cannot be pip-installed (no network), put the
# repository on PYTHONPATH and carry the missing wheels (rawpy, nvtx): NOTES.md,
# "First GPU session", has the exact commands.
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
for name in ("rawpy", "nvtx", "cupy", "tifffile", "skimage", "scipy", "tqdm"):
    try:
        module = __import__(name)
        print(f"{name} {getattr(module, '__version__', '?')}")
    except Exception as e:  # report, do not stop: the tests say what is missing
        print(f"{name} MISSING ({type(e).__name__}: {e})")
EOF
} 2>&1 | tee "$OUT/env.txt"

parts=" ${*:-cuda suite bench} "
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

# 4. issue 14: one timed training call from the shipped model (only when asked for)
if [[ $parts == *" train "* ]]; then
  "$PY" training/recipes/gpu_train.py --out "$OUT/train" --seconds "${TRAIN_SECONDS:-420}" \
    --init engine/data/default_model.pt ${BANK:+--bank "$BANK"} 2>&1 | tee "$OUT/train.log" || status=1
fi

echo "gpu_check: exit status $status (logs in $OUT)"
exit $status
