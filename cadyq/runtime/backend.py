"""The backend interface: run a batch of LR tiles, return SR tiles and the bits chosen."""
from __future__ import annotations

import abc
import importlib
import importlib.util
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import torch
import torch.nn as nn

from ..errors import BackendError
from ..quant import ModelInfo


class Backend(abc.ABC):
    name: str = ""
    info: ModelInfo
    device: torch.device
    max_batch: int | None = None  # None: any batch size
    choice: "Choice | None" = None  # set when backend="auto" chose this backend: what and why
    tile_sizes: tuple[int, int] | None = None  # the (h, w) the model accepts; None: any

    @property
    def where(self) -> str:
        """Where it runs, for report lines: `on cpu`."""
        return f"on {self.device}"

    @abc.abstractmethod
    def run(self, tiles: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """float32 [N,3,h,w] in [0,255] on self.device -> (sr [N,3,h*s,w*s] float32, bits [N,L] float32)."""


def load_module(model, backend: str) -> nn.Module:
    """The nn.Module a torch-based backend runs: `model` itself, a checkpoint file, or a zoo name."""
    if isinstance(model, nn.Module):
        return model
    path = Path(model)
    if is_routed(path):
        raise BackendError(f"{path}: a tile-routed export; the {backend} backend runs checkpoints: leave out --backend "
                           "(or pass --backend routed) to run it")
    if path.suffix in (".onnx", ".engine", ".plan"):
        raise BackendError(f"{path}: the {backend} backend runs checkpoints; use --backend onnxruntime/tensorrt for this file")
    if path.exists():
        from ..checkpoint import load

        return load(path)
    from ..zoo import load_pretrained  # a zoo name such as "edsr-cadyq-x4"

    return load_pretrained(str(model))


Factory = Callable[..., Backend]
_FACTORIES: dict[str, Factory] = {}
_MODULES = {"torch": "torch_backend", "onnxruntime": "onnxruntime_backend", "tensorrt": "tensorrt_backend",
            "native": "native_backend", "routed": "routed_backend", "aoti": "aoti_backend"}
BACKENDS = tuple(_MODULES)


def register_backend(name: str, factory: Factory) -> None:
    _FACTORIES[name] = factory


def resolve_device(device: str | torch.device) -> torch.device:
    if str(device) == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    dev = torch.device(device)
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise BackendError("device 'cuda' asked for, but torch sees no CUDA GPU here; use --device cpu")
    return dev


def is_routed(model) -> bool:
    """A tile-routed export: its folder, routed.json, or the routed-engines.json of its engines."""
    if not isinstance(model, (str, Path)):
        return False
    p = Path(model)
    return p.name.endswith(("routed.json", "routed-engines.json")) or \
        (p.is_dir() and any((p / n).is_file() for n in ("routed.json", "routed-engines.json")))


def guess_backend(model) -> str:
    """The backend a model file names by its suffix (checkpoints and modules: "torch")."""
    if is_routed(model):
        return "routed"
    suffix = Path(model).suffix if isinstance(model, (str, Path)) else ""
    return {".onnx": "onnxruntime", ".engine": "tensorrt", ".plan": "tensorrt", ".pt2": "aoti"}.get(suffix, "torch")


@dataclass(frozen=True)
class Choice:
    """What `backend="auto"` picked: the backend, its options and why (one line for reports)."""

    name: str
    options: dict
    why: str


def _integer_kernels(dev: torch.device) -> str | None:
    """None when the native backend's integer kernels run on `dev`, else why not."""
    if dev.type == "cuda":
        return None if importlib.util.find_spec("triton") else "Triton is not installed (pip install triton)"
    from ..kernels.cpu import available

    return available()


def choose_backend(model, device: str | torch.device = "auto") -> Choice:
    """The fastest backend for `model` here. Files run where their format runs (.onnx on ONNX Runtime,
    .engine on TensorRT, .pt2 on AOTInductor, routed exports on the router); quantized checkpoints on the
    native integer kernels (oneDNN INT8 on CPUs, Triton INT8 on CUDA), the fake-quant torch model only
    where those cannot run; fp32 checkpoints on the fastest float path of the device (fp16 channels_last
    on CUDA, bf16 channels_last on CPUs with bf16 arithmetic, else fp32 channels_last)."""
    name = guess_backend(model)
    if name != "torch":
        return Choice(name, {}, f"the model is a {Path(model).suffix or 'routed'} export")
    from ..hardware import cpu_has_bf16
    from ..quant import quant_config

    dev = resolve_device(device)
    method = quant_config(load_module(model, "auto")).method
    if method == "fp32":
        if dev.type == "cuda":
            return Choice("torch", {"precision": "fp16", "channels_last": True},
                          "fp32 model: fp16 autocast, channels_last (the fastest float path on CUDA)")
        if cpu_has_bf16():
            return Choice("torch", {"precision": "bf16", "channels_last": True},
                          "fp32 model: bf16 autocast, channels_last (this CPU computes in bf16)")
        return Choice("torch", {"channels_last": True},
                      "fp32 model: fp32 channels_last (this CPU has no bf16 arithmetic)")
    why = _integer_kernels(dev)
    if why:
        return Choice("torch", {}, f"{method} model: fake quantization (the reference), since the integer kernels cannot "
                                   f"run here: {why}")
    kernels = "Triton INT8" if dev.type == "cuda" else "oneDNN INT8"
    return Choice("native", {}, f"{method} model: integer program on {kernels} convolutions")


def create_backend(name: str, model, device: str | torch.device = "auto", **options) -> Backend:
    """The backend `name` for `model`; "auto" picks the fastest here (`choose_backend`) and records why in
    the backend's `choice`. `options` go to its constructor (e.g. float_precision for native,
    precision/channels_last for torch)."""
    choice = None
    if name == "auto":
        if isinstance(model, (str, Path)) and guess_backend(model) == "torch":
            model = load_module(model, "auto")  # loaded once: the choice reads its method
        choice = choose_backend(model, device)
        native_only = sorted(set(options) & {"float_precision", "int8_upsampler"})
        if native_only and choice.name != "native":
            raise BackendError(f"{', '.join(native_only)} {'is an option' if len(native_only) == 1 else 'are options'} "
                               f"of the native backend; the automatic choice is {choice.name} ({choice.why})")
        name, options = choice.name, {**choice.options, **options}
    backend = _create(name, model, device, options)
    if choice is not None:
        backend.choice = choice
    return backend


def _create(name: str, model, device, options: dict) -> Backend:
    if name not in _MODULES:
        raise BackendError(f"unknown backend {name!r}; choose one of {', '.join(BACKENDS)}")
    if name not in _FACTORIES:
        try:
            importlib.import_module(f"{__package__}.{_MODULES[name]}")
        except ImportError as e:
            raise BackendError(f"backend {name!r} is not available here: {e}") from e
    try:
        return _FACTORIES[name](model, str(device), **options)
    except TypeError as e:
        if options and "unexpected keyword" in str(e):
            raise BackendError(f"backend {name!r} takes no option {', '.join(sorted(options))}") from e
        raise
