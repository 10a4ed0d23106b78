#!/usr/bin/env bash
# The report set (cadyq.data.photos.REPORT): the photographs among KDE's plasma-workspace-wallpapers
# (apt-get install plasma-workspace-wallpapers), 2560x1600 JPEG, centre crops 1024x768 like the decision set, in a
# folder marked as the report set (decision code refuses it). Never trained, validated or tuned on: only reported.
#   benchmarks/eval_independent.sh [OUT_DIR] [MODEL ...]   (default /work/data/report, the full-size x4 zoo)
# Every shipped model on both sets, recorded in the zoo files: python benchmarks/zoo_sets.py measure && ... apply
set -euo pipefail
cd "$(dirname "$0")/.."
OUT=${1:-/work/data/report}; shift || true
MODELS=("$@"); [ ${#MODELS[@]} -gt 0 ] || MODELS=(edsr-fp32-x4 edsr-pams8-x4 edsr-cadyq-x4)
PY=${PYTHON:-python}
"$PY" -c "from cadyq.data import photos; photos.prepare_report('$OUT')"
for m in "${MODELS[@]}"; do
  echo "== $m"
  "$PY" -m cadyq eval --model "$m" --data "$OUT" --backend torch --json "$OUT/$m.json" | tail -n 1
done
