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
import dataclasses
import json
import math
import os
import platform
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from torch import nn

from .errors import CadyqError, ImageError

HELP = {"bench": "trtexec-style latency/throughput, FQR, BitOPs and PSNR of a model and its baselines"}
BUILT_BASELINES = ("fp32", "pams8", "fp16")
_FILE_SUFFIXES = (".onnx", ".engine", ".plan")
PERCENTILES = (90, 95, 99)
SCHEDULES = ("interleaved", "sequential")


class BenchError(CadyqError):
    """Invalid benchmark settings."""


@dataclass
class BenchSettings:
    tile: int = 96
    overlap: int = 6
    batch: int = 16
    warmup: int = 3
    iterations: int | None = 20  # None: run for `duration` seconds per configuration
    duration: float | None = None
    image_runs: int = 1
    seed: int = 0
    schedule: str = "interleaved"  # or "sequential": each configuration's iterations in one block

    def validate(self) -> None:
        if self.iterations is not None and self.duration is not None:
            raise BenchError("give --iterations or --duration, not both")
        if self.iterations is None and self.duration is None:
            raise BenchError("give --iterations N or --duration S")
        if self.iterations is not None and self.iterations < 1:
            raise BenchError(f"--iterations must be at least 1, got {self.iterations}")
        if self.duration is not None and not (self.duration > 0 and math.isfinite(self.duration)):
            raise BenchError(f"--duration must be a positive number of seconds, got {self.duration}")
        if self.warmup < 0:
            raise BenchError(f"--warmup must be 0 or more, got {self.warmup}")
        if self.batch < 1:
            raise BenchError(f"--batch must be at least 1, got {self.batch}")
        if self.tile < 4:
            raise BenchError(f"--tile must be at least 4 px, got {self.tile}")
        if not 0 <= self.overlap < self.tile:
            raise BenchError(f"--overlap must be in 0..tile-1, got {self.overlap}")
        if self.schedule not in SCHEDULES:
            raise BenchError(f"--schedule must be one of {', '.join(SCHEDULES)}, got {self.schedule!r}")
        if self.image_runs < 1:
            raise BenchError(f"--image-runs must be at least 1, got {self.image_runs}")


@dataclass
class Config:
    """One row of the benchmark: a backend and how it was made."""

    label: str
    backend: object  # cadyq.runtime.Backend
    source: str  # what the user named
    notes: list[str] = field(default_factory=list)
    module: nn.Module | None = None  # the torch model behind it, when there is one


# ---- statistics --------------------------------------------------------------------------------------
def latency_stats(times_ms) -> dict[str, float]:
    """min/mean/median/p90/p95/p99/max/std (ms) and the coefficient of variation of a list of times."""
    a = np.asarray(list(times_ms), dtype=np.float64)
    if a.size == 0:
        raise BenchError("no timed iterations")
    out = {"min": float(a.min()), "mean": float(a.mean()), "median": float(np.median(a))}
    for p in PERCENTILES:
        out[f"p{p}"] = float(np.percentile(a, p))
    out["max"] = float(a.max())
    out["std"] = float(a.std())
    out["cov"] = float(a.std() / a.mean()) if a.mean() > 0 else 0.0
    return out


# ---- baselines -------------------------------------------------------------------------------------
def build_baseline(model: nn.Module, method: str, calib_tiles: torch.Tensor | None = None) -> tuple[nn.Module, list[str]]:
    """The same backbone, scale and weights as `model`, quantized with `method` ("fp32" or "pams8").

    fp32: the plain backbone, every backbone tensor copied (`transfer_state`). pams8: 8-bit weights and
    activations; the clip value of each dynamic layer is that of its 8-bit candidate (else its
    largest), fixed quantizers keep theirs; a model without clip values (fp32) is calibrated with
    `observe` on `calib_tiles`. Returns (model in eval mode on the CPU, notes)."""
    from .checkpoint import build, metadata, transfer_state
    from .quant import observe, quant_config

    if method not in ("fp32", "pams8"):
        raise BenchError(f"cannot build a {method!r} baseline; built baselines are fp32 and pams8")
    if not hasattr(model, "config"):
        raise BenchError("fp32/pams8 baselines are built from a cadyq model (checkpoint or zoo name)")
    src_cfg = quant_config(model)
    meta = metadata(model)
    meta.update(method=method, mode="full", bits=[8] if method == "pams8" else list(meta["bits"]))
    dst = build(meta)
    own = dst.state_dict()
    state = {k: v.detach().cpu() for k, v in model.state_dict().items()}
    pick = src_cfg.bits.index(8) if 8 in src_cfg.bits else len(src_cfg.bits) - 1
    for k, v in list(state.items()):
        if k.endswith("alpha") and k in own and v.shape != own[k].shape and own[k].numel() == 1 and v.numel() > 1:
            state[k] = v.reshape(-1)[pick].reshape(1).clone()
    transfer_state(dst, state)
    notes = []
    missing = [k for k in own if k.endswith("alpha") and k not in state]
    if missing:
        if calib_tiles is None:
            raise BenchError(f"{method} baseline: {len(missing)} clip values are not in the model; tiles to calibrate are needed")
        with torch.no_grad(), observe(dst):
            dst(calib_tiles.cpu().float())
        notes.append(f"clip values calibrated on the {calib_tiles.shape[0]} benchmark tiles (the model has none)")
    elif method == "pams8" and src_cfg.method == "cadyq":
        notes.append(f"clip values of the {src_cfg.bits[pick]}-bit candidates")
    return dst.eval(), notes


