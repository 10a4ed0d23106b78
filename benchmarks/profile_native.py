"""Where the native CPU backend's time goes, by kind of work, against the fp32 channels_last model.

One thread, one tile at a time (the native backend runs T such workers on T threads), same tiles for
both; times are medians over the tiles after a warm-up. The peer is the float backbone in channels_last,
bf16 autocast where the CPU computes in bf16 (else fp32).

    python benchmarks/profile_native.py MODEL.safetensors [--tiles 6] [--image PHOTO]
"""
import argparse
import collections
import contextlib
import time

import numpy as np
import torch
import torch.nn as nn

from cadyq.checkpoint import load
from cadyq.bench import build_baseline, bench_tiles, BenchSettings, load_hr, make_pair
from cadyq.runtime.native_backend import NativeBackend
from cadyq.hardware import cpu_has_bf16
from cadyq.runtime.memory import keep_large_allocations
from cadyq.runtime.nhwc import NHWCPixelShuffle


def timed(owner, name, acc, kind):
    f = getattr(owner, name)

    def g(*a, **kw):
        t = time.perf_counter()
        r = f(*a, **kw)
        acc[kind(a) if callable(kind) else kind] += time.perf_counter() - t
        return r
    setattr(owner, name, g)


def hook_modules(net, acc, classify):
    def pre(m, a):
        m._t0 = time.perf_counter()

    def post(m, a, o):
        acc[classify(m)] += time.perf_counter() - m._t0
    for m in net.modules():
        if classify(m):
            m.register_forward_pre_hook(pre)
            m.register_forward_hook(post)


def float_kind(m):
    if isinstance(m, nn.Conv2d) and type(m).__name__ == "Conv2d":
        return "float conv (head, last body conv, upsampler, tail)"
    if isinstance(m, (nn.PixelShuffle, NHWCPixelShuffle)):
        return "pixel shuffle"
    return None


def main():
    p = argparse.ArgumentParser()
    p.add_argument("model")
    p.add_argument("--tiles", type=int, default=6)
    p.add_argument("--image", default=None)
    p.add_argument("--peer", choices=("auto", "fp32", "bf16"), default="auto",
                   help="precision of the channels_last float peer (auto: bf16 where the CPU computes in it)")
    a = p.parse_args()
    peer = ("bf16" if cpu_has_bf16() else "fp32") if a.peer == "auto" else a.peer
    peer_ctx = (lambda: torch.autocast("cpu", dtype=torch.bfloat16)) if peer == "bf16" else contextlib.nullcontext
    torch.set_num_threads(1)
    keep_large_allocations()
    model = load(a.model).eval()
    hr, _ = load_hr(a.image)
    _, lr = make_pair(hr, model.config.scale)
    tiles = bench_tiles(lr, BenchSettings(batch=a.tiles))
    nat = NativeBackend(model, "cpu", workers=1)
    k = nat.kernels
    acc = collections.Counter()
    timed(k, "select_quantize", acc, "statistics + selection + quantization (C)")
    timed(k, "_float_conv", acc, "8-bit tiles: float32 conv (AVX2 without VNNI)")
    timed(k, "fake_quant", acc, "fixed 8-bit fake quant of block outputs (C)")
    conv = k.conv

    def int_conv(qa, c):
        t = time.perf_counter()
        r = conv(qa, c)
        if not qa.extra.get("float"):
            acc[f"INT8 conv (oneDNN), {int(qa.bits[0])}-bit tiles"] += time.perf_counter() - t
        return r
    k.conv = int_conv
    hook_modules(nat.program.net, acc, float_kind)
    fp32, _ = build_baseline(model, "fp32")
    fp32 = fp32.to(memory_format=torch.channels_last)
    acc32 = collections.Counter()
    hook_modules(fp32, acc32, lambda m: ("conv 64->64 (the quantized layers' float peers)" if isinstance(m, nn.Conv2d)
                                         and m.in_channels == m.out_channels == 64 and "body" in getattr(m, "_n", "body")
                                         else float_kind(m)))
    totals, totals32 = [], []
    with torch.inference_mode():
        nat.run(tiles[:1])
        with peer_ctx():
            fp32(tiles[:1].contiguous(memory_format=torch.channels_last))
        acc.clear()
        acc32.clear()
        for i in range(tiles.shape[0]):
            t = time.perf_counter()
            nat.run(tiles[i:i + 1])
            totals.append(time.perf_counter() - t)
            t = time.perf_counter()
            with peer_ctx():
                fp32(tiles[i:i + 1].contiguous(memory_format=torch.channels_last))
            totals32.append(time.perf_counter() - t)
    n = tiles.shape[0]
    print(f"native, one thread, ms per 96-px tile (total {np.median(totals) * 1e3:.1f}, mean {np.mean(totals) * 1e3:.1f}):")
    for kind, v in acc.most_common():
        print(f"  {v / n * 1e3:8.1f}  {100 * v / sum(totals):5.1f} %  {kind}")
    rest = sum(totals) - sum(acc.values())
    print(f"  {rest / n * 1e3:8.1f}  {100 * rest / sum(totals):5.1f} %  other (residual adds, mean shift, Python)")
    print(f"{peer} channels_last, one thread, ms per tile (total {np.median(totals32) * 1e3:.1f}, mean {np.mean(totals32) * 1e3:.1f}):")
    for kind, v in acc32.most_common():
        print(f"  {v / n * 1e3:8.1f}  {100 * v / sum(totals32):5.1f} %  {kind}")
    rest = sum(totals32) - sum(acc32.values())
    print(f"  {rest / n * 1e3:8.1f}  {100 * rest / sum(totals32):5.1f} %  other")


if __name__ == "__main__":
    main()
