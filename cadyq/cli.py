"""The `cadyq` command: upscale, eval, info, train, export, check, engine, bench."""
from __future__ import annotations

import argparse
import json
import sys
import traceback
from pathlib import Path

from .errors import CadyqError


def _model_args(p: argparse.ArgumentParser, required: bool = False) -> None:
    p.add_argument("--model", "-m", required=required,
                   help="checkpoint (.safetensors, or a foreign .pt/.pth/.pth.tar), .onnx, .engine, or a zoo name")
    p.add_argument("--backbone", help="backbone of a foreign checkpoint when its keys cannot tell")
    p.add_argument("--scale", type=int, help="scale of a foreign checkpoint when its keys cannot tell")
    p.add_argument("--method", choices=("fp32", "pams8", "cadyq"), help="method of a foreign checkpoint")


def _run_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--backend", default="auto", help="torch (fake quant, the reference), native (integer kernels), "
                                                     "onnxruntime, tensorrt (auto: from the model file)")
    p.add_argument("--float-precision", choices=("auto", "fp32", "bf16"), default=None,
                   help="native backend: precision of the float layers (auto: bf16 where the CPU has it)")
    p.add_argument("--device", default="auto", help="cpu, cuda, cuda:N (auto: cuda when available)")
    p.add_argument("--tile", type=int, default=96, help="LR tile size (default 96)")
    p.add_argument("--overlap", type=int, default=6, help="LR overlap of neighbouring tiles (default 6)")
    p.add_argument("--batch", type=int, default=64, help="tiles per batch (default 64)")
    p.add_argument("--protocol", choices=("shift", "official"), default="shift",
                   help="shift: equal tiles, last one moved inside; official: CADyQ's test geometry")


def _resolve_model(args):
    """What the Upscaler gets: a loaded nn.Module for checkpoints, the path for .onnx/.engine."""
    from . import zoo
    from .checkpoint import load_model

    if args.model is None and zoo.default_name() != zoo.DEFAULT_MODEL:
        print(f"warning: no --model: using {zoo.default_name()}, a small model trained on a CPU for demonstration "
              f"({zoo.DEFAULT_MODEL} is not shipped in this release; see cadyq/zoo/MODEL_CARD.md)", file=sys.stderr)
    if args.model is not None and Path(args.model).suffix in (".onnx", ".engine", ".plan"):
        if not Path(args.model).is_file():
            raise CadyqError(f"{args.model}: no such model file")
        return Path(args.model)
    return load_model(args.model, backbone=args.backbone, scale=args.scale, method=args.method)


def _upscaler(args):
    from .runtime import Upscaler

    options = {}
    if getattr(args, "float_precision", None):
        if args.backend != "native":
            raise CadyqError("--float-precision is an option of --backend native")
        options["float_precision"] = args.float_precision
    return Upscaler(_resolve_model(args), backend=args.backend, device=args.device, tile=args.tile,
                    overlap=args.overlap, batch=args.batch, protocol=args.protocol, backend_options=options)


def _progress(items, desc):
    from tqdm import tqdm

    return tqdm(items, desc=desc, unit="img", disable=len(items) < 2, file=sys.stderr)


class _TileProgress:
    """A tile-level bar for one image, shown once an image has more than one batch."""

    def __init__(self, name: str):
        self.name, self.bar = name, None

    def __call__(self, done: int, total: int) -> None:
        if self.bar is None:
            if done >= total:
                return
            from tqdm import tqdm

            self.bar = tqdm(total=total, desc=self.name, unit="tile", leave=False, file=sys.stderr)
        self.bar.update(done - self.bar.n)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()


