"""The `cadyq` command: upscale, eval, info, models, train, export, check, engine, bench.

Only the standard library is imported at module level: torch loads inside `main`, so Ctrl-C while it
loads is answered like Ctrl-C anywhere else (one line, exit code 130).
"""
from __future__ import annotations

import argparse
import contextlib
import json
import re
import sys
import time
import traceback
import warnings
from pathlib import Path

from .errors import CadyqError, ImageError, OptionError
from .methods import METHODS
from .sizes import size_text

EXIT_USER_ERROR, EXIT_INTERNAL_ERROR, EXIT_INTERRUPTED = 2, 3, 130
DEFAULT_TILE = 96


class UsageError(CadyqError):
    """A command line argparse cannot parse; its message is the whole line to print."""


class _Parser(argparse.ArgumentParser):
    def error(self, message):  # one line instead of argparse's usage block, and no SystemExit
        raise UsageError(f"{self.prog}: error: {message} (see {self.prog} --help)")


def _model_args(p: argparse.ArgumentParser, required: bool = False) -> None:
    p.add_argument("--model", "-m", required=required,
                   help="checkpoint (.safetensors, or a foreign .pt/.pth/.pth.tar), .onnx, .engine, or a zoo name")
    p.add_argument("--backbone", help="backbone of a foreign checkpoint when its keys cannot tell")
    p.add_argument("--scale", type=int, help="scale of a foreign checkpoint when its keys cannot tell")
    p.add_argument("--method", choices=METHODS, help="method of a foreign checkpoint")


def _run_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--backend", default="auto", help="auto (default: the fastest here, named in the output), native "
                                                     "(integer kernels), torch (fake quant, the reference), onnxruntime, "
                                                     "tensorrt")
    p.add_argument("--float-precision", choices=("auto", "fp32", "bf16", "fp16"), default=None,
                   help="native backend: precision of the float layers (auto: bf16 where the CPU has it, fp16 on CUDA)")
    p.add_argument("--int8-upsampler", nargs="?", const="on", choices=("auto", "on", "off"), default=None,
                   help="native backend: the upsampler and tail convs in INT8 (clip values calibrated with `cadyq calibrate "
                        "--upsampler`, shipped in the zoo's quantized models; not in the paper, see MODEL_CARD.md for its "
                        "PSNR cost). auto (default): on where the model has the clips and the CPU has VNNI or AMX")
    p.add_argument("--device", default="auto", help="cpu, cuda, cuda:N (auto: cuda when available)")
    p.add_argument("--tile", type=int, default=DEFAULT_TILE, help=f"LR tile size (default {DEFAULT_TILE}; a tile larger "
                                                                  "than an image is clamped to the image)")
    p.add_argument("--overlap", type=int, default=6, help="LR overlap of neighbouring tiles (default 6)")
    p.add_argument("--batch", type=int, default=64, help="tiles per batch (default 64)")
    p.add_argument("--protocol", choices=("shift", "official"), default="shift",
                   help="shift: equal tiles, last one moved inside; official: CADyQ's test geometry")
    p.add_argument("--server", metavar="HOST:PORT[,...]",
                   help="run the tiles on Triton servers (`cadyq serve`; their gRPC ports, comma-separated: the work "
                        "is spread over them); --model then names the served model (default: the server's only one)")


_DEVICE = re.compile(r"^(auto|cpu|cuda(:\d+)?)$")


def check_device(device: str | None) -> None:
    """--device must name a device (torch's own error for `gpu` is a traceback deep in a backend)."""
    if device is None:
        return
    if not _DEVICE.match(device):
        raise OptionError(f"--device {device!r} is not a device; use auto, cpu, cuda or cuda:N")
    if ":" in device:
        import torch

        n = torch.cuda.device_count() if torch.cuda.is_available() else 0
        if n and int(device.split(":")[1]) >= n:
            raise OptionError(f"--device {device}: this machine has {n} CUDA device(s), cuda:0 to cuda:{n - 1}")


def check_tiling(args) -> None:
    """--tile/--overlap/--protocol of the commands that run images, before the model loads."""
    if getattr(args, "protocol", None) is None:
        return
    from .tiling import check_step, plan_tiles

    plan_tiles(args.tile, args.tile, args.tile, args.overlap, args.protocol)
    check_step(args.tile, args.overlap)


