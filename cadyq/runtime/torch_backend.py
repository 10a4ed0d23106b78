"""The reference backend: the PyTorch model itself (fake quantization), CPU or CUDA."""
from __future__ import annotations

from pathlib import Path

import torch
import torch.nn as nn

from ..errors import BackendError
from ..quant import ModelInfo, quant_config, selected_bits
from .backend import Backend, register_backend, resolve_device


def _load_model(model) -> nn.Module:
    if isinstance(model, nn.Module):
        return model
    path = Path(model)
    if path.suffix in (".onnx", ".engine", ".plan"):
        raise BackendError(f"{path}: the torch backend runs checkpoints; use --backend onnxruntime/tensorrt for this file")
    if path.exists():
        from ..checkpoint import load

        return load(path)
    from ..zoo import load_pretrained  # a zoo name such as "edsr-cadyq-x4"

    return load_pretrained(str(model))


class TorchBackend(Backend):
    name = "torch"

    def __init__(self, model, device="auto"):
        self.device = resolve_device(device)
        self.model = _load_model(model).to(self.device).eval()
        self.info = ModelInfo.from_model(self.model)
        self.quantized = quant_config(self.model).method != "fp32"

    @torch.inference_mode()
    def run(self, tiles):
        sr = self.model(tiles)
        bits = selected_bits(self.model) if self.quantized else self.info.default_bits(tiles.shape[0])
        return sr.float(), bits.float()


register_backend("torch", TorchBackend)
