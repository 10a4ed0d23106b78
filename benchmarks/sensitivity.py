"""CADyQ's premise measured on our data (paper Fig. 2): how much each tile's SR suffers when a layer's input
drops from 8 to 4 bits, against the tile's image gradient and the layer input's standard deviation.

The model is a pams8 checkpoint with per-candidate clip values for 4/6/8 bits calibrated by MSE on training
tiles (what `benchmarks/train_zoo.sh` starts CADyQ from), run as its exact integer program (ReferenceKernels)
with every selector forced: all layers at 8 bits (the base), each layer alone at 4 bits, all layers at 4 bits.
Per tile: sensitivity = MSE(SR, HR) with the drop - MSE(SR, HR) at the base (8-bit RGB values, 96-px LR tiles
of the HR photos' bicubic LR, seeded). Writes OUT/sensitivity.json (every tile's figures and the Spearman
correlations) and scatter plots OUT/sensitivity_all.png, OUT/sensitivity_layers.png.

    python benchmarks/sensitivity.py [--model edsr-pams8-x4] [--data /work/data/zoo/train] [--tiles 48] [--out DIR]
"""
import argparse
import json
from pathlib import Path

import numpy as np
import torch

from cadyq.calib import calibrate, photo_tiles
from cadyq.checkpoint import load_model
from cadyq.data.io import read_image, to_tensor
from cadyq.data.io import list_images
from cadyq.data.resize import bicubic_downscale, mod_crop
from cadyq.quant.lowering import ReferenceKernels, lower
from cadyq.quant.ops import tile_gradient


def tile_pairs(folder, scale: int, n: int, tile: int = 96, seed: int = 0):
    """n (LR tile [3,t,t], HR tile [3,ts,ts]) float pairs at seeded positions of the folder's photos."""
    rng = np.random.default_rng(seed)
    pairs = []
    for path in list_images([folder]):
        hr = mod_crop(read_image(path).rgb, scale)
        if min(hr.shape[:2]) >= tile * scale:  # photos whose LR holds a whole tile
            pairs.append((hr, bicubic_downscale(hr, scale)))
    lrs, hrs = [], []
    for i in range(n):
        hr, lr = pairs[i % len(pairs)]
        y, x = rng.integers(0, lr.shape[0] - tile + 1), rng.integers(0, lr.shape[1] - tile + 1)
        lrs.append(to_tensor(lr[y:y + tile, x:x + tile]))
        hrs.append(to_tensor(hr[y * scale:(y + tile) * scale, x * scale:(x + tile) * scale]))
    return torch.stack(lrs).float(), torch.stack(hrs).float()


class Recording(ReferenceKernels):
    """The integer reference that records each dynamic layer's per-tile input std (mean over channels)."""

    def __init__(self):
        self.stds = []

    def select_quantize(self, x, quant, ctx, dequant=False):
        if quant.mode == "layer" and getattr(quant, "key", "").endswith("input_quant"):
            self.stds.append(x.float().std(dim=(2, 3)).mean(1))
        return super().select_quantize(x, quant, ctx, dequant)


def force(program, bits_per_layer):
    """Force every dynamic quantizer of the program to the candidate of its given bit-width."""
    for q, b in zip(program.dynamic, bits_per_layer):
        k = q.bits.tolist().index(float(b))
        q.mode = "layer"
        q.bias = torch.nn.functional.one_hot(torch.tensor(k), q.n_candidates).float()
        q._layer_k = None


def spearman(a, b) -> float:
    ra, rb = np.argsort(np.argsort(a)), np.argsort(np.argsort(b))
    return float(np.corrcoef(ra, rb)[0, 1])


