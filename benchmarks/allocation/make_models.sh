#!/usr/bin/env bash
# dynamic and static allocations of edsr-pams8-x$S (MSE clips on 64 zoo training tiles) from one sensitivity measurement
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