def _model_name(args) -> str:
    from . import zoo

    return str(args.model) if args.model is not None else zoo.default_name()


def _resolve_model(args):
    """What the Upscaler gets: a loaded nn.Module for checkpoints, the path for .onnx/.engine/.pt2 files and
    routed exports."""
    from . import zoo
    from .checkpoint import load_model
    from .paths import not_a_file

    if args.model is None and zoo.default_name() != zoo.DEFAULT_MODEL:
        print(f"warning: no --model: using {zoo.default_name()}, a small model trained on a CPU for demonstration "
              f"({zoo.DEFAULT_MODEL} is not installed; see cadyq/zoo/MODEL_CARD.md)", file=sys.stderr)
    if args.model is not None and (Path(args.model).suffix in (".onnx", ".engine", ".plan", ".pt2", ".json")
                                   or _is_routed_folder(args.model)):
        why = None if _is_routed_folder(args.model) else not_a_file(args.model)
        if why is not None:
            raise CadyqError(f"{args.model}: {'no such model file' if why.startswith('no such') else why}")
        given = [f"--{k}" for k in ("backbone", "method") if getattr(args, k, None)]
        if given:
            raise OptionError(f"{' and '.join(given)} {'describes' if len(given) == 1 else 'describe'} foreign "
                              f"checkpoints; {args.model} names its own model, so leave {'it' if len(given) == 1 else 'them'} out")
        return Path(args.model)
    return load_model(args.model, backbone=args.backbone, scale=args.scale, method=args.method)


def _upscaler(args):
    from .runtime import Upscaler

    options, model = {}, None
    if getattr(args, "server", None):
        model = _remote_backend(args)
    if getattr(args, "float_precision", None):
        if args.backend not in ("native", "auto"):
            raise CadyqError("--float-precision is an option of --backend native")
        options["float_precision"] = args.float_precision
    if getattr(args, "int8_upsampler", None) not in (None, "auto"):
        if args.backend not in ("native", "auto"):
            raise CadyqError("--int8-upsampler is an option of --backend native")
        options["int8_upsampler"] = args.int8_upsampler == "on"
    up = Upscaler(model or _resolve_model(args), backend=args.backend, device=args.device, tile=args.tile,
                  overlap=args.overlap, batch=args.batch, protocol=args.protocol, backend_options=options)
    if args.scale and args.scale != up.scale:
        raise OptionError(f"{args.model or 'the model'} is a x{up.scale} model, but --scale asks for x{args.scale}; drop --scale")
    _say(f"backend: {backend_line(up.backend)}")
    for w in getattr(up.backend, "warnings", []):
        _say(f"warning: {w}")
    return up


def _remote_backend(args):
    """The Triton client backend of --server; options that only a local run has are refused."""
    from .serve import TritonBackend

    local = [f"--{k.replace('_', '-')}" for k in ("backbone", "method", "float_precision") if getattr(args, k, None)]
    local += ["--int8-upsampler"] if getattr(args, "int8_upsampler", None) not in (None, "auto") else []
    local += [f"--backend {args.backend}"] if args.backend != "auto" else []
    local += [f"--device {args.device}"] if args.device != "auto" else []
    if local:
        raise OptionError(f"{', '.join(local)} {'is' if len(local) == 1 else 'are'} for local runs; with --server the "
                          "server's settings apply (cadyq serve --serve-backend/--device)")
    return TritonBackend(args.server.split(","), model=args.model)


def backend_line(backend) -> str:
    """`native on cpu (auto: why)`: the backend that runs, and why when it was chosen automatically."""
    choice = getattr(backend, "choice", None)
    return f"{backend.name} {backend.where}" + (f" (auto: {choice.why})" if choice is not None else "")


class _TileFit:
    """The Upscaler for an image: a tile larger than the image is clamped to the image (when the backend takes
    any tile size) instead of padding the image up to a tile that may not fit in memory. Never below the
    default tile: smaller images are reflect-padded to one default tile, as the Upscaler does."""

    def __init__(self, up):
        self.up, self._by_tile = up, {}

    def __call__(self, height: int, width: int):
        up = self.up
        side = max(height, width, min(up.tile, DEFAULT_TILE))
        if up.backend.tile_sizes is not None or up.tile <= side:
            return up
        if side not in self._by_tile:
            from .runtime import Upscaler

            self._by_tile[side] = Upscaler(up.backend, tile=side, overlap=min(up.overlap, side - 1), batch=up.batch,
                                           protocol=up.protocol)
        return self._by_tile[side]


