#!/usr/bin/env bash
# The CPU runs that made the shipped default model (engine/data/default_model.pt) and the
# ablation arms of its model card, reproducible and resumable (one thread by default).
#
#   bash training/recipes/default_model_runs.sh bank RUNS            # render the dead-leaves bank (once)
#   bash training/recipes/default_model_runs.sh textured-bank RUNS   # render the textured-leaves bank (once)
#   bash training/recipes/default_model_runs.sh run RUNS DATA [MAX]  # train (or resume) RUNS/DATA; DATA in
#                                                                    # procedural | deadleaves | mix | onestep-mix |
#                                                                    # deadleaves-long | onestep-deadleaves |
#                                                                    # twin-multistep | twin-multistep-ste |
#                                                                    # twin-origin | twin-origin-means | twin-means |
#                                                                    # twin-linspace | cascade | cascade-1000 |
#                                                                    # cascade-origin-1000 | cascade-long |
#                                                                    # textured | textured-long | textured-longer |
#                                                                    # geometric | last-heavy | last-heavy-long |
#                                                                    # last-heavy-textured | origin-share |
#                                                                    # last-heavy-textured-long |
#                                                                    # last-heavy-textured-longer | mix-polish |
#                                                                    # mix-polish-128 | mix-polish-wide | step-bias |
#                                                                    # step-bias-later | mix-polish-crop |
#                                                                    # textured-crop | mix-polish-last70 |
#                                                                    # mix-polish-last100 | textured-frame |
#                                                                    # textured-crop-long | textured-crop-longer |
#                                                                    # textured-anchored | textured-crop-longest |
#                                                                    # anchored-longest | refiner | refiner-origin |
#                                                                    # textured-crop-5 | textured-crop-6
#   bash training/recipes/default_model_runs.sh eval RUNS CKPT [evaluate options]   # photo hold-out, BM3D cached
#   bash training/recipes/default_model_runs.sh auto RUNS CKPT OUT   # calibrate steps="auto" into OUT (fp16)
#
# Every run fine-tunes the previous default model (engine/data/default_model.pt, kept in
# git history) with the model card's recipe: fixed equal step weights, the local-mean
# (brightness) term of training.objective, 3 unrolled steps (1 for the one-step twin),
# 96^2 packed patches, batch 4, bf16 autocast, lr 2e-4 halved at 50% and /10 at 90% of
# 1200 steps. deadleaves-long (session 4) continues from the model shipped after the first
# dead-leaves run (engine/data/default_model.pt of commit 33350c6) for 4500 more steps at lr 1e-4
# with the same recipe and schedule; onestep-deadleaves is its one-step twin (the same init
# and data, 1 unrolled step, 5700 optimiser steps = 1200 + 4500, lr 2e-4 with the same
# schedule). twin-multistep and twin-multistep-ste (session 4) start from that twin's final
# weights and train 3 steps for 1000 optimiser steps at lr 5e-5, with the states detached
# between steps (--detach-states) or straight through (SPEC). Session 5's arms are twin-multistep-ste
# with one change each: twin-origin the noisy input A_T beside every state (--concat-origin), twin-means
# Poisson means between the unrolled steps (--mean-photons), twin-linspace the inference schedule as the
# inner exposures (--inner-exposures linspace), twin-origin-means the first two; cascade (the model shipped
# in session 5) means + linspace at lr 1e-4 for 2000 steps (cascade-1000: 1000 steps; cascade-origin-1000:
# with A_T; cascade-long: cascade continued 1500 steps at lr 5e-5). textured (session 8) continues the model
# shipped in session 5 (engine/data/default_model.pt of commit 5573d5c) with cascade's recipe at lr 5e-5 for 3000
# steps on dead leaves and textured leaves (training.textured_leaves) half and half; textured-long continues its
# # final weights 4000 steps more with the same recipe, textured-longer those 4500 more. Session 9's arms continue
# the model shipped in session 8 (commit 4b4fa78) 2000 steps with textured-longer's recipe and one change each:
# geometric trains on the geometric inference schedule (--inner-exposures geometric, rho_i = r^(i/3): the states
# keep more of the noisy input), last-heavy weights the steps 0.2 / 0.3 / 0.5 (--step-weights); last-heavy-long
# continues last-heavy's final weights 5000 steps with its recipe, last-heavy-textured the same on textured leaves
# alone (no dead-leaves bank), last-heavy-textured-long continues that 3000 steps more (the model shipped in
# session 9); last-heavy-textured-longer (session 10, not kept) continues that model 8000 steps more with the same
# recipe; mix-polish (session 10, not kept) continues it 3000 steps on dead and textured leaves half and half at
# lr 2.5e-5; origin-share adds the noisy input A_T beside every state (--concat-origin), its columns started at 0.2
# of the state's (--origin-share 0.2, training/init_weights.py), 3000 steps from last-heavy's final weights with
# its recipe. Session 11's arms (none kept) start from the session-9 default as shipped: mix-polish-128 is
# mix-polish on 128^2 patches, batch 2 (the same pixels per step, more context per patch), mix-polish-wide on ratios
# U(50, 300) instead of U(100, 300) (x100 inside the training range rather than at its edge); step-bias and
# step-bias-later screen a step embedding (training/recipes/step_bias_screen.py: per-step bias offsets on every
# convolution, trained alone over the frozen network for 1500 steps on mix-polish's data at lr 5e-5; step-bias-later
# keeps the first step's offsets at zero). Session 12's arms light the leaves scenes as crops of larger frames
# (train --illumination crop, training/deadleaves_scenes.py) from the same start: mix-polish-crop is mix-polish so
# lit, textured-crop the session-9 default's own last recipe (textured leaves alone, lr 5e-5, 3000 steps) so lit;
# mix-polish-last70 and mix-polish-last100 are mix-polish with more of the loss on the last step (step weights
# 0.1 / 0.2 / 0.7 and 0 / 0 / 1: where SPEC's learnable weights run, the step with the lowest loss); textured-frame
# is textured-crop lit as before (its control), textured-crop-long continues textured-crop 3000 steps more.
# Session 13: textured-crop-longer continues textured-crop-long 3000 steps more (the same recipe); textured-anchored
# is that run with every intermediate estimate brought to the data's local means before the next state is made
# (train --anchor-states; session 13 ran it through the screen training/recipes/step_fidelity_screen.py, whose own
# copy of that loss had the same gradients, to rounding). textured-crop-longest continues textured-crop-longer
# (shipped at commit adcaa6a) 3000 steps more with its recipe; anchored-longest is that run with --anchor-states.
# Session 14: refiner screens weights of their own for the later steps (training/recipes/refiner_screen.py: the
# evaluations after the first run through a copy of the network, trained alone over the frozen default
# textured-crop-longest for 3000 steps of its recipe at lr 1e-4); refiner-origin is that run with the noisy input
# beside every state (--concat-origin; the refiner's origin columns start at 0.2 of its state columns, --origin-share
# 0.2, so the frozen first evaluation is the default's exactly). textured-crop-5 continues textured-crop-longest
# (shipped at commit efefa92) 3000 steps more with its recipe: the fifth such stage; textured-crop-6 the sixth.
# A run stops after
# MAX more optimiser steps when given; started again with the same folder it resumes exactly where it stopped
# (checkpoints every 25 steps). THREADS (default 1): torch CPU threads.
# The dead-leaves scenes need the deadleaves package; on Python 3.11 set
# EXPOSURE_DIFFUSION_DEADLEAVES_PATH (see training/deadleaves_scenes.py).
set -euo pipefail
cd "$(dirname "$0")/../.."
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}" OMP_NUM_THREADS="${OMP_NUM_THREADS:-${THREADS:-1}}" MKL_NUM_THREADS=1
what=$1; runs=$2
bank="$runs/deadleaves_bank_256.npy"
# shipped_default COMMIT FILE: the default model as shipped at COMMIT, written to FILE once (through a
# temporary name, so a failed git show leaves no empty FILE behind for the next run to load).
shipped_default() {
  if [ ! -f "$2" ]; then
    mkdir -p "$(dirname "$2")"
    git show "$1:engine/data/default_model.pt" > "$2.part" && mv "$2.part" "$2" || { rm -f "$2.part"; exit 1; }
  fi
}
# The init weights: the default model as shipped before these runs (commit 3d4e87b).
init="$runs/init_default_3d4e87b.pt"
shipped_default 3d4e87b "$init"
case "$what" in
  bank)
    python -c "import torch; torch.set_num_threads(1)
