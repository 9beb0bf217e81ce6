#!/usr/bin/env bash
# The six-family policy of README items 13-15, one command: data, dense tower pre-training,
# grounding, co-fine-tuning, carry grounding, the long co-fine-tuning run, then closed-loop
# evaluation. Every step is skipped when its output is complete (the evaluation when its JSON
# exists), and the two `distill finetune` runs resume from their last checkpoint, so the same
# command continues an interrupted chain.
#
#   bash scripts/six_family_teacher.sh                   # item 15: runs/all-r2-plain8k
#   FINAL_STEPS=12000 FINAL_EPISODES=24000 bash scripts/six_family_teacher.sh   # item 16
#
# PRESET: the model (default student-s, as items 13-15; give another preset its own ROOT, the
#   folder names do not say the preset).
# ROOT: where data, inits and checkpoints go (default runs).
# THREADS: torch CPU threads per step (default 2).
# FINAL_STEPS: steps of the last run (default 8000, item 15); FINAL_EPISODES: episodes of its data
#   (default 12000, item 15; seed 0, so a larger set extends the smaller one). Its output is
#   $ROOT/all-r2-plain<FINAL_STEPS/1000>k, with -<FINAL_EPISODES/1000>k-data when not 12000.
# EVAL_EPISODES: episodes per split of the final evaluation (default 60, seed 1, as item 15).
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=${ROOT:-runs}
PRESET=${PRESET:-student-s}
THREADS=${THREADS:-2}
FINAL_STEPS=${FINAL_STEPS:-8000}
FINAL_EPISODES=${FINAL_EPISODES:-12000}
EVAL_EPISODES=${EVAL_EPISODES:-60}
export OMP_NUM_THREADS=$THREADS  # the dense pre-training script has no --threads of its own
for var in FINAL_STEPS FINAL_EPISODES; do  # the folder names count thousands
    if ! [[ ${!var} =~ ^[1-9][0-9]*000$ ]]; then
        echo "$var must be a positive multiple of 1000, got '${!var}'" >&2
        exit 2
    fi
done
FINAL=$ROOT/all-r2-plain$((FINAL_STEPS / 1000))k
FINAL_DATA=$ROOT/data/tabletop-q-r2-$((FINAL_EPISODES / 1000))k
[ "$FINAL_EPISODES" = 12000 ] || FINAL=$FINAL-$((FINAL_EPISODES / 1000))k-data

source scripts/chain_steps.sh

step "$ROOT/data/tabletop-q-r2" rt2edge data generate --episodes 4000 --out "$ROOT/data/tabletop-q-r2" \
    --seed 0 --action-noise 0.3
step "$ROOT/init/dense-all-r2" python scripts/dense_vision_pretrain.py --preset "$PRESET" --frames 20000 \
    --steps 2500 --statistics "$ROOT/data/tabletop-q-r2" --save-init "$ROOT/init/dense-all-r2"
step "$ROOT/init/grounded-all-r2" python scripts/grounding_pretrain.py --init "$ROOT/init/dense-all-r2" \
    --out "$ROOT/init/grounded-all-r2" --instruction-first --steps 2000 --threads "$THREADS"
step "$ROOT/all-r2" rt2edge distill finetune --data "$ROOT/data/tabletop-q-r2" --out "$ROOT/all-r2" \
    --init "$ROOT/init/grounded-all-r2" --steps 3000 --batch-size 32 --lr 1e-3 --vqa-ratio 0 \
    --threads "$THREADS" --no-progress
step "$ROOT/init/all-r2-carry" python scripts/grounding_pretrain.py --init "$ROOT/all-r2" \
    --out "$ROOT/init/all-r2-carry" --phases carry --move-noise 0.01 --steps 1500 --lr 5e-4 \
    --threads "$THREADS" --probe-scenes 40 --families move_near,put_on,move_to_mat,move_to_flag
step "$ROOT/init/all-r2-carry-all" python scripts/grounding_pretrain.py --init "$ROOT/init/all-r2-carry" \
    --out "$ROOT/init/all-r2-carry-all" --phases all --move-noise 0.01 --steps 2000 --lr 5e-4 \
    --threads "$THREADS" --probe-scenes 40
step "$FINAL_DATA" rt2edge data generate --episodes "$FINAL_EPISODES" --out "$FINAL_DATA" --seed 0 \
    --action-noise 0.3
step "$FINAL" rt2edge distill finetune --data "$FINAL_DATA" --out "$FINAL" \
    --init "$ROOT/init/all-r2-carry-all" --steps "$FINAL_STEPS" --batch-size 32 --lr 5e-4 --warmup-steps 300 \
    --vqa-ratio 0 --threads "$THREADS" --no-progress
step "$FINAL-eval.json" rt2edge eval "$FINAL" --episodes "$EVAL_EPISODES" --seed 1 --threads "$THREADS" \
    --json "$FINAL-eval.json"
