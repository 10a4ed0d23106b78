#!/usr/bin/env bash
# The CPU benchmark in one run (issues 20 and 36): the all-INT8 conv floor of EDSR-baseline x4 on this CPU
# (../shared/tools/int8_floor.py, or FLOOR=path), the shipped x4 models on the native integer program against every
# peer a CPU user would pick (torch fp32 / channels_last / bf16, ONNX Runtime, OpenVINO fp32, OpenVINO INT8 from
# NNCF), the native profile (one thread) and oneDNN's own record of the program's calls, then `cadyq upscale` of a
# 1920x1080 photo with no options (backend auto) against the reference (--backend torch). Needs `make install` (the
# peers extra) and `apt-get install mate-backgrounds`. Writes OUT/ (default /tmp/cpu_peers).
set -euo pipefail
OUT=${1:-/tmp/cpu_peers}
PHOTO=${PHOTO:-/usr/share/backgrounds/mate/nature/Blinds.jpg}
ITER=${ITER:-5}
mkdir -p "$OUT"
lscpu > "$OUT/lscpu.txt"
grep -o -w -E 'avx2|avx512f|avx512_vnni|avx_vnni|avx512_bf16|amx_int8|amx_bf16' /proc/cpuinfo | sort -u | tr '\n' ' ' > "$OUT/flags.txt"
echo "flags: $(cat "$OUT/flags.txt")"
FLOOR=${FLOOR:-$(dirname "$0")/../../shared/tools/int8_floor.py}
if [ -f "$FLOOR" ]; then python "$FLOOR" | tee "$OUT/int8_floor.txt"; fi
MODEL=${MODEL:-edsr-cadyq-alloc-x4}  # the default model; the other shipped x4 CADyQ and PAMS models beside it
python -m cadyq bench --model "$MODEL" \
  --compare peers,native-floatup,edsr-cadyq-x4@native,edsr-pams8-x4@native,edsr-gdq-alloc-x4@native,$MODEL@onnxruntime \
  --batch 16 --iterations "$ITER" --warmup 1 --threads 2 --image "$PHOTO" --json "$OUT/bench_x4.json" | tee "$OUT/bench_x4.txt"
python "$(dirname "$0")/profile_native.py" "$MODEL" --image "$PHOTO" | tee "$OUT/profile.txt"
python "$(dirname "$0")/onednn_calls.py" "$MODEL" | tee "$OUT/onednn_calls.txt"
python - "$PHOTO" "$OUT/photo1080.png" <<'PY'
import sys
from PIL import Image
im = Image.open(sys.argv[1]).convert("RGB")
w, h = im.size
im.crop(((w - 1920) // 2, (h - 1080) // 2, (w - 1920) // 2 + 1920, (h - 1080) // 2 + 1080)).save(sys.argv[2])
PY
for b in auto torch; do
  args=(); [ "$b" = torch ] && args=(--backend torch)
  start=$(date +%s.%N)
  python -m cadyq upscale "$OUT/photo1080.png" -o "$OUT/up_$b.png" --overwrite --json "$OUT/up_$b.json" "${args[@]}"
  end=$(date +%s.%N)
  echo "upscale 1920x1080 x4, backend $b: $(python -c "print(round($end - $start, 1))") s (process, model load included)" | tee -a "$OUT/upscale.txt"
done
python - "$OUT" <<'PY'
import json, sys
import numpy as np
from PIL import Image
out = sys.argv[1]
a, t = (np.asarray(Image.open(f"{out}/up_{b}.png")).astype(float) for b in ("auto", "torch"))
mse = ((a - t) ** 2).mean()
ja, jt = (json.load(open(f"{out}/up_{b}.json")) for b in ("auto", "torch"))
print(f"auto ({ja['backend_choice']}) vs torch: PSNR {10 * np.log10(255 ** 2 / mse) if mse else float('inf'):.1f} dB; "
      f"FQR {ja['images'][0]['fqr']} vs {jt['images'][0]['fqr']}; "
      f"upscale time {ja['images'][0]['time_s']['total']} s vs {jt['images'][0]['time_s']['total']} s")
PY
