#!/usr/bin/env bash
# CPU training demo of the three stages (fp32 -> pams8 -> cadyq) on real photos: a tiny EDSR
# (16 channels, 4 blocks, x2) on the MATE nature wallpapers (apt-get install -y mate-backgrounds),
# 9 photos for training, 3 held out for validation. The figures are in benchmarks/train_cpu.md.
#
# Deviations from the paper's recipe, for a demo of minutes on 2 CPU cores: batch 8 of 32-px LR
# patches (paper: 16 of 48), fp32 lr 2e-3 halved every 750 iterations (paper: 1e-4, halved every
# 150K), 3000 + 100 + 200 iterations (paper: 300K per stage), bit-selector lr 1e-3 (paper: 1e-4) and
# a bit-loss weight of 2e-3 rising by 2e-3 every 50 iterations (paper: 1e-4 + 1e-6 per 1000
# iterations, far too weak to move the FQR in 200 iterations).
#
# usage: [SCALE=2|4] benchmarks/train_cpu.sh [WORK_DIR]    (stages whose last.safetensors exists are skipped)
set -euo pipefail
cd "$(dirname "$0")/.."
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
PHOTOS=${PHOTOS:-/usr/share/backgrounds/mate/nature}
WORK=${1:-/tmp/cadyq-train-cpu}
HOLDOUT="Blinds.jpg Dune.jpg GreenMeadow.jpg"  # the most detailed photos (see train_cpu.md)
PY=${PYTHON:-python}
SCALE=${SCALE:-2}

[ -d "$PHOTOS" ] || { echo "no $PHOTOS: apt-get install -y mate-backgrounds" >&2; exit 1; }
mkdir -p "$WORK/train" "$WORK/val"
for f in "$PHOTOS"/*.jpg; do
  n=$(basename "$f")
  case " $HOLDOUT " in *" $n "*) ln -sf "$f" "$WORK/val/$n" ;; *) ln -sf "$f" "$WORK/train/$n" ;; esac
done

COMMON=(--backbone edsr --scale "$SCALE" --data "$WORK/train" --val "$WORK/val" --patch 32 --batch 8 --workers 0
        --cache npy --cache-dir "$WORK/cache" --log-every 10 --no-progress --seed 0)

stage() {  # stage NAME ARGS...: run unless done; time it
  local name=$1; shift
  if [ -f "$WORK/$name/last.safetensors" ] && [ ! -f "$WORK/$name/.running" ]; then echo "== $name: done"; return; fi
  echo "== $name: $PY -m cadyq train $*"
  mkdir -p "$WORK/$name" && touch "$WORK/$name/.running"
  local t0=$SECONDS
  if [ -f "$WORK/$name/last_state.pt" ]; then set -- "$@" --resume; fi
  "$PY" -m cadyq train "$@" --out "$WORK/$name"
  rm -f "$WORK/$name/.running"
  echo "== $name: $((SECONDS - t0)) s"
}

stage fp32 --method fp32 --n-feats 16 --n-resblocks 4 "${COMMON[@]}" \
  --iters 3000 --lr 2e-3 --decay 750 --val-every 1000
stage pams8 --method pams8 --init "$WORK/fp32/last.safetensors" "${COMMON[@]}" \
  --iters 100 --lr 1e-4 --observe-batches 10 --val-every 100
stage cadyq --method cadyq --init "$WORK/pams8/last.safetensors" "${COMMON[@]}" \
  --iters 200 --lr 1e-4 --selector-lr 1e-3 --w-bit 2e-3 --w-bit-step 2e-3 --w-bit-every 50 --val-every 100

for s in fp32 pams8 cadyq; do echo "-- $s"; cat "$WORK/$s/val.csv"; done

# Per held-out photo: bicubic and each stage's last checkpoint through the Upscaler (96-px tiles,
# 6 px overlap); with ZOO_DIR set, the checkpoints are copied there as edsr-tiny-<method>-x<SCALE>-cpu.
WORK="$WORK" ZOO_DIR="${ZOO_DIR:-}" SCALE="$SCALE" "$PY" - <<'PYEOF'
import json, os
import numpy as np
from cadyq import checkpoint
from cadyq.data.layouts import find_pairs, load_pair
from cadyq.metrics import psnr, ssim
from cadyq.runtime import Upscaler
from cadyq.train.trainer import bicubic_upscale

work, zoo, s = os.environ["WORK"], os.environ["ZOO_DIR"], int(os.environ["SCALE"])
pairs = [(p.name, *(np.array(a) for a in load_pair(p, s))) for p in find_pairs(f"{work}/val", s)]
rows = {"bicubic": [(psnr(bicubic_upscale(lr, s), hr, s), ssim(bicubic_upscale(lr, s), hr, s), float("nan"))
                    for _, lr, hr in pairs]}
for stage in ("fp32", "pams8", "cadyq"):
    model = checkpoint.load(f"{work}/{stage}/last.safetensors")
    up = Upscaler(model, backend="torch", device="cpu", tile=96, overlap=6)
    res = [up.upscale(lr) for _, lr, _ in pairs]
    rows[stage] = [(psnr(r.image.rgb, hr, s), ssim(r.image.rgb, hr, s), r.fqr) for r, (_, _, hr) in zip(res, pairs)]
    if zoo:
        extra = checkpoint.read_metadata(f"{work}/{stage}/last.safetensors").get("extra", {})
        val = {n: {"psnr": round(a, 3), "ssim": round(b, 4), "fqr": round(c, 3)}
               for (n, _, _), (a, b, c) in zip(pairs, rows[stage])}
        checkpoint.save(model, f"{zoo}/edsr-tiny-{stage}-x{s}-cpu.safetensors",
                        {"recipe": "benchmarks/train_cpu.sh", "iteration": extra.get("iteration"),
                         "train_data": "MATE nature wallpapers (mate-backgrounds) minus the held-out photos",
                         "held_out": val})
names = [n for n, _, _ in pairs]
print("| model | " + " | ".join(f"{n} PSNR / SSIM / FQR" for n in names) + " | mean PSNR / SSIM / FQR |")
print("|---" * (len(names) + 2) + "|")
for k, v in rows.items():
    cells = [f"{a:.2f} / {b:.4f} / {'-' if c != c else f'{c:.2f}'}" for a, b, c in v]
    m = np.mean(v, axis=0)
    cells.append(f"{m[0]:.2f} / {m[1]:.4f} / {'-' if m[2] != m[2] else f'{m[2]:.2f}'}")
    print(f"| {k} | " + " | ".join(cells) + " |")
PYEOF