# ---- upscale ------------------------------------------------------------------------------------
def cmd_upscale(args) -> int:
    from .data.io import IMAGE_EXTENSIONS, Image, list_images, write_image
    from .runtime.bitmap import render_bit_map

    inputs = list_images(args.inputs)
    if not inputs:
        raise CadyqError(f"no images found in {', '.join(map(str, args.inputs))}")
    up = _upscaler(args)
    s = up.scale
    out = Path(args.output)
    single_file = len(inputs) == 1 and out.suffix.lower() in IMAGE_EXTENSIONS
    if not single_file:
        out.mkdir(parents=True, exist_ok=True)
    report, failed = [], []
    for src in _progress(inputs, "upscale"):
        dst = out if single_file else out / f"{src.stem}_x{s}.png"
        bar = _TileProgress(src.name)
        try:
            r = up.upscale(src, progress=bar)
            bar.close()
            write_image(dst, r.image)
            entry = {"input": str(src), "output": str(dst), "lr_size": [r.grid.height, r.grid.width],
                     "sr_size": list(r.image.rgb.shape[:2]), "tiles": [r.grid.rows, r.grid.cols], "n_tiles": r.grid.n_tiles,
                     "fqr": round(r.fqr, 4), "bitops_g": round(r.bitops / 1e9, 4), "time_s": {k: round(v, 4) for k, v in r.timings.items()}}
            if args.bitmap:
                bm = dst.with_name(f"{dst.stem}_bits.png")
                pic = render_bit_map(r.bit_map, r.grid, s, r.image.rgb, up.backend.info.bits)
                write_image(bm, Image(pic, None, 8, False, None, None, "RGB"))
                entry["bit_map"] = str(bm)
                entry["bits_per_tile"] = r.bit_map.float().mean(-1).tolist()
            report.append(entry)
            print(f"{src.name}: {r.grid.height}x{r.grid.width} -> {dst}  tiles {r.grid.rows}x{r.grid.cols}  "
                  f"FQR {r.fqr:.2f}  BitOPs {r.bitops / 1e9:.2f} G  {r.timings['total']:.2f} s", file=sys.stderr)
        except CadyqError as e:
            bar.close()
            failed.append(str(src))
            print(f"error: {e}", file=sys.stderr)
    if args.json:
        _write_json(args.json, {"model": str(args.model), "backend": up.backend.name, "device": str(up.backend.device),
                                "scale": s, "tile": args.tile, "overlap": args.overlap, "images": report, "failed": failed})
    if failed:
        print(f"{len(failed)} of {len(inputs)} images failed: {', '.join(failed)}", file=sys.stderr)
        return 1
    return 0


def _write_json(path, obj) -> None:
    from .checkpoint import atomic_write

    atomic_write(path, lambda tmp: Path(tmp).write_text(json.dumps(obj, indent=2)))


# ---- eval ---------------------------------------------------------------------------------------
def cmd_eval(args) -> int:
    import numpy as np

    from .data.io import Image
    from .data.layouts import find_pairs, load_pair
    from .data.resize import imresize
    from .metrics import psnr, ssim

    up = _upscaler(args)
    s = up.scale
    if args.scale and args.scale != s:
        raise CadyqError(f"the model is x{s}, --scale asks for x{args.scale}")
    pairs = find_pairs(args.data, s)
    rows = []
    for pair in _progress(pairs, "eval"):
        lr, hr = load_pair(pair, s)
        r = up.upscale(Image(lr, None, 8, False, None, None, "RGB"))
        sr = r.image.rgb
        bic = np.clip(np.round(imresize(lr.astype(np.float64), scale=s)), 0, 255)
        rows.append({"name": pair.name, "lr": list(lr.shape[:2]), "psnr": psnr(sr, hr, s), "ssim": ssim(sr, hr, s),
                     "psnr_bicubic": psnr(bic, hr, s), "fqr": r.fqr, "bitops_g": r.bitops / 1e9, "time_s": r.timings["total"]})
    mean = {k: float(np.mean([r[k] for r in rows])) for k in ("psnr", "ssim", "psnr_bicubic", "fqr", "bitops_g", "time_s")}
    _print_table(rows, mean)
    if args.json:
        _write_json(args.json, {"data": str(args.data), "scale": s, "protocol": args.protocol, "images": rows, "mean": mean})
    return 0


def _print_table(rows, mean) -> None:
    head = f"{'image':<24} {'PSNR':>7} {'SSIM':>7} {'bicubic':>8} {'FQR':>5} {'BitOPs(G)':>10} {'time(s)':>8}"
    print(head)
    print("-" * len(head))
    for r in rows + [{"name": "mean", **mean}]:
        print(f"{r['name'][:24]:<24} {r['psnr']:7.2f} {r['ssim']:7.4f} {r['psnr_bicubic']:8.2f} {r['fqr']:5.2f} "
              f"{r['bitops_g']:10.2f} {r['time_s']:8.2f}")


