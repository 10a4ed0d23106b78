"""Seconds per training iteration of fp32, pams8 and cadyq (with its distillation teacher) through
`cadyq.train.Trainer` at the same settings (default: the paper's EDSR-baseline x4, batch 16, 48-px
crops), interleaved, on real photos. Records the step ratios of benchmarks/train_step_cpu.md.

    python benchmarks/train_step.py [--scale 4] [--batch 16] [--patch 48] [--iters 4] [--data DIR]
"""
import argparse
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from cadyq import checkpoint, create_model, quantize
from cadyq.data.io import Image, write_image
from cadyq.quant import observe
from cadyq.train.trainer import TrainConfig, Trainer


def photos(folder: Path) -> Path:
    from skimage import data

    folder.mkdir(parents=True, exist_ok=True)
    for name in ("chelsea", "coffee", "rocket"):
        write_image(folder / f"{name}.png", Image(getattr(data, name)(), None, 8, False, None, None, "RGB"))
    return folder


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--scale", type=int, default=4)
    p.add_argument("--batch", type=int, default=16)
    p.add_argument("--patch", type=int, default=48)
    p.add_argument("--iters", type=int, default=4, help="timed iterations per method (after one warm-up)")
    p.add_argument("--data", default=None)
    a = p.parse_args()
    tmp = Path(tempfile.mkdtemp(prefix="cadyq-step-"))
    data = a.data or str(photos(tmp / "photos"))
    torch.manual_seed(0)
    fp32 = create_model("edsr", a.scale)
    checkpoint.save(fp32, tmp / "fp32.safetensors")
    pams = quantize(create_model("edsr", a.scale), "pams8")
    checkpoint.transfer_state(pams, fp32.state_dict())
    with torch.no_grad(), observe(pams):
        pams(torch.rand(4, 3, a.patch, a.patch) * 255)
    checkpoint.save(pams, tmp / "pams8.safetensors")
    common = dict(data=data, scale=a.scale, batch=a.batch, patch=a.patch, iters=10 ** 6, workers=0, progress=False,
                  cache="memory")
    trainers = {
        "fp32": Trainer(TrainConfig(method="fp32", backbone="edsr", out=str(tmp / "r1"), **common)),
        "pams8": Trainer(TrainConfig(method="pams8", init=str(tmp / "fp32.safetensors"), out=str(tmp / "r2"), **common)),
        "cadyq": Trainer(TrainConfig(method="cadyq", init=str(tmp / "pams8.safetensors"), out=str(tmp / "r3"), **common)),
    }
    times = {k: [] for k in trainers}
    # rounds of two steps per method, the second timed: interleaved against drift of the machine, and no
    # timed step pays for the caches and allocator state another trainer left behind
    for it in range(a.iters + 1):
        for k, t in trainers.items():
            for j in range(2):
                lr, hr = t.dataset_batch(2 * it + j)
                t0 = time.perf_counter()
                t.train_step(lr, hr)
                if it and j:
                    times[k].append(time.perf_counter() - t0)
    first = next(iter(trainers.values()))
    print(f"EDSR-baseline x{a.scale}, batch {a.batch}, {a.patch}-px LR crops, precision {first.precision}, "
          f"channels_last {first.cfg.channels_last}, {torch.get_num_threads()} threads, {a.iters} iterations each, "
          "interleaved in rounds of 2 steps, the second timed (cadyq includes its pams8 teacher's forward for the "
          "distillation loss)")
    base = float(np.median(times["fp32"]))
    for k, v in times.items():
        print(f"  {k:6s} {np.median(v):7.2f} s/iter  (min {min(v):.2f})  {np.median(v) / base:5.2f}x fp32")


if __name__ == "__main__":
    main()