def _autocast_backend(inner):
    """A torch backend run under torch.autocast(float16): the fp16 baseline (benchmarked on CUDA only).
    Its ModelInfo counts 16-bit weights and activations, so BitOPs are a quarter of the FLOPs."""
    from .quant import LayerCost
    from .runtime import Backend

    class AutocastBackend(Backend):
        name = "torch-fp16"

        def __init__(self):
            self.inner, self.device = inner, inner.device
            self.max_batch, self.tile_sizes = inner.max_batch, inner.tile_sizes
            info = inner.info
            layers = tuple(LayerCost(c.name, c.macs_per_pixel, 16, c.act_bits if c.act_bits is None else 16)
                           for c in info.layers)
            self.info = dataclasses.replace(info, method="fp16", bits=(16,), layers=layers)

        @torch.inference_mode()
        def run(self, tiles):
            with torch.autocast(self.device.type, dtype=torch.float16):
                sr = self.inner.model(tiles)
            return sr.float(), self.info.default_bits(tiles.shape[0]).to(tiles.device)

    return AutocastBackend()


def _simulation_note(method: str, backend: str) -> list[str]:
    if method in ("pams8", "cadyq") and backend in ("torch", "onnxruntime"):
        return [(f"{backend} runs {method} as fake quantization (float math plus quantize/dequantize): it simulates the "
                "bit-widths and is slower than fp32 by construction; speed-ups need INT8/INT4 kernels or engines")]
    return []


# ---- making the rows ------------------------------------------------------------------------------------
def _split_backend(item: str) -> tuple[str, str | None]:
    name, sep, backend = item.rpartition("@")
    if sep and name and backend and "/" not in backend:
        return name, backend
    return item, None


def _is_file_model(name) -> bool:
    return isinstance(name, (str, Path)) and Path(name).suffix in _FILE_SUFFIXES


def _load(name: str, foreign: dict):
    from .checkpoint import load_model

    if _is_file_model(name):
        if not Path(name).is_file():
            raise BenchError(f"{name}: no such model file")
        return Path(name)
    return load_model(name, **foreign)


def _backend_for(model, backend: str, device: str, tile: int, tmpdir: str, threads: int | None):
    """A Backend for `model` (nn.Module or file path); modules are exported at `tile` for onnxruntime."""
    from .runtime import create_backend
    from .runtime.backend import guess_backend

    name = guess_backend(model) if backend == "auto" else backend
    if isinstance(model, nn.Module) and name == "onnxruntime":
        from .export import export_onnx

        path = Path(tempfile.mkdtemp(prefix="onnx-", dir=tmpdir)) / "model.onnx"
        model = export_onnx(model, path, tile=tile)
    if name == "onnxruntime" and threads:
        from .runtime.onnxruntime_backend import OnnxRuntimeBackend

        return OnnxRuntimeBackend(model, device, threads=threads)
    return create_backend(name, model, device)


