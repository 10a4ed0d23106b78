"""Do the bits follow content? Spearman correlation between each tile's mean bit-width and its image
gradient (the CADyQ paper's Figure: more bits where there are more edges), over the tiles of the held-out
photos, plus a bit map of the first photo.

    python benchmarks/bits_vs_gradient.py MODEL [--val /work/data/zoo/decision] [--backend native] [--bitmap out.png]

The gradient is the selectors' own feature: mean |Sobel| of the LR tile's gray (cadyq.quant.ops.tile_gradient),
summed over x and y. Tiles are those of `cadyq upscale` (96 px, 6 px overlap).
"""
import argparse
from pathlib import Path

import numpy as np
import torch
from scipy.stats import spearmanr

import cadyq
from cadyq.data.io import Image, list_images, read_image, write_image
from cadyq.data.resize import bicubic_downscale, mod_crop
from cadyq.quant.ops import tile_gradient
from cadyq.runtime.bitmap import render_bit_map, with_legend
from cadyq.tiling import iter_batches


def main(argv=None):
    p = argparse.ArgumentParser()
    p.add_argument("model")
    p.add_argument("--val", default="/work/data/zoo/decision")
    p.add_argument("--backend", default="native")
    p.add_argument("--bitmap", help="write the first photo's bit map (with legend) here")
    a = p.parse_args(argv)
    up = cadyq.Upscaler(a.model, backend=a.backend, device="cpu")
    s, info = up.scale, up.backend.info
    bits_all, grad_all, rows = [], [], []
    for i, path in enumerate(list_images([a.val])):
        hr = read_image(path).rgb
        lr = bicubic_downscale(np.ascontiguousarray(mod_crop(hr, s)), s)
        r = up.upscale(lr)
        bits = r.bit_map.float().mean(-1).reshape(-1).numpy()
        grad = np.zeros(r.grid.n_tiles)
        for idx, tiles in iter_batches(torch.from_numpy(lr).permute(2, 0, 1).float(), r.grid, 64):
            grad[idx] = tile_gradient(tiles.float()).sum(1).numpy()
        rho = spearmanr(bits, grad).statistic if np.ptp(bits) > 0 else float("nan")
        rows.append((Path(path).name, r.grid.n_tiles, r.fqr, rho))
        bits_all.append(bits)
        grad_all.append(grad)
        if i == 0 and a.bitmap:
            pic = with_legend(render_bit_map(r.bit_map, r.grid, s, r.image.rgb, tuple(info.bits)), tuple(info.bits), r.fqr)
            write_image(a.bitmap, Image(pic, None, 8, False, None, None, "RGB"))
    bits, grad = np.concatenate(bits_all), np.concatenate(grad_all)
    print(f"model {a.model} ({info.backbone} x{s} {info.method}, bits {tuple(info.bits)}), backend {a.backend}")
    print(f"{'photo':40s} {'tiles':>5s} {'FQR':>6s} {'Spearman':>9s}")
    for name, n, fqr, rho in rows:
        print(f"{name:40s} {n:5d} {fqr:6.2f} {rho:9.3f}")
    rho = spearmanr(bits, grad).statistic
    print(f"{'all tiles':40s} {bits.size:5d} {bits.mean():6.2f} {rho:9.3f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
