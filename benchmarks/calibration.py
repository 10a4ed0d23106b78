"""Post-training calibration against training: PTQ pams8 models calibrated from the fp32 model (max,
percentile, mse) against the trained pams8 model, on the held-out photos (cadyq.data.photos, val split).

    python benchmarks/calibration.py [--fp32 edsr-tiny-fp32-x4-cpu] [--pams8 edsr-tiny-pams8-x4-cpu]
                                     [--train DATA/train] [--val DATA/decision] [--tiles 128]
"""
import argparse

import numpy as np
import torch

from cadyq.calib import calibrate, photo_tiles
from cadyq.checkpoint import load_model
from cadyq.data.layouts import find_pairs, load_pair
from cadyq.data.resize import imresize
from cadyq.metrics import psnr, ssim
from cadyq.runtime import Upscaler


def evaluate(model, val: str) -> dict:
    s = model.config.scale
    up = Upscaler(model, backend="torch", device="cpu", batch=16)
    rows = []
    for pair in find_pairs(val, s):
        lr, hr = load_pair(pair, s)
        r = up.upscale(lr)
        bic = np.clip(np.round(imresize(lr.astype(np.float64), scale=s)), 0, 255)
        rows.append((psnr(r.image.rgb, hr, s), ssim(r.image.rgb, hr, s), psnr(bic, hr, s), r.fqr))
    a = np.array(rows)
    return {"psnr": a[:, 0].mean(), "ssim": a[:, 1].mean(), "bicubic": a[:, 2].mean(), "fqr": a[:, 3].mean()}


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--fp32", default="edsr-tiny-fp32-x4-cpu")
    p.add_argument("--pams8", default="edsr-tiny-pams8-x4-cpu")
    p.add_argument("--train", default="/work/data/zoo/train")
    p.add_argument("--val", default="/work/data/zoo/decision")
    p.add_argument("--tiles", type=int, default=128)
    a = p.parse_args()
    torch.set_num_threads(2)
    fp32 = load_model(a.fp32)
    rows = {"fp32 (" + a.fp32 + ")": evaluate(fp32, a.val), "pams8 trained (" + a.pams8 + ")": evaluate(load_model(a.pams8), a.val)}
    for method in ("max", "percentile", "mse"):
        batches, n = photo_tiles(a.train, fp32.config.scale, max_tiles=a.tiles)
        rows[f"pams8 PTQ, {method} ({n} tiles)"] = evaluate(calibrate(fp32, batches, "pams8", method), a.val)
    print(f"held-out photos: {a.val}; calibration tiles from {a.train}")
    print(f"{'model':48s} {'PSNR':>7s} {'SSIM':>7s} {'bicubic':>8s} {'FQR':>5s}")
    for k, r in rows.items():
        print(f"{k:48s} {r['psnr']:7.3f} {r['ssim']:7.4f} {r['bicubic']:8.3f} {r['fqr']:5.2f}")


if __name__ == "__main__":
    main()
