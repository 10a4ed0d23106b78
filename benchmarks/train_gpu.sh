#!/usr/bin/env bash
# The zoo recipe of benchmarks/train_zoo.sh on one GPU in about 10 minutes (H100/H200 class, bf16 autocast,
# channels_last): the same models (EDSR-baseline x4 and x2, fp32 -> pams8 -> cadyq 4/6/8), the same photos
# and losses, the paper's batch 16 of 48-px crops, with the schedule scaled to the time:
# fp32 6000 iterations (lr 2e-4, halved at 3000), pams8 1000, cadyq 2000 (bit loss 1e-3 + 1e-4 per 250).
#   benchmarks/train_gpu.sh [RUNS_DIR] [DATA_DIR]
# The photos come from Debian packages (apt-get install mate-backgrounds lomiri-wallpapers-16.04
# lomiri-wallpapers-20.04) and scikit-image; copy DATA_DIR over when the GPU machine has no network.
# Validation figures land in RUNS_DIR/edsr-<stage>/val.csv, comparable with the CPU runs'.
set -euo pipefail
cd "$(dirname "$0")/.."
RUNS=${1:-runs-gpu}
DATA=${2:-data/zoo}
PY=${PYTHON:-python}
"$PY" -c "from cadyq.data import photos; photos.prepare('$DATA')"
COMMON=(--backbone edsr --data "$DATA/train" --val "$DATA/decision" --batch 16 --patch 48 --workers 4 --cache memory
        --device cuda --precision auto --val-every 1000 --log-every 50 --no-progress --seed 0)
for scale in 4 2; do
  t0=$SECONDS
  "$PY" -m cadyq train --method fp32 --scale $scale "${COMMON[@]}" --iters 6000 --lr 2e-4 --decay 3000 \
    --out "$RUNS/edsr-fp32-x$scale"
  "$PY" -m cadyq train --method pams8 --init "$RUNS/edsr-fp32-x$scale/best.safetensors" "${COMMON[@]}" \
    --iters 1000 --lr 1e-4 --decay 500 --out "$RUNS/edsr-pams8-x$scale"
  "$PY" -m cadyq train --method cadyq --init "$RUNS/edsr-pams8-x$scale/best.safetensors" "${COMMON[@]}" \
    --iters 2000 --lr 1e-4 --decay 1000 --w-bit 1e-3 --w-bit-step 1e-4 --w-bit-every 250 \
    --out "$RUNS/edsr-cadyq-x$scale"
  echo "== x$scale: $((SECONDS - t0)) s"
  for s in fp32 pams8 cadyq; do echo "-- $s x$scale"; tail -n 2 "$RUNS/edsr-$s-x$scale/val.csv"; done
done