from training.deadleaves_scenes import render_bank
render_bank('$bank', 100, 256, seed=0, progress=True)" ;;
  textured-bank)
    python -m training.textured_leaves --out "$runs/textured_bank_256.npy" --n 200 --size 256 --seed 0 ;;
  run)
    data=$3; max=${4:-}
    steps=3; from="$init"; lr=2e-4; epochs=12; extra=(); patch=96; batch=4
    train=(python -c "import torch; torch.set_num_threads(${THREADS:-1}); import sys; from training.cli import main; sys.exit(main(sys.argv[1:]))")
    case "$data" in
      procedural) src=() ;;
      deadleaves) src=(--deadleaves-bank "$bank") ;;
      deadleaves-long)
        src=(--deadleaves-bank "$bank"); lr=1e-4; epochs=45; from="$runs/init_default_33350c6.pt"
        shipped_default 33350c6 "$from" ;;
      onestep-deadleaves) src=(--deadleaves-bank "$bank"); steps=1; epochs=57 ;;
      twin-multistep|twin-multistep-ste)
        src=(--deadleaves-bank "$bank"); lr=5e-5; epochs=10; from="$runs/onestep-deadleaves/model_final.pt"
        if [ "$data" = twin-multistep ]; then src+=(--detach-states); fi ;;
      cascade|cascade-1000|cascade-origin-1000)
        # Session 5's recipe (the shipped model): from the twin, Poisson means between the unrolled steps
        # (--mean-photons: each state holds the previous estimate exactly, as the engine's means mode gives it)
        # on the inference schedule (--inner-exposures linspace), lr 1e-4, 2000 steps. cascade-1000: the
        # first screen, 1000 steps; cascade-origin-1000: the same with A_T beside every state (--concat-origin).
        src=(--deadleaves-bank "$bank" --mean-photons --inner-exposures linspace); lr=1e-4; epochs=20
        from="$runs/onestep-deadleaves/model_final.pt"
        if [ "$data" = cascade-origin-1000 ]; then src+=(--concat-origin); fi
        if [ "$data" != cascade ]; then epochs=10; fi ;;
      cascade-long)
        # cascade continued: 1500 more steps of the same recipe at lr 5e-5 from its final weights.
        src=(--deadleaves-bank "$bank" --mean-photons --inner-exposures linspace); lr=5e-5; epochs=15
        from="$runs/cascade/model_final.pt" ;;
      textured)
        src=(--deadleaves-bank "$bank" --textured-bank "$runs/textured_bank_256.npy" --mean-photons
             --inner-exposures linspace); lr=5e-5; epochs=30; from="$runs/init_default_5573d5c.pt"
        shipped_default 5573d5c "$from" ;;
      textured-long)
        src=(--deadleaves-bank "$bank" --textured-bank "$runs/textured_bank_256.npy" --mean-photons
             --inner-exposures linspace); lr=5e-5; epochs=40; from="$runs/textured/model_final.pt" ;;
      textured-longer)
        src=(--deadleaves-bank "$bank" --textured-bank "$runs/textured_bank_256.npy" --mean-photons
             --inner-exposures linspace); lr=5e-5; epochs=45; from="$runs/textured-long/model_final.pt" ;;
      geometric|last-heavy)
        src=(--deadleaves-bank "$bank" --textured-bank "$runs/textured_bank_256.npy" --mean-photons)
        lr=5e-5; epochs=20; from="$runs/init_default_4b4fa78.pt"
        shipped_default 4b4fa78 "$from"
        if [ "$data" = geometric ]; then src+=(--inner-exposures geometric)
        else src+=(--inner-exposures linspace); extra=(--step-weights 0.2 0.3 0.5); fi ;;
      last-heavy-long|last-heavy-textured)
        src=(--textured-bank "$runs/textured_bank_256.npy" --mean-photons --inner-exposures linspace)
        if [ "$data" = last-heavy-long ]; then src+=(--deadleaves-bank "$bank"); fi
        lr=5e-5; epochs=50; from="$runs/last-heavy/model_final.pt"; extra=(--step-weights 0.2 0.3 0.5) ;;
      last-heavy-textured-long|last-heavy-textured-longer|mix-polish|mix-polish-128|mix-polish-wide|step-bias|\
      step-bias-later|mix-polish-crop|textured-crop|mix-polish-last70|mix-polish-last100|textured-frame|\
      textured-crop-long|textured-crop-longer|textured-anchored|textured-crop-longest|anchored-longest|refiner|refiner-origin|textured-crop-5|textured-crop-6)
        src=(--textured-bank "$runs/textured_bank_256.npy" --mean-photons --inner-exposures linspace)
        lr=5e-5; epochs=30; from="$runs/last-heavy-textured-long/model_final.pt"; extra=(--step-weights 0.2 0.3 0.5)
        case "$data" in
          last-heavy-textured-long) from="$runs/last-heavy-textured/model_final.pt" ;;
          last-heavy-textured-longer) epochs=80 ;;
          mix-polish|mix-polish-128|mix-polish-wide|mix-polish-crop|mix-polish-last70|mix-polish-last100)
            src=(--deadleaves-bank "$bank" "${src[@]}"); lr=2.5e-5
            if [ "$data" = mix-polish-last70 ]; then extra=(--step-weights 0.1 0.2 0.7); fi
            if [ "$data" = mix-polish-last100 ]; then extra=(--step-weights 0 0 1); fi
            if [ "$data" = mix-polish-128 ]; then patch=128; batch=2; fi
            if [ "$data" = mix-polish-wide ]; then extra+=(--ratio-range 50 300); fi ;;&
          mix-polish-crop|textured-crop|textured-crop-long|textured-crop-longer|textured-anchored|textured-crop-longest|\
          anchored-longest|refiner|refiner-origin|textured-crop-5|textured-crop-6)
            extra+=(--illumination crop) ;;&
          step-bias|step-bias-later)
            src=(--deadleaves-bank "$bank" "${src[@]}"); epochs=15
            train=(python training/recipes/step_bias_screen.py --threads "${THREADS:-1}" --freeze-base)
            if [ "$data" = step-bias-later ]; then train+=(--keep-first); fi
            train+=(--) ;;&
          mix-polish-128|mix-polish-wide|step-bias|step-bias-later|mix-polish-crop|textured-crop|\
          mix-polish-last70|mix-polish-last100|textured-frame)
            # session 11 (and 12): from the shipped file itself (float16 weights; the session-9 default, commit d99bc1b)
            from="$runs/init_default_d99bc1b.pt"
            shipped_default d99bc1b "$from" ;;
          textured-crop-long) from="$runs/textured-crop/model_final.pt" ;;
          textured-crop-longer|textured-anchored) from="$runs/textured-crop-long/model_final.pt" ;;&
          textured-crop-longest|anchored-longest) from="$runs/textured-crop-longer/model_final.pt" ;;&
          textured-anchored|anchored-longest) extra+=(--anchor-states) ;;
          textured-crop-5) from="$runs/textured-crop-longest/model_final.pt" ;;
          textured-crop-6) from="$runs/textured-crop-5/model_final.pt" ;;
          refiner-origin) extra+=(--concat-origin --origin-share 0.2) ;;&
          refiner|refiner-origin)
            lr=1e-4; from="$runs/textured-crop-longest/model_final.pt"
            train=(python training/recipes/refiner_screen.py --threads "${THREADS:-1}" --) ;;
        esac ;;
      origin-share)
        src=(--deadleaves-bank "$bank" --textured-bank "$runs/textured_bank_256.npy" --mean-photons
             --inner-exposures linspace --concat-origin --origin-share 0.2)
        lr=5e-5; epochs=30; from="$runs/last-heavy/model_final.pt"; extra=(--step-weights 0.2 0.3 0.5) ;;
      twin-origin|twin-origin-means|twin-means|twin-linspace)
        # Session 5: twin-multistep-ste with one change (two for twin-origin-means). With --concat-origin the
        # twin's first layer is widened with zeros (training.init_weights): the run starts from its function.
        src=(--deadleaves-bank "$bank"); lr=5e-5; epochs=10; from="$runs/onestep-deadleaves/model_final.pt"
        case "$data" in
          twin-origin) src+=(--concat-origin) ;;
          twin-origin-means) src+=(--concat-origin --mean-photons) ;;
          twin-means) src+=(--mean-photons) ;;
          twin-linspace) src+=(--inner-exposures linspace) ;;
        esac ;;
      mix) src=(--deadleaves-bank "$bank" --procedural) ;;
      onestep-mix) src=(--deadleaves-bank "$bank" --procedural); steps=1 ;;
      *) echo "unknown data $data" >&2; exit 2 ;;
    esac
    "${train[@]}" \
      train --out "$runs/$data" "${src[@]}" --init "$from" --steps $steps --fixed-weights \
      --mean-loss 2 --mean-pool 8 --patch $patch --batch $batch --epochs $epochs --iters-per-epoch 100 --lr $lr \
      --amp bf16 --save-every 25 --log-every 5 --device cpu -q ${max:+--max-steps $max} "${extra[@]}" ;;
  eval)
    ckpt=$3; shift 3
    python -m training evaluate --checkpoint "$ckpt" --device cpu --baseline-cache "$runs/baselines_photo16x192.json" "$@" ;;
  auto)
    python -m training.auto_steps --checkpoint "$3" --write "$4" --measured "$4.measured.json" --fp16 ;;
  *) echo "usage: $0 bank|textured-bank|run|eval|auto RUNS ..." >&2; exit 2 ;;
esac
