#!/usr/bin/env bash
# Issue 13 on a CUDA machine (bench/gpu_check.sh's `folder` part): the file-to-file stage
# alone (every output format, the GPU's busy share), the encoders' CPU cost at 12 MP, and
# the enhance command under torchrun (one rank per GPU) on 8 scene files. Logs and JSON
# into the folder given as the first argument.
set -uo pipefail
OUT=${1:?usage: bash bench/folder_check.sh OUT_FOLDER}
PY=${PYTHON:-python3}
status=0
"$PY" bench/throughput.py --skip engine,backbone,kernels,synthesis,training --repeats 2 --quiet \
    --json "$OUT/folder.json" || status=1
"$PY" bench/encoders.py --height 2848 --width 4256 --repeats 3 --json "$OUT/encoders.json" || status=1
"$PY" -c "import sys; from bench.scene import write_scene_files; write_scene_files(sys.argv[1], 8, 2848, 4256)" \
    "$OUT/torchrun_in" || status=1
gpus=$("$PY" -c 'import torch; print(max(1, torch.cuda.device_count()))')
"$PY" -m torch.distributed.run --standalone --nproc_per_node "$gpus" -m training enhance "$OUT"/torchrun_in/*.dng \
    --ratio 100 --format jpeg -o "$OUT/torchrun_out" --overwrite || status=1
rm -rf "$OUT/torchrun_in" "$OUT/torchrun_out"
exit $status
