#!/usr/bin/env bash
# One pass on a CUDA machine: environment, the CUDA-only tests, the kernel suites on CUDA,
# then the main job at 12 MP. Since the fused UNet (compiling and autotuning its kernels at
# first use) and the backbone stage (torch.compile in two modes, first frames of fresh
# processes), run it as two calls of the device tool: `cuda kernels` (<= 330 s) and `bench`
# (<= 440 s). Every log and the bench
# JSON go to $OUT (default bench/out/gpu); nothing stops at the first failure, every part
# has its own time limit (so one slow part cannot eat the others' time), and the end of
# the output lists each part's status and the name of every failing test.
#
#   bash bench/gpu_check.sh                  # cuda kernels bench (the default; about 13 minutes)
#   bash bench/gpu_check.sh cuda kernels     # first call
#   bash bench/gpu_check.sh bench            # second call
#   OUT=/somewhere bash bench/gpu_check.sh
#   bash bench/gpu_check.sh cuda bench       # only some parts:
#       cuda     tests/test_cuda.py (graphs, fp16, batches, CUDA reference sampling), verbose
#       kernels  the kernel suites on CUDA (bayer, poisson, noise, exposure, isp, dihedral, CPU-path
#                samplers, device mixes, pipeline, fused UNet convolutions and head)
#       suite    every test (about 10 minutes on an H200: give it a call of its own)
#       bench    bench/throughput.py (every stage, $BENCH_ARGS, default --repeats 5)
#       training bench/throughput.py's training-step stage alone (the data share of a step)
#       folder   issue 13: the file-to-file stage alone (every output format, GPU busy share),
#                the encoders at 12 MP, enhance under torchrun (bench/folder_check.sh)
#       train    issue 14's training call (not in the default parts): training/recipes/gpu_train.py
#                from the shipped model for TRAIN_SECONDS (default 420; BANK=deadleaves_bank_256.npy),
#                model_fp16.pt (<= 16 MB) + last.pt + logs in $OUT/train
#
# Time limits in seconds (env): CUDA_S=120 KERNELS_S=200 SUITE_S=570 BENCH_S=430 TRAINING_S=150 FOLDER_S=400
# (the first H200 run: test_cuda 9 s, the kernel suites 143 s, before the fused UNet's tests and first-use
# compiles; the bench was not timed; if a part stops at its limit, give it a call of its own with a larger one).
# On a machine where the package cannot be pip-installed (no network), put the
# repository on PYTHONPATH and carry the missing wheels (rawpy, nvtx, imagecodecs,
# torchvision, nvidia-ml-py): NOTES.md, "GPU session runbook", has the exact commands.
set -uo pipefail
OUT=${OUT:-bench/out/gpu}
PY=${PYTHON:-python3}
BENCH_ARGS=${BENCH_ARGS:---repeats 5 --quiet}
mkdir -p "$OUT"
export PYTHONUNBUFFERED=1
status=0
summary=()

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

# run NAME LIMIT_S LOG CMD...: one part under its time limit (SIGINT first, so pytest still
# prints its summary of failures), its status recorded for the summary at the end.
run() {
  local name=$1 limit=$2 log=$3
  shift 3
  local t0=$SECONDS rc
  echo "=== $name (limit ${limit} s): $*"
  timeout --signal=INT --kill-after=15 "$limit" "$@" 2>&1 | tee "$OUT/$log"
  rc=${PIPESTATUS[0]}
  local took=$((SECONDS - t0)) what="ok"
  if [[ $rc -eq 124 || $rc -eq 130 || $rc -eq 137 ]]; then what="STOPPED at its ${limit} s limit"; status=1
  elif [[ $rc -ne 0 ]]; then what="FAILED (exit $rc)"; status=1; fi
  summary+=("$name: $what after ${took} s, log $OUT/$log")
  local failed
  failed=$(grep -E "^(FAILED|ERROR) " "$OUT/$log" | sed 's/^/    /')
  [[ -n $failed ]] && summary+=("$failed")
}

PYTEST=("$PY" -m pytest -p no:cacheprovider -rfEs)
KERNEL_SUITES=(tests/test_bayer.py tests/test_poisson.py tests/test_noise.py tests/test_exposure.py tests/test_isp.py
               tests/test_dihedral.py tests/test_cpu_sampling.py tests/test_device_mix.py tests/test_pipeline.py
               tests/test_conv.py tests/test_head_step.py tests/test_fused_unet.py)  # newest last: a stop spares the rest
parts=" ${*:-cuda kernels bench} "
for part in $parts; do
  case $part in
    cuda) run cuda "${CUDA_S:-120}" pytest_cuda.log "${PYTEST[@]}" -v tests/test_cuda.py ;;
    kernels) run kernels "${KERNELS_S:-200}" pytest_kernels.log "${PYTEST[@]}" -q "${KERNEL_SUITES[@]}" ;;
    suite) run suite "${SUITE_S:-570}" pytest_all.log "${PYTEST[@]}" -q ;;
    # shellcheck disable=SC2086  # BENCH_ARGS is a list of options
    bench) run bench "${BENCH_S:-430}" bench.log "$PY" bench/throughput.py $BENCH_ARGS --json "$OUT/bench.json" ;;
    # shellcheck disable=SC2086
    training) run training "${TRAINING_S:-150}" training.log "$PY" bench/throughput.py $BENCH_ARGS \
                --skip engine,backbone,kernels,synthesis,batch --json "$OUT/training.json" ;;
    folder) run folder "${FOLDER_S:-400}" folder.log bash bench/folder_check.sh "$OUT" ;;
    # shellcheck disable=SC2086  # BANK adds two words when set
    train) run train "$((${TRAIN_SECONDS:-420} + 120))" train.log "$PY" training/recipes/gpu_train.py --out "$OUT/train" \
             --seconds "${TRAIN_SECONDS:-420}" --init engine/data/default_model.pt ${BANK:+--bank "$BANK"} ;;
    *) echo "gpu_check: unknown part '$part' (cuda, kernels, suite, bench, training, folder, train)"; status=2 ;;
  esac
done

echo "=== gpu_check summary"
printf '%s\n' "${summary[@]}"
echo "gpu_check: exit status $status (logs in $OUT)"
exit $status