def make_configs(model, compare=(), backend: str = "auto", device: str = "auto", tile: int = 96,
                 calib_tiles: torch.Tensor | Callable[[int], torch.Tensor] | None = None, tmpdir: str | None = None, threads: int | None = None,
                 foreign: dict | None = None) -> tuple[list[Config], list[dict]]:
    """The rows: `model` first, then one per `compare` item. Returns (configs, skipped) where skipped
    lists the baselines that cannot run here, with the reason. `model` is what --model names, or an
    nn.Module from cadyq; `calib_tiles` (tiles, or a function of the scale giving them) calibrates a
    pams8 baseline built from a model without clip values."""
    from .runtime.backend import guess_backend, resolve_device

    foreign = foreign or {}
    tmpdir = tmpdir or tempfile.mkdtemp(prefix="cadyq-bench-")
    dev = resolve_device(device)
    main = model if isinstance(model, nn.Module) else _load(str(model), foreign)
    main_backend = guess_backend(main) if backend == "auto" else backend
    if isinstance(model, nn.Module):
        from .quant import quant_config

        model = label = f"{getattr(model.config, 'name', 'model')} x{model.config.scale} {quant_config(model).method}"
    else:
        label = Path(str(model)).name if _is_file_model(model) else str(model)
    first = Config(label, _backend_for(main, main_backend, str(dev), tile, tmpdir, threads), str(model),
                   module=main if isinstance(main, nn.Module) else None)
    first.notes += _simulation_note(first.backend.info.method, first.backend.name)
    configs, skipped = [first], []
    for raw in compare:
        item, chosen = _split_backend(raw.strip())
        if not item:
            raise BenchError(f"empty item in --compare {','.join(compare)!r}")
        if item == "fp16":
            if dev.type != "cuda":
                skipped.append({"label": "fp16", "reason": f"fp16 (torch autocast) is supported on CUDA only, not on {dev.type}"})
                continue
            if first.module is None:
                raise BenchError("the fp16 baseline is built from a checkpoint model; --model is a file "
                                 f"({Path(str(model)).suffix}); pass the checkpoint instead")
            fp32, notes = build_baseline(first.module, "fp32")
            inner = _backend_for(fp32, "torch", str(dev), tile, tmpdir, threads)
            configs.append(Config("fp16", _autocast_backend(inner), "fp16",
                                  ["fp32 backbone, same weights, torch.autocast(float16)"], fp32))
            continue
        if item in ("fp32", "pams8"):
            if first.module is None:
                raise BenchError(f"the {item} baseline is built from the weights of a checkpoint model; --model "
                                 f"{model} is a {Path(str(model)).suffix} file: pass the checkpoint (with --backend "
                                 "onnxruntime to run it exported) or compare with checkpoint/.onnx paths")
            calib = calib_tiles(first.backend.info.scale) if callable(calib_tiles) else calib_tiles
            m, notes = build_baseline(first.module, item, calib)
            notes = notes + _simulation_note(item, chosen or main_backend)
            row_backend = chosen or (main_backend if main_backend in ("torch", "onnxruntime") else "torch")
            configs.append(Config(item, _backend_for(m, row_backend, str(dev), tile, tmpdir, threads), item, notes, m))
            continue
        m = _load(item, foreign)
        if chosen:
            row_backend = chosen
        elif isinstance(m, nn.Module):
            row_backend = main_backend if main_backend in ("torch", "onnxruntime") else "torch"
        else:
            row_backend = guess_backend(m)
        lab = Path(item).name if _is_file_model(item) else item
        c = Config(lab, _backend_for(m, row_backend, str(dev), tile, tmpdir, threads), item,
                   module=m if isinstance(m, nn.Module) else None)
        c.notes += _simulation_note(c.backend.info.method, c.backend.name)
        configs.append(c)
    scales = {c.label: c.backend.info.scale for c in configs}
    if len(set(scales.values())) > 1:
        raise BenchError(f"configurations of different scales cannot be compared on one image: {scales}")
    return configs, skipped


# ---- inputs -------------------------------------------------------------------------------------------
def load_hr(image=None) -> tuple[np.ndarray, str]:
    """The HR image (uint8 HxWx3) and its name: a path, an HxWx3 array, or None for skimage's astronaut."""
    from .data.io import read_image

    if image is None:
        from skimage import data

        return np.ascontiguousarray(data.astronaut()), "astronaut (skimage.data)"
    if isinstance(image, np.ndarray):
        arr, name = image, "array"
    else:
        img = read_image(image)
        arr, name = img.rgb, str(image)
    if arr.ndim == 2:
        arr = np.repeat(arr[..., None], 3, axis=2)
    if arr.ndim != 3 or arr.shape[2] != 3:
        raise ImageError(f"{name}: expected an RGB image, got shape {arr.shape}")
    if arr.dtype == np.uint16:
        arr = np.round(arr.astype(np.float64) / 257.0).astype(np.uint8)
    if arr.dtype != np.uint8:
        raise ImageError(f"{name}: expected 8- or 16-bit values, got {arr.dtype}")
    return np.ascontiguousarray(arr), name