def _say(message: str) -> None:
    """A line on stderr that does not end up inside a progress bar's line."""
    tqdm = sys.modules.get("tqdm")
    if tqdm is None:  # no bar can be showing
        print(message, file=sys.stderr)
    else:
        tqdm.tqdm.write(message, file=sys.stderr)


def _progress(items, desc):
    from .progress import bar

    return bar(iterable=items, desc=desc, unit="img", disable=True if len(items) < 2 else None)


class _TileProgress:
    """A tile-level bar for one image, shown once an image has more than one batch."""

    def __init__(self, name: str):
        self.name, self.bar = name, None

    def __call__(self, done: int, total: int) -> None:
        if self.bar is None:
            if done >= total:
                return
            from .progress import bar

            self.bar = bar(total=total, desc=self.name, unit="tile", leave=False)
        self.bar.update(done - self.bar.n)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()


# ---- upscale ------------------------------------------------------------------------------------
def cmd_upscale(args) -> int:
    from .data.io import IMAGE_EXTENSIONS, list_images

    if not 0 <= args.png_compression <= 9:
        raise OptionError(f"--png-compression {args.png_compression}: use a zlib level from 0 (fastest) to 9 (smallest)")
    from .video import VIDEO_EXTENSIONS, is_video

    inputs = list_images(args.inputs, IMAGE_EXTENSIONS + VIDEO_EXTENSIONS)  # a folder's images and videos
    videos = [p for p in inputs if is_video(p)]
    if videos:
        if len(videos) != len(inputs):
            raise OptionError("images and videos are upscaled in separate runs: pass only videos, or only images")
        return _upscale_videos(args, videos)
    if not inputs:
        raise ImageError(f"no images ({' '.join(IMAGE_EXTENSIONS)}) or videos found in {', '.join(map(str, args.inputs))}")
    _check_skip(args)
    up, plan = _load_and_plan(args, inputs, IMAGE_EXTENSIONS)
    _say_skipped(plan, len(inputs), "images")
    report = _BatchReport(args, "images", plan, up, png_compression=args.png_compression)
    return _run_batch(report, lambda: _upscale_images(args, up, plan.jobs, report), len(inputs), "images")


def _run_batch(report, run, n: int, what: str) -> int:
    """Run a batch; its JSON report is written whether it ends, fails or is interrupted. Exit status 1 where any
    input failed."""
    with report.written_on_interrupt():
        run()
    report.write()
    if report.failed:
        print(f"{len(report.failed)} of {n} {what} failed (each named above)", file=sys.stderr)
        return 1
    return 0


def _upscale_images(args, up, jobs, report) -> None:
    from .data.io import Image, write_image
    from .outputs import ensure_folder
    from .runtime.bitmap import render_bit_map, with_legend

    s = up.scale
    fit = _TileFit(up)
    for job in _progress(jobs, "upscale"):
        src, dst = job.src, job.image
        bar = _TileProgress(src.name)
        try:
            img, t_decode, notes = _read(src)
            runner = fit(*img.size)
            r = runner.upscale(img, progress=bar)
        except CadyqError as e:
            report.failed.append(str(src))
            _say(f"error: {e}")
            continue
        finally:
            bar.close()
        r.timings["decode"] = t_decode
        r.timings["total"] += t_decode
        ensure_folder(dst.parent)
        t = time.perf_counter()
        write_image(dst, r.image, png_compress_level=args.png_compression)
        r.timings["write"] = time.perf_counter() - t
        entry = {"input": str(src), "output": str(dst), "lr_size": [r.grid.height, r.grid.width],
                 "sr_size": list(r.image.rgb.shape[:2]), "bit_depth": r.image.bit_depth, "tile": runner.tile,
                 "tiles": [r.grid.rows, r.grid.cols], "n_tiles": r.grid.n_tiles, "fqr": round(r.fqr, 4),
                 "bitops_g": round(r.bitops / 1e9, 4)}
        if notes:
            entry["warnings"] = notes
        if job.bit_map is not None:
            t = time.perf_counter()
            pic = with_legend(render_bit_map(r.bit_map, r.grid, s, r.image.rgb, up.backend.info.bits),
                              up.backend.info.bits, r.fqr)
            write_image(job.bit_map, Image(pic, None, 8, False, None, None, "RGB"), png_compress_level=args.png_compression)
            r.timings["bit_map"] = time.perf_counter() - t
            entry["bit_map"] = str(job.bit_map)
            entry["bits_per_tile"] = r.bit_map.float().mean(-1).tolist()
        entry["time_s"] = {k: round(v, 4) for k, v in r.timings.items()}
        report.done.append(entry)
        _say(f"{src.name}: {size_text(r.grid.height, r.grid.width)} -> {dst} {size_text(*r.image.rgb.shape[:2])}  "
             f"tiles {size_text(r.grid.rows, r.grid.cols)}  "
             f"FQR {r.fqr:.2f}  BitOPs {r.bitops / 1e9:.2f} G  {r.timings['total']:.2f} s")


