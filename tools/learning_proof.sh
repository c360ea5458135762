#!/usr/bin/env bash
# The learning loop's proof, end to end on a CPU: scripted-expert demonstrations of the three reach
# tasks (100 each, a scene of its own per demonstration: seeds 0-299, each starting from a seeded
# pose around the start pose), grounding scenes (rendered workcell scenes labelled with where the
# objects are: 16000 with every reach object's offset from the finger tips in a fixed slot and the
# tips' height, 12000 labelled for each of the three reach nouns with the named object's offset
# from the finger tips first, half of them with the tips close to one of the three), a small OpenVLA-architecture
# policy (112 x 112 px input) trained from scratch in at most 20 minutes in three phases (by default 45% / 40% / 15% of
# the time: the fixed-slot scenes; the offsets, with the fixed-slot scenes as half of every batch;
# the demonstrations, with the offset scenes as half of every batch; batches of 64, one process on
# both cores, so nothing else should run beside it), then closed-loop evaluation in lockstep on 50
# held-out seeds per task (1000-1049) of the trained policy, the instruction-shuffled control and
# the untrained model (same initialisation, same statistics), two evaluations side by side.
# Results: output/proof/eval*/summary.md.
#
# Steps whose output exists are skipped (delete output/proof/<step> to redo one). PROOF_EPISODES
# and PROOF_TRAIN_MIN shrink the run; PROOF_SPLIT sets the three phases' shares of the training
# time; PROOF_TRAIN_SEED (default 0) the model's initialisation and the batches' draws (the
# untrained control's too; give another seed its own PROOF_OUT); PROOF_NOUNS (default the reach
# tasks' three) the objects the offset scenes name; PROOF_MODEL_PX (default 112) the model's input
# size in pixels (patches of 14: 16 image tokens at 56, 64 at 112); PROOF_SLOTS (default relative)
# the fixed-slot scenes' layout (objects: each object's place and the tips' y, as before run Y);
# PROOF_NEAR (default 0.5) the share of offset scenes with the finger tips close to a named object;
# PROOF_PLACE_DEMOS (default 0) demonstrations of the pick-and-place red_block_on_purple_block, in the
# same collection (seeds after the reach tasks'), trained on in the third phase with the reach
# demonstrations; PROOF_EVAL_TASKS (default the demonstrated tasks) the evaluated tasks.
# BENCHMARKS.md ("Learning proof") lists what these steps gave and the variants tried.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
OUT="${PROOF_OUT:-$ROOT/output/proof}"
DEMOS="${PROOF_DEMOS:-100}"             # demonstrations per reach task (3 tasks, at most 300 in all)
PLACE_DEMOS="${PROOF_PLACE_DEMOS:-0}"   # demonstrations of the pick-and-place (e.g. 90 with PROOF_DEMOS=70)
PLACE_TASK=red_block_on_purple_block
EVAL_EPISODES="${PROOF_EPISODES:-50}"   # held-out evaluation episodes per task and policy
TRAIN_MIN="${PROOF_TRAIN_MIN:-20}"      # minutes of training in all
TRAIN_SEED="${PROOF_TRAIN_SEED:-0}"
read -r SHARE1 SHARE2 SHARE3 <<< "${PROOF_SPLIT:-0.45 0.4 0.15}"   # the phases' shares of it
NOUNS="${PROOF_NOUNS:-red block,green can,purple block}"
SLOTS="${PROOF_SLOTS:-relative}"        # the fixed-slot scenes: relative (offsets from the tips) or objects (places)
NEAR="${PROOF_NEAR:-0.5}"               # share of the offset scenes with the finger tips close to a named object
NOUNS_PER_SCENE="$(python3 -c "import sys; print(len(sys.argv[1].split(',')))" "$NOUNS")"
REACH_TASKS=(reach_red_block reach_green_can reach_purple_block)
TASKS=("${REACH_TASKS[@]/%/=$DEMOS}")
if [ "$PLACE_DEMOS" -gt 0 ]; then TASKS+=("$PLACE_TASK=$PLACE_DEMOS"); fi
EVAL_TASKS="${PROOF_EVAL_TASKS:-$(IFS=,; echo "${TASKS[*]%=*}")}"   # the demonstrated tasks
IMAGE=128                               # camera frames, pixels
MODEL_PX="${PROOF_MODEL_PX:-112}"       # the model sees MODEL_PX x MODEL_PX in patches of 14
"$ROOT/tools/setup.sh"
cd "$ROOT"
eval "$("$ROOT/.venv/bin/python" -m openvla_ros.runtime_env)"
BIN="$ROOT/.venv/bin"
export OMP_NUM_THREADS="${OMP_NUM_THREADS:-2}"   # one training run on both cores
minutes() { python3 -c "print($TRAIN_MIN * $1)"; }
small=(--batch-size 64 --learning-rate 3e-3 --threads "$OMP_NUM_THREADS" --seed "$TRAIN_SEED" --no-progress)

