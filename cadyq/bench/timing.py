"""Inputs (the HR image, its LR, the tiles), the timed runs, and the whole-image figures."""
from __future__ import annotations

import time
from collections.abc import Callable

import numpy as np
import torch

from ..errors import ImageError
from .configs import Config
from .settings import BenchSettings, latency_stats

# ---- inputs -------------------------------------------------------------------------------------------
def load_hr(image=None) -> tuple[np.ndarray, str]:
    """The HR image (uint8 HxWx3) and its name: a path, an HxWx3 array, or None for skimage's astronaut."""
    from ..data.io import read_image

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
    from ..data.resize import bicubic_downscale, mod_crop

    if min(hr.shape[:2]) < 2 * scale:
        raise ImageError(f"the image ({hr.shape[1]}x{hr.shape[0]}) is too small for x{scale}")
    hr = np.ascontiguousarray(mod_crop(hr, scale))
    return hr, bicubic_downscale(hr, scale)


def bench_tiles(lr: np.ndarray, settings: BenchSettings) -> torch.Tensor:
    """`batch` LR tiles [N,3,t,t] float32 in [0,255] of the image's tile grid, picked with the seed."""
    from ..data.io import to_tensor
    from ..tiling import iter_batches, plan_tiles

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
        self.sr: torch.Tensor | None = None

    def step(self, record: bool) -> None:
        if self.cuda:
            self._step_cuda(record)
            return
        t0 = time.perf_counter()
        sr, bits = self.backend.run(self.dev_tiles)
        dt = time.perf_counter() - t0
        if record:
            self.times["latency"].append(dt * 1e3)
            self.wall += dt
            self.bits, self.sr = bits, sr

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
            self.bits, self.sr = bits, sr

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

    def psnr_against(self, reference: torch.Tensor) -> float:
        """PSNR (dB, RGB, 8-bit output as written) of the last timed SR tiles against `reference`'s."""
        a = self.sr.detach().float().cpu().clamp(0, 255).round()
        b = reference[: a.shape[0]].float().cpu().clamp(0, 255).round()
        mse = float(((a - b) ** 2).mean())
        return float("inf") if mse == 0 else 10 * np.log10(255.0 ** 2 / mse)


def time_configs(configs: list[Config], tiles: torch.Tensor, settings: BenchSettings,
                 progress: Callable[[str], None] | None = None, reference: torch.Tensor | None = None) -> list[dict]:
    """Warm-up, then timed iterations of every configuration: interleaved round by round (background
    load hits every configuration alike), or sequential (each one's warm-up and iterations in a block).
    `reference`: the fp32 model's SR of `tiles`; each result then has its PSNR against it."""
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
    results = [r.result() for r in runners]
    if reference is not None:
        for r, out in zip(runners, results):
            out["psnr_vs_fp32_tiles_db"] = r.psnr_against(reference)
    return results


def image_figures(config: Config, hr: np.ndarray, lr: np.ndarray, settings: BenchSettings, batch: int) -> dict:
    """Whole-image figures of one configuration through the Upscaler."""
    from ..data.resize import imresize
    from ..metrics import psnr, ssim
    from ..runtime import Upscaler

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
