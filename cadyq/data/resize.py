"""MATLAB-compatible bicubic `imresize`: how DIV2K's and the benchmark sets' LR images were made.

Keys cubic kernel (a = -0.5), kernel stretched by 1/scale when downscaling (antialiasing), input
indices mirrored at the borders (`[1..n, n..1]` repeated), output size `ceil(in * scale)`, sampling
position `u = x/scale + 0.5*(1 - 1/scale)` for 1-based output x. Separable: one pass per axis,
the axis with the smaller scale first (MATLAB's `dimensionOrder`: `sort(scale)`, rows first on
ties). Mirroring is what MATLAB has done since about R2016; older releases (the 1992-2013 code)
clamped indices instead (replicated end pixels), which changes only the outermost few pixels.
"""
from __future__ import annotations

import math

import numpy as np
import torch

from ..sizes import size_text


def _cubic(x: np.ndarray) -> np.ndarray:
    ax = np.abs(x)
    ax2, ax3 = ax * ax, ax * ax * ax
    return ((1.5 * ax3 - 2.5 * ax2 + 1) * (ax <= 1)
            + (-0.5 * ax3 + 2.5 * ax2 - 4 * ax + 2) * ((ax > 1) & (ax <= 2)))


def contributions(in_len: int, out_len: int, scale: float, antialias: bool = True
                  ) -> tuple[np.ndarray, np.ndarray]:
    """Per output sample: weights [out_len, P] (float64, rows sum to 1) and 0-based input indices."""
    width = 4.0
    if scale < 1 and antialias:
        kernel, width = (lambda t: scale * _cubic(scale * t)), width / scale
    else:
        kernel = _cubic
    u = np.arange(1, out_len + 1, dtype=np.float64) / scale + 0.5 * (1 - 1 / scale)
    left = np.floor(u - width / 2)
    idx = left[:, None] + np.arange(math.ceil(width) + 2)          # 1-based, may run off the ends
    w = kernel(u[:, None] - idx)
    w = w / w.sum(axis=1, keepdims=True)
    mirror = np.concatenate([np.arange(in_len), np.arange(in_len)[::-1]])
    idx = mirror[np.mod(idx.astype(np.int64) - 1, 2 * in_len)]
    keep = np.any(w != 0, axis=0)                                    # MATLAB drops all-zero columns
    return w[:, keep], idx[:, keep]


def _resize_axis(x, axis: int, w: np.ndarray, idx: np.ndarray):
    """out[..., i, ...] = sum_p w[i, p] * x[..., idx[i, p], ...] along `axis` (one gather per tap)."""
    shape = [1] * x.ndim
    shape[axis] = -1
    out = None
    for p in range(w.shape[1]):
        if isinstance(x, torch.Tensor):
            term = x.index_select(axis, torch.from_numpy(idx[:, p]).to(x.device)) * \
                torch.from_numpy(w[:, p]).to(x.device, x.dtype).view(shape)
        else:
            term = np.take(x, idx[:, p], axis=axis) * w[:, p].reshape(shape)
        out = term if out is None else out + term
    return out


def _plan(in_hw: tuple[int, int], scale, size) -> tuple[tuple[int, int], tuple[float, float]]:
    if (scale is None) == (size is None):
        raise ValueError("give exactly one of scale and size")
    if scale is not None:
        if not scale > 0:
            raise ValueError(f"scale must be positive, got {scale}")
        s = float(scale)
        return (math.ceil(s * in_hw[0]), math.ceil(s * in_hw[1])), (s, s)
    oh, ow = (int(v) for v in size)
    if oh < 1 or ow < 1:
        raise ValueError(f"size must be positive, got {size}")
    return (oh, ow), (oh / in_hw[0], ow / in_hw[1])


def _imresize(x, axes: tuple[int, int], scale, size, antialias: bool, quantize: bool = False):
    in_hw = (x.shape[axes[0]], x.shape[axes[1]])
    if min(in_hw) < 1:
        raise ValueError(f"cannot resize an empty image of size {in_hw}")
    out_hw, scales = _plan(in_hw, scale, size)
    for d in sorted((0, 1), key=lambda d: scales[d]):              # stable: rows first on ties
        w, idx = contributions(in_hw[d], out_hw[d], scales[d], antialias)
        x = _resize_axis(x, axes[d], w, idx)
        if quantize:  # MATLAB's imresizemex returns the input class after each pass: uint8 rounding
            x = np.clip(np.floor(x + 0.5), 0, 255)
    return x


def imresize(x: np.ndarray | torch.Tensor, scale: float | None = None,
             size: tuple[int, int] | None = None, antialias: bool = True):
    """MATLAB `imresize(x, scale | [h w], 'bicubic')` on HxW / HxWxC numpy arrays or [..., H, W]
    tensors. Math in float64 for numpy (returns float64), in the tensor's float dtype for torch
    (float32 for integer tensors). No rounding or clipping: see `bicubic_downscale` for uint8."""
    if isinstance(x, torch.Tensor):
        if x.ndim < 2:
            raise ValueError(f"expected a [..., H, W] tensor, got shape {tuple(x.shape)}")
        x = x if x.is_floating_point() else x.float()
        return _imresize(x, (x.ndim - 2, x.ndim - 1), scale, size, antialias)
    x = np.asarray(x)
    if x.ndim not in (2, 3):
        raise ValueError(f"expected an HxW or HxWxC array, got shape {x.shape}")
    return _imresize(x.astype(np.float64), (0, 1), scale, size, antialias)


def bicubic_downscale(hr: np.ndarray, scale: int) -> np.ndarray:
    """uint8 HxW[xC] -> uint8 LR as MATLAB `imresize(hr, 1/scale, 'bicubic')` makes it: each pass
    rounds half away from zero and saturates to uint8, as MATLAB does for uint8 input. Output size
    is ceil(H/scale) x ceil(W/scale); `mod_crop` the HR first for exact x`scale` pairs."""
    if hr.dtype != np.uint8 or hr.ndim not in (2, 3):
        raise ValueError(f"expected an HxW or HxWxC uint8 array, got {hr.shape} {hr.dtype}")
    if int(scale) != scale or scale < 1:
        raise ValueError(f"scale must be a positive integer, got {scale}")
    if scale == 1:
        return hr.copy()
    out = _imresize(hr.astype(np.float64), (0, 1), 1.0 / scale, None, True, quantize=True)
    return np.ascontiguousarray(out.astype(np.uint8))


def mod_crop(img, scale: int):
    """Crop H and W down to multiples of `scale`, keeping the top-left corner. numpy HxW[xC] or
    torch [..., H, W]."""
    hax = img.ndim - 2 if isinstance(img, torch.Tensor) else 0
    h, w = img.shape[hax], img.shape[hax + 1]
    if h < scale or w < scale:
        raise ValueError(f"image of {size_text(h, w)} is smaller than the scale {scale}")
    h, w = h - h % scale, w - w % scale
    return img[..., :h, :w] if isinstance(img, torch.Tensor) else img[:h, :w]
