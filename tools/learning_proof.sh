#!/usr/bin/env bash
# The learning loop's proof, end to end on a CPU: scripted-expert demonstrations of the five
# workcell tasks (60 each, a scene of its own per demonstration: seeds 0-299, each starting from a
# seeded pose around the start pose), grounding scenes (rendered workcell scenes labelled with
# where the objects are), a small OpenVLA-architecture policy trained from scratch in at most 20
# minutes in three phases (6 min: every reach object in a fixed slot under one instruction; 4 min:
# the object the instruction names, with the fixed-slot scenes as half of every batch; 10 min: the
# demonstrations, with the named-object scenes as half of every batch), then closed-loop
# evaluation in lockstep on 50 held-out seeds per task (1000-1049) of the trained policy, the
# instruction-shuffled control and the untrained model (same initialisation, same statistics).
# Results: output/proof/eval*/summary.md.
#
# Steps whose output exists are skipped (delete output/proof/<step> to redo one); PROOF_EPISODES
# and PROOF_TRAIN_MIN shrink the run. BENCHMARKS.md ("Learning proof", run G) lists what these
# steps gave and the variants tried.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
OUT="${PROOF_OUT:-$ROOT/output/proof}"
DEMOS="${PROOF_DEMOS:-60}"              # demonstrations per task (5 tasks, at most 300 in all)
EVAL_EPISODES="${PROOF_EPISODES:-50}"   # held-out evaluation episodes per task and policy
TRAIN_MIN="${PROOF_TRAIN_MIN:-20}"      # minutes of training in all (30% / 20% / 50% by phase)
IMAGE=128                               # camera frames, pixels; the model sees 56 x 56 in patches of 14
"$ROOT/tools/setup.sh"
cd "$ROOT"
eval "$("$ROOT/.venv/bin/python" -m openvla_ros.runtime_env)"
BIN="$ROOT/.venv/bin"
export OMP_NUM_THREADS="${OMP_NUM_THREADS:-1}"
minutes() { python3 -c "print($TRAIN_MIN * $1)"; }
small=(--batch-size 32 --learning-rate 2e-3 --threads "$OMP_NUM_THREADS" --no-progress)

[ -f "$OUT/dataset/dataset_statistics.json" ] || \
  "$BIN/openvla-collect" --task all --episodes "$DEMOS" --seed 0 --layouts distinct --image-size "$IMAGE" \
    --start-jitter-m 0.08 --out "$OUT/dataset"
"$BIN/openvla-dataset" info "$OUT/dataset" | head -30
[ -f "$OUT/objects/dataset_statistics.json" ] || \
  "$BIN/openvla-dataset" grounding --frames 4000 --labels objects --key sim_objects --image-size "$IMAGE" \
    --out "$OUT/objects"
[ -f "$OUT/named/dataset_statistics.json" ] || \
  "$BIN/openvla-dataset" grounding --frames 4000 --nouns-per-scene 5 --labels position --image-size "$IMAGE" \
    --out "$OUT/named"

[ -f "$OUT/phase1/checkpoint/model.safetensors" ] || \
  "$BIN/openvla-finetune" --small 56 --small-patch 14 --dataset "$OUT/objects" --out "$OUT/phase1" \
    --steps 20000 --warmup-steps 200 --holdout-fraction 0 --eval-every 100000 --save-every 1000 \
    --time-limit-min "$(minutes 0.3)" "${small[@]}"
[ -f "$OUT/phase2/checkpoint/model.safetensors" ] || \
  "$BIN/openvla-finetune" --checkpoint "$OUT/phase1/checkpoint" --dataset "$OUT/named" --out "$OUT/phase2" \
    --mix-dataset "$OUT/objects" --mix-fraction 0.5 \
    --steps 20000 --warmup-steps 100 --holdout-fraction 0 --eval-every 100000 --save-every 1000 \
    --time-limit-min "$(minutes 0.2)" "${small[@]}"
[ -f "$OUT/train/checkpoint/model.safetensors" ] || \
  "$BIN/openvla-finetune" --checkpoint "$OUT/phase2/checkpoint" --dataset "$OUT/dataset" --out "$OUT/train" \
    --mix-dataset "$OUT/named" --mix-fraction 0.5 \
    --steps 6000 --lr-schedule cosine --warmup-steps 100 --augment-shift-px 2 --eval-every 1000 \
    --save-every 1000 --time-limit-min "$(minutes 0.5)" "${small[@]}"
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