def _load_and_plan(args, inputs, extensions, video: bool = False):
    """The Upscaler and the plan of every output. Outputs are planned and checked before the model loads wherever
    its scale (part of the output names) can be read without loading it, so a mistake there costs no wait."""
    from .checkpoint import scale_before_loading
    from .outputs import plan_upscale

    def plan(scale):
        return plan_upscale(inputs, args.output, scale, extensions=extensions, video=video, bit_map=args.bitmap,
                            report=args.json, skip_existing=args.skip_existing, overwrite=args.overwrite)

    scale = None if getattr(args, "server", None) else (scale_before_loading(args.model) or args.scale)
    planned = plan(scale) if scale else None
    up = _upscaler(args)
    return up, planned if scale == up.scale else plan(up.scale)


class _BatchReport:
    """The --json report of a batch: what was done, what failed, what --skip-existing left out (with its entry of
    the report this run replaces, where that one has it). Written at the end, and on an interrupt (Ctrl-C, or
    SIGTERM as a KeyboardInterrupt) with what was done by then and what was not."""

    def __init__(self, args, kind: str, plan, up, **settings):
        self.path, self.kind, self.jobs = args.json, kind, plan.jobs
        self.header = {"model": _model_name(args), "backend": up.backend.name, "backend_choice": backend_line(up.backend),
                       "device": str(up.backend.device), "scale": up.scale, "tile": args.tile, "overlap": args.overlap,
                       **settings}
        self.done: list[dict] = []
        self.failed: list[str] = []
        earlier = _earlier_entries(self.path, kind) if self.path and plan.skipped else {}
        self.skipped = [{"input": str(j.src), "output": str(j.image)}
                        | ({"bit_map": str(j.bit_map)} if j.bit_map else {})
                        | ({"earlier": earlier[str(j.src)]} if earlier.get(str(j.src), {}).get("output") == str(j.image)
                           else {})
                        for j in plan.skipped]

    def write(self, interrupted: bool = False) -> None:
        if not self.path:
            return
        body = {**self.header, self.kind: self.done, "failed": self.failed, "skipped": self.skipped,
                "interrupted": interrupted}
        if interrupted:
            finished = {e["input"] for e in self.done} | set(self.failed)
            body["not_done"] = [str(j.src) for j in self.jobs if str(j.src) not in finished]
        _write_json(self.path, body)

    @contextlib.contextmanager
    def written_on_interrupt(self):
        try:
            yield
        except KeyboardInterrupt:
            if self.path:
                try:
                    self.write(interrupted=True)
                    _say(f"wrote {self.path}: {len(self.done)} of {len(self.jobs)} {self.kind} done before the "
                         "interrupt (--skip-existing resumes the rest)")
                except CadyqError as e:
                    _say(f"warning: the report was not written: {e}")
            raise


def _earlier_entries(path, kind: str) -> dict[str, dict]:
    """Input -> its entry in the report at `path` (a run that --skip-existing resumes), also where that report had
    it from an earlier run still."""
    try:
        old = json.loads(Path(path).read_text())
    except (OSError, ValueError):
        return {}
    if not isinstance(old, dict):
        return {}
    entries = {}
    for e in old.get(kind, []) if isinstance(old.get(kind), list) else []:
        if isinstance(e, dict) and isinstance(e.get("input"), str):
            entries[e["input"]] = e
    for e in old.get("skipped", []) if isinstance(old.get("skipped"), list) else []:
        if isinstance(e, dict) and isinstance(e.get("earlier"), dict) and isinstance(e.get("input"), str):
            entries.setdefault(e["input"], e["earlier"])
    return entries


