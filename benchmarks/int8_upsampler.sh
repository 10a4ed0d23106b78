#!/usr/bin/env bash
# The INT8-upsampler option of the lowering (not in the papers): its PSNR cost on the zoo's held-out photos.
# Clip values calibrated on the zoo's training photos (cadyq calibrate --upsampler, per rule), then `cadyq eval`
# on the 5 held-out photos with the paper-faithful native program and with the upsampler convs in INT8.
#   benchmarks/int8_upsampler.sh [DATA_DIR] [OUT]       (DATA_DIR from cadyq.data.photos.prepare; default /work/data/zoo)
set -euo pipefail
DATA=${1:-/work/data/zoo}
OUT=${2:-/tmp/int8_upsampler}
PY=${PYTHON:-python}
mkdir -p "$OUT"
"$PY" -c "from cadyq.data import photos; photos.prepare('$DATA')"
for m in ${MODELS:-edsr-cadyq-x4 edsr-pams8-x4 edsr-cadyq-x2 edsr-pams8-x2}; do
  "$PY" -m cadyq eval --model "$m" --data "$DATA/decision" --backend native --json "$OUT/$m.json" > /dev/null
  for rule in ${RULES:-mse percentile max}; do
    [ -f "$OUT/$m-$rule.safetensors" ] || "$PY" -m cadyq calibrate --model "$m" --data "$DATA/train" --upsampler \
      --method "$rule" -o "$OUT/$m-$rule.safetensors"
    "$PY" -m cadyq eval --model "$OUT/$m-$rule.safetensors" --data "$DATA/decision" --backend native --int8-upsampler \
      --json "$OUT/$m-$rule.json" > /dev/null
  done
done
"$PY" - "$OUT" <<'PY'
import glob, json, os, sys
out = sys.argv[1]
print("| model | upsampler | clip rule | PSNR (Y) | SSIM | vs paper-faithful |")
print("|---|---|---|---|---|---|")
for f in sorted(glob.glob(f"{out}/edsr-*-x?.json")):
    m = os.path.basename(f)[:-5]
    base = json.load(open(f))["mean"]
    print(f"| {m} | float (paper) | - | {base['psnr']:.3f} | {base['ssim']:.4f} | |")
    for g in sorted(glob.glob(f"{out}/{m}-*.json")):
        r = json.load(open(g))["mean"]
        rule = os.path.basename(g)[len(m) + 1:-5]
        print(f"| {m} | INT8 | {rule} | {r['psnr']:.3f} | {r['ssim']:.4f} | {r['psnr'] - base['psnr']:+.3f} dB |")
PY
