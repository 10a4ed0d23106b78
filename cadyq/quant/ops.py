"""The arithmetic of CADyQ: rounding, fake quantization, the tile gradient."""
from __future__ import annotations

import torch
import torch.nn.functional as F

GRAY = (0.299, 0.587, 0.114)
GRADIENT_SCALE = 1e3


class _RoundSTE(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x):
        return torch.round(x)

    @staticmethod
    def backward(ctx, g):
        return g


def ste_round(x: torch.Tensor) -> torch.Tensor:
    """round() forward, identity backward. Plain torch.round when no gradient is needed, so
    inference and export see one Round op."""
    if torch.is_grad_enabled() and x.requires_grad:
        return _RoundSTE.apply(x)
    return torch.round(x)


def levels(bits: int) -> int:
    """Positive levels of a symmetric b-bit quantizer: 2^(b-1) - 1 (127 at 8 bits)."""
    return 2 ** (bits - 1) - 1


def fake_quant(x: torch.Tensor, alpha: torch.Tensor, s) -> torch.Tensor:
    """round(clamp(x, -a, a) / a * s) / s * a, in this order of operations (the exported op and the
    kernels use the same one). alpha and s broadcast against x."""
    return ste_round(torch.maximum(torch.minimum(x, alpha), -alpha) / alpha * s) / s * alpha


def on_top_grid(x: torch.Tensor, alpha: torch.Tensor, s, k: torch.Tensor | None = None) -> tuple[torch.Tensor, ...]:
    """A dynamic quantizer at inference, as every executor computes it. Candidates (alpha[j], s[j]) are sorted by
    bits; the last is the top one (8 bits). The input is first rounded to the top candidate's grid, the 8-bit tensor
    an integer convolution writes before any choice is made; the chosen candidate re-quantizes that value, and the
    result is expressed on the top grid again, the one integer grid the next convolution reads whatever the choice:

        x_top = fq(x, a_T, s_T);   y = fq(fq(x_top, a_k, s_k), a_T, s_T)      (fq = fake_quant)

    For the top candidate y = x_top (the paper's 8-bit quantizer, unchanged); the 4- and 6-bit levels move by at
    most half an 8-bit step. Returns x_top, or with `k` [N] (the choice per tile) also y."""
    a_t, s_t = alpha[-1], s[-1]
    x_top = fake_quant(x, a_t, s_t)
    if k is None:
        return (x_top,)
    a_k, s_k = alpha[k].view(-1, 1, 1, 1), s[k].view(-1, 1, 1, 1)
    return x_top, fake_quant(fake_quant(x_top, a_k, s_k), a_t, s_t)


def snap_to_top_grid(alpha: torch.Tensor, s: torch.Tensor) -> torch.Tensor:
    """Clip values whose steps are odd multiples of the top candidate's: a_k' = s_k * g * m_k, m_k the odd integer
    nearest a_k / (s_k * g), g = a_T / s_T (the top clip unchanged; a clip moves by at most one multiple, about 9 % on
    the shipped models). Each level of a snapped candidate then lies on the 8-bit grid and each of its thresholds on a
    bin edge of that grid, so on_top_grid computes fake_quant(x, a_k', s_k) exactly: the papers' quantizer, with no
    ties for executors to break differently."""
    g = alpha[-1] / s[-1]
    m = 2 * torch.round((alpha[:-1] / (s[:-1] * g) - 1) / 2) + 1
    return torch.cat([torch.clamp(m, min=1) * s[:-1] * g, alpha[-1:]])


def quantize_weight(w: torch.Tensor, bits: int, per_channel: bool = False) -> torch.Tensor:
    """Symmetric max-abs weight quantization as PAMS/CADyQ: scale = max|w| (+1e-8), no clamp."""
    s = levels(bits)
    if per_channel:
        m = w.detach().abs().amax(dim=tuple(range(1, w.dim())), keepdim=True) + 1e-8
    else:
        m = w.detach().abs().max() + 1e-8
    return ste_round(w * s / m) * m / s


_SOBEL_X = torch.tensor([[-1.0, 0.0, 1.0], [-2.0, 0.0, 2.0], [-1.0, 0.0, 1.0]]) / 8.0


def tile_gradient(image: torch.Tensor, scale: float = GRADIENT_SCALE) -> torch.Tensor:
    """Mean absolute image gradient of each tile: [N,3,H,W] in [0,255] -> [N,2] = (|dx|, |dy|) * 1e3.

    Grayscale of image/255, normalized 3x3 Sobel (kernel/8) with replicate padding, as kornia's
    spatial_gradient(order=1) which the official code calls."""
    gray = (image / 255.0 * image.new_tensor(GRAY).view(1, 3, 1, 1)).sum(1, keepdim=True)
    kx = _SOBEL_X.to(image)
    kernel = torch.stack([kx, kx.t()]).unsqueeze(1)  # [2,1,3,3]: x then y
    grads = F.conv2d(F.pad(gray, (1, 1, 1, 1), mode="replicate"), kernel)
    return grads.abs().mean(dim=(2, 3)) * scale