def _check_skip(args) -> None:
    if args.skip_existing and args.overwrite:
        raise OptionError("--skip-existing keeps existing outputs and --overwrite replaces them: pass one of them")


def _say_skipped(plan, n_inputs: int, what: str) -> None:
    if plan.skipped:
        names = [j.src.name for j in plan.skipped]
        shown = ", ".join(names[:5]) + (f" and {len(names) - 5} more" if len(names) > 5 else "")
        _say(f"skipped {len(names)} of {n_inputs} {what}: their outputs exist (--skip-existing): {shown}")


def _upscale_videos(args, videos) -> int:
    from .video import VIDEO_EXTENSIONS, VideoOptions, check_output_size

    options = VideoOptions(args.codec, args.crf, args.preset, args.reuse_static)
    _check_skip(args)
    up, plan = _load_and_plan(args, videos, VIDEO_EXTENSIONS, video=True)
    _say_skipped(plan, len(videos), "videos")
    for job in plan.jobs:  # every size the encoder cannot take is refused before any frame runs
        with contextlib.suppress(ImageError):  # an unreadable video is reported in its turn, and skipped
            check_output_size(job.src, job.image, up.scale, options)
    report = _BatchReport(args, "videos", plan, up)
    return _run_batch(report, lambda: _upscale_video_jobs(up, plan.jobs, options, report), len(plan.jobs), "videos")


def _upscale_video_jobs(up, jobs, options, report) -> None:
    from .outputs import ensure_folder
    from .progress import bar as progress_bar
    from .video import upscale_video

    fit = _TileFit(up)
    for job in jobs:
        bar = progress_bar(desc=job.src.name, unit="frame")

        def progress(done, total, seconds, bar=bar):
            bar.total = total
            bar.update(done - bar.n)

        try:
            ensure_folder(job.image.parent)
            r = upscale_video(fit, job.src, job.image, up.scale, options, progress=progress, warn=_say,
                              bit_map=job.bit_map)
        except CadyqError as e:
            report.failed.append(str(job.src))
            _say(f"error: {e}")
            continue
        finally:
            bar.close()
        report.done.append(r)
        _say(f"{job.src.name}: {r['frames']} frames {size_text(*r['lr_size'])} -> {job.image} "
             f"{size_text(*r['sr_size'])}  FQR {r['fqr']:.2f}  {r['fps']:.2f} frames/s  {r['time_s']:.1f} s")


def _read(path):
    """The decoded image, its decode time, and what was not kept of it (each also printed as a warning)."""
    from .data.io import read_image

    t = time.perf_counter()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        img = read_image(path)
    notes = [str(w.message) for w in caught]
    for note in notes:
        _say(f"warning: {note}")
    return img, time.perf_counter() - t, notes


def _write_json(path, obj) -> None:
    from .outputs import atomic_write

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
    pairs = find_pairs(args.data, s)
    fit = _TileFit(up)
    rows = []
    for pair in _progress(pairs, "eval"):
        lr, hr = load_pair(pair, s)
        r = fit(*lr.shape[:2]).upscale(Image(lr, None, 8, False, None, None, "RGB"))
        sr = r.image.rgb
        bic = np.clip(np.round(imresize(lr.astype(np.float64), scale=s)), 0, 255)
        rows.append({"name": pair.name, "lr": list(lr.shape[:2]), "psnr": psnr(sr, hr, s), "ssim": ssim(sr, hr, s),
                     "psnr_bicubic": psnr(bic, hr, s), "fqr": r.fqr, "bitops_g": r.bitops / 1e9, "time_s": r.timings["total"]})
    mean = {k: float(np.mean([r[k] for r in rows])) for k in ("psnr", "ssim", "psnr_bicubic", "fqr", "bitops_g", "time_s")}
    _print_table(rows, mean)
    if args.json:
        _write_json(args.json, {"model": _model_name(args), "backend_choice": backend_line(up.backend), "data": str(args.data),
                                "scale": s, "protocol": args.protocol,
                                "images": rows, "mean": mean})
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
    if cfg.method != "fp32":
        from .quant import clips_snapped

        snapped = clips_snapped(model)
        if snapped is not None:
            lines["clip values"] = ("on odd multiples of each layer's 8-bit step: the one 8-bit grid computes the papers' "
                                    "quantizer" if snapped else "free: the one 8-bit grid rounds each input to 8 bits "
                                    "before the lower candidates' levels (`cadyq.quant.snap_clips` puts them on it)")
        clips = getattr(model, "upsampler_clips", None)
        lines["INT8 upsampler"] = (f"calibrated clips for {', '.join(clips)}" if clips else
                                   "no clips: upsampler and tail run float (`cadyq calibrate --upsampler`)")
    lines["training"] = _training_line(model)
    width = max(map(len, lines))
    for k, v in lines.items():
        print(f"{k:<{width}}  {v}")
    if args.layers:
        for c in info.layers:
            print(f"  {c.name:<40} w{c.weight_bits} a{'dyn' if c.act_bits is None else c.act_bits} {c.macs_per_pixel} MAC/px")
    return 0


