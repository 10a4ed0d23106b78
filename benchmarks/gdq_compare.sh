#!/usr/bin/env bash
# PAMS-8, CADyQ and Granular-DQ on the same EDSR backbone and data, PSNR/SSIM/FQR/BitOPs on held-out photos and
# speed through the integer paths (native; tile-routed static INT8 graphs in ONNX Runtime for Granular-DQ).
# Until the full-size zoo exists (benchmarks/train_zoo.sh) this runs on the zoo's tiny CPU models
# (edsr-tiny-*-x4-cpu, 16 features, 4 blocks, trained by benchmarks/train_cpu.sh on 9 MATE photos): Granular-DQ
# is trained here from the same pams8 model with the same recipe as the tiny cadyq model (200 iterations,
# 32-px crops, batch 8, selector lr 1e-3, bit loss 2e-3 + 2e-3 per 50 iterations, distillation from pams8).
#   benchmarks/gdq_compare.sh [WORK_DIR]       (figures in benchmarks/gdq_compare.md)
set -euo pipefail
cd "$(dirname "$0")/.."
WORK=${1:-/tmp/cadyq-gdq}
PY=${PYTHON:-python}
PHOTOS=/usr/share/backgrounds/mate/nature
HOLDOUT="Blinds.jpg Dune.jpg GreenMeadow.jpg"  # the tiny models' held-out photos
mkdir -p "$WORK/train" "$WORK/val"
for f in "$PHOTOS"/*.jpg; do
  n=$(basename "$f")
  case " $HOLDOUT " in *" $n "*) ln -sf "$f" "$WORK/val/$n" ;; *) ln -sf "$f" "$WORK/train/$n" ;; esac
done
PAMS=$("$PY" -c "from cadyq.zoo import path_of; print(path_of('edsr-tiny-pams8-x4-cpu'))")
[ -f "$WORK/gdq/last.safetensors" ] || "$PY" -m cadyq train --method gdq --init "$PAMS" --data "$WORK/train" \
  --val "$WORK/val" --patch 32 --batch 8 --workers 0 --cache npy --cache-dir "$WORK/cache" --no-progress --seed 0 \
  --iters 200 --lr 1e-4 --selector-lr 1e-3 --w-bit 2e-3 --w-bit-step 2e-3 --w-bit-every 50 --val-every 100 \
  --out "$WORK/gdq"
"$PY" - "$WORK" <<'PYEOF'
import sys, time
import numpy as np
import torch
from cadyq import checkpoint
from cadyq.calib import photo_tiles
from cadyq.data.layouts import find_pairs, load_pair
from cadyq.export.routed import export_routed
from cadyq.metrics import psnr, ssim
from cadyq.runtime import Upscaler
from cadyq.train.trainer import bicubic_upscale
from cadyq.zoo import load_pretrained

work = sys.argv[1]
s = 4
pairs = [(p.name, *(np.array(a) for a in load_pair(p, s))) for p in find_pairs(f"{work}/val", s)]
models = {"PAMS-8": load_pretrained("edsr-tiny-pams8-x4-cpu"), "CADyQ": load_pretrained("edsr-tiny-cadyq-x4-cpu"),
          "Granular-DQ": checkpoint.load(f"{work}/gdq/last.safetensors")}
calib = torch.cat([b for b in photo_tiles(f"{work}/train", s, max_tiles=64)[0]])
export_routed(models["Granular-DQ"], f"{work}/routed", tile=96, calib=calib)
print("| model | PSNR (Y) | SSIM | bicubic PSNR | FQR | BitOPs (G, all tiles) | native s | routed ONNX Runtime s | torch fake-quant s |")
print("|---|---|---|---|---|---|---|---|---|")
bic = np.mean([psnr(bicubic_upscale(lr, s), hr, s) for _, lr, hr in pairs])
for name, m in models.items():
    ups = {"torch": Upscaler(m, backend="torch", device="cpu"), "native": Upscaler(m, backend="native", device="cpu")}
    if name == "Granular-DQ":
        ups["routed"] = Upscaler(f"{work}/routed")
    res, t = {}, {}
    for k, up in ups.items():
        up.upscale(pairs[0][1][:96, :96])  # warm-up
        t0 = time.perf_counter()
        res[k] = [up.upscale(lr) for _, lr, _ in pairs]
        t[k] = time.perf_counter() - t0
    r = res["torch"]
    p = np.mean([psnr(x.image.rgb, hr, s) for x, (_, _, hr) in zip(r, pairs)])
    q = np.mean([ssim(x.image.rgb, hr, s) for x, (_, _, hr) in zip(r, pairs)])
    fqr = np.mean([x.fqr for x in r])
    ops = sum(x.bitops for x in r) / 1e9
    routed = f"{t['routed']:.2f}" if "routed" in t else "-"
    if "routed" in res:
        pr = np.mean([psnr(x.image.rgb, hr, s) for x, (_, _, hr) in zip(res["routed"], pairs)])
        routed += f" ({pr:.2f} dB)"
    print(f"| {name} | {p:.3f} | {q:.4f} | {bic:.3f} | {fqr:.2f} | {ops:.2f} | {t['native']:.2f} | {routed} | {t['torch']:.2f} |")
PYEOF
