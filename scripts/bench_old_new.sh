#!/usr/bin/env bash
# Two ferrotune binaries taking turns in one loop, so that both sides of every ratio ran
# within the same minute of this machine's drifting speed (docs/PERFORMANCE.md).
#
#   scripts/bench_old_new.sh train OLD NEW            # bench train, full and LoRA, 4 rounds of
#                                                     # 30 steps, the order flipped each round
#   scripts/bench_old_new.sh generate OLD NEW MODEL   # bench generate, f32 and q8_0, 3 rounds
#
# One line per run: round, configuration, side, then the figures.
set -euo pipefail
mode=${1:?train or generate}; old=${2:?old binary}; new=${3:?new binary}
if [ "$mode" = train ]; then
  for round in 1 2 3 4; do
    order="old new"; [ $((round % 2)) = 0 ] && order="new old"
    for cfg in full lora; do
      for side in $order; do
        bin=$old; [ "$side" = new ] && bin=$new
        extra=(); [ "$cfg" = lora ] && extra=(--lora)
        echo "$round train-$cfg $side $("$bin" bench train --threads 2 "${extra[@]}" --steps 30 --json 2>/dev/null | tail -1)"
      done
    done
  done
else
  model=${4:?model folder}
  for round in 1 2 3; do
    for weights in f32 q8_0; do
      for side in old new; do
        bin=$old; [ "$side" = new ] && bin=$new
        echo "$round generate-$weights $side $("$bin" bench generate "$model" --weights "$weights" --threads 2 --max-new-tokens 128 --json 2>/dev/null | tail -1)"
      done
    done
  done
fi