[ -f "$OUT/dataset/dataset_statistics.json" ] || \
  "$BIN/openvla-collect" "${TASKS[@]/#/--task=}" --seed 0 --layouts distinct --image-size "$IMAGE" --start-jitter-m 0.1 --out "$OUT/dataset"
"$BIN/openvla-dataset" info "$OUT/dataset"
[ -f "$OUT/objects/dataset_statistics.json" ] || \
  "$BIN/openvla-dataset" grounding --frames 16000 --labels "$SLOTS" --key sim_objects --image-size "$IMAGE" \
    --workers 2 --out "$OUT/objects"
[ -f "$OUT/offsets/dataset_statistics.json" ] || \
  "$BIN/openvla-dataset" grounding --frames 12000 --nouns "$NOUNS" --nouns-per-scene "$NOUNS_PER_SCENE" \
    --labels offset --seed 500000 --near-fraction "$NEAR" \
    --image-size "$IMAGE" --workers 2 --out "$OUT/offsets"

[ -f "$OUT/phase1/checkpoint/model.safetensors" ] || \
  "$BIN/openvla-finetune" --small "$MODEL_PX" --small-patch 14 --dataset "$OUT/objects" --out "$OUT/phase1" \
    --steps 20000 --warmup-steps 200 --holdout-fraction 0 --eval-every 100000 --save-every 1000 \
    --time-limit-min "$(minutes "$SHARE1")" "${small[@]}"
[ -f "$OUT/phase2/checkpoint/model.safetensors" ] || \
  "$BIN/openvla-finetune" --checkpoint "$OUT/phase1/checkpoint" --dataset "$OUT/offsets" --out "$OUT/phase2" \
    --mix-dataset "$OUT/objects" --mix-fraction 0.5 \
    --steps 20000 --warmup-steps 100 --holdout-fraction 0 --eval-every 100000 --save-every 1000 \
    --time-limit-min "$(minutes "$SHARE2")" "${small[@]}"
[ -f "$OUT/train/checkpoint/model.safetensors" ] || \
  "$BIN/openvla-finetune" --checkpoint "$OUT/phase2/checkpoint" --dataset "$OUT/dataset" --out "$OUT/train" \
    --mix-dataset "$OUT/offsets" --mix-fraction 0.5 \
    --steps 2500 --lr-schedule cosine --warmup-steps 100 --augment-shift-px 2 --eval-every 1000 \
    --save-every 1000 --time-limit-min "$(minutes "$SHARE3")" "${small[@]}"
# the untrained control: the same initialisation, exported with the dataset's statistics
[ -f "$OUT/untrained/checkpoint/model.safetensors" ] || \
  "$BIN/openvla-finetune" --small "$MODEL_PX" --small-patch 14 --dataset "$OUT/dataset" --out "$OUT/untrained" --steps 0 \
    --seed "$TRAIN_SEED" --no-progress

common=(--tasks "$EVAL_TASKS" --episodes "$EVAL_EPISODES" --seed 1000 --held-out --unnorm-key sim_widowx
        --image-width "$IMAGE" --image-height "$IMAGE" --no-video --dtype float32 --resume)
# the two evaluations side by side, one core each
OMP_NUM_THREADS=1 "$BIN/openvla-eval" --checkpoint "$OUT/train/checkpoint" --policy model shuffled "${common[@]}" \
  --output "$OUT/eval_trained" & trained=$!
OMP_NUM_THREADS=1 "$BIN/openvla-eval" --checkpoint "$OUT/untrained/checkpoint" --policy model "${common[@]}" \
  --output "$OUT/eval_untrained" & untrained=$!
# either one failing stops the script, and the other evaluation with it
wait "$trained" || { kill "$untrained" 2>/dev/null; exit 1; }
wait "$untrained"
"$BIN/openvla-eval" --compare "$OUT/eval_trained" "$OUT/eval_untrained" --output "$OUT/comparison"
cat "$OUT/eval_trained/summary.md" "$OUT/eval_untrained/summary.md"
