"""The reference backend: the PyTorch model itself (fake quantization), CPU or CUDA.

`precision` "bf16"/"fp16" runs the forward under torch.autocast (the float peers of `cadyq bench`);
`channels_last` converts the model and the tiles to NHWC, the layout oneDNN and cuDNN are fastest in."""
from __future__ import annotations

import contextlib

import torch

from ..errors import BackendError
from ..quant import ModelInfo, quant_config, selected_bits
from .backend import Backend, load_module, register_backend, resolve_device

PRECISIONS = {"fp32": None, "bf16": torch.bfloat16, "fp16": torch.float16}


class TorchBackend(Backend):
    name = "torch"

    def __init__(self, model, device="auto", precision: str = "fp32", channels_last: bool = False):
        if precision not in PRECISIONS:
            raise BackendError(f"unknown precision {precision!r}; choose one of {', '.join(PRECISIONS)}")
        self.device = resolve_device(device)
        self.memory_format = torch.channels_last if channels_last else torch.contiguous_format
        self.model = load_module(model, self.name).to(self.device, memory_format=self.memory_format).eval()
        self.info = ModelInfo.from_model(self.model)
        self.quantized = quant_config(self.model).method != "fp32"
        self.precision = precision

    def _autocast(self):
        dtype = PRECISIONS[self.precision]
        return torch.autocast(self.device.type, dtype=dtype) if dtype is not None else contextlib.nullcontext()

    @torch.inference_mode()
    def run(self, tiles):
        with self._autocast():
            sr = self.model(tiles.contiguous(memory_format=self.memory_format))
        bits = selected_bits(self.model) if self.quantized else self.info.default_bits(tiles.shape[0])
        return sr.float(), bits.float()


register_backend("torch", TorchBackend)