def mse_per_tile(sr, hr):
    return ((sr.clamp(0, 255).round() - hr) ** 2).mean(dim=(1, 2, 3)).numpy()


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--model", default="edsr-pams8-x4")
    p.add_argument("--data", default="/work/data/zoo/train")
    p.add_argument("--tiles", type=int, default=48)
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--out", default="/tmp/sensitivity")
    a = p.parse_args()
    out = Path(a.out)
    out.mkdir(parents=True, exist_ok=True)
    pams = load_model(a.model)
    s = pams.config.scale
    calib_batches, _ = photo_tiles(a.data, s, max_tiles=64)
    model = calibrate(pams, calib_batches, target="cadyq", method="mse")  # 4/6/8 clips, pams8 weights
    lr, hr = tile_pairs(a.data, s, a.tiles)
    kernels = Recording()
    program = lower(model, kernels)
    n_layers = len(program.dynamic)

    def run(bits):
        force(program, bits)
        kernels.stds = []
        srs = []
        with torch.inference_mode():
            for i in range(0, lr.shape[0], a.batch):
                srs.append(program(lr[i:i + a.batch])[0])
        return torch.cat(srs)

    base = mse_per_tile(run([8] * n_layers), hr)
    stds = torch.stack([torch.cat(kernels.stds[j::n_layers]) for j in range(n_layers)]).numpy()  # [L, N]
    all4 = mse_per_tile(run([4] * n_layers), hr) - base
    per_layer = np.stack([mse_per_tile(run([4 if i == j else 8 for i in range(n_layers)]), hr) - base
                          for j in range(n_layers)])  # [L, N]
    g = tile_gradient(lr).sum(1).numpy()
    res = {
        "model": a.model, "data": a.data, "tiles": int(lr.shape[0]), "layers": n_layers,
        "spearman_all_layers_vs_gradient": spearman(all4, g),
        "spearman_per_layer_vs_gradient": [spearman(per_layer[j], g) for j in range(n_layers)],
        "spearman_per_layer_vs_input_std": [spearman(per_layer[j], stds[j]) for j in range(n_layers)],
        "spearman_input_std_vs_gradient": [spearman(stds[j], g) for j in range(n_layers)],
        "mean_sensitivity_per_layer": per_layer.mean(1).tolist(),
        "tile": {"gradient": g.tolist(), "base_mse": base.tolist(), "all_layers_4bit": all4.tolist(),
                 "per_layer_4bit": per_layer.tolist(), "input_std": stds.tolist()},
    }
    (out / "sensitivity.json").write_text(json.dumps(res, indent=1))
    plot(res, out)
    print(f"{a.model}: {lr.shape[0]} tiles, {n_layers} layers")
    print(f"Spearman(all layers 8->4 damage, tile gradient) = {res['spearman_all_layers_vs_gradient']:+.3f}")
    for name in ("vs_gradient", "vs_input_std"):
        v = np.array(res[f"spearman_per_layer_{name}"])
        print(f"per layer, Spearman(damage, {name[3:]}): median {np.median(v):+.3f}, range {v.min():+.3f} .. {v.max():+.3f}")
    print(f"mean damage per layer (MSE increase): {np.round(per_layer.mean(1), 3).tolist()}")
    print(f"wrote {out}/sensitivity.json, sensitivity_all.png, sensitivity_layers.png")


def plot(res, out: Path):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    t = res["tile"]
    fig, ax = plt.subplots(figsize=(5, 4))
    ax.scatter(t["gradient"], t["all_layers_4bit"], s=12)
    ax.set(xlabel="tile gradient |∇I| (x + y, x1e3)", ylabel="MSE increase, all layers 8 -> 4 bits",
           title=f"Spearman {res['spearman_all_layers_vs_gradient']:+.2f}")
    fig.tight_layout()
    fig.savefig(out / "sensitivity_all.png", dpi=110)
    plt.close(fig)
    L = res["layers"]
    picks = sorted({0, L // 4, L // 2, 3 * L // 4, L - 1})
    fig, axes = plt.subplots(2, len(picks), figsize=(3.2 * len(picks), 6), squeeze=False)
    for c, j in enumerate(picks):
        d = t["per_layer_4bit"][j]
        axes[0][c].scatter(t["gradient"], d, s=8)
        axes[0][c].set(title=f"layer {j}: vs gradient {res['spearman_per_layer_vs_gradient'][j]:+.2f}",
                       xlabel="tile gradient", ylabel="MSE increase" if c == 0 else None)
        axes[1][c].scatter(t["input_std"][j], d, s=8, color="tab:orange")
        axes[1][c].set(title=f"vs input std {res['spearman_per_layer_vs_input_std'][j]:+.2f}",
                       xlabel="layer input std", ylabel="MSE increase" if c == 0 else None)
    fig.tight_layout()
    fig.savefig(out / "sensitivity_layers.png", dpi=100)
    plt.close(fig)


if __name__ == "__main__":
    main()
