"""AOTInductor packages (``.pt2``) of cadyq models, for the C++ library (``cpp/``) and for Python.

    info = export_aoti(model, "model.pt2")          # dynamic batch and tile size, CPU
    pkg = load_aoti("model.pt2")                     # AotiModel: pkg.info, pkg.run(tiles) -> (sr, bits)

What is compiled (``program`` in the ``cadyq.export`` metadata):

- ``integer`` (the default for pams8 and cadyq models): the integer program of
  ``cadyq.quant.lowering.lower(model)`` with its ``ReferenceKernels`` (plain torch ops): per quantized
  conv, the input's integers on the top candidate's grid, the selector's choice, that candidate's levels on the
  same grid, a convolution of those integers with the int8 weights (exact: integer sums < 2^24 in float32), then
  the layer's input scale a_T / s_T, weight scale and bias. The same program the native backend runs on oneDNN INT8 kernels
  (those kernels cannot be traced, so the package computes the integer convolutions in float32).
- ``fakequant``: the quantized model itself (fake quantization, as ``backend="torch"``).
- ``float``: fp32 models (bits are 32 everywhere, as in the ONNX export).

The package: input ``lr`` float32 [N,3,H,W] in [0,255]; outputs ``sr`` float32 [N,3,H*s,W*s]
(unclamped) and ``bits`` float32 [N,L]. N is dynamic in [1, max_batch]; H and W are dynamic in
[min_tile, max_tile] unless ``tile`` fixes them. Compiled for one device (``cpu``: the CPU ISA of the
machine that compiled it, ``AOTI_CPU_ISA`` in the metadata; ``cuda``: that GPU architecture).

Metadata, stored in the package (string keys and values: ``AOTIModelPackageLoader::get_metadata()``
in C++, ``read_aoti_metadata`` here): ``cadyq.format`` = ``"1"``; ``cadyq.info`` =
``ModelInfo.to_dict()`` (json: scale, bits, layers for BitOPs); ``cadyq.model`` = the checkpoint
metadata (json); ``cadyq.export`` = the export settings (json: program, kernels, device, batch and
tile ranges, torch and cadyq versions).
"""
from __future__ import annotations

import contextlib
import json
import shutil
import tempfile
import time
import warnings
import zipfile
from dataclasses import dataclass, field
from pathlib import Path

import torch
import torch.nn as nn

from ..errors import BackendError, ExportError, ModelError

__all__ = ["export_aoti", "export_program", "load_aoti", "run_export_aoti", "read_aoti_metadata", "AotiExport", "AotiModel", "PROGRAMS",
           "AOTI_FORMAT", "META_FORMAT", "META_INFO", "META_MODEL", "META_EXPORT"]

AOTI_FORMAT = 1
META_FORMAT = "cadyq.format"
META_INFO = "cadyq.info"
META_MODEL = "cadyq.model"
META_EXPORT = "cadyq.export"
PROGRAMS = ("auto", "integer", "fakequant")
DEFAULT_MAX_BATCH = 1024
DEFAULT_TILE_RANGE = (2, 2048)  # 1-px tiles have no standard deviation (the selector's input)


class _FakeQuantProgram(nn.Module):
    """The model itself as (sr, bits): the bits its selectors chose, or 32 for an fp32 model."""

    def __init__(self, model: nn.Module, quantized: bool, n_layers: int):
        super().__init__()
        self.model, self.quantized, self.n_layers = model, quantized, n_layers

    def forward(self, lr):
        from ..quant import selected_bits

        sr = self.model(lr)
        if self.quantized:
            return sr, selected_bits(self.model).float()
        return sr, lr.new_full((lr.shape[0], self.n_layers), 32.0)


