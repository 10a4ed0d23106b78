"""`Upscaler`: tile an image, run the tiles in batches through a backend, stitch, report bits."""
from __future__ import annotations

import time
import warnings
from collections import deque
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

from .. import interrupt
from ..data.io import Image, from_tensor, read_image, to_tensor
from ..errors import BackendError, ImageError, UntrainedModelWarning
from ..models.training import UNTRAINED_ADVICE, is_trained
from ..quant import fqr as mean_bits
from ..tiling import Stitcher, TileGrid, check_step, iter_batches, plan_tiles, tile_map
from .backend import Backend, create_backend, guess_backend, load_module


@dataclass
class UpscaleResult:
    image: Image  # the SR image (same bit depth, alpha and colour mode as the input)
    bit_map: torch.Tensor  # [tiles_y, tiles_x, L] bit-widths chosen per tile and layer
    fqr: float  # mean bit-width over tiles and layers
    bitops: float  # BitOPs of the quantized convs over all tiles (overlaps included)
    grid: TileGrid
    timings: dict[str, float] = field(default_factory=dict)  # seconds
    reused_tiles: int = 0  # tiles taken from the previous image (upscale_many's reuse), not run

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
        if isinstance(model, (str, Path)) and guess_backend(model) == "torch":
            model = load_module(model, backend)  # once: the backend runs it, and its training record is read here
        if isinstance(model, nn.Module) and is_trained(model) is False:
            warnings.warn(f"the model was never trained: {UNTRAINED_ADVICE}", UntrainedModelWarning, stacklevel=2)
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
        check_step(tile, overlap)
        self.tile, self.overlap, self.protocol = tile, overlap, protocol
        self.batch = min(batch, self.backend.max_batch or batch)

    @property
    def scale(self) -> int:
        return self.backend.info.scale

    def upscale(self, image, progress: Callable[[int, int], None] | None = None) -> UpscaleResult:
        """image: a path, an `Image`, or an HxWx3 uint8/uint16 array. `progress(done, total)` is
        called after each batch of tiles, and with done = 0 before the first when there is more than one batch."""
        return next(self._stream([image], progress))

    def upscale_many(self, images: Iterable, reuse: float | None = None) -> Iterator[UpscaleResult]:
        """The results of `images` (any iterable of what `upscale` takes, e.g. a video's frames), in order. The
        tiles of consecutive images fill the same batches, so small images and video frames keep the backend's
        batches full; an image is read from `images` only when its tiles are needed, so memory holds the images
        of about one batch whatever the length.

        reuse (video): a tile whose LR differs from the last one run at its position by at most `reuse` levels
        (mean |difference| over the tile, 0..255) takes that tile's SR and bits instead of running: static regions
        stay exactly still (no flicker from codec noise crossing the quantizers' steps) and cost nothing. The
        comparison is against the tile last run, not the previous image, so slow drift is caught."""
        if reuse is not None and reuse < 0:
            raise BackendError(f"reuse must be a non-negative number of levels, got {reuse}")
        return self._stream(images, None, reuse)

    def _stream(self, images: Iterable, progress, reuse: float | None = None) -> Iterator[UpscaleResult]:
        dev = self.backend.device
        on = dev if dev.type == "cuda" else torch.device("cpu")  # on a GPU, cut and stitch there
        source = iter(images)
        pending: deque[_Pending] = deque()
        batch: list[tuple[_Pending, int, torch.Tensor]] = []  # (image, tile index, LR tile)
        last_run: dict[int, tuple] = {}  # reuse: tile index -> (LR tile, SR tile, bits) of the tile last run there
        last_grid = None

        def run_batch():
            t = time.perf_counter()
            tiles = torch.stack([tile for _, _, tile in batch])
            sr, b = interrupt.call(self.backend.run, tiles.to(dev, non_blocking=True).float())  # off the main thread
            if not torch.isfinite(sr).all():
                raise BackendError(f"the {self.backend.name} backend returned NaN/Inf; the model or engine is broken")
            sr = sr.clamp(0, 255)
            seconds = time.perf_counter() - t
            k = 0
            while k < len(batch):  # consecutive tiles of one image go in together
                job = batch[k][0]
                n = next((m for m in range(k, len(batch)) if batch[m][0] is not job), len(batch)) - k
                job.add([i for _, i, _ in batch[k:k + n]], sr[k:k + n], b[k:k + n], seconds * n / len(batch), on)
                if reuse is not None:
                    for m in range(k, k + n):
                        last_run[batch[m][1]] = (batch[m][2], sr[m].clone(), b[m].clone())
                if progress is not None:
                    progress(job.done, job.grid.n_tiles)
                k += n
            batch.clear()

        while True:
            job = self._start(next(source, None), on)
            if job is None and not pending:
                break
            if job is not None:
                pending.append(job)
                if reuse is not None and last_grid != job.grid:  # another size: nothing to reuse
                    last_run.clear()
                    last_grid = job.grid
                if progress is not None and job.grid.n_tiles > self.batch:  # a bar can time the first batch too
                    progress(0, job.grid.n_tiles)
                for idx, tiles in iter_batches(job.lr, job.grid, self.batch):
                    for i, tile in zip(idx, tiles):
                        if reuse is not None and any(j == i for _, j, _ in batch):
                            run_batch()  # the tile before this one at its position is still queued: run it first
                        ref = last_run.get(i) if reuse is not None else None
                        if ref is not None and float((tile.float() - ref[0].float()).abs().mean()) <= reuse:
                            job.add([i], ref[1][None], ref[2][None], 0.0, on, reused=True)
                            continue
                        if batch and (len(batch) == self.batch or batch[-1][2].shape != tile.shape):
                            run_batch()
                        batch.append((job, i, tile))
                job.lr = None
            if job is None and batch:  # no more images: run what is left
                run_batch()
            while pending and pending[0].finished:
                yield pending.popleft().result(self)

    def _start(self, image, on) -> "_Pending | None":
        if image is None:
            return None
        t0 = time.perf_counter()
        img = _as_image(image)
        lr = to_tensor(img.rgb)
        h, w = lr.shape[1], lr.shape[2]
        # a strip (one side shorter than a tile, the other not) runs in tiles of its own height or width instead of
        # tiles padded to the full size: in proportion to its pixels
        shrink = self.backend.tile_sizes is None and min(h, w) < self.tile <= max(h, w)
        grid = plan_tiles(h, w, self.tile, self.overlap, self.protocol, shrink=shrink)
        return _Pending(img, lr.to(on), grid, self.scale, self.backend.info.n_layers, on, time.perf_counter() - t0)


