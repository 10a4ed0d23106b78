"""The backend interface: run a batch of LR tiles, return SR tiles and the bits chosen."""
from __future__ import annotations

import abc
import importlib
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
    tile_sizes: tuple[int, int] | None = None  # the (h, w) the model accepts; None: any

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
    if is_routed(model):
        return "routed"
    suffix = Path(model).suffix if isinstance(model, (str, Path)) else ""
    return {".onnx": "onnxruntime", ".engine": "tensorrt", ".plan": "tensorrt", ".pt2": "aoti"}.get(suffix, "torch")


def create_backend(name: str, model, device: str | torch.device = "auto", **options) -> Backend:
    """The backend `name` ("auto": from the model file's suffix) for `model`; `options` go to its
    constructor (e.g. float_precision for native, precision/channels_last for torch)."""
    if name == "auto":
        name = guess_backend(model)
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