@dataclass
class AotiExport:
    """What `export_aoti` wrote, and a check of the package against the eager program."""

    path: Path
    info: dict  # ModelInfo.to_dict()
    export: dict  # the cadyq.export metadata
    export_s: float
    compile_s: float
    check: dict = field(default_factory=dict)  # bits_agree (fraction), sr_max_abs (vs the eager program)

    def describe(self) -> list[str]:
        e, i = self.export, self.info
        tile = f"{e['tile']}x{e['tile']}" if e["tile"] else f"H,W in {e['tile_range'][0]}..{e['tile_range'][1]}"
        n_layers = sum(c["act_bits"] is None for c in i["layers"])
        return [f"wrote {self.path} ({self.path.stat().st_size / 1e6:.1f} MB)",
                f"  model    {i['backbone']} x{i['scale']} {i['method']} bits {tuple(i['bits'])}",
                f"  program  {e['program']}: {e['program_note']}",
                f"  inputs   lr[N,3,H,W] float32 in [0,255], N in 1..{e['batch'][1]}, {tile}",
                f"  outputs  sr[N,3,H*{i['scale']},W*{i['scale']}] float32 (unclamped), bits[N,{n_layers}]",
                f"  device   {e['device']}  (torch {e['torch']}; export {self.export_s:.1f} s, compile {self.compile_s:.1f} s)",
                f"  check    bits agree on {100 * self.check.get('bits_agree', float('nan')):.2f} % of (tile, layer), "
                f"max |sr - eager| {self.check.get('sr_max_abs', float('nan')):.2g}"]


def _choose_program(model: nn.Module, program: str) -> tuple[str, nn.Module, str]:
    from ..quant import ModelInfo, quant_config
    from ..quant.lowering import lower

    if program not in PROGRAMS:
        raise ExportError(f"unknown program {program!r}; choose one of {', '.join(PROGRAMS)}")
    method = quant_config(model).method
    info = ModelInfo.from_model(model)
    if method == "fp32":
        if program == "integer":
            raise ExportError("an fp32 model has no integer program; quantize it (pams8 or cadyq) or export it as is")
        return "float", _FakeQuantProgram(model, False, info.n_layers), "the fp32 model (bits are 32)"
    if program == "fakequant":
        return "fakequant", _FakeQuantProgram(model, True, info.n_layers), \
            "the fake-quant model (float convolutions of fake-quantized values)"
    try:
        prog = lower(model)
    except ModelError as e:
        if program == "integer":
            raise ExportError(f"the integer lowering failed ({e}); export with program='fakequant'") from e
        return "fakequant", _FakeQuantProgram(model, True, info.n_layers), \
            f"the fake-quant model (the integer lowering failed: {e})"
    return "integer", prog, ("cadyq.quant.lowering.lower(model) with ReferenceKernels: INT8 weights, integer "
                             "activations on each layer's top grid; integer convolutions computed exactly in float32")


def _device(device: str) -> torch.device:
    dev = torch.device(device)
    if dev.type not in ("cpu", "cuda"):
        raise ExportError(f"AOTInductor packages are compiled for cpu or cuda, not {device!r}")
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise ExportError("device cuda asked for, but torch sees no CUDA GPU here; compile on a machine with the "
                          "GPU (and CUDA toolkit) the package will run on, or use --device cpu")
    return dev


def export_program(model: nn.Module, *, device: str = "cpu", program: str = "auto", tile: int | None = None,
                   max_batch: int = DEFAULT_MAX_BATCH, tile_range: tuple[int, int] = DEFAULT_TILE_RANGE,
                   example_tile: int = 48) -> tuple[torch.export.ExportedProgram, str]:
    """What `export_aoti` compiles: (the torch.export program with its dynamic shapes, the program kind)."""
    ep, _, _, kind, *_ = _export_program(model, device, program, tile, max_batch, tile_range, example_tile)
    return ep, kind


def _export_program(model, device, program, tile, max_batch, tile_range, example_tile):
    from ..quant import ModelInfo

    if max_batch < 1:
        raise ExportError("max_batch must be at least 1")
    lo, hi = (tile, tile) if tile is not None else tile_range
    if not 2 <= lo <= hi:
        raise ExportError(f"tile sizes must be at least 2 px (got {lo}..{hi}): a 1-px tile has no standard deviation")
    dev = _device(device)
    model = model.eval()
    info = ModelInfo.from_model(model)
    kind, prog, note = _choose_program(model, program)
    prog = prog.to(dev).eval()
    t = tile or min(max(example_tile, lo), hi)
    n = min(2, max_batch)
    x = torch.rand(n, 3, t, t, generator=torch.Generator().manual_seed(0)).mul_(255).to(dev)
    dims = {0: torch.export.Dim("batch", min=1, max=max_batch)} if max_batch > 1 else {}
    if tile is None:
        dims |= {2: torch.export.Dim("height", min=lo, max=hi), 3: torch.export.Dim("width", min=lo, max=hi)}
    try:
        with torch.no_grad(), warnings.catch_warnings():
            warnings.filterwarnings("ignore", message=".*were assigned during export.*")  # last_bits: read after forward
            ep = torch.export.export(prog, (x,), dynamic_shapes={"lr": dims}, strict=False)
    except Exception as e:  # torch.export raises many types (UserError, ConstraintViolationError, ...)
        raise ExportError(f"torch.export failed for this {info.backbone} model ({type(e).__name__}: "
                          f"{str(e).splitlines()[0] if str(e) else ''}); try a fixed tile (tile=T) or program='fakequant'") from e
    return ep, prog, x, kind, note, info, (lo, hi), dev


