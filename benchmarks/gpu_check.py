"""The native CUDA backend on one GPU: correctness of the whole model, then speed against the float peers.

    python benchmarks/gpu_check.py MODEL.safetensors --out LOGDIR [--compile-timeout 240]

1. Whole model: native (Triton INT8 kernels, fp16 float layers, CUDA graphs) vs the torch reference
   (fake quant, fp32) on photo tiles: same bits on >= 99.9 % of (tile, layer) decisions, SR PSNR >= 50 dB.
2. Speed, CUDA events, medians and percentiles over repeated runs after a warm-up:
   - batches of 96-px tiles (16, and the 66 of a 4K frame): native, torch fp16 channels_last, torch.compile(max-autotune) fp16;
   - a 4K frame (960x540 LR -> 3840x2160, 66 tiles) through the Upscaler (tiling and stitching on the GPU)
     for native, and the peers on the same 66 tiles in one batch (their best case: no tiling cost).
   - kernel throughput: the INT8 MACs of the quantized convs per second, as a fraction of the peak given
     by --int8-peak-tops (H100/H200 SXM dense INT8: 1979 TOPS = 989.5 T MAC/s).
Writes LOGDIR/gpu_check.json and prints a table.
"""
import argparse
import json
import math
import sys
import time
from pathlib import Path

import numpy as np
import torch

import cadyq
from cadyq.bench import build_baseline
from cadyq.checkpoint import load
from cadyq.runtime import Upscaler, create_backend


def photo_tiles(n, size, seed=0):
    from skimage import data

    images = [data.astronaut(), data.chelsea(), data.coffee(), data.rocket()]
    rng = np.random.default_rng(seed)
    out = []
    for i in range(n):
        im = images[i % len(images)]
        y, x = rng.integers(0, im.shape[0] - size), rng.integers(0, im.shape[1] - size)
        out.append(torch.from_numpy(np.ascontiguousarray(im[y:y + size, x:x + size])).permute(2, 0, 1).float())
    return torch.stack(out)


def frame_4k(width=960, height=540):
    """A width x height LR frame (default 960x540, 4K at x4) of scikit-image photos: real content in every tile."""
    from skimage import data

    im = np.concatenate([np.concatenate([data.astronaut()[:270, :480], data.coffee()[:270, :480]], 1),
                         np.concatenate([data.chelsea()[:270, :451], data.rocket()[:270, :509]], 1)], 0)
    return np.ascontiguousarray(im[:height, :width])


def cuda_times(fn, iters, warmup):
    """ms per call: CUDA events on a GPU (perf_counter on the CPU, for the script's own dry run)."""
    cuda = torch.cuda.is_available()
    for _ in range(warmup):
        fn()
    if cuda:
        torch.cuda.synchronize()
    times = []
    for _ in range(iters):
        if cuda:
            a, b = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            a.record()
            fn()
            b.record()
            torch.cuda.synchronize()
            times.append(a.elapsed_time(b))
        else:
            t = time.perf_counter()
            fn()
            times.append((time.perf_counter() - t) * 1e3)
    t = np.array(times)
    return {"median_ms": float(np.median(t)), "mean_ms": float(t.mean()), "p90_ms": float(np.percentile(t, 90)),
            "p99_ms": float(np.percentile(t, 99)), "min_ms": float(t.min()), "max_ms": float(t.max())}


def psnr(a, b):
    mse = float(((a.clamp(0, 255) - b.clamp(0, 255)) ** 2).mean())
    return math.inf if mse == 0 else 10 * math.log10(255 ** 2 / mse)


def int8_macs(model, tile):
    """MACs of the quantized convs per tile (the INT8 work)."""
    from cadyq.quant import ModelInfo

    info = ModelInfo.from_model(model)
    return float(info.bitops(torch.full((1, info.n_layers), 8.0), tile, tile).sum()) * 1024 / (2 * 8 * 8)


