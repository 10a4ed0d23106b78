"""`cadyq calibrate`: post-training quantization of a model from a folder of photos."""
from __future__ import annotations

import argparse
import sys

from ..errors import CadyqError
from ..methods import METHODS

HELP = {"calibrate": "post-training calibration: clip values (and E2B thresholds) from photos, no training"}


def add_calibrate_arguments(p: argparse.ArgumentParser) -> None:
    p.description = ("Post-training quantization: a pams8 (or cadyq/gdq) model from an fp32 (or any) checkpoint, with "
                     "clip values calibrated on the LR tiles of a folder of photos. No training.")
    p.add_argument("--model", "-m", required=True, help="the checkpoint (usually fp32) or zoo name")
    p.add_argument("--data", required=True, help="folder of HR photos (their bicubic LR is used), or LR with --lr")
    p.add_argument("-o", "--output", required=True, help="the .safetensors to write")
    p.add_argument("--target", choices=METHODS[1:], default="pams8", help="the method (default pams8)")
    p.add_argument("--method", choices=("max", "percentile", "mse"), default="mse", help="clip rule (default mse)")
    p.add_argument("--percentile", type=float, default=99.99, help="for --method percentile (default 99.99)")
    p.add_argument("--bits", help="bit candidates, e.g. 8 (pams8) or 4,6,8 (cadyq)")
    p.add_argument("--tiles", type=int, default=128, help="calibration tiles at most (default 128)")
    p.add_argument("--tile", type=int, default=96, help="LR tile size (default 96)")
    p.add_argument("--lr", action="store_true", help="the folder holds LR images: use them as they are")
    p.add_argument("--upsampler", action="store_true",
                   help="keep the quantized model as it is and add 8-bit clip values for its upsampler convs (for "
                        "--int8-upsampler of the native backend); --target and --bits do not apply")
    g = p.add_argument_group("bit allocation (cadyq)", "measure what each layer's drop to fewer bits costs each tile "
                             "and set the selectors so that the tiles whose layer input varies more keep more bits")
    g.add_argument("--fqr", type=float, help="allocate bits for this FQR (mean bits) at most")
    g.add_argument("--static", action="store_true",
                   help="one bit-width per layer for every tile (static mixed precision: the baseline of a dynamic model)")
    g.add_argument("--sensitivity", help="JSON of the measurement: read if it exists, else measured and written there")
    g.add_argument("--sensitivity-tiles", type=int, default=48,
                   help="tiles measured, at seeded positions over the photos (default 48)")


def run_calibrate(args) -> int:
    from ..progress import bar

    from ..checkpoint import load_model, save
    from . import calibrate, photo_tiles

    bits = None
    if args.bits:
        try:
            bits = tuple(int(b) for b in args.bits.replace("+", ",").split(",") if b.strip())
        except ValueError:
            raise CadyqError(f"--bits {args.bits!r}: expected bit-widths like 8 or 4,6,8") from None
    if args.tiles < 1:
        raise CadyqError("--tiles must be at least 1")
    model = load_model(args.model)
    batches, total = photo_tiles(args.data, model.config.scale, args.tile, max_tiles=args.tiles, lr=args.lr)
    if args.upsampler:
        from . import calibrate_upsampler

        if args.bits:
            raise CadyqError("--upsampler keeps the model's bit candidates: leave out --bits")
        out = calibrate_upsampler(model, batches, method=args.method, percentile=args.percentile)
        save(out, args.output, {"calibration": {"upsampler": args.method, "data": str(args.data)}})
        clips = ", ".join(f"{k} {v:.3g}" for k, v in out.upsampler_clips.items())
        print(f"wrote {args.output}: {model.config.name} x{model.config.scale} "
              f"with INT8-upsampler clip values ({args.method}): {clips}", file=sys.stderr)
        return 0
    with bar(total=total, desc="calibrate", unit="tile") as progress:
        out = calibrate(model, batches, target=args.target, method=args.method, bits=bits,
                        percentile=args.percentile, progress=progress.update)
    extra = {}
    if args.fqr is not None:
        extra["allocation"] = _allocate(out, args)
    elif args.static or args.sensitivity:
        raise CadyqError("--static and --sensitivity go with --fqr")
    save(out, args.output, {"calibration": {**out.calibration, "data": str(args.data)}, **extra})
    print(f"wrote {args.output}: {model.config.name} x{model.config.scale} {args.target} calibrated ({args.method}) on "
          f"{out.calibration['tiles']} tiles of {args.data}", file=sys.stderr)
    return 0


def _allocate(model, args) -> dict:
    import json
    from pathlib import Path

    import torch
    from ..progress import bar

    from ..quant import dynamic_quantizers
    from . import random_tiles
    from .allocate import Sensitivity, allocate, apply, apply_tiles, measure, measure_tiles

    if args.target not in ("cadyq", "gdq"):
        raise CadyqError(f"--fqr allocates the bit selectors of cadyq or gdq; --target is {args.target}")
    per_tile = args.target == "gdq"  # one bit-width per tile: the Granular-DQ controller
    if per_tile and args.static:
        raise CadyqError("--static gives one bit-width per layer, which Granular-DQ cannot express (one per tile); "
                         "make the static baseline from a cadyq model")
    if args.sensitivity_tiles < 2:
        raise CadyqError("--sensitivity-tiles must be at least 2")
    path = Path(args.sensitivity) if args.sensitivity else None
    if path is not None and path.exists():
        try:
            sens = Sensitivity.from_dict(json.loads(path.read_text()))
        except (ValueError, KeyError, TypeError) as e:
            raise CadyqError(f"{path}: not a sensitivity measurement of `cadyq calibrate --fqr` ({e})") from None
        print(f"sensitivity: read {path} ({sens.tiles} tiles)", file=sys.stderr)
    else:
        lr = random_tiles(args.data, model.config.scale, args.sensitivity_tiles, args.tile, lr=args.lr)
        if per_tile:
            passes = 3 * -(-lr.shape[0] // 8)
        else:
            sel = dynamic_quantizers(model)
            passes = (1 + len(sel) * (len(sel[0].bits) - 1)) * -(-lr.shape[0] // 8)
        with bar(total=passes, desc="sensitivity", unit="batch") as progress:
            sens = (measure_tiles if per_tile else measure)(model.to(memory_format=torch.channels_last),
                                                            lr.contiguous(memory_format=torch.channels_last),
                                                            batch=8, progress=progress.update)
        model.to(memory_format=torch.contiguous_format)
        if path is not None:
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(json.dumps(sens.to_dict()))
    alloc = allocate(sens, args.fqr, dynamic=not args.static)
    (apply_tiles if per_tile else apply)(model, alloc, sens)
    kind = ("per tile (Granular-DQ: one bit-width per tile for every layer)" if per_tile else
            "static (one bit-width per layer)" if args.static else "dynamic (per tile and layer)")
    print(f"allocation: {kind}, FQR {alloc.fqr:.2f} on the {sens.tiles} measured tiles", file=sys.stderr)
    return {**alloc.to_dict(), "tiles": sens.tiles}