def export_aoti(model: nn.Module, path, *, device: str = "cpu", program: str = "auto", tile: int | None = None,
                max_batch: int = DEFAULT_MAX_BATCH, tile_range: tuple[int, int] = DEFAULT_TILE_RANGE,
                example_tile: int = 48, inductor_configs: dict | None = None) -> AotiExport:
    """Compile `model` (any cadyq model: fp32, pams8, cadyq) into an AOTInductor package at `path`
    (``*.pt2``), written atomically. tile: None = dynamic H, W in `tile_range`; an int fixes them."""
    from .. import __version__
    from ..checkpoint import atomic_write
    from ..checkpoint import metadata as ckpt_metadata

    path = Path(path)
    if path.suffix != ".pt2":
        raise ExportError(f"{path}: name the AOTInductor package *.pt2")
    t0 = time.perf_counter()
    ep, prog, x, kind, note, info, (lo, hi), dev = _export_program(model, device, program, tile, max_batch, tile_range,
                                                                   example_tile)
    export_s = time.perf_counter() - t0
    exp = {"format": AOTI_FORMAT, "program": kind, "program_note": note,
           "kernels": "reference" if kind == "integer" else None, "device": dev.type,
           "batch": [1, max_batch], "tile": tile, "tile_range": [lo, hi], "input": "lr", "outputs": ["sr", "bits"],
           "torch": torch.__version__, "cadyq": __version__, "created": time.strftime("%Y-%m-%dT%H:%M:%S%z")}
    meta = {META_FORMAT: str(AOTI_FORMAT), META_INFO: json.dumps(info.to_dict()),
            META_MODEL: json.dumps(ckpt_metadata(model)), META_EXPORT: json.dumps(exp)}
    configs = {"aot_inductor.metadata": meta, **(inductor_configs or {})}
    path.parent.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix=".cadyq-aoti-", dir=path.parent) as tmp:
        built = Path(tmp) / path.name
        try:
            with _quiet_loader():
                torch._inductor.aoti_compile_and_package(ep, package_path=str(built), inductor_configs=configs)
        except Exception as e:
            raise ExportError(f"AOTInductor could not compile the model ({type(e).__name__}: "
                              f"{str(e).splitlines()[0] if str(e) else ''}); it needs a working C++ compiler "
                              "(g++) and, for cuda, the CUDA toolkit") from e
        compile_s = time.perf_counter() - t0
        check = _check(built, prog, x)
        atomic_write(path, lambda tmp_path: shutil.copyfile(built, tmp_path))
    return AotiExport(path, info.to_dict(), exp, export_s, compile_s, check)


@torch.no_grad()
def _check(package: Path, prog: nn.Module, x: torch.Tensor) -> dict:
    with _quiet_loader():
        compiled = torch._inductor.aoti_load_package(str(package))
    sr, bits = compiled(x)
    ref_sr, ref_bits = prog(x)
    return {"bits_agree": float((bits == ref_bits).float().mean()) if bits.numel() else 1.0,
            "sr_max_abs": float((sr - ref_sr).abs().max())}


def read_aoti_metadata(path) -> dict[str, str]:
    """The metadata stored in a package (all of it: cadyq.* and AOTI_*), without loading its code."""
    path = Path(path)
    if not path.is_file():
        raise BackendError(f"{path}: no such model package; export one with `cadyq export --format aoti -o {path.name}`")
    if not zipfile.is_zipfile(path):
        raise BackendError(f"{path}: not an AOTInductor package (not a .pt2 archive); re-export it with "
                           "`cadyq export --format aoti`")
    try:
        with zipfile.ZipFile(path) as z:
            names = [n for n in z.namelist() if n.endswith("wrapper_metadata.json") and "/data/aotinductor/" in f"/{n}"]
            if not names:
                raise BackendError(f"{path}: a .pt2 archive without an AOTInductor model (an ExportedProgram saved "
                                   "with torch.export.save?); compile it with `cadyq export --format aoti`")
            return {str(k): str(v) for k, v in json.loads(z.read(names[0])).items()}
    except (zipfile.BadZipFile, OSError, ValueError, KeyError) as e:
        raise BackendError(f"{path}: corrupt model package ({e}); re-export it with `cadyq export --format aoti`") from e


