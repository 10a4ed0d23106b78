"""Full-size models for the integer-execution benchmark (benchmarks/integer_cpu.md), until trained zoo
weights exist: EDSR-baseline (64 features, 16 blocks) with seeded random weights, quantized to CADyQ
4/6/8 and PAMS-8, clip values calibrated (observe) on photo tiles, and the CADyQ selectors given seeded
random weights over standardized features so that every layer picks 4, 6 and 8 bits (as tests/conftest.py
does). Speed depends on the weights only through the bits chosen, which the report gives.

    python benchmarks/bench_models.py OUT_DIR [--scale 4]   ->  OUT_DIR/edsr-cadyq-x<s>-bench.safetensors
"""
import argparse
import math
import sys
from pathlib import Path

import numpy as np
import torch

import cadyq
from cadyq.quant import BitSelector, observe


def photo_tiles(n, size, seed):
    from skimage import data

    images = [data.chelsea(), data.coffee(), data.rocket()]
    rng = np.random.default_rng(seed)
    out = []
    for i in range(n):
        im = images[i % 3]
        y, x = rng.integers(0, im.shape[0] - size), rng.integers(0, im.shape[1] - size)
        out.append(torch.from_numpy(np.ascontiguousarray(im[y:y + size, x:x + size])).permute(2, 0, 1).float())
    return torch.stack(out)


@torch.no_grad()
def main(argv=None):
    p = argparse.ArgumentParser()
    p.add_argument("out")
    p.add_argument("--scale", type=int, default=4)
    args = p.parse_args(argv)
    torch.manual_seed(0)
    m = cadyq.quantize(cadyq.create_model("edsr", args.scale), "cadyq").eval()
    tiles = photo_tiles(8, 96, 7)
    with observe(m):
        m(tiles)
    sels = [q for q in m.modules() if isinstance(q, BitSelector)]
    feats = {}
    hooks = [q.register_forward_pre_hook(
        lambda q, a: feats.__setitem__(id(q), torch.cat([q.state.grad, a[0].std(dim=(2, 3))], 1))) for q in sels]
    m(tiles)
    for h in hooks:
        h.remove()
    gen = torch.Generator().manual_seed(1)
    for q in sels:
        f = feats[id(q)]
        mu, sd = f.mean(0), f.std(0) + 1e-6
        w = torch.randn(q.net.weight.shape, generator=gen) / sd / math.sqrt(f.shape[1])
        q.net.weight.copy_(w)
        q.net.bias.copy_(-(w @ mu) + 0.3 * torch.randn(q.net.bias.shape, generator=gen))
    out = Path(args.out) / f"edsr-cadyq-x{args.scale}-bench.safetensors"
    out.parent.mkdir(parents=True, exist_ok=True)
    cadyq.save(m, out, {"note": "benchmark model: random weights, calibrated clips, randomized selectors"})
    print(out)


if __name__ == "__main__":
    sys.exit(main())