class _Pending:
    """An image whose tiles are in flight: its stitcher, bits and timings until its last tile is back."""

    def __init__(self, img: Image, lr: torch.Tensor, grid: TileGrid, scale: int, n_layers: int, on, decode: float):
        self.img, self.lr, self.grid, self.t0 = img, lr, grid, time.perf_counter() - decode
        self.exact = img.bit_depth == 16  # 8-bit output is rounded per tile and stitched as uint8 (a quarter of float)
        self.stitcher = Stitcher(grid, scale, channels=3, dtype=torch.float32 if self.exact else torch.uint8, device=on)
        self.bits = torch.empty(grid.n_tiles, n_layers, device=on)
        self.done, self.timings = 0, {"decode": decode, "inference": 0.0, "stitch": 0.0}
        self.reused: set[int] = set()

    @property
    def finished(self) -> bool:
        return self.done == self.grid.n_tiles

    def add(self, idx: list[int], sr: torch.Tensor, bits: torch.Tensor, seconds: float, on, reused=False) -> None:
        t = time.perf_counter()
        if reused:
            self.reused.update(idx)
        self.stitcher.add(idx, (sr if self.exact else sr.round().to(torch.uint8)).to(on))
        self.bits[idx] = bits.float().to(on)
        self.done += len(idx)
        self.timings["inference"] += seconds
        self.timings["stitch"] += time.perf_counter() - t

    def result(self, up: "Upscaler") -> UpscaleResult:
        img, grid, s = self.img, self.grid, up.scale
        sr, bits = self.stitcher.result().float().cpu(), self.bits.cpu()
        alpha = None
        if img.alpha is not None:  # upscaled on its own, bicubic: the network is RGB only
            a = to_tensor(img.alpha[..., None])[None]
            alpha = from_tensor(F.interpolate(a, scale_factor=s, mode="bicubic", align_corners=False)[0],
                                img.bit_depth)[..., 0]
        out = Image(from_tensor(sr, img.bit_depth), alpha, img.bit_depth, img.gray, img.icc_profile, img.exif, img.source_mode)
        info = up.backend.info
        # reused tiles did not run: no operations
        ops = sum(float(info.bitops(bits[i : i + 1], *grid.tile_shape(i)).sum()) for i in range(grid.n_tiles)
                  if i not in self.reused)
        timings = {**self.timings, "total": time.perf_counter() - self.t0}
        return UpscaleResult(out, tile_map(grid, bits), mean_bits(bits), ops, grid, timings, len(self.reused))


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