class AotiModel:
    """A loaded package: `run(tiles [N,3,H,W] float32 in [0,255])` -> (sr, bits) on the package's device."""

    def __init__(self, path, device: str = "auto"):
        from ..quant import ModelInfo

        self.path = Path(path)
        meta = read_aoti_metadata(self.path)
        if META_INFO not in meta or META_EXPORT not in meta:
            raise BackendError(f"{self.path}: an AOTInductor package without cadyq metadata; export the model with "
                               "`cadyq export --format aoti`")
        if int(meta.get(META_FORMAT, "0")) > AOTI_FORMAT:
            raise BackendError(f"{self.path}: written by a newer cadyq (package format {meta[META_FORMAT]}); upgrade cadyq")
        self.metadata = meta
        self.info = ModelInfo.from_dict(json.loads(meta[META_INFO]))
        self.export = json.loads(meta[META_EXPORT])
        built_for = self.export["device"]
        want = built_for if str(device) == "auto" else torch.device(device).type
        if want != built_for:
            raise BackendError(f"{self.path} was compiled for {built_for}, not {want}; re-export it with "
                               f"`cadyq export --format aoti --device {want}` or run it on {built_for}")
        if want == "cuda" and not torch.cuda.is_available():
            raise BackendError(f"{self.path} was compiled for cuda, but torch sees no CUDA GPU here")
        self.device = torch.device(built_for if str(device) == "auto" else device)
        with _quiet_loader():
            try:
                index = self.device.index if self.device.type == "cuda" and self.device.index is not None else -1
                self._run = torch._inductor.aoti_load_package(str(self.path), device_index=index)
            except (RuntimeError, OSError) as e:
                raise BackendError(f"{self.path}: cannot load the package ({str(e).splitlines()[0]}); it may have been "
                                   f"compiled by another torch version or for another CPU (ISA "
                                   f"{meta.get('AOTI_CPU_ISA', '?')})") from e
        self.max_batch = int(self.export["batch"][1])
        self.tile_range = tuple(self.export["tile_range"])
        self.tile_sizes = (self.export["tile"],) * 2 if self.export.get("tile") else None

    @torch.no_grad()
    def run(self, tiles: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        n, c, h, w = tiles.shape
        lo, hi = self.tile_range
        if c != 3 or not (lo <= h <= hi and lo <= w <= hi) or not 1 <= n <= self.max_batch:
            raise BackendError(f"{self.path} takes [1..{self.max_batch}, 3, {lo}..{hi}, {lo}..{hi}] tiles, got "
                               f"{list(tiles.shape)}; pick --tile/--batch in that range")
        sr, bits = self._run(tiles.to(self.device, torch.float32).contiguous())
        return sr.float(), bits.float()

    __call__ = run


@contextlib.contextmanager
def _quiet_loader():
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)  # torch's own pytree deprecation inside the loader
        yield


def load_aoti(path, device: str = "auto") -> AotiModel:
    return AotiModel(path, device)


def run_export_aoti(args, model) -> int:
    """`cadyq export --format aoti` (the arguments of cadyq.export.cli.add_export_arguments)."""
    if args.dtype != "fp32":
        raise ExportError("--dtype fp16 is an ONNX option; an AOTInductor package computes in fp32 (the integer program's "
                          "convolutions are exact in fp32 only)")
    if args.form == "ort":
        raise ExportError("--form ort is an ONNX graph form (for ONNX Runtime); an AOTInductor package takes --form int8 "
                          "(the integer program) or fakequant")
    program = {"int8": "integer", "fakequant": "fakequant", None: "auto"}[args.form]
    result = export_aoti(model, args.output, device=args.device, program=program,
                         max_batch=1 if args.static_batch else DEFAULT_MAX_BATCH, example_tile=args.tile)
    print("\n".join(result.describe()))
    return 0