# ---- info ---------------------------------------------------------------------------------------
def cmd_info(args) -> int:
    from .quant import ModelInfo, quant_config

    args.model = args.model_path
    model = _resolve_model(args)
    if isinstance(model, Path):
        raise CadyqError(f"{model}: `cadyq info` reads checkpoints; use `cadyq check` for .onnx/.engine files")
    cfg, info = quant_config(model), ModelInfo.from_model(model)
    n_params = sum(p.numel() for n, p in model.named_parameters())
    t = args.tile
    lines = {
        "backbone": f"{model.config.name} x{model.config.scale}", "method": cfg.method,
        "bit candidates": ", ".join(map(str, info.bits)) + (f"  (mode {cfg.mode})" if cfg.method == "cadyq" else ""),
        "weight bits": 32 if cfg.method == "fp32" else cfg.weight_bits,
        "parameters": f"{n_params:,}", "quantized layers": f"{info.n_layers} dynamic + {len(info.layers) - info.n_layers} fixed",
        f"FLOPs / {t}x{t} tile": f"{info.flops(t, t) / 1e9:.3f} G (quantized convs)",
    }
    if cfg.method != "fp32":
        import torch

        lines[f"BitOPs / {t}x{t} tile"] = (f"{float(info.bitops(torch.full((1, info.n_layers), float(max(info.bits))), t, t)) / 1e9:.3f} G"
                                           f" at {max(info.bits)} bits, "
                                           f"{float(info.bitops(torch.full((1, info.n_layers), float(min(info.bits))), t, t)) / 1e9:.3f} G"
                                           f" at {min(info.bits)} bits")
    width = max(map(len, lines))
    for k, v in lines.items():
        print(f"{k:<{width}}  {v}")
    if args.layers:
        for c in info.layers:
            print(f"  {c.name:<40} w{c.weight_bits} a{'dyn' if c.act_bits is None else c.act_bits} {c.macs_per_pixel} MAC/px")
    return 0


# ---- main ---------------------------------------------------------------------------------------
def build_parser() -> argparse.ArgumentParser:
    from . import __version__

    p = argparse.ArgumentParser(prog="cadyq", description=__doc__)
    p.add_argument("--version", action="version", version=f"cadyq {__version__}")
    p.add_argument("--debug", action="store_true", help="show tracebacks")
    sub = p.add_subparsers(dest="command", required=True)

    u = sub.add_parser("upscale", help="upscale images or folders")
    u.add_argument("inputs", nargs="+", help="image files or folders")
    u.add_argument("-o", "--output", required=True, help="output file (one input) or folder")
    _model_args(u)
    _run_args(u)
    u.add_argument("--bitmap", action="store_true", help="also write <name>_bits.png: the bit-width of each tile")
    u.add_argument("--json", help="write a JSON report (sizes, tiles, FQR, BitOPs, time per image)")
    u.set_defaults(func=cmd_upscale)

    e = sub.add_parser("eval", help="PSNR/SSIM/FQR/BitOPs on a benchmark folder")
    _model_args(e)
    e.add_argument("--data", required=True, help="benchmark-style folder (HR/ + LR_bicubic/X<s>/) or a folder of HR images")
    _run_args(e)
    e.add_argument("--json", help="write the table as JSON")
    e.set_defaults(func=cmd_eval)

    i = sub.add_parser("info", help="describe a checkpoint")
    i.add_argument("model_path", metavar="MODEL")
    i.add_argument("--backbone")
    i.add_argument("--scale", type=int)
    i.add_argument("--method", choices=("fp32", "pams8", "cadyq"))
    i.add_argument("--tile", type=int, default=96)
    i.add_argument("--layers", action="store_true", help="list the quantized layers")
    i.set_defaults(func=cmd_info)

    for name, module in (("train", "train.cli"), ("export", "export.cli"), ("check", "export.cli"),
                         ("engine", "export.cli"), ("bench", "bench")):
        _add_optional(sub, name, module)
    return p


def _add_optional(sub, name: str, module: str) -> None:
    """Verbs whose code lives with its subsystem: `add_<name>_arguments(parser)`, `run_<name>(args)` and a
    one-line `HELP[name]`."""
    import importlib

    target = f"{__package__}.{module}"
    try:
        mod = importlib.import_module(target)
    except ModuleNotFoundError as e:
        if e.name and target.startswith(e.name):
            return  # that subsystem is not part of this install
        raise
    add, run = getattr(mod, f"add_{name}_arguments"), getattr(mod, f"run_{name}")
    sp = sub.add_parser(name, help=getattr(mod, "HELP", {}).get(name))
    add(sp)
    sp.set_defaults(func=run)


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return int(args.func(args) or 0)
    except CadyqError as e:
        if args.debug:
            traceback.print_exc()
        print(f"cadyq: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("cadyq: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