def _training_line(model) -> str:
    from .models.training import UNTRAINED_ADVICE, is_trained

    trained = is_trained(model)
    if trained is None:
        return "not recorded (a foreign checkpoint, or a cadyq file from before this was recorded)"
    return "trained" if trained else f"never trained: the random weights of create_model; {UNTRAINED_ADVICE}"


# ---- models -------------------------------------------------------------------------------------
def cmd_models(args) -> int:
    """The shipped weights, each with what it is and how it did on the report set and the decision set (metadata only:
    fast; MODEL_CARD.md)."""
    from . import zoo
    from .checkpoint import read_metadata

    rows = []
    for name in zoo.available():
        meta = read_metadata(zoo.path_of(name))
        arch = meta.get("arch", {})
        size = f", {arch['n_feats']} channels x {arch['n_resblocks']} blocks" if "n_resblocks" in arch else ""
        extra = meta.get("extra", {})
        sets = [(label, extra.get(key, {})) for label, key in (("report set", "report"), ("decision set", "decision"))]
        sets = [(label, m) for label, m in sets if {"psnr", "bicubic_psnr"} <= set(m)]
        if sets:
            result = "; ".join(f"{label} {m['psnr'] - m['bicubic_psnr']:+.2f} dB over bicubic"
                               + (f" at FQR {m['fqr']:.2f}" if meta.get("method") != "fp32" and "fqr" in m else "")
                               for label, m in sets)
        else:
            result = "a small demonstration model trained on a CPU"
        mark = " *" if name == zoo.default_name() else ""
        rows.append((name + mark, f"{meta['backbone']} x{meta['scale']} {meta.get('method', 'fp32')}{size}", result))
    widths = [max(len(r[i]) for r in rows + [("name", "model", "")]) for i in range(2)]
    print(f"{'name':<{widths[0]}}  {'model':<{widths[1]}}  photos no training saw (cadyq/zoo/MODEL_CARD.md)")
    for name, model, result in rows:
        print(f"{name:<{widths[0]}}  {model:<{widths[1]}}  {result}")
    print("* the default of `cadyq upscale`. Any of them: --model NAME, or cadyq.load(\"NAME\") in Python")
    return 0


