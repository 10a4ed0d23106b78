"""Where do fewer bits hurt? For each LR tile of the held-out photos, the loss (L1 on [0, 255], and PSNR)
when every dynamic layer runs at each candidate bit-width instead of the highest, against the tile's image
gradient. A selector trained to lower L1 at a given FQR gives the bits to the tiles that lose the most; if
those are the flat ones, bits cannot follow content (bits_vs_gradient.py) without losing PSNR.

    python benchmarks/bit_damage.py MODEL [--val /work/data/zoo/decision] [--tile 48] [--clip-scale 4=0.5 ...]

--clip-scale B=C multiplies the B-bit candidate's clip values by C (does a tighter low-bit clip change who loses?).

MODEL: a pams8 checkpoint (its clip values become every candidate's, as `cadyq train --method cadyq --init`
does) or a cadyq one (its own per-candidate clip values). Tiles: non-overlapping, cut from the LR photo.
"""
import argparse
import dataclasses

import numpy as np
import torch
from scipy.stats import spearmanr

from cadyq import checkpoint, create_model, quantize
from cadyq.data.io import list_images, read_image
from cadyq.data.resize import bicubic_downscale, mod_crop
from cadyq.quant import dynamic_quantizers, quant_config, tile_gradient


def tiles_of(folder, scale, size):
    lrs, hrs = [], []
    for path in list_images([folder]):
        hr = np.ascontiguousarray(mod_crop(read_image(path).rgb, scale))
        lr = bicubic_downscale(hr, scale)
        for i in range(0, lr.shape[0] - size + 1, size):
            for j in range(0, lr.shape[1] - size + 1, size):
                lrs.append(lr[i:i + size, j:j + size])
                hrs.append(hr[scale * i:scale * (i + size), scale * j:scale * (j + size)])
    as_t = lambda a: torch.from_numpy(np.stack(a)).permute(0, 3, 1, 2).float()  # noqa: E731
    return as_t(lrs), as_t(hrs)


def as_cadyq(path):
    src = checkpoint.load(path)
    if quant_config(src).method == "cadyq":
        return src
    arch = {k: v for k, v in dataclasses.asdict(src.config).items() if k not in ("name", "scale")}
    model = quantize(create_model(src.config.name, src.config.scale, **arch), "cadyq")
    checkpoint.transfer_state(model, src.state_dict())
    return model


@torch.no_grad()
def errors_at(model, lr, hr, k, batch=16):
    """Per-tile (L1, MSE) of the rounded output with every dynamic layer forced to candidate k."""
    for q in dynamic_quantizers(model):
        q.net.weight.zero_()
        q.net.bias.zero_()
        q.net.bias[k] = 1.0
    out = torch.cat([model(lr[i:i + batch]) for i in range(0, len(lr), batch)]).clamp(0, 255).round()
    d = out - hr
    return d.abs().mean((1, 2, 3)).numpy(), d.pow(2).mean((1, 2, 3)).numpy()


def main(argv=None):
    p = argparse.ArgumentParser()
    p.add_argument("model")
    p.add_argument("--val", default="/work/data/zoo/decision")
    p.add_argument("--tile", type=int, default=48)
    p.add_argument("--clip-scale", action="append", default=[], metavar="B=C")
    a = p.parse_args(argv)
    model = as_cadyq(a.model).eval()
    bits = [int(b) for b in dynamic_quantizers(model)[0].bits.tolist()]
    for item in a.clip_scale:
        b, c = item.split("=")
        with torch.no_grad():
            for q in dynamic_quantizers(model):
                q.alpha[bits.index(int(b))] *= float(c)
    lr, hr = tiles_of(a.val, model.config.scale, a.tile)
    grad = tile_gradient(lr).sum(1).numpy()
    top_l1, top_mse = errors_at(model, lr, hr, len(bits) - 1)
    print(f"model {a.model}: {len(grad)} LR tiles of {a.tile} px from {a.val}; every dynamic layer at one bit-width"
          + (f"; clip scaled {', '.join(a.clip_scale)}" if a.clip_scale else ""))
    print(f"{'bits':>4s} {'mean dL1':>9s} {'mean dPSNR':>10s} {'Spearman(dL1, grad)':>20s} {'Spearman(dPSNR, grad)':>22s}")
    for k, b in enumerate(bits[:-1]):
        l1, mse = errors_at(model, lr, hr, k)
        dl1, dpsnr = l1 - top_l1, 10 * np.log10(mse / top_mse)
        print(f"{b:4d} {dl1.mean():9.3f} {dpsnr.mean():10.3f} {spearmanr(dl1, grad).statistic:20.3f} "
              f"{spearmanr(dpsnr, grad).statistic:22.3f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
