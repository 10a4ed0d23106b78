"""`Upscaler`: tile an image, run the tiles in batches through a backend, stitch, report bits."""
from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

from ..data.io import Image, from_tensor, read_image, to_tensor
from ..errors import BackendError, ImageError
from ..quant import fqr as mean_bits
from ..tiling import Stitcher, TileGrid, iter_batches, plan_tiles, tile_map
from .backend import Backend, create_backend


@dataclass
class UpscaleResult:
    image: Image  # the SR image (same bit depth, alpha and colour mode as the input)
    bit_map: torch.Tensor  # [tiles_y, tiles_x, L] bit-widths chosen per tile and layer
    fqr: float  # mean bit-width over tiles and layers
    bitops: float  # BitOPs of the quantized convs over all tiles (overlaps included)
    grid: TileGrid
    timings: dict[str, float] = field(default_factory=dict)  # seconds

    @property
    def array(self) -> np.ndarray:
        return self.image.rgb


class Upscaler:
    """cadyq.Upscaler(model, backend="torch", device="auto", tile=96, overlap=6, batch=64).

    `model`: an nn.Module, a checkpoint (.safetensors, or a foreign .pt/.pth with its metadata
    known), an exported .onnx, an .engine, or a zoo name. backend: torch (fake quantization, the
    reference), native (the integer program on INT8 kernels), onnxruntime, tensorrt.
    `backend_options` go to the backend (native: float_precision="auto"|"fp32"|"bf16")."""

    def __init__(self, model, backend: str = "auto", device: str = "auto", tile: int = 96, overlap: int = 6,
                 batch: int = 64, protocol: str = "shift", backend_options: dict | None = None):
        options = dict(backend_options or {})
        if backend == "onnxruntime" and isinstance(model, nn.Module):
            options.setdefault("tile", tile)  # the module is exported for this tile size
        self.backend: Backend = (model if isinstance(model, Backend)
                                 else create_backend(backend, model, device, **options))
        if batch < 1:
            raise BackendError("batch must be at least 1")
        if self.backend.tile_sizes is not None and protocol == "official":
            raise BackendError("the official protocol has tiles of several sizes; this backend takes one tile size")
        if self.backend.tile_sizes is not None and self.backend.tile_sizes != (tile, tile):
            raise BackendError(f"this model takes {self.backend.tile_sizes} tiles, not {tile}x{tile}; pass --tile accordingly")
        plan_tiles(tile, tile, tile, overlap, protocol)  # validates the geometry now, not on the first image
        self.tile, self.overlap, self.protocol = tile, overlap, protocol
        self.batch = min(batch, self.backend.max_batch or batch)

    @property
    def scale(self) -> int:
        return self.backend.info.scale

    def upscale(self, image, progress: Callable[[int, int], None] | None = None) -> UpscaleResult:
        """image: a path, an `Image`, or an HxWx3 uint8/uint16 array. `progress(done, total)` is
        called after each batch of tiles, and with done = 0 before the first when there is more than one batch."""
        t0 = time.perf_counter()
        img = _as_image(image)
        t_decode = time.perf_counter() - t0
        sr, bits, grid, timings = self._run(to_tensor(img.rgb), exact=img.bit_depth == 16, progress=progress)
        alpha = None
        if img.alpha is not None:  # upscaled on its own, bicubic: the network is RGB only
            a = to_tensor(img.alpha[..., None])[None]
            alpha = from_tensor(F.interpolate(a, scale_factor=self.scale, mode="bicubic", align_corners=False)[0],
                                img.bit_depth)[..., 0]
        out = Image(from_tensor(sr, img.bit_depth), alpha, img.bit_depth, img.gray, img.icc_profile, img.exif, img.source_mode)
        info = self.backend.info
        ops = sum(float(info.bitops(bits[i : i + 1], *grid.tile_shape(i)).sum()) for i in range(grid.n_tiles))
        timings = {"decode": t_decode, **timings, "total": time.perf_counter() - t0}
        return UpscaleResult(out, tile_map(grid, bits), mean_bits(bits), ops, grid, timings)

    def _run(self, lr: torch.Tensor, exact: bool = False, progress=None):
        # 8-bit output is rounded per tile and stitched as uint8 (a quarter of the memory of float)
        h, w = lr.shape[1], lr.shape[2]
        # a strip (one side shorter than a tile, the other not) runs in tiles of its own height or width instead of
        # tiles padded to the full size: in proportion to its pixels
        shrink = self.backend.tile_sizes is None and min(h, w) < self.tile <= max(h, w)
        grid = plan_tiles(h, w, self.tile, self.overlap, self.protocol, shrink=shrink)
        dev = self.backend.device
        # on a GPU the frame is cut and stitched there: one upload of the LR, one download of the SR
        on = dev if dev.type == "cuda" else torch.device("cpu")
        lr = lr.to(on)
        stitcher = Stitcher(grid, self.scale, channels=3, dtype=torch.float32 if exact else torch.uint8, device=on)
        bits = torch.empty(grid.n_tiles, self.backend.info.n_layers, device=on)
        t_infer = t_stitch = 0.0
        done = 0
        if progress is not None and grid.n_tiles > self.batch:  # a bar can time the first batch too
            progress(0, grid.n_tiles)
        for idx, tiles in iter_batches(lr, grid, self.batch):
            t = time.perf_counter()
            sr, b = self.backend.run(tiles.to(dev, non_blocking=True).float())
            if not torch.isfinite(sr).all():
                raise BackendError(f"the {self.backend.name} backend returned NaN/Inf; the model or engine is broken")
            sr = sr.clamp(0, 255)
            sr = (sr if exact else sr.round().to(torch.uint8)).to(on)
            t_infer += time.perf_counter() - t
            t = time.perf_counter()
            stitcher.add(idx, sr)
            bits[idx] = b.float().to(on)
            t_stitch += time.perf_counter() - t
            done += len(idx)
            if progress is not None:
                progress(done, grid.n_tiles)
        return stitcher.result().float().cpu(), bits.cpu(), grid, {"inference": t_infer, "stitch": t_stitch}


def _as_image(image) -> Image:
    if isinstance(image, Image):
        return image
    if isinstance(image, (str, Path)):
        return read_image(image)
    if isinstance(image, np.ndarray):
        if image.ndim == 2:
            image = np.repeat(image[..., None], 3, axis=2)
        if image.ndim != 3 or image.shape[2] != 3 or image.dtype not in (np.uint8, np.uint16):
            raise ImageError(f"expected an HxWx3 uint8/uint16 array, got {image.dtype} {image.shape}")
        return Image(np.ascontiguousarray(image), None, 16 if image.dtype == np.uint16 else 8, False, None, None, "RGB")
    raise ImageError(f"cannot upscale a {type(image).__name__}; pass a path, a cadyq Image or an HxWx3 array")
