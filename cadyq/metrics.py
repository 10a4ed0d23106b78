"""PSNR and SSIM as published SR tables compute them (MATLAB conventions), in torch float64.

Images are numpy ``H x W x 3`` / ``H x W`` (as decoded) or torch ``[3, H, W]`` / ``[1, 3, H, W]``
/ ``[H, W]``, with values in [0, 255]. A single-channel image is taken as luma already. The SR
image is expected already clamped to [0, 255] and rounded by the caller (as when it is saved as
8-bit); the metrics do not quantize it. ``shave = scale`` px are removed from every border.

Luma is MATLAB ``rgb2ycbcr``: ``Y = 16 + (65.481 R + 128.553 G + 24.966 B) / 255``. The official
CADyQ code (EDSR's ``calc_psnr``) uses ``[65.738, 129.057, 25.064] / 256`` on the difference; those
are the same coefficients rounded (ratio 1 + 2e-6), so PSNR differs by ~1e-5 dB. Its ``calc_ssim``
uses the same numbers over 255 (a 0.4 % gain on Y), which moves SSIM slightly; we do not copy it.
"""
from __future__ import annotations

import math

import numpy as np
import torch
import torch.nn.functional as F

from .errors import ImageError
from .sizes import size_text

_Y_COEF = (65.481, 128.553, 24.966)


def _as_tensor(img) -> torch.Tensor:
    """Any accepted layout -> float64 CPU tensor [C, H, W] (C = 1 or 3)."""
    if isinstance(img, np.ndarray):
        t = torch.from_numpy(np.asarray(img, dtype=np.float64).copy())
        if t.dim() == 3 and t.shape[-1] in (1, 3):
            t = t.permute(2, 0, 1)
        elif t.dim() != 2:
            raise ImageError(f"expected a numpy image H x W x 3 or H x W, got shape {img.shape}")
    elif isinstance(img, torch.Tensor):
        t = img.detach().to("cpu", torch.float64)
        if t.dim() == 4 and t.shape[0] == 1:
            t = t[0]
        if not (t.dim() == 2 or (t.dim() == 3 and t.shape[0] in (1, 3))):
            raise ImageError(f"expected a tensor [3, H, W], [1, 3, H, W] or [H, W], got shape {tuple(img.shape)}")
    else:
        raise ImageError(f"expected a numpy array or torch tensor, got {type(img).__name__}")
    return t if t.dim() == 3 else t[None]


def rgb_to_y(img):
    """BT.601 luma (MATLAB ``rgb2ycbcr``) of RGB values in [0, 255], in float64.

    numpy ``H x W x 3`` -> ``H x W``; torch ``[3, H, W]`` -> ``[H, W]``, ``[N, 3, H, W]`` -> ``[N, H, W]``.
    """
    if isinstance(img, np.ndarray):
        if img.ndim != 3 or img.shape[-1] != 3:
            raise ImageError(f"expected an RGB numpy image H x W x 3, got shape {img.shape}")
        x = img.astype(np.float64)
        return 16.0 + (x[..., 0] * _Y_COEF[0] + x[..., 1] * _Y_COEF[1] + x[..., 2] * _Y_COEF[2]) / 255.0
    if isinstance(img, torch.Tensor):
        if img.dim() not in (3, 4) or img.shape[-3] != 3:
            raise ImageError(f"expected an RGB tensor [3, H, W] or [N, 3, H, W], got shape {tuple(img.shape)}")
        r, g, b = img.to(torch.float64).unbind(-3)
        return 16.0 + (r * _Y_COEF[0] + g * _Y_COEF[1] + b * _Y_COEF[2]) / 255.0
    raise ImageError(f"expected a numpy array or torch tensor, got {type(img).__name__}")


def _prepare(sr, hr, scale: int, y_only: bool) -> tuple[torch.Tensor, torch.Tensor]:
    a, b = _as_tensor(sr), _as_tensor(hr)
    if a.shape != b.shape:
        raise ImageError(f"SR is {tuple(a.shape)} (C, H, W) but HR is {tuple(b.shape)}; crop HR to a multiple of "
                         f"the scale (mod-crop) and compare images with the same channels")
    if scale < 0:
        raise ImageError(f"scale (border shave) must be >= 0, got {scale}")
    if y_only and a.shape[0] == 3:
        a, b = rgb_to_y(a)[None], rgb_to_y(b)[None]
    if scale:
        a, b = a[:, scale:-scale, scale:-scale], b[:, scale:-scale, scale:-scale]
    if a.numel() == 0:
        raise ImageError(f"the image ({tuple(_as_tensor(hr).shape[-2:])}) is too small to shave {scale} px per border")
    return a, b


def psnr(sr, hr, scale: int, y_only: bool = True, data_range: float = 255.0) -> float:
    """PSNR in dB after shaving ``scale`` px per border, on Y (or all RGB channels). Identical -> ``inf``.

    ``sr`` must already be clamped and rounded to 8-bit values by the caller.
    """
    a, b = _prepare(sr, hr, scale, y_only)
    mse = torch.mean((a - b) ** 2).item()
    return math.inf if mse == 0 else 10.0 * math.log10(data_range**2 / mse)


def _gaussian(size: int = 11, sigma: float = 1.5) -> torch.Tensor:
    x = torch.arange(size, dtype=torch.float64) - (size - 1) / 2
    g = torch.exp(-(x**2) / (2 * sigma**2))
    return g / g.sum()


def ssim(sr, hr, scale: int, y_only: bool = True) -> float:
    """Mean SSIM (Wang et al. 2004, MATLAB ``ssim_index``): 11x11 Gaussian window (sigma 1.5),
    'valid' filtering, C1 = (0.01*255)^2, C2 = (0.03*255)^2, no downsampling; on Y after shaving
    ``scale`` px per border, or the mean over RGB channels when ``y_only=False``.
    """
    a, b = _prepare(sr, hr, scale, y_only)
    if min(a.shape[-2:]) < 11:
        raise ImageError(f"SSIM needs at least 11x11 px after shaving {scale} px per border, got "
                         f"{size_text(*a.shape[-2:])}; use a larger image")
    g = _gaussian()
    c = a.shape[0]
    wy, wx = g.view(1, 1, 11, 1).expand(c, 1, 11, 1), g.view(1, 1, 1, 11).expand(c, 1, 1, 11)

    def blur(x):  # separable 'valid' Gaussian, per channel
        return F.conv2d(F.conv2d(x[None], wy, groups=c), wx, groups=c)[0]

    c1, c2 = (0.01 * 255) ** 2, (0.03 * 255) ** 2
    mu_a, mu_b = blur(a), blur(b)
    var_a, var_b = blur(a * a) - mu_a**2, blur(b * b) - mu_b**2
    cov = blur(a * b) - mu_a * mu_b
    s = ((2 * mu_a * mu_b + c1) * (2 * cov + c2)) / ((mu_a**2 + mu_b**2 + c1) * (var_a + var_b + c2))
    return s.mean(dim=(1, 2)).mean().item()
