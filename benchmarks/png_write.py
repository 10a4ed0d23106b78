"""PNG write time against inference time for a 2048x3072 result (benchmarks/png_write.md).

Upscales a 512x768 crop of a real photo x4 with the default model, then writes the result and its bit map
at several zlib levels; every figure is the median of --runs.

    python benchmarks/png_write.py [--photo PATH] [--runs 3] [--backend native]
"""
import argparse
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np

from cadyq.data.io import Image, read_image, write_image
from cadyq.runtime import Upscaler
from cadyq.runtime.bitmap import render_bit_map, with_legend

PHOTO = "/usr/share/backgrounds/mate/nature/Storm.jpg"  # apt-get install mate-backgrounds


def median_time(fn, runs):
    times = []
    for _ in range(runs):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return statistics.median(times)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--photo", default=PHOTO)
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--backend", default="native")
    a = ap.parse_args()
    lr = np.ascontiguousarray(read_image(a.photo).rgb[:512, :768])
    up = Upscaler("edsr-tiny-cadyq-x4-cpu", backend=a.backend, device="cpu")
    up.upscale(lr[:96, :96])  # warm-up
    results = []
    infer = median_time(lambda: results.append(up.upscale(lr)), a.runs)
    r = results[-1]
    print(f"model edsr-tiny-cadyq-x4-cpu, backend {up.backend.name}: {lr.shape[1]}x{lr.shape[0]} -> "
          f"{r.image.rgb.shape[1]}x{r.image.rgb.shape[0]}, upscale {infer:.2f} s (inference {r.timings['inference']:.2f} s)")
    bits = up.backend.info.bits
    render = median_time(lambda: with_legend(render_bit_map(r.bit_map, r.grid, up.scale, r.image.rgb, bits), bits, r.fqr),
                         a.runs)
    pic = with_legend(render_bit_map(r.bit_map, r.grid, up.scale, r.image.rgb, bits), bits, r.fqr)
    sixteen = Image((r.image.rgb.astype(np.uint16) * 257), None, 16, False, None, None, "RGB")
    print(f"bit map render + legend {render:.2f} s")
    print("level | SR image s | MB | bit map s | MB | 16-bit SR s | MB")
    with tempfile.TemporaryDirectory() as tmp:
        for level in (0, 1, 2, 3, 6):
            row = [str(level)]
            for name, img in (("sr", r.image), ("bits", Image(pic, None, 8, False, None, None, "RGB")), ("sr16", sixteen)):
                path = Path(tmp) / f"{name}.png"
                row += [f"{median_time(lambda: write_image(path, img, png_compress_level=level), a.runs):.2f}",
                        f"{path.stat().st_size / 1e6:.1f}"]
            print(" | ".join(row))


if __name__ == "__main__":
    main()
