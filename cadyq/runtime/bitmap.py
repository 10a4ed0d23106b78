"""Colour picture of a bit map: each HR pixel gets the colour of the mean bit-width of the tile
that produced it (blue = fewest bits, red = most), blended over the SR image's luma; `with_legend`
adds a strip below it that names the colours' bit-widths and gives the image's FQR."""
from __future__ import annotations

import numpy as np
import torch

from ..tiling import TileGrid

_PALETTE = np.array([[40, 80, 230], [40, 200, 90], [240, 200, 40], [230, 50, 40]], dtype=np.float64)
_TINT, _LUMA = 0.55, 0.45  # blend weights of the picture


def colour(bits: np.ndarray, lo: float, hi: float) -> np.ndarray:
    """bits (any shape) -> RGB float in [0,255], a blue-green-yellow-red ramp over [lo, hi]."""
    t = np.clip((np.asarray(bits, dtype=np.float64) - lo) / max(hi - lo, 1e-9), 0, 1) * (len(_PALETTE) - 1)
    i = np.minimum(t.astype(int), len(_PALETTE) - 2)
    f = (t - i)[..., None]
    return _PALETTE[i] * (1 - f) + _PALETTE[i + 1] * f


def render_bit_map(bit_map: torch.Tensor, grid: TileGrid, scale: int, sr_rgb: np.ndarray,
                   candidates: tuple[int, ...]) -> np.ndarray:
    """uint8 HxWx3 image of the SR size."""
    per_tile = bit_map.float().mean(-1).numpy()  # [rows, cols]
    by, bx = grid.bounds(scale)
    tint = (_TINT * colour(per_tile, min(candidates), max(candidates))).astype(np.float32)
    # tiles own rectangles: repeat each tile's colour over its rows, then its columns (no per-pixel gather)
    tint = np.repeat(np.repeat(tint, np.diff(by), axis=0), np.diff(bx), axis=1)
    rgb = sr_rgb[..., :3]
    w = np.array([0.299, 0.587, 0.114], np.float32) * (_LUMA / (257.0 if rgb.dtype == np.uint16 else 1.0))
    luma = rgb[..., 0] * w[0] + rgb[..., 1] * w[1] + rgb[..., 2] * w[2]
    tint += luma[..., None]
    return np.clip(np.rint(tint, out=tint), 0, 255).astype(np.uint8)


def with_legend(picture: np.ndarray, candidates: tuple[int, ...], fqr: float | None = None) -> np.ndarray:
    """`picture` with a strip below it: the colour ramp with each candidate bit-width marked, and the FQR.
    The picture keeps its pixels (row y, column x of the SR image). The strip is one line when the
    picture is wide enough, else two (ramp, then text), and never narrower than it needs: a narrow
    picture is padded on the right."""
    from PIL import Image as PILImage
    from PIL import ImageDraw, ImageFont

    h, w = picture.shape[:2]
    size = int(np.clip(w / 60, 11, 40))  # font size: readable at every picture width
    font = _font(ImageFont, size)
    probe = ImageDraw.Draw(PILImage.new("RGB", (1, 1)))

    def text_w(s: str) -> int:
        return int(np.ceil(probe.textlength(s, font=font))) if s else 0

    pad = size // 2
    text = "bits per tile (mean over layers)" + (f"   FQR {fqr:.2f} bits" if fqr is not None else "")
    bar_w = max(8 * size, min(w // 3, 40 * size))
    one_line = 2 * pad + bar_w + 2 * pad + text_w(text) <= w
    if not one_line:
        bar_w = max(6 * size, w - 2 * pad)
        text = f"FQR {fqr:.2f} bits per tile and layer" if fqr is not None else "bits per tile"
    strip_h = (3 * size if one_line else 4 * size) + 2 * pad
    width = max(w, 2 * pad + (bar_w + 2 * pad + text_w(text) if one_line else max(bar_w, text_w(text))))
    canvas = PILImage.new("RGB", (width, h + strip_h), (24, 24, 24))
    canvas.paste(PILImage.fromarray(np.ascontiguousarray(picture[..., :3])), (0, 0))
    draw = ImageDraw.Draw(canvas)
    fg = (235, 235, 235)
    lo, hi = min(candidates), max(candidates)
    x, y = pad, h + pad
    ramp = colour(np.linspace(lo, hi, bar_w), lo, hi)
    canvas.paste(PILImage.fromarray(np.repeat(ramp[None].round().astype(np.uint8), int(1.2 * size), axis=0)), (x, y))
    for b in sorted(set(candidates)):  # a tick and the bit-width under the ramp, where its colour is
        bx = x + (bar_w // 2 if hi == lo else round((b - lo) / (hi - lo) * (bar_w - 1)))
        draw.line([(bx, y), (bx, y + int(1.5 * size))], fill=fg, width=max(1, size // 10))
        label = str(b)
        lx = min(max(bx - text_w(label) // 2, x), x + bar_w - text_w(label))
        draw.text((lx, y + int(1.55 * size)), label, fill=fg, font=font)
    if one_line:
        draw.text((x + bar_w + 2 * pad, y + size // 4), text, fill=fg, font=font)
    else:
        draw.text((x, y + int(2.8 * size)), text, fill=fg, font=font)
    return np.asarray(canvas)


def _font(ImageFont, size: int):
    try:
        return ImageFont.load_default(size=size)  # scalable with FreeType (Pillow >= 10.1)
    except (TypeError, OSError, ImportError):
        return ImageFont.load_default()
