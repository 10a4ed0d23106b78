#!/usr/bin/env bash
# dynamic and static allocations of edsr-pams8-x$S (MSE clips on 64 zoo training tiles) from one sensitivity measurement,
# then Granular-DQ per-tile allocations and uniform 4/5/6/8-bit models
#   S=4 FQRS="5.0 5.5 6.0" bash benchmarks/allocation/make_models.sh   (run from the repository root)
set -euo pipefail
S=${S:-4}; SENS=${SENS:-benchmarks/allocation/sensitivity_x$S.json}; OUT=${OUT:-/tmp/alloc}
mkdir -p "$OUT"
for F in ${FQRS:-5.0 5.5 6.0}; do
  for kind in dyn static; do
    extra=(); [ $kind = static ] && extra=(--static)
    python -m cadyq calibrate --model edsr-pams8-x$S --data /work/data/zoo/train --target cadyq --tiles 64 \
      --fqr $F --sensitivity $SENS "${extra[@]}" -o $OUT/x$S-$kind-$F.safetensors 2>&1 | grep -v "^calibrate"
  done
done
# Granular-DQ per-tile allocations (exact budget) and the uniform-bit baselines made from one of them
for F in ${GDQ_FQRS:-5.0 5.5 6.0}; do
  python -m cadyq calibrate --model edsr-pams8-x$S --data /work/data/zoo/train --target gdq --tiles 64 --fqr $F \
    --sensitivity-tiles 192 --sensitivity benchmarks/allocation/sensitivity_gdq_x$S.json \
    -o $OUT/x$S-gdq-$F.safetensors 2>&1 | grep -v "^calibrate"
done
python benchmarks/allocation/make_uniform.py $OUT/x$S-gdq-6.0.safetensors $OUT
