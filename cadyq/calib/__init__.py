"""Post-training calibration: clip values of every activation quantizer from a calibration set.

    model = calibrate(fp32_model, tiles, target="pams8", method="mse")      # PTQ: no training
    model = calibrate(fp32_model, tiles, target="cadyq")                    # initial clips of the 4/6/8 candidates
    model = calibrate(fp32_model, tiles, target="gdq")                      # ... and Granular-DQ's E2B thresholds

For each quantizer the inputs it sees on the calibration tiles (the fp32 path: quantizers pass
activations through while observing) give |x|, from which each candidate's clip value a is
- "max": the mean over tiles of the per-tile max |x| (PAMS's warm start, `observe`);
- "percentile": the `percentile` (default 99.99) of |x| over all observed elements;
- "mse": the a of a 100-point grid over (0, max |x|] minimising the mean squared error of
  round(clamp(x, -a, a) / a * s) / s * a against x, per candidate bit-width (fewer bits, smaller a).
Elements are subsampled (at most `samples` per quantizer and batch) to bound memory. The selectors
of cadyq keep their initialisation (all tiles at the highest bit-width until trained); Granular-DQ's
thresholds are the quantiles of the calibration tiles' entropy.
"""
from __future__ import annotations

import math
from collections.abc import Callable, Iterable

import torch
import torch.nn as nn

from ..errors import CadyqError
from ..quant import ActQuant, BitSelector, all_quantizers, quant_config
from ..quant.ops import fake_quant, levels

CALIB_METHODS = ("max", "percentile", "mse")
TARGETS = ("pams8", "cadyq", "gdq")


class _Collector:
    """Per quantizer: running mean of per-tile max |x|, global max, and a subsample of |x|."""

    def __init__(self, samples: int, gen: torch.Generator):
        self.samples, self.gen = samples, gen
        self.max_sum, self.tiles, self.max = 0.0, 0, 0.0
        self.values: list[torch.Tensor] = []

    def add(self, x: torch.Tensor) -> None:
        a = x.detach().float().abs().flatten(1)
        per_tile = a.amax(1)
        self.max_sum += float(per_tile.sum())
        self.tiles += a.shape[0]
        self.max = max(self.max, float(per_tile.max()))
        flat = a.flatten()
        if flat.numel() > self.samples:
            flat = flat[torch.randint(0, flat.numel(), (self.samples,), generator=self.gen)]
        self.values.append(flat.cpu())

    def clip(self, method: str, bits: int, percentile: float) -> float:
        if method == "max":
            return self.max_sum / max(self.tiles, 1)
        v = torch.cat(self.values)
        if method == "percentile":
            return float(torch.quantile(v[:16_000_000], percentile / 100.0))
        return mse_clip(v, bits, self.max)


def mse_clip(abs_values: torch.Tensor, bits: int, hi: float, points: int = 100) -> float:
    """The clip value of a grid over (0, hi] with the least mean squared quantization error of |x|."""
    if hi <= 0:
        return 1e-8
    x = abs_values.float()
    s = levels(bits)
    best, best_err = hi, math.inf
    for i in range(1, points + 1):
        a = torch.tensor(hi * i / points)
        err = float((fake_quant(x, a, s) - x).pow(2).mean())
        if err < best_err:
            best, best_err = float(a), err
    return best


@torch.no_grad()
def calibrate(model: nn.Module, tiles: Iterable[torch.Tensor], target: str = "pams8", method: str = "max",
              bits=None, percentile: float = 99.99, samples: int = 20_000,
              progress: Callable[[int], None] | None = None, seed: int = 0) -> nn.Module:
    """A new `target` model (pams8, cadyq or gdq) with `model`'s weights and clip values calibrated on
    `tiles` (an iterable of [N,3,h,w] float batches in [0,255]); `model` is not changed.
    bits: the candidates (pams8: (8,) unless given, e.g. (6,) for a 6-bit PTQ)."""
    from ..checkpoint import build, metadata, transfer_state

    if target not in TARGETS:
        raise CadyqError(f"unknown calibration target {target!r}; choose one of {', '.join(TARGETS)}")
    if method not in CALIB_METHODS:
        raise CadyqError(f"unknown calibration method {method!r}; choose one of {', '.join(CALIB_METHODS)}")
    if not 0 < percentile <= 100:
        raise CadyqError(f"--percentile must be in (0, 100], got {percentile}")
    meta = metadata(model)
    same = meta["method"] == target
    meta.update(method=target, mode="full")
    if bits is not None:
        meta["bits"] = list(bits)
    elif not same or target == "pams8":
        meta["bits"] = {"pams8": [8], "cadyq": [4, 6, 8], "gdq": [4, 5, 6, 8]}[target]
    if target == "pams8" and len(meta["bits"]) != 1:
        raise CadyqError(f"a pams8 model has one bit-width; got {meta['bits']}")
    if target == "pams8" and meta["bits"] != [8]:  # PAMS at another bit-width: CADyQ's fixed-bit mode
        meta.update(method="cadyq", mode="fixed")
    dst = build(meta)
    state = {k: v for k, v in model.state_dict().items() if not k.endswith("alpha")}
    transfer_state(dst, state)
    dst.eval()
    gen = torch.Generator().manual_seed(seed)
    quants = all_quantizers(dst)
    collectors = {id(q): _Collector(samples, gen) for q in quants}
    hooks = [q.register_forward_pre_hook(lambda q, a: collectors[id(q)].add(a[0])) for q in quants]
    for q in quants:  # pass activations through: calibration sees the float network's activations
        q.observing = True
    gdq = getattr(dst, "gdq", None)
    if gdq is not None:
        gdq.observing = True
    n = 0
    try:
        for batch in tiles:
            dst(batch.float())
            n += batch.shape[0]
            if progress is not None:
                progress(batch.shape[0])
    finally:
        for h in hooks:
            h.remove()
        for q in quants:
            q.observing = False
        if gdq is not None:
            gdq.observing = False
            gdq.finish_observing()
    if n == 0:
        raise CadyqError("no calibration tiles: the data folder gave no images")
    for q in quants:
        c = collectors[id(q)]
        if isinstance(q, ActQuant):
            q.alpha.fill_(max(c.clip(method, q.bits, percentile), 1e-8))
        elif isinstance(q, BitSelector):
            for k, b in enumerate(q.bits.tolist()):
                q.alpha[k] = max(c.clip(method, int(b), percentile), 1e-8)
    dst.calibration = {"method": method, "tiles": n, "percentile": percentile if method == "percentile" else None,
                       "source_method": quant_config(model).method}
    return dst


