#!/usr/bin/env bash
# The shipped content-aware CADyQ model, edsr-cadyq-alloc-x$S: selectors set from the measured per-tile sensitivity
# (benchmarks/allocation.md), then the weights and clip values fine-tuned with the selectors frozen (L1 +
# distillation from edsr-pams8-x$S, no bit loss), then validated on the zoo's held-out photos and copied into
# cadyq/zoo. Runs one after another, each from the last with another seed and a fresh optimizer (221 + 231 + 1000
# iterations: how the shipped x4 file was made; the third run was interrupted and resumed with --resume at 283 and
# 698), about 10 s per iteration on one core of the development CPU.
#   S=4 F=5.35 bash benchmarks/allocation/ship_alloc.sh [WORK_DIR]      (run from the repository root)
#   S=2 F=5.5 RUNS="0:221 7:231 11:698" bash benchmarks/allocation/ship_alloc.sh   (x2)
#   TARGET=gdq S=2 F=5.0 RUNS="" bash benchmarks/allocation/ship_alloc.sh       (edsr-gdq-alloc-x2)
#   TARGET=gdq S=4 F=5.0 RUNS="" bash benchmarks/allocation/ship_alloc.sh   (Granular-DQ, one bit-width per tile:
#   edsr-gdq-alloc-x4, the calibrated allocation as shipped; RUNS="0:451" fine-tunes it with the controller frozen, which
#   lost 0.05-0.09 dB on the held-out photos: benchmarks/allocation.md)
#   NAME=trial-cadyq-x4 RUNS="0:2 7:2" bash benchmarks/allocation/ship_alloc.sh /tmp/trial   (a quick trial; delete
#   cadyq/zoo/trial-cadyq-x4.safetensors afterwards)
set -euo pipefail
S=${S:-4}; F=${F:-5.35}; TARGET=${TARGET:-cadyq}; W=${1:-/work/alloc/ship-$TARGET-x$S}; DATA=${DATA:-/work/data/zoo}
NAME=${NAME:-edsr-$TARGET-alloc-x$S}
PAMS8=cadyq/zoo/edsr-pams8-x$S.safetensors
mkdir -p "$W"
if [ "$TARGET" = gdq ]; then  # the joint per-tile measurement (every layer at 4 and at 6 bits), 192 training tiles
  sens=(--sensitivity benchmarks/allocation/sensitivity_gdq_x$S.json --sensitivity-tiles 192)
else
  sens=(--sensitivity benchmarks/allocation/sensitivity_x$S.json)
fi
python -m cadyq calibrate --model "$PAMS8" --data "$DATA/train" --target "$TARGET" --tiles 64 --fqr "$F" "${sens[@]}" \
  -o "$W/alloc-$F.safetensors"
init="$W/alloc-$F.safetensors"
for run in ${RUNS-0:221 7:231 11:1000}; do  # SEED:ITERATIONS of each run, each from the last; RUNS="": none
  seed=${run%:*}
  python -m cadyq train --method "$TARGET" --init "$init" --teacher "$PAMS8" --data "$DATA/train" --batch 16 --patch 48 \
    --lr 2e-5 --selector-lr 0 --w-bit 0 --w-bit-step 0 --iters ${run#*:} --seed $seed --val-every 100000 --no-progress \
    --out "$W/ft-seed$seed"
  init="$W/ft-seed$seed/last.safetensors"
done
python benchmarks/zoo_ship.py "$init" "$NAME" --val "$DATA/val" \
  --recipe "benchmarks/allocation/ship_alloc.sh (TARGET=$TARGET S=$S F=$F): calibrate --target $TARGET --fqr $F, fine-tuned (seed:iterations) ${RUNS-0:221 7:231 11:1000}."
