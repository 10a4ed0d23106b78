"""Calibrate the INT8 upsampler and tail of every quantized zoo model on the zoo's training photos, and store the clip
values in its metadata (issue 36: the native backend runs them in INT8 by default on CPUs with VNNI or AMX). The
weights and the rest of the metadata are kept; running it again recomputes the same values.

    python benchmarks/zoo_upsampler.py [--data /work/data/zoo/train] [--per-photo 6] [--method mse] [MODEL ...]

The training photos come from `cadyq.data.photos.prepare(...)`; no held-out photo is read.
"""
import argparse
import sys

import torch

from cadyq import checkpoint, zoo
from cadyq.calib import _lr_images, calibrate_upsampler
from cadyq.data.io import to_tensor
from cadyq.quant import quant_config


def spread_tiles(folder, scale: int, per_photo: int, tile: int = 96) -> list[torch.Tensor]:
    """`per_photo` LR tiles of every photo at least a tile large, spread evenly over it (a batch per photo)."""
    out = []
    for lr in _lr_images(folder, scale, False):
        t = to_tensor(lr)
        h, w = t.shape[1:]
        if min(h, w) < tile:
            continue
        ys = torch.linspace(0, h - tile, per_photo).long().tolist()
        xs = torch.linspace(0, w - tile, per_photo).long().tolist()[::-1]
        out.append(torch.stack([t[:, y:y + tile, x:x + tile].float() for y, x in zip(ys, xs)]))
    return out


def quantized_zoo() -> list[str]:
    return [n for n in zoo.available() if quant_config(zoo.load_pretrained(n)).method != "fp32"]


def main(argv=None):
    p = argparse.ArgumentParser()
    p.add_argument("models", nargs="*", help="zoo names (default: every quantized one)")
    p.add_argument("--data", default="/work/data/zoo/train")
    p.add_argument("--per-photo", type=int, default=6, help="tiles per training photo (24 photos)")
    p.add_argument("--method", default="mse")
    a = p.parse_args(argv)
    tiles = {}  # scale -> batches
    for name in a.models or quantized_zoo():
        path = zoo.path_of(name)
        model = zoo.load_pretrained(name)
        s = model.config.scale
        batches = tiles[s] = tiles.get(s) or spread_tiles(a.data, s, a.per_photo)
        out = calibrate_upsampler(model, batches, method=a.method)
        extra = checkpoint.read_metadata(path).get("extra", {})
        extra["upsampler_calibration"] = {"method": a.method, "tiles": sum(b.shape[0] for b in batches), "data": "the zoo's training photos",
                                          "command": "python benchmarks/zoo_upsampler.py"}
        checkpoint.save(out, path, extra)
        clips = ", ".join(f"{k} {v:.3g}" for k, v in out.upsampler_clips.items())
        print(f"{name}: {clips}", file=sys.stderr, flush=True)


if __name__ == "__main__":
    main()