@torch.no_grad()
def calibrate_upsampler(model: nn.Module, tiles: Iterable[torch.Tensor], method: str = "mse", percentile: float = 99.99,
                        samples: int = 20_000, seed: int = 0) -> nn.Module:
    """A copy of the quantized `model` with 8-bit clip values for its upsampler convs' inputs
    (`upsampler_clips`, saved in its metadata), observed on `tiles` through the model itself: what
    `lower(model, int8_upsampler=True)` needs. Its other weights and clip values are kept as they are."""
    import copy

    from ..quant.plans import float_tail_convs

    if method not in CALIB_METHODS:
        raise CadyqError(f"unknown calibration method {method!r}; choose one of {', '.join(CALIB_METHODS)}")
    if quant_config(model).method == "fp32":
        raise CadyqError("the INT8 upsampler is an option of quantized models; calibrate the fp32 model to pams8 first")
    paths = float_tail_convs(model)
    if not paths:
        raise CadyqError(f"{model.config.name} has no upsampler convs the lowering can quantize")
    dst = copy.deepcopy(model).eval()
    gen = torch.Generator().manual_seed(seed)
    collectors = {p: _Collector(samples, gen) for p in paths}
    hooks = [dst.get_submodule(p).register_forward_pre_hook(lambda m, a, p=p: collectors[p].add(a[0])) for p in paths]
    n = 0
    try:
        for batch in tiles:
            dst(batch.float())
            n += batch.shape[0]
    finally:
        for h in hooks:
            h.remove()
    if n == 0:
        raise CadyqError("no calibration tiles: the data folder gave no images")
    dst.upsampler_clips = {p: max(c.clip(method, 8, percentile), 1e-8) for p, c in collectors.items()}
    return dst


def photo_tiles(folder, scale: int, tile: int = 96, batch: int = 16, max_tiles: int | None = None, lr: bool = False):
    """Batches of LR tiles from a folder of images (HR photos bicubic-downscaled by `scale`, or taken as LR
    with `lr`); also returns the number of tiles it will give."""
    from ..data.io import to_tensor
    from ..tiling import iter_batches, plan_tiles

    lrs = [to_tensor(im) for im in _lr_images(folder, scale, lr)]
    grids = [plan_tiles(t.shape[1], t.shape[2], tile, 0) for t in lrs]
    total = sum(g.n_tiles for g in grids)
    total = min(total, max_tiles) if max_tiles else total

    def gen():
        left = total
        for t, g in zip(lrs, grids):
            for _, tiles in iter_batches(t, g, batch):
                if left <= 0:
                    return
                tiles = tiles[:left]
                left -= tiles.shape[0]
                yield tiles.float()
    return gen(), total


def _lr_images(folder, scale: int, lr: bool) -> list:
    """The LR (HxWx3 uint8) of every image of a folder: HR photos bicubic-downscaled by `scale`, or as they are with
    `lr` (16-bit images rounded to 8 bits)."""
    import numpy as np

    from ..data.io import list_images, read_image
    from ..data.photos import refuse_report
    from ..data.resize import bicubic_downscale, mod_crop

    refuse_report(folder, use="calibrate on")
    images = list_images([folder])
    if not images:
        raise CadyqError(f"{folder}: no images to calibrate on")
    out = []
    for path in images:
        rgb = read_image(path).rgb
        if rgb.dtype != np.uint8:
            rgb = np.round(rgb / 257.0).astype(np.uint8)
        out.append(rgb if lr else bicubic_downscale(np.ascontiguousarray(mod_crop(rgb, scale)), scale))
    return out


def random_tiles(folder, scale: int, n: int, tile: int = 96, seed: int = 0, lr: bool = False) -> torch.Tensor:
    """n LR tiles [n,3,tile,tile] (float, 0..255) at seeded positions spread over a folder's photos (HR photos
    bicubic-downscaled by `scale`, or LR with `lr`); photos whose LR is smaller than a tile are left out."""
    import numpy as np

    from ..data.io import to_tensor

    lrs = [im for im in _lr_images(folder, scale, lr) if min(im.shape[:2]) >= tile]
    if not lrs:
        raise CadyqError(f"{folder}: no image whose LR holds a {tile}-px tile")
    rng = np.random.default_rng(seed)
    out = []
    for i in range(n):
        img = lrs[i % len(lrs)]
        y, x = rng.integers(0, img.shape[0] - tile + 1), rng.integers(0, img.shape[1] - tile + 1)
        out.append(to_tensor(np.ascontiguousarray(img[y:y + tile, x:x + tile])))
    return torch.stack(out).float()