def make_pair(hr: np.ndarray, scale: int) -> tuple[np.ndarray, np.ndarray]:
    """(HR cropped to a multiple of scale, its bicubic LR)."""
    from .data.resize import bicubic_downscale, mod_crop

    if min(hr.shape[:2]) < 2 * scale:
        raise ImageError(f"the image ({hr.shape[1]}x{hr.shape[0]}) is too small for x{scale}")
    hr = np.ascontiguousarray(mod_crop(hr, scale))
    return hr, bicubic_downscale(hr, scale)


def bench_tiles(lr: np.ndarray, settings: BenchSettings) -> torch.Tensor:
    """`batch` LR tiles [N,3,t,t] float32 in [0,255] of the image's tile grid, picked with the seed."""
    from .data.io import to_tensor
    from .tiling import iter_batches, plan_tiles

    img = to_tensor(lr)
    grid = plan_tiles(img.shape[1], img.shape[2], settings.tile, settings.overlap)
    _, tiles = next(iter_batches(img, grid, grid.n_tiles))
    rng = np.random.default_rng(settings.seed)
    n = tiles.shape[0]
    idx = rng.permutation(n)[: settings.batch] if n >= settings.batch else rng.choice(n, settings.batch, replace=True)
    return tiles[torch.as_tensor(idx)].contiguous().float()


# ---- timing -------------------------------------------------------------------------------------------
class _Runner:
    """Times one configuration's batches: perf_counter on the CPU, CUDA events on a GPU."""

    def __init__(self, config: Config, tiles: torch.Tensor):
        self.config, self.backend = config, config.backend
        self.device = torch.device(self.backend.device)
        self.cuda = self.device.type == "cuda"
        n = min(tiles.shape[0], self.backend.max_batch or tiles.shape[0])
        self.batch = n
        self.host = tiles[:n].contiguous()
        if self.cuda:
            self.host = self.host.pin_memory()
            self.dev_tiles = self.host.to(self.device)
            self.out = None
        else:
            self.dev_tiles = self.host
        self.times: dict[str, list[float]] = {k: [] for k in (("latency", "h2d", "compute", "d2h", "enqueue") if self.cuda
                                                               else ("latency",))}
        self.wall = 0.0
        self.bits: torch.Tensor | None = None

    def step(self, record: bool) -> None:
        if self.cuda:
            self._step_cuda(record)
            return
        t0 = time.perf_counter()
        _, bits = self.backend.run(self.dev_tiles)
        dt = time.perf_counter() - t0
        if record:
            self.times["latency"].append(dt * 1e3)
            self.wall += dt
            self.bits = bits

    def _step_cuda(self, record: bool) -> None:
        ev = [torch.cuda.Event(enable_timing=True) for _ in range(4)]
        stream = torch.cuda.current_stream(self.device)
        torch.cuda.synchronize(self.device)
        t0 = time.perf_counter()
        ev[0].record(stream)
        x = self.host.to(self.device, non_blocking=True)
        ev[1].record(stream)
        te = time.perf_counter()
        sr, bits = self.backend.run(x)
        enqueue = time.perf_counter() - te
        ev[2].record(stream)
        if self.out is None or self.out.shape != sr.shape:
            self.out = torch.empty(sr.shape, dtype=sr.dtype, pin_memory=True)
        self.out.copy_(sr, non_blocking=True)
        ev[3].record(stream)
        ev[3].synchronize()
        wall = time.perf_counter() - t0
        if record:
            h2d, comp, d2h = ev[0].elapsed_time(ev[1]), ev[1].elapsed_time(ev[2]), ev[2].elapsed_time(ev[3])
            self.times["h2d"].append(h2d)
            self.times["compute"].append(comp)
            self.times["d2h"].append(d2h)
            self.times["latency"].append(h2d + comp + d2h)
            self.times["enqueue"].append(enqueue * 1e3)
            self.wall += wall
            self.bits = bits

    def result(self) -> dict:
        b = self.backend
        s, t = b.info.scale, self.host.shape[-1]
        n_iter = len(self.times["latency"])
        tiles_per_s = self.batch * n_iter / self.wall if self.wall > 0 else float("nan")
        out = {"batch": self.batch, "iterations": n_iter, "total_host_walltime_s": self.wall,
               "latency_ms": latency_stats(self.times["latency"]),
               "throughput": {"batches_per_s": tiles_per_s / self.batch, "tiles_per_s": tiles_per_s,
                              "lr_mpix_per_s": tiles_per_s * t * t / 1e6, "sr_mpix_per_s": tiles_per_s * t * t * s * s / 1e6},
               "times_ms": {k: [round(v, 5) for v in vs] for k, vs in self.times.items()}}
        for k in ("h2d", "compute", "d2h", "enqueue"):
            if k in self.times:
                out[f"{k}_ms"] = latency_stats(self.times[k])
        if self.cuda:
            out["total_gpu_compute_s"] = sum(self.times["compute"]) / 1e3
        if self.bits is not None:
            out["batch_fqr"] = float(self.bits.double().mean())
        return out