# ---- main ---------------------------------------------------------------------------------------
def build_parser() -> argparse.ArgumentParser:
    from . import __version__

    p = _Parser(prog="cadyq", description=__doc__.split("\n\n")[0])
    p.add_argument("--version", action="version", version=f"cadyq {__version__}")
    p.add_argument("--debug", action="store_true", help="show tracebacks")
    sub = p.add_subparsers(dest="command", required=True)

    u = sub.add_parser("upscale", help="upscale images or folders")
    u.add_argument("inputs", nargs="+", help="image files or folders, or video files (.mp4 .mkv .mov .webm .avi) or folders of them")
    u.add_argument("-o", "--output", required=True,
                   help="output file (one input) or folder; for a video also an image sequence, e.g. frames/%%06d.png")
    _model_args(u)
    _run_args(u)
    u.add_argument("--bitmap", action="store_true", help="also write <name>_bits.png: the bit-width of each tile, "
                                                         "with a legend and the image's FQR")
    u.add_argument("--json", help="write a JSON report (sizes, tiles, FQR, BitOPs, time per image)")
    _overwrite_arg(u)
    u.add_argument("--skip-existing", action="store_true",
                   help="leave out inputs whose outputs exist (to resume an interrupted batch; outputs are written "
                        "atomically, so an existing one is complete)")
    u.add_argument("--png-compression", type=int, default=1, metavar="0-9",
                   help="zlib level of PNG outputs (default 1: fast; 9: smallest; all lossless)")
    u.add_argument("--codec", help="video encoder (default libx264; libvpx-vp9 for .webm)")
    u.add_argument("--crf", type=int, default=18, help="video quality: lower is better and larger (default 18)")
    u.add_argument("--preset", default="medium", help="x264/x265 speed preset (default medium)")
    u.add_argument("--reuse-static", type=float, metavar="LEVELS",
                   help="video: a tile whose LR changed by at most LEVELS (mean |difference|, 0-255) since it last ran "
                        "keeps that SR tile and its bits: still regions do not flicker and cost nothing (e.g. 0.5)")
    u.set_defaults(func=cmd_upscale)

    e = sub.add_parser("eval", help="PSNR/SSIM/FQR/BitOPs on a benchmark folder")
    _model_args(e)
    e.add_argument("--data", required=True, help="benchmark-style folder (HR/ + LR_bicubic/X<s>/) or a folder of HR images")
    _run_args(e)
    e.add_argument("--json", help="write the table as JSON")
    _overwrite_arg(e)
    e.set_defaults(func=cmd_eval)

    i = sub.add_parser("info", help="describe a checkpoint")
    i.add_argument("model_path", metavar="MODEL")
    i.add_argument("--backbone")
    i.add_argument("--scale", type=int)
    i.add_argument("--method", choices=METHODS)
    i.add_argument("--tile", type=int, default=96)
    i.add_argument("--layers", action="store_true", help="list the quantized layers")
    i.set_defaults(func=cmd_info)

    sub.add_parser("models", help="list the shipped weights (zoo names for --model and cadyq.load)").set_defaults(
        func=cmd_models)

    for name, module in (("train", "train.cli"), ("export", "export.cli"), ("check", "export.cli"),
                         ("engine", "export.cli"), ("bench", "bench"), ("calibrate", "calib.cli"),
                         ("serve", "serve.cli")):
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
    if name in _OUTPUT_FILES:
        _overwrite_arg(sp)
    sp.set_defaults(func=run)


def _overwrite_arg(p: argparse.ArgumentParser) -> None:
    """The one rule of every command that writes: an output that exists is refused before any work, and replaced
    only with --overwrite (an input never is)."""
    p.add_argument("--overwrite", action="store_true",
                   help="replace outputs that exist (never an input); without it an existing output is refused "
                        "before any work")


# Options that name files a command writes, and those that name what it reads (which it must not replace).
_OUTPUT_FILES = {"eval": ("json",), "export": ("output",), "check": ("json",), "engine": ("output", "json"),
                 "bench": ("json",), "calibrate": ("output",)}
_OUTPUT_FOLDERS = {"train": ("out",), "engine": ("out_dir",)}
_INPUT_FILES = ("model", "model_path", "path", "onnx", "against", "image", "init", "teacher")
_INPUT_FOLDERS = ("data", "val")


def check_inputs(args) -> None:
    """An input option that names something on disk names a file (or, for --data, a folder): a FIFO would
    block the reader, and "no such file" would be the wrong message for a folder or a link loop."""
    import os

    from .paths import not_a_file, not_a_folder

    for option, want, why_not in [(o, "file", not_a_file) for o in _INPUT_FILES] + \
                                 [(o, "folder", not_a_folder) for o in _INPUT_FOLDERS]:
        value = getattr(args, option, None)
        if isinstance(value, str) and os.path.lexists(value) and not (want == "file" and _is_routed_folder(value)):
            why = why_not(value)
            if why is not None:
                flag = "MODEL" if option in ("model_path", "path", "onnx") else f"--{option}"
                raise OptionError(f"{flag} {value}: {why}; pass a {want}" if not why.startswith("no such")
                                  else f"{flag} {value}: {why}")


def _is_routed_folder(path: str) -> bool:
    """A tile-routed export (`cadyq export --routed`) is a folder that stands for one model."""
    import os

    return os.path.isdir(path) and any(os.path.isfile(os.path.join(path, n)) for n in ("routed.json", "routed-engines.json"))


def _writes_folder(args) -> bool:
    """-o names a folder: routed graphs (export --routed) and their engines (engine ROUTED_DIR)."""
    return (args.command == "export" and getattr(args, "routed", False)) or \
        (args.command == "engine" and isinstance(getattr(args, "onnx", None), str)
         and (_is_routed_folder(args.onnx) or args.onnx.endswith(("routed.json", "routed-engines.json"))))


