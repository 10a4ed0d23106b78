"""Where the native CPU program's time goes, by kind of work: convolutions against everything else (issue 36's
target: at most 4 ms per tile outside the convolutions, one thread).

One thread, groups of `tiles_per_call` tiles (the native backend runs T such workers on T threads), photo tiles;
times are the sum over the timed groups after a warm-up, per tile. The float peer is the fp32 backbone in
channels_last, bf16 autocast where the CPU computes in bf16, run on the same tiles one group at a time.

    python benchmarks/profile_native.py [MODEL] [--tiles 16] [--tiles-per-call N] [--image PHOTO]
"""
import argparse
import collections
import contextlib
import time

import torch
import torch.nn as nn

from cadyq import hardware
from cadyq.bench import BenchSettings, bench_tiles, build_baseline, load_hr, make_pair
from cadyq.checkpoint import load_model
from cadyq.kernels.cpu import onednn as K
from cadyq.runtime import native_cpu, nhwc
from cadyq.runtime.memory import keep_large_allocations
from cadyq.runtime.native_backend import NativeBackend

C_PASSES = {"tile_gradient": "C: tile gradient", "select_u8": "C: statistics, choice, table of a conv's u8 output",
            "residual_select": "C: residual stream onto the next grid, statistics, choice, table",
            "quantize_select": "C: head output (and the upsampler input) onto their grids",
            "residual_float": "C: last residual to float"}


ACTIVE = [False]  # timing the native program (not the float peer)


def patch(owner, name, acc, kind):
    f = getattr(owner, name)

    def timed(*a, **kw):
        if not ACTIVE[0]:
            return f(*a, **kw)
        t = time.perf_counter()
        r = f(*a, **kw)
        acc[kind(*a) if callable(kind) else kind] += time.perf_counter() - t
        return r
    setattr(owner, name, timed)


def conv_kind(conv, u):
    if conv.weight.shape[0] == conv.weight.shape[1] == 64:
        return "conv: INT8 body 64->64"
    return "conv: INT8 upsampler and tail"


def main():
    p = argparse.ArgumentParser()
    p.add_argument("model", nargs="?", default="edsr-cadyq-alloc-x4")
    p.add_argument("--tiles", type=int, default=16)
    p.add_argument("--tiles-per-call", type=int, default=None)
    p.add_argument("--image", default=None)
    a = p.parse_args()
    torch.set_num_threads(1)
    keep_large_allocations()
    model = load_model(a.model).eval()
    hr, _ = load_hr(a.image)
    _, lr = make_pair(hr, model.config.scale)
    tiles = bench_tiles(lr, BenchSettings(batch=a.tiles)).contiguous(memory_format=torch.channels_last)
    with hardware.forced(**({"tiles_per_call": a.tiles_per_call} if a.tiles_per_call else {})):
        nat = NativeBackend(model, "cpu", workers=1)
    if not nat.fused:
        raise SystemExit(f"{a.model}: not the 8-bit program ({native_cpu.unsupported(nat.program)})")
    per, prog = nat.tiles_per_call, nat.program
    acc = collections.Counter()
    for name, kind in C_PASSES.items():
        patch(K, name, acc, kind)
    patch(K.Int8Conv, "__call__", acc, conv_kind)
    patch(nhwc.NHWCPixelShuffle, "forward", acc, "pixel shuffle")
    patch(nn.Conv2d, "_conv_forward", acc, lambda m, x, w, b: f"conv: float {x.dtype}".replace("torch.", ""))
    peer = "bf16" if hardware.cpu_has_bf16() else "fp32"
    fp32, _ = build_baseline(model, "fp32")
    fp32 = fp32.to(memory_format=torch.channels_last)
    ctx = (lambda: torch.autocast("cpu", dtype=torch.bfloat16)) if peer == "bf16" else contextlib.nullcontext
    groups = [tiles[i:i + per] for i in range(0, tiles.shape[0], per)]
    with torch.inference_mode():
        prog(groups[0])
        with ctx():
            fp32(groups[0])
        acc.clear()
        total = peer_total = 0.0
        for g in groups:
            ACTIVE[0] = True
            t = time.perf_counter()
            prog(g)
            total += time.perf_counter() - t
            ACTIVE[0] = False
            t = time.perf_counter()
            with ctx():
                fp32(g)
            peer_total += time.perf_counter() - t
    n = tiles.shape[0]
    conv = sum(v for k, v in acc.items() if k.startswith("conv"))
    flags = " ".join(sorted(f for f in hardware.cpu_flags() if f in ("avx2", "avx512f", "avx512_vnni", "avx_vnni",
                                                                       "avx512_bf16", "amx_int8", "amx_bf16")))
    print(f"{a.model}: native, one thread, {per} tiles per call, ms per 96-px tile; lscpu flags: {flags}")
    print(f"  {total / n * 1e3:8.2f}  total ({peer} channels_last float model: {peer_total / n * 1e3:.2f})")
    for kind, v in sorted(acc.items(), key=lambda kv: -kv[1]):
        print(f"  {v / n * 1e3:8.2f}  {kind}")
    rest = total - sum(acc.values())
    print(f"  {rest / n * 1e3:8.2f}  other (Python, allocation, mean shift, gathering the bits)")
    print(f"  {(total - conv) / n * 1e3:8.2f}  everything but convolutions")


if __name__ == "__main__":
    main()
