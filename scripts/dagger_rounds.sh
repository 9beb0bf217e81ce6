#!/usr/bin/env bash
# DAgger rounds on a trained policy (README item 17), one command: each round lets the current
# policy drive the simulator with every state labelled by the scripted expert (`rt2edge data
# dagger`, the previous round's dataset as its base), fine-tunes the policy on the aggregated
# dataset, and evaluates it paired with the policy it started from. Every step is skipped when its
# output is complete and `distill finetune` resumes, so the same command continues an interrupted run.
#
#   bash scripts/dagger_rounds.sh             # one round on item 16's policy and data
#   ROUNDS=5 bash scripts/dagger_rounds.sh    # item 17 (re-running continues: done rounds are skipped)
#
# START: the policy of round 0 (default runs/all-r2-plain12k-24k-data, item 16).
# DATA: the dataset it was trained on (default runs/data/tabletop-q-r2-24k).
# ROOT: where the rounds go (default runs/dagger): ROOT/data-rN, ROOT/policy-rN, ROOT/policy-rN-eval.json.
# ROUNDS (default 1), EPISODES: on-policy episodes per round (default 4000), STEPS: fine-tuning
# steps per round (default 3000), LR (default 3e-4), THREADS (default 2),
# EVAL_EPISODES: episodes per split of each evaluation (default 200, seed 1, as item 16).
set -euo pipefail
cd "$(dirname "$0")/.."
START=${START:-runs/all-r2-plain12k-24k-data}
DATA=${DATA:-runs/data/tabletop-q-r2-24k}
ROOT=${ROOT:-runs/dagger}
ROUNDS=${ROUNDS:-1}
EPISODES=${EPISODES:-4000}
STEPS=${STEPS:-3000}
LR=${LR:-3e-4}
THREADS=${THREADS:-2}
EVAL_EPISODES=${EVAL_EPISODES:-200}
for var in ROUNDS EPISODES STEPS THREADS EVAL_EPISODES; do
    if ! [[ ${!var} =~ ^[1-9][0-9]*$ ]]; then
        echo "$var must be a positive integer, got '${!var}'" >&2
        exit 2
    fi
done

source scripts/chain_steps.sh

evaluate() {  # evaluate POLICY JSON [PAIRED_JSON]
    if [ -n "${3:-}" ]; then
        rt2edge eval "$1" --episodes "$EVAL_EPISODES" --seed 1 --threads "$THREADS" --json "$2" --paired-with "$3"
    else
        rt2edge eval "$1" --episodes "$EVAL_EPISODES" --seed 1 --threads "$THREADS" --json "$2"
    fi
}

mkdir -p "$ROOT"
step "$ROOT/policy-r0-eval.json" evaluate "$START" "$ROOT/policy-r0-eval.json"
policy=$START
data=$DATA
for round in $(seq 1 "$ROUNDS"); do
    step "$ROOT/data-r$round" rt2edge data dagger --base "$data" --policy "$policy" --episodes "$EPISODES" \
        --out "$ROOT/data-r$round" --threads "$THREADS"
    step "$ROOT/policy-r$round" rt2edge distill finetune --data "$ROOT/data-r$round" --out "$ROOT/policy-r$round" \
        --init "$policy" --steps "$STEPS" --batch-size 32 --lr "$LR" --warmup-steps 100 --vqa-ratio 0 \
        --threads "$THREADS" --no-progress
    step "$ROOT/policy-r$round-eval.json" evaluate "$ROOT/policy-r$round" "$ROOT/policy-r$round-eval.json" \
        "$ROOT/policy-r$((round - 1))-eval.json"
    policy=$ROOT/policy-r$round
    data=$ROOT/data-r$round
done
