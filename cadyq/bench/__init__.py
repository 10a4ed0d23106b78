"""trtexec-style benchmarks of a model and its baselines (`cadyq bench`).

    cadyq bench --model M [--backend B] [--device D] [--tile 96] [--batch 16] [--warmup 3]
                [--iterations 20 | --duration S] [--image PATH] [--compare fp32,pams8,...] [--json OUT]

Per configuration (the model, then each `--compare` baseline) it reports:

- latency per batch of `--batch` LR tiles (min, mean, median, p90, p95, p99, max, in ms; percentiles
  by linear interpolation). On the CPU the latency is the host time of `Backend.run` (perf_counter).
  On CUDA it is measured with CUDA events and split trtexec-style into H2D (pinned host tiles to
  the device), GPU compute (`Backend.run`), D2H (SR tiles back to pinned host memory); Latency is
  their sum; Enqueue is the host time until `run` returns. Every iteration is synchronized.
- throughput: tiles/s = tiles / total host walltime of the timed iterations, LR and SR megapixels/s.
- whole image through `cadyq.runtime.Upscaler` (the image, default skimage's astronaut, is the HR;
  its LR is `bicubic_downscale`): end-to-end time (tiling, transfers, inference, stitching and
  accounting of an image already decoded in memory), FQR, BitOPs and BitOPs per SR megapixel,
  PSNR/SSIM on Y (shave = scale) and the PSNR gain over bicubic upscaling of the same LR.

All configurations run in one process on the same inputs: the timed tiles are tiles of that LR
image, picked with a seeded generator. Configurations are timed interleaved (one iteration of each
in turn), so background load changes hit them alike and the speed ratios against the first row
compare like with like. Baselines: "fp32" (the plain backbone with the same weights), "pams8" (8-bit
weights and activations, clip values of the 8-bit candidate; calibrated on the tiles when the model
has none), "fp16" (the fp32 backbone under torch autocast; CUDA only), or another checkpoint, zoo
name, .onnx or .engine; `NAME@BACKEND` picks the backend of one baseline.
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from ..methods import METHODS
from .configs import (BUILT_BASELINES, FLOAT_PEERS, Config, build_baseline, expand_compare, make_configs,  # noqa: F401
                      _autocast_backend, _simulation_note)
from .report import benchmark, format_report, machine_info, _add_ratios, _warnings  # noqa: F401
from .settings import PERCENTILES, SCHEDULES, BenchError, BenchSettings, latency_stats  # noqa: F401
from .timing import bench_tiles, image_figures, load_hr, make_pair, time_configs  # noqa: F401

HELP = {"bench": "trtexec-style latency/throughput, FQR, BitOPs and PSNR of a model and its baselines"}


# ---- CLI ---------------------------------------------------------------------------------------------
def add_bench_arguments(p: argparse.ArgumentParser) -> None:
    p.description = ("trtexec-style benchmark: latency percentiles and throughput per batch of tiles, whole-image "
                     "end-to-end time, FQR, BitOPs and PSNR/SSIM, for a model and baselines run side by side.")
    p.add_argument("--model", "-m", required=True,
                   help="checkpoint (.safetensors, .pt/.pth), zoo name, .onnx or .engine")
    p.add_argument("--backbone", help="backbone of a foreign checkpoint when its keys cannot tell")
    p.add_argument("--scale", type=int, help="scale of a foreign checkpoint when its keys cannot tell")
    p.add_argument("--method", choices=METHODS, help="method of a foreign checkpoint")
    p.add_argument("--backend", default="auto", help="torch, native, onnxruntime, tensorrt (auto: from the model "
                                                     "file); a checkpoint with onnxruntime is exported at --tile first")
    p.add_argument("--device", default="auto", help="cpu, cuda, cuda:N (auto: cuda when available)")
    p.add_argument("--tile", type=int, default=96, help="LR tile size (default 96)")
    p.add_argument("--overlap", type=int, default=6, help="LR overlap for the whole-image run (default 6)")
    p.add_argument("--batch", type=int, default=16, help="tiles per batch (default 16)")
    p.add_argument("--warmup", type=int, default=3, help="untimed iterations first (default 3)")
    p.add_argument("--iterations", type=int, help="timed iterations per configuration (default 20)")
    p.add_argument("--duration", type=float, help="time each configuration for about S seconds instead of --iterations")
    p.add_argument("--image", help="the HR image for the whole-image figures and the tiles (default skimage's astronaut)")
    p.add_argument("--image-runs", type=int, default=1, help="whole-image runs per configuration; the median is reported")
    p.add_argument("--compare", default="",
                   help="comma-separated baselines: fp32, pams8 (built from --model's weights), fp32-cl, bf16-cl, "
                        "fp16-cl (the fp32 backbone channels_last, autocast), fakequant, native (--model on that "
                        "backend), native-int8up / native-floatup (native with the upsampler and tail in INT8 / in float), openvino, openvino-int8, fp16 (CUDA), or checkpoints/zoo names/.onnx/.engine; NAME@BACKEND picks a backend; "
                        "'peers' = the strongest float peers and the quantized paths of this device")
    p.add_argument("--threads", type=int, help="torch and onnxruntime intra-op threads (default: theirs)")
    p.add_argument("--schedule", choices=SCHEDULES, default="interleaved",
                   help="interleaved (default): one iteration of each configuration in turn, so background load "
                        "hits all alike; sequential: each configuration's iterations in one block, as trtexec")
    p.add_argument("--seed", type=int, default=0, help="seed of the tile choice (default 0)")
    p.add_argument("--json", help="write the full report (all figures, every iteration time, machine info) as JSON")


def run_bench(args) -> int:
    iterations = args.iterations if args.iterations is not None or args.duration is not None else 20
    settings = BenchSettings(tile=args.tile, overlap=args.overlap, batch=args.batch, warmup=args.warmup,
                             iterations=iterations, duration=args.duration, image_runs=args.image_runs, seed=args.seed,
                             schedule=args.schedule)
    settings.validate()
    compare = [c for c in (x.strip() for x in (args.compare or "").split(",")) if c]
    if args.compare and not compare:
        raise BenchError(f"--compare {args.compare!r} names no baseline")
    foreign = {k: getattr(args, k, None) for k in ("backbone", "scale", "method")}

    def progress(msg: str) -> None:
        print(f"bench: {msg}", file=sys.stderr, flush=True)

    report = benchmark(args.model, compare, args.backend, args.device, settings, args.image, args.threads,
                       {k: v for k, v in foreign.items() if v is not None}, progress)
    report["command"] = "cadyq " + " ".join(sys.argv[1:]) if Path(sys.argv[0]).name in ("cadyq", "__main__.py") else None
    print(format_report(report))
    if args.json:
        from ..checkpoint import atomic_write

        atomic_write(args.json, lambda tmp: Path(tmp).write_text(json.dumps(report, indent=2)))
        print(f"wrote {args.json}", file=sys.stderr)
    return 0