def check_outputs(args) -> None:
    """Before any work: each output file can be written and is none of the command's inputs."""
    from .errors import OutputError
    from .outputs import check_output_file
    from .paths import not_a_folder

    inputs = [v for v in (getattr(args, k, None) for k in _INPUT_FILES) if isinstance(v, str)]
    folders = _OUTPUT_FOLDERS.get(args.command, ())
    if _writes_folder(args):
        folders = folders + ("output",)
    for option in _OUTPUT_FILES.get(args.command, ()):
        value = getattr(args, option, None)
        if value and option not in folders:
            check_output_file(value, inputs=inputs, option=f"--{option}", overwrite=args.overwrite)
    for option in folders:
        value = getattr(args, option, None)
        why = not_a_folder(value) if value and Path(value).exists() else None
        if why is not None:
            raise OutputError(f"--{option.replace('_', '-')} {value}: {why}; name a folder (it is created if missing)")


def main(argv=None) -> int:
    """The `cadyq` command. Exit codes: 0 done, 1 some inputs failed (or a check failed), 2 a mistake
    in the command or its inputs (one line), 3 a bug in cadyq, 130 interrupted (SIGINT), 143 stopped by SIGTERM."""
    from . import interrupt

    args_list = sys.argv[1:] if argv is None else list(argv)
    debug = "--debug" in args_list
    with interrupt.handle_signals():
        try:
            with _warnings_as_lines(debug):
                return _main(args_list, debug)
        except KeyboardInterrupt as e:  # SIGINT or SIGTERM, from the first instruction: imports, parsing, work, cleanup
            if debug:
                traceback.print_exc()
            print(interrupt.message(e), file=sys.stderr)
            return interrupt.exit_code(e)


def _main(argv: list[str], debug: bool) -> int:
    from .interrupt import check

    try:
        args = build_parser().parse_args(argv)
        check()  # a signal that arrived while torch loaded (torch swallows the KeyboardInterrupt)
    except UsageError as e:
        print(_one_line(e), file=sys.stderr)
        return EXIT_USER_ERROR
    except SystemExit as e:  # --help, --version
        return e.code if isinstance(e.code, int) else 0
    try:
        check_device(getattr(args, "device", None))
        check_tiling(args)
        check_inputs(args)
        check_outputs(args)
        return int(args.func(args) or 0)
    except CadyqError as e:
        return _fail(str(e), debug)
    except MemoryError:
        return _fail("out of memory; use a smaller --tile or --batch, or a smaller image", debug)
    except OSError as e:  # outside the paths that say what they could not read or write
        where = f"{e.filename}: " if getattr(e, "filename", None) else ""
        return _fail(f"{where}{e.strerror or e}", debug)
    except RuntimeError as e:
        if re.search(r"out of memory|can't allocate memory|failed to allocate", str(e), re.I):
            return _fail(f"out of memory ({_one_line(e)[:120]}); use a smaller --tile or --batch", debug)
        return _internal(e, debug)
    except Exception as e:  # a bug: one line and an exit code of its own; the traceback with --debug
        return _internal(e, debug)


def _one_line(e) -> str:
    return " ".join(line.strip() for line in str(e).strip().splitlines() if line.strip())


def _fail(message: str, debug: bool) -> int:
    if debug:
        traceback.print_exc()
    print(f"cadyq: error: {_one_line(message)}", file=sys.stderr)
    return EXIT_USER_ERROR


def _internal(e: Exception, debug: bool) -> int:
    if debug:
        traceback.print_exc()
    print(f"cadyq: internal error: {type(e).__name__}: {_one_line(e)[:300]} (a bug in cadyq: rerun with --debug "
          "for the traceback and report it)", file=sys.stderr)
    return EXIT_INTERNAL_ERROR


@contextlib.contextmanager
def _warnings_as_lines(debug: bool):
    """Warnings as `warning: ...` lines (Python's default adds the source file and line); as is with --debug."""
    if debug:
        yield
        return
    with warnings.catch_warnings():
        warnings.showwarning = lambda message, *_, **__: _say(f"warning: {_one_line(message)}")
        yield


if __name__ == "__main__":
    sys.exit(main())