def time_configs(configs: list[Config], tiles: torch.Tensor, settings: BenchSettings,
                 progress: Callable[[str], None] | None = None) -> list[dict]:
    """Warm-up, then timed iterations of every configuration: interleaved round by round (background
    load hits every configuration alike), or sequential (each one's warm-up and iterations in a block)."""
    runners = [_Runner(c, tiles) for c in configs]
    groups = [runners] if settings.schedule == "interleaved" else [[r] for r in runners]
    if progress:
        progress(f"timing {len(runners)} configuration(s) ({settings.schedule}), "
                 + (f"{settings.iterations} iterations" if settings.iterations else f"~{settings.duration:g} s each"))
    with torch.inference_mode():
        for group in groups:
            for _ in range(settings.warmup):
                for r in group:
                    r.step(record=False)
            start, rounds = time.perf_counter(), 0
            while True:
                for r in group:
                    r.step(record=True)
                rounds += 1
                if settings.iterations is not None:
                    if rounds >= settings.iterations:
                        break
                elif time.perf_counter() - start >= settings.duration * len(group):
                    break
    return [r.result() for r in runners]


def image_figures(config: Config, hr: np.ndarray, lr: np.ndarray, settings: BenchSettings, batch: int) -> dict:
    """Whole-image figures of one configuration through the Upscaler."""
    from .data.resize import imresize
    from .metrics import psnr, ssim
    from .runtime import Upscaler

    b = config.backend
    s = b.info.scale
    up = Upscaler(b, tile=settings.tile, overlap=settings.overlap, batch=batch)
    runs = []
    with torch.inference_mode():
        for _ in range(settings.image_runs):
            r = up.upscale(lr)
            runs.append(r)
    times = [r.timings["total"] for r in runs]
    r = runs[int(np.argsort(times)[len(times) // 2])]
    sr = r.image.rgb
    bic = np.clip(np.round(imresize(lr.astype(np.float64), scale=s)), 0, 255)
    p, p_bic = psnr(sr, hr, s), psnr(bic, hr, s)
    sr_mp = sr.shape[0] * sr.shape[1] / 1e6
    flops = sum(b.info.flops(*r.grid.tile_shape(i)) for i in range(r.grid.n_tiles))
    return {"lr_size": [int(lr.shape[0]), int(lr.shape[1])], "sr_size": [int(sr.shape[0]), int(sr.shape[1])],
            "tiles": [r.grid.rows, r.grid.cols], "n_tiles": r.grid.n_tiles, "runs": settings.image_runs,
            "end_to_end_s": float(np.median(times)), "end_to_end_all_s": times,
            "timings_s": {k: float(v) for k, v in r.timings.items()},
            "sr_mpix_per_s": sr_mp / float(np.median(times)),
            "fqr": r.fqr, "bitops_g": r.bitops / 1e9, "bitops_g_per_sr_mpix": r.bitops / 1e9 / sr_mp,
            "flops_g": flops / 1e9, "psnr": p, "ssim": ssim(sr, hr, s), "psnr_bicubic": p_bic, "psnr_gain_db": p - p_bic}


# ---- machine info ---------------------------------------------------------------------------------------
def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.lower().startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def machine_info(device) -> dict:
    from . import __version__

    dev = torch.device(device)
    info = {"cadyq": __version__, "python": platform.python_version(), "platform": platform.platform(),
            "cpu": _cpu_model(), "cpu_count": os.cpu_count(), "torch": torch.__version__,
            "torch_threads": torch.get_num_threads(), "numpy": np.__version__, "device": str(dev)}
    try:
        info["affinity_cpus"] = len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        pass
    try:
        info["load_average"] = [round(x, 2) for x in os.getloadavg()]
    except OSError:
        pass
    try:
        import onnxruntime as ort

        info["onnxruntime"] = ort.__version__
        info["onnxruntime_providers"] = ort.get_available_providers()
    except ImportError:
        info["onnxruntime"] = None
    if dev.type == "cuda":
        props = torch.cuda.get_device_properties(dev)
        info.update(device_name=props.name, compute_capability=f"{props.major}.{props.minor}",
                    gpu_memory_gib=round(props.total_memory / 2**30, 1), cuda=torch.version.cuda,
                    cudnn=torch.backends.cudnn.version())
    else:
        info["device_name"] = f"CPU: {info['cpu']}"
    return info


# ---- the whole benchmark --------------------------------------------------------------------------------
def benchmark(model: str, compare=(), backend: str = "auto", device: str = "auto", settings: BenchSettings | None = None,
              image=None, threads: int | None = None, foreign: dict | None = None,
              progress: Callable[[str], None] | None = None) -> dict:
    """Run the benchmark; returns the report (JSON-able dict). See the module docstring."""
    from .runtime.backend import resolve_device

    settings = settings or BenchSettings()
    settings.validate()
    if threads is not None and threads < 1:
        raise BenchError(f"--threads must be at least 1, got {threads}")
    load_before = _load1()  # the machine's load before this process adds its own
    dev = resolve_device(device)
    hr_full, image_name = load_hr(image)
    torch_threads = torch.get_num_threads()
    tmp = tempfile.TemporaryDirectory(prefix="cadyq-bench-")
    try:
        if threads:
            torch.set_num_threads(threads)
        pairs: dict[int, tuple] = {}

        def inputs(scale: int):  # (HR, LR, tiles) at the model's scale; also calibrates a pams8 baseline
            if scale not in pairs:
                hr, lr = make_pair(hr_full, scale)
                pairs[scale] = (hr, lr, bench_tiles(lr, settings))
            return pairs[scale]

        if progress:
            progress("building configurations")
        configs, skipped = make_configs(model, compare, backend, str(dev), settings.tile, lambda s: inputs(s)[2],
                                        tmp.name, threads, foreign)
        hr, lr, tiles = inputs(configs[0].backend.info.scale)
        for c in configs:
            ts = c.backend.tile_sizes
            if ts is not None and tuple(ts) != (settings.tile, settings.tile):
                raise BenchError(f"{c.label} takes {ts[0]}x{ts[1]} tiles; pass --tile {ts[0]}")
        timing = time_configs(configs, tiles, settings, progress)
        rows = []
        for c, t in zip(configs, timing):
            if progress:
                progress(f"whole image: {c.label}")
            b = c.backend
            row = {"label": c.label, "source": c.source, "backend": b.name, "device": str(b.device),
                   "model": {"backbone": b.info.backbone, "scale": b.info.scale, "method": b.info.method,
                             "bits": list(b.info.bits), "dynamic_layers": b.info.n_layers},
                   "notes": c.notes, **t}
            providers = getattr(b, "providers", None)
            if providers:
                row["providers"] = list(providers)
            row["image"] = image_figures(c, hr, lr, settings, settings.batch)
            rows.append(row)
        machine = machine_info(dev)
    finally:
        tmp.cleanup()
        torch.set_num_threads(torch_threads)
    _add_ratios(rows)
    report = {"settings": {**dataclasses.asdict(settings), "model": configs[0].source, "compare": list(compare),
                           "backend": backend, "device": str(dev), "threads": threads,
                           "timing": "CUDA events, synchronized per iteration" if dev.type == "cuda"
                           else "time.perf_counter around Backend.run"},
              "machine": machine,
              "image": {"name": image_name, "hr_size": [int(hr.shape[0]), int(hr.shape[1])],
                        "lr_size": [int(lr.shape[0]), int(lr.shape[1])], "lr": "cadyq.data.resize.bicubic_downscale"},
              "results": rows, "skipped": skipped, "warnings": _warnings(rows, dev, threads, load_before)}
    report["machine"]["load_average_1min_before"] = load_before
    return report


def _add_ratios(rows: list[dict]) -> None:
    ref = rows[0]
    for r in rows:
        im, rim = r["image"], ref["image"]
        r["vs_first"] = {
            "throughput_x": r["throughput"]["tiles_per_s"] / ref["throughput"]["tiles_per_s"],
            "mean_latency_x": r["latency_ms"]["mean"] / ref["latency_ms"]["mean"],
            "end_to_end_speed_x": rim["end_to_end_s"] / im["end_to_end_s"],
            "bitops_x": im["bitops_g"] / rim["bitops_g"] if rim["bitops_g"] else float("nan"),
            "psnr_delta_db": im["psnr"] - rim["psnr"],
        }


def _cores() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        return os.cpu_count() or 1


def _load1() -> float | None:
    try:
        return round(os.getloadavg()[0], 2)
    except OSError:
        return None


def _warnings(rows: list[dict], dev: torch.device, threads: int | None = None, load: float | None = None) -> list[str]:
    out = []
    for r in rows:
        key = "compute_ms" if "compute_ms" in r else "latency_ms"
        cov = r[key]["cov"]
        if cov > 0.1:
            out.append(f"{r['label']}: {'GPU compute' if key == 'compute_ms' else 'latency'} time is unstable "
                       f"(coefficient of variation {cov:.0%}); " + ("lock the GPU clocks or run longer (--duration)"
                                                                     if dev.type == "cuda" else
                                                                     "the CPU is shared or busy; run longer or on an idle machine"))
        if "enqueue_ms" in r and r["enqueue_ms"]["mean"] > r["compute_ms"]["mean"]:
            out.append(f"{r['label']}: enqueue time exceeds GPU compute time: the GPU waits for the host "
                       "(larger batches or CUDA graphs may help)")
        if r["batch"] != rows[0]["batch"]:
            out.append(f"{r['label']}: runs batches of {r['batch']} (its model's limit), not {rows[0]['batch']}")
    cores = _cores()
    if dev.type == "cpu" and (threads or torch.get_num_threads()) > 1 and load is not None and load >= cores:
        out.append(f"the CPU is busy (load average {load:.1f} on {cores} cores) and the runtimes use several threads: "
                   "their thread pools (torch's OpenMP, ONNX Runtime's spinning workers) then wait for each other "
                   "and times grow several-fold; --threads 1 gives steadier figures")
    return out


# ---- text report ----------------------------------------------------------------------------------------
def _stats_line(name: str, st: dict) -> str:
    return (f"{name}: min = {st['min']:.3f} ms, max = {st['max']:.3f} ms, mean = {st['mean']:.3f} ms, "
            f"median = {st['median']:.3f} ms, " + ", ".join(f"percentile({p}%) = {st[f'p{p}']:.3f} ms" for p in PERCENTILES))


def format_report(report: dict) -> str:
    st, m, img = report["settings"], report["machine"], report["image"]
    lines = ["=== Setup ===",
             f"Device: {m['device_name']} ({m['device']}); torch {m['torch']} ({m['torch_threads']} threads)"
             + (f", onnxruntime {m['onnxruntime']}" if m.get("onnxruntime") else "")
             + (f"; load average before the run {m['load_average_1min_before']} on {m.get('affinity_cpus', m['cpu_count'])} cores"
                if m.get("load_average_1min_before") is not None else ""),
             f"Image: {img['name']}, HR {img['hr_size'][1]}x{img['hr_size'][0]}, LR {img['lr_size'][1]}x{img['lr_size'][0]} (bicubic)",
             f"Tiles: {st['tile']}x{st['tile']} LR, batch {st['batch']}, {st['warmup']} warm-up iterations, "
             + (f"{st['iterations']} timed iterations" if st["iterations"] else f"~{st['duration']:g} s per configuration")
             + f"; {st['timing']}; configurations timed {st['schedule']}"
             + (f"; {st['threads']} thread(s)" if st.get("threads") else "")]
    for r in report["results"]:
        t, im = r["throughput"], r["image"]
        lines += ["", (f"=== Performance summary: {r['label']} ({r['model']['backbone']} x{r['model']['scale']} "
                       f"{r['model']['method']}, {r['backend']} on {r['device']}) ===")]
        lines += [f"Note: {n}" for n in r["notes"]]
        lines.append(f"Throughput: {t['tiles_per_s']:.2f} tiles/s ({t['batches_per_s']:.2f} batches of {r['batch']}/s), "
                     f"{t['lr_mpix_per_s']:.3f} LR MP/s, {t['sr_mpix_per_s']:.3f} SR MP/s")
        lines.append(_stats_line("Latency", r["latency_ms"]))
        for k, name in (("enqueue_ms", "Enqueue Time"), ("h2d_ms", "H2D Latency"), ("compute_ms", "GPU Compute Time"),
                        ("d2h_ms", "D2H Latency")):
            if k in r:
                lines.append(_stats_line(name, r[k]))
        lines.append(f"Total Host Walltime: {r['total_host_walltime_s']:.3f} s ({r['iterations']} iterations)")
        if "total_gpu_compute_s" in r:
            lines.append(f"Total GPU Compute Time: {r['total_gpu_compute_s']:.3f} s")
        tm = im["timings_s"]
        lines.append(f"Whole image: {im['lr_size'][1]}x{im['lr_size'][0]} -> {im['sr_size'][1]}x{im['sr_size'][0]}, "
                     f"{im['n_tiles']} tiles, end-to-end {im['end_to_end_s'] * 1e3:.1f} ms (inference "
                     f"{tm['inference'] * 1e3:.1f}, stitch {tm['stitch'] * 1e3:.1f} ms), {im['sr_mpix_per_s']:.3f} SR MP/s")
        lines.append(f"Quality: PSNR {im['psnr']:.2f} dB, SSIM {im['ssim']:.4f} (Y), bicubic {im['psnr_bicubic']:.2f} dB "
                     f"({im['psnr_gain_db']:+.2f} dB); FQR {im['fqr']:.2f}; BitOPs {im['bitops_g']:.3f} G "
                     f"({im['bitops_g_per_sr_mpix']:.3f} G per SR MP)")
    for s in report["skipped"]:
        lines += ["", f"=== {s['label']}: not run: {s['reason']} ==="]
    lines += ["", "=== Comparison (ratios against the first row, measured in this run) ==="]
    head = (f"{'configuration':<26} {'backend':<11} {'mean ms':>9} {'p99 ms':>9} {'tiles/s':>9} {'speed':>7} "
            f"{'e2e ms':>8} {'e2e x':>6} {'FQR':>6} {'BitOPs G':>9} {'BitOPs x':>8} {'PSNR':>6} {'dPSNR':>6} {'SSIM':>7} {'vs bic':>7}")
    lines += [head, "-" * len(head)]
    for r in report["results"]:
        v, im = r["vs_first"], r["image"]
        lines.append(f"{r['label'][:26]:<26} {r['backend'][:11]:<11} {r['latency_ms']['mean']:9.3f} {r['latency_ms']['p99']:9.3f} "
                     f"{r['throughput']['tiles_per_s']:9.2f} {v['throughput_x']:6.2f}x {im['end_to_end_s'] * 1e3:8.1f} "
                     f"{v['end_to_end_speed_x']:5.2f}x {im['fqr']:6.2f} {im['bitops_g']:9.3f} {v['bitops_x']:7.3f}x "
                     f"{im['psnr']:6.2f} {v['psnr_delta_db']:+6.2f} {im['ssim']:7.4f} {im['psnr_gain_db']:+7.2f}")
    for s in report["skipped"]:
        lines.append(f"{s['label']:<26} {'-':<11} unsupported here: {s['reason']}")
    if report["warnings"]:
        lines.append("")
        lines += [f"[W] {w}" for w in report["warnings"]]
    return "\n".join(lines)


# ---- CLI ---------------------------------------------------------------------------------------------
def add_bench_arguments(p: argparse.ArgumentParser) -> None:
    p.description = ("trtexec-style benchmark: latency percentiles and throughput per batch of tiles, whole-image "
                     "end-to-end time, FQR, BitOPs and PSNR/SSIM, for a model and baselines run side by side.")
    p.add_argument("--model", "-m", required=True,
                   help="checkpoint (.safetensors, .pt/.pth), zoo name, .onnx or .engine")
    p.add_argument("--backbone", help="backbone of a foreign checkpoint when its keys cannot tell")
    p.add_argument("--scale", type=int, help="scale of a foreign checkpoint when its keys cannot tell")
    p.add_argument("--method", choices=("fp32", "pams8", "cadyq"), help="method of a foreign checkpoint")
    p.add_argument("--backend", default="auto", help="torch, onnxruntime, tensorrt (auto: from the model file); "
                                                     "a checkpoint with onnxruntime is exported at --tile first")
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
                   help="comma-separated baselines: fp32, pams8 (built from --model's weights), fp16 (CUDA), or "
                        "checkpoints/zoo names/.onnx/.engine; NAME@BACKEND picks a backend")
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
        from .checkpoint import atomic_write

        atomic_write(args.json, lambda tmp: Path(tmp).write_text(json.dumps(report, indent=2)))
        print(f"wrote {args.json}", file=sys.stderr)
    return 0
