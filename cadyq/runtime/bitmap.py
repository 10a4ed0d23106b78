"""Colour picture of a bit map: each HR pixel gets the colour of the mean bit-width of the tile
that produced it (blue = fewest bits, red = most), blended over the SR image's luma."""
from __future__ import annotations

import numpy as np
import torch

from ..tiling import TileGrid

_PALETTE = np.array([[40, 80, 230], [40, 200, 90], [240, 200, 40], [230, 50, 40]], dtype=np.float64)


def colour(bits: np.ndarray, lo: float, hi: float) -> np.ndarray:
    """bits (any shape) -> RGB float in [0,255], a blue-green-yellow-red ramp over [lo, hi]."""
    t = np.clip((bits - lo) / max(hi - lo, 1e-9), 0, 1) * (len(_PALETTE) - 1)
    i = np.minimum(t.astype(int), len(_PALETTE) - 2)
    f = (t - i)[..., None]
    return _PALETTE[i] * (1 - f) + _PALETTE[i + 1] * f


def render_bit_map(bit_map: torch.Tensor, grid: TileGrid, scale: int, sr_rgb: np.ndarray,
                   candidates: tuple[int, ...]) -> np.ndarray:
    """uint8 HxWx3 image of the SR size."""
    per_tile = bit_map.float().mean(-1).numpy()  # [rows, cols]
    by, bx = grid.bounds(scale)
    rows = np.repeat(np.arange(grid.rows), np.diff(by))
    cols = np.repeat(np.arange(grid.cols), np.diff(bx))
    tint = colour(per_tile, min(candidates), max(candidates))[rows[:, None], cols[None, :]]
    luma = sr_rgb[..., :3].astype(np.float64) @ np.array([0.299, 0.587, 0.114]) / (257.0 if sr_rgb.dtype == np.uint16 else 1.0)
    out = 0.55 * tint + 0.45 * luma[..., None]
    return np.clip(out.round(), 0, 255).astype(np.uint8)