def main(argv=None):
    p = argparse.ArgumentParser()
    p.add_argument("model")
    p.add_argument("--out", required=True)
    p.add_argument("--iters", type=int, default=30)
    p.add_argument("--warmup", type=int, default=5)
    p.add_argument("--int8-peak-tops", type=float, default=1979.0)
    p.add_argument("--no-compile", action="store_true")
    p.add_argument("--device", default="cuda", help="cuda; cpu only for a dry run of this script under TRITON_INTERPRET=1")
    p.add_argument("--tile", type=int, default=96)
    p.add_argument("--batches", default="16,66", help="tile batches timed (66: the tiles of a 4K frame at x4)")
    p.add_argument("--frame", default="960x540", help="LR frame WxH (default 960x540: 4K at x4)")
    args = p.parse_args(argv)
    batches = [int(b) for b in args.batches.split(",")]
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    dev = torch.device(args.device)
    report = {"device": torch.cuda.get_device_name(0) if dev.type == "cuda" else "cpu (dry run)",
              "torch": torch.__version__}
    T = args.tile
    model = load(args.model).eval()

    # 1. correctness of the whole model
    tiles = photo_tiles(32 if dev.type == "cuda" else 2, T).to(dev)
    ref = model.to(dev)
    with torch.no_grad():
        ref_sr, ref_bits = ref(tiles), cadyq.quant.selected_bits(ref)
    native = create_backend("native", model, dev, kernels="triton")
    sr, bits = native.run(tiles)
    agree = float((bits.cpu() == ref_bits.float().cpu()).float().mean())
    report["correctness"] = {"tiles": tiles.shape[0], "bits_agreement": agree, "psnr_vs_torch_db": psnr(sr, ref_sr),
                             "max_abs": float((sr - ref_sr).abs().max()), "notes": native.notes}
    print(f"correctness: bits agree {agree:.4%}, PSNR vs torch {report['correctness']['psnr_vs_torch_db']:.2f} dB",
          flush=True)

    # 2. speed on tile batches
    fp32, _ = build_baseline(model.cpu(), "fp32")
    dt = torch.float16 if dev.type == "cuda" else torch.bfloat16
    half = fp32.to(dev).to(dt).to(memory_format=torch.channels_last).eval()
    peers = {"torch fp16 channels_last": lambda x: half(x.to(dt))}
    if not args.no_compile:
        t = time.perf_counter()
        compiled = torch.compile(half, mode="max-autotune")
        with torch.no_grad():
            for n in batches:
                compiled(photo_tiles(n, T).to(dev, dt).contiguous(memory_format=torch.channels_last))
        report["compile_s"] = time.perf_counter() - t
        peers["torch.compile max-autotune fp16"] = lambda x: compiled(x.to(dt))
    rows = []
    macs = int8_macs(model, T)
    for n in batches:
        x = photo_tiles(n, T, seed=n).to(dev).contiguous(memory_format=torch.channels_last)
        with torch.no_grad():
            r = {"config": "native (INT8 Triton, CUDA graphs)", "batch": n, **cuda_times(lambda: native.run(x), args.iters, args.warmup)}
            r["int8_tops_fraction"] = 2 * macs * n / (r["median_ms"] * 1e-3) / (args.int8_peak_tops * 1e12)
            rows.append(r)
            for name, fn in peers.items():
                rows.append({"config": name, "batch": n, **cuda_times(lambda: fn(x), args.iters, args.warmup)})
        print(f"batch {n}: " + ", ".join(f"{r['config']} {r['median_ms']:.2f} ms" for r in rows if r["batch"] == n), flush=True)
    report["tiles"] = rows

    # 3. a 4K frame end to end (tiling, batching, stitching on the GPU)
    fw, fh = (int(v) for v in args.frame.split("x"))
    frame = frame_4k(fw, fh)
    up = Upscaler(native, tile=T, overlap=6, batch=max(batches))
    res = up.upscale(frame)
    s = native.info.scale
    assert res.image.rgb.shape == (fh * s, fw * s, 3), res.image.rgb.shape
    report["frame_4k"] = {"tiles": res.grid.n_tiles, "fqr": res.fqr,
                          **cuda_times(lambda: up.upscale(frame), max(5, args.iters // 3), 2)}
    print(f"frame {fw}x{fh}: {res.grid.n_tiles} tiles, native end to end {report['frame_4k']['median_ms']:.2f} ms", flush=True)
    from cadyq.kernels.conv_int8 import tuned_configs

    report["conv_int8_autotuned"] = tuned_configs()  # the block sizes the autotuner chose, per shape
    (out / "gpu_check.json").write_text(json.dumps(report, indent=2))
    print(json.dumps(report, indent=2))
    ok = agree >= 0.999 and report["correctness"]["psnr_vs_torch_db"] >= 50
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
