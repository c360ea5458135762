#!/usr/bin/env bash
# The learning loop's proof, end to end on a CPU: scripted-expert demonstrations of the five
# workcell tasks (60 each, a scene of its own per demonstration: seeds 0-299, each starting from a
# seeded pose around the start pose), grounding scenes (rendered workcell scenes labelled with
# where each of the five objects is), a small OpenVLA-architecture policy trained from scratch in
# at most 20 minutes (8 on the grounding scenes, then 12 on the demonstrations with grounding
# scenes as half of every batch), then closed-loop evaluation in lockstep on 50 held-out seeds per
# task (1000-1049) of the trained policy, the instruction-shuffled control and the untrained model
# (same initialisation, same statistics). Results: output/proof/eval*/summary.md.
#
# Steps whose output exists are skipped (delete output/proof/<step> to redo one); PROOF_EPISODES
# and PROOF_TRAIN_MIN shrink the run. BENCHMARKS.md ("Learning proof") lists the runs made with
# these steps and the variants tried.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
OUT="${PROOF_OUT:-$ROOT/output/proof}"
DEMOS="${PROOF_DEMOS:-60}"              # demonstrations per task (5 tasks, at most 300 in all)
EVAL_EPISODES="${PROOF_EPISODES:-50}"   # held-out evaluation episodes per task and policy
TRAIN_MIN="${PROOF_TRAIN_MIN:-20}"      # minutes of training in all (40% grounding, 60% demonstrations)
IMAGE=128                               # camera frames, pixels; the model sees 56 x 56 in patches of 14
"$ROOT/tools/setup.sh"
cd "$ROOT"
eval "$("$ROOT/.venv/bin/python" -m openvla_ros.runtime_env)"
BIN="$ROOT/.venv/bin"
export OMP_NUM_THREADS="${OMP_NUM_THREADS:-2}"
GROUND_MIN="$(python3 -c "print($TRAIN_MIN * 0.4)")"
DEMO_MIN="$(python3 -c "print($TRAIN_MIN * 0.6)")"

[ -f "$OUT/dataset/dataset_statistics.json" ] || \
  "$BIN/openvla-collect" --task all --episodes "$DEMOS" --seed 0 --layouts distinct --image-size "$IMAGE" \
    --start-jitter-m 0.08 --out "$OUT/dataset"
"$BIN/openvla-dataset" info "$OUT/dataset" | head -30
[ -f "$OUT/grounding/dataset_statistics.json" ] || \
  "$BIN/openvla-dataset" grounding --frames 4000 --nouns-per-scene 5 --image-size "$IMAGE" --out "$OUT/grounding"

[ -f "$OUT/ground/checkpoint/model.safetensors" ] || \
  "$BIN/openvla-finetune" --small 56 --small-patch 14 --dataset "$OUT/grounding" --out "$OUT/ground" \
    --steps 6000 --batch-size 32 --learning-rate 2e-3 --warmup-steps 200 --holdout-fraction 0 \
    --eval-every 100000 --save-every 1000 --threads "$OMP_NUM_THREADS" --time-limit-min "$GROUND_MIN"
[ -f "$OUT/train/checkpoint/model.safetensors" ] || \
  "$BIN/openvla-finetune" --checkpoint "$OUT/ground/checkpoint" --dataset "$OUT/dataset" --out "$OUT/train" \
    --mix-dataset "$OUT/grounding" --mix-fraction 0.5 \
    --steps 9000 --batch-size 32 --learning-rate 2e-3 --lr-schedule cosine --warmup-steps 100 \
    --augment-shift-px 2 --eval-every 1000 --save-every 1000 --threads "$OMP_NUM_THREADS" --time-limit-min "$DEMO_MIN"
# the untrained control: the same initialisation, exported with the dataset's statistics
[ -f "$OUT/untrained/checkpoint/model.safetensors" ] || \
  "$BIN/openvla-finetune" --small 56 --small-patch 14 --dataset "$OUT/dataset" --out "$OUT/untrained" --steps 0 --no-progress

common=(--tasks all --episodes "$EVAL_EPISODES" --seed 1000 --held-out --unnorm-key sim_widowx
        --image-width "$IMAGE" --image-height "$IMAGE" --no-video --dtype float32 --resume)
"$BIN/openvla-eval" --checkpoint "$OUT/train/checkpoint" --policy model shuffled "${common[@]}" \
  --output "$OUT/eval_trained"
"$BIN/openvla-eval" --checkpoint "$OUT/untrained/checkpoint" --policy model "${common[@]}" \
  --output "$OUT/eval_untrained"
"$BIN/openvla-eval" --compare "$OUT/eval_trained" "$OUT/eval_untrained" --output "$OUT/comparison"
cat "$OUT/eval_trained/summary.md" "$OUT/eval_untrained/summary.md"
