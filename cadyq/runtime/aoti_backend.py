"""The aoti backend: an AOTInductor package (``cadyq export --format aoti``), the same compiled code the
C++ library (``cpp/``) runs. ``Upscaler(AOTIBackend("model.pt2"))``; CPU, or CUDA for a package
compiled for it."""
from __future__ import annotations

from ..export.aoti import AotiModel
from .backend import Backend, register_backend


class AOTIBackend(Backend):
    name = "aoti"

    def __init__(self, model, device: str = "auto"):
        self.package = AotiModel(model, device)
        self.info = self.package.info
        self.device = self.package.device
        self.max_batch = self.package.max_batch
        self.tile_sizes = self.package.tile_sizes

    def run(self, tiles):
        return self.package.run(tiles)


register_backend("aoti", AOTIBackend)
