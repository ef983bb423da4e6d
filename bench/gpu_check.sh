#!/usr/bin/env bash
# One pass on a CUDA machine: environment, the CUDA-only tests, the kernel suites on CUDA,
# then the bench at 12 MP, in one call of the device tool of at most 9 minutes (issue 12):
# the whole call has a budget (BUDGET_S, default 540 s) and each part runs under its own
# limit or what is left of the budget, whichever is less, so a slow part cannot eat the
# others' time nor the call overrun. A part stopped at its limit still reports: pytest
# prints its failures, the bench prints and writes the stages it finished (its JSON is
# also saved after every stage). Every log and the bench JSON go to $OUT (default
# bench/out/gpu); the end of the output lists each part's status and the name of every
# failing test. What a call did not reach is named there: run it in the next call.
#
#   bash bench/gpu_check.sh                  # cuda kernels bench (the default: one 9-minute call)
#   bash bench/gpu_check.sh folder           # issue 13, a call of its own
#   BUDGET_S=580 BENCH_S=560 BENCH_ARGS="--repeats 5 --quiet --skip engine,batch" bash bench/gpu_check.sh bench
#   OUT=/somewhere bash bench/gpu_check.sh
#   bash bench/gpu_check.sh cuda bench       # only some parts:
#       cuda     tests/test_cuda.py (graphs, fp16, batches, CUDA reference sampling), verbose
#       kernels  the kernel suites on CUDA (bayer, poisson, noise, exposure, isp, dihedral, CPU-path
#                samplers, device mixes, pipeline, fused UNet convolutions and head)
#       suite    every test (about 10 minutes on an H200: give it a call of its own)
#       bench    bench/throughput.py ($BENCH_ARGS, default --repeats 5 --skip batch: engine, backbone
#                with torch.compile and first frames, kernels, synthesis, training step; the
#                file-to-file stage is the folder part's)
#       training bench/throughput.py's training-step stage alone (the data share of a step)
#       folder   issue 13: the file-to-file stage alone (every output format, GPU busy share),
#                the encoders at 12 MP, enhance under torchrun (bench/folder_check.sh)
#       train    issue 14's training call (not in the default parts): training/recipes/gpu_train.py
#                from the shipped model for TRAIN_SECONDS (default 420; BANK=deadleaves_bank_256.npy),
#                procedural, dead-leaves and textured-leaves scenes (issue 23) in thirds,
#                model_fp16.pt (<= 16 MB) + last.pt + logs in $OUT/train
#
# Time limits in seconds (env): BUDGET_S=540 for the whole call; per part CUDA_S=120 KERNELS_S=200
# SUITE_S=570 BENCH_S=430 TRAINING_S=150 FOLDER_S=400 (the first H200 run: test_cuda 9 s, the kernel
# suites 143 s, before the fused UNet's tests and first-use compiles; the bench was not timed).
# For the train part the budget is raised to fit TRAIN_SECONDS + 120 unless BUDGET_S is given.
# On a machine where the package cannot be pip-installed (no network), put the
# repository on PYTHONPATH and carry the missing wheels (rawpy, nvtx, imagecodecs,
# torchvision, nvidia-ml-py): NOTES.md, "GPU sessions", has the exact commands.
set -uo pipefail
OUT=${OUT:-bench/out/gpu}
PY=${PYTHON:-python3}
BENCH_ARGS=${BENCH_ARGS:---repeats 5 --quiet --skip batch}
parts=" ${*:-cuda kernels bench} "
if [[ -z ${BUDGET_S:-} && $parts == *" train "* ]]; then BUDGET_S=$((${TRAIN_SECONDS:-420} + 180)); fi
BUDGET_S=${BUDGET_S:-540}
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
# The part's limit is cut to what is left of the call's budget (5 s kept for the summary).
run() {
  local name=$1 limit=$2 log=$3
  shift 3
  local t0=$SECONDS rc left=$((BUDGET_S - SECONDS - 5))
  if (( left < 10 )); then
    summary+=("$name: NOT RUN (the call's ${BUDGET_S} s budget is spent)"); status=1; return
  fi
  if (( left < limit )); then limit=$left; fi
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
             --seconds "${TRAIN_SECONDS:-420}" --init engine/data/default_model.pt ${BANK:+--bank "$BANK"} --textured ;;
    *) echo "gpu_check: unknown part '$part' (cuda, kernels, suite, bench, training, folder, train)"; status=2 ;;
  esac
done

echo "=== gpu_check summary"
printf '%s\n' "${summary[@]}"
echo "gpu_check: exit status $status (logs in $OUT)"
exit $status
