"""Per-tile statistics, bit selection and quantization to int8 on channels_last tensors (Triton).

    stats = tile_stats(x)                                  [N, 2, C]: sum and sum of squares per tile and channel
    q, scale, bits, k = select_quantize(x, stats, g, W, b, alpha, levels, bits)      (mode "full")
    q, scale, bits, k = select_quantize(x, None, ..., k_in=k)                         (fixed / tile / layer)

sigma = sqrt((sum_sq - sum^2 / HW) / (HW - 1)) (unbiased, as torch.std); k = argmax(W @ [g, sigma] + b)
(first maximum); q = round(clamp(x, -a_k, a_k) / a_k * s_k) (half to even) as int8; scale = a_k / s_k.
The statistics usually come from the producing convolution's epilogue (conv_int8, stats=True), so
selection and quantization are one light pass: grid (N, blocks of the tile's elements), and every
program recomputes its tile's choice from the C statistics (no synchronisation, nothing to allocate).
"""
from __future__ import annotations

import torch
import triton
import triton.language as tl

from ..errors import BackendError

BLOCK = 2048


@triton.jit
def _stats(x_ptr, stats_ptr, HW, C, BLOCK_P: tl.constexpr, BLOCK_C: tl.constexpr):
    n, pb = tl.program_id(0), tl.program_id(1)
    p = pb * BLOCK_P + tl.arange(0, BLOCK_P)
    x_n = x_ptr + n.to(tl.int64) * HW * C
    for c0 in range(0, C, BLOCK_C):
        c = c0 + tl.arange(0, BLOCK_C)
        m = (p[:, None] < HW) & (c[None, :] < C)
        v = tl.load(x_n + p[:, None] * C + c[None, :], mask=m, other=0.0).to(tl.float32)
        tl.atomic_add(stats_ptr + n * 2 * C + c, tl.sum(v, axis=0), mask=c < C)
        tl.atomic_add(stats_ptr + n * 2 * C + C + c, tl.sum(v * v, axis=0), mask=c < C)


@triton.jit
def _select_quant(x_ptr, stats_ptr, g_ptr, w_ptr, b_ptr, a_ptr, lv_ptr, bits_ptr, kin_ptr,
                  q_ptr, scale_ptr, bits_out_ptr, k_out_ptr, deq_ptr, HW, C,
                  K: tl.constexpr, K_PAD: tl.constexpr, C_PAD: tl.constexpr, FULL: tl.constexpr, DEQ: tl.constexpr,
                  BLOCK: tl.constexpr):
    n, blk = tl.program_id(0), tl.program_id(1)
    if FULL:
        c = tl.arange(0, C_PAD)
        c_ok = c < C
        s1 = tl.load(stats_ptr + n * 2 * C + c, mask=c_ok, other=0.0)
        s2 = tl.load(stats_ptr + n * 2 * C + C + c, mask=c_ok, other=0.0)
        var = (s2 - s1 * s1 / HW) / (HW - 1)
        sigma = tl.sqrt_rn(tl.maximum(var, 0.0))
        ks = tl.arange(0, K_PAD)
        k_ok = ks < K
        w_sig = tl.load(w_ptr + ks[:, None] * (C + 2) + 2 + c[None, :], mask=k_ok[:, None] & c_ok[None, :], other=0.0)
        logits = tl.sum(w_sig * sigma[None, :], axis=1)
        logits += tl.load(w_ptr + ks * (C + 2), mask=k_ok, other=0.0) * tl.load(g_ptr + n * 2)
        logits += tl.load(w_ptr + ks * (C + 2) + 1, mask=k_ok, other=0.0) * tl.load(g_ptr + n * 2 + 1)
        logits += tl.load(b_ptr + ks, mask=k_ok, other=0.0)
        k = tl.argmax(tl.where(k_ok, logits, float("-inf")), axis=0, tie_break_left=True)
    else:
        k = tl.load(kin_ptr + n)
    a = tl.load(a_ptr + k)
    s = tl.load(lv_ptr + k)
    offs = blk * BLOCK + tl.arange(0, BLOCK)
    m = offs < HW * C
    base = n.to(tl.int64) * HW * C
    x = tl.load(x_ptr + base + offs, mask=m, other=0.0).to(tl.float32)
    v = tl.math.div_rn(tl.clamp(x, -a, a), a) * s
    r = tl.floor(v)
    frac = v - r
    odd = (r - 2.0 * tl.floor(r * 0.5)) == 1.0
    qv = r + tl.where((frac > 0.5) | ((frac == 0.5) & odd), 1.0, 0.0)
    tl.store(q_ptr + base + offs, qv.to(tl.int8), mask=m)
    t = tl.math.div_rn(a, s)
    if DEQ:
        tl.store(deq_ptr + base + offs, (qv * t).to(deq_ptr.dtype.element_ty), mask=m)
    if blk == 0:
        tl.store(scale_ptr + n, t)
        tl.store(bits_out_ptr + n, tl.load(bits_ptr + k))
        tl.store(k_out_ptr + n, k)


def _cl(x: torch.Tensor) -> torch.Tensor:
    return x.contiguous(memory_format=torch.channels_last)


def tile_stats(x: torch.Tensor) -> torch.Tensor:
    """[N, 2, C] float32: per tile and channel, the sum and the sum of squares over H*W."""
    n, c, h, w = x.shape
    x = _cl(x)
    stats = torch.zeros((n, 2, c), dtype=torch.float32, device=x.device)
    bp, bc = 64, min(64, triton.next_power_of_2(c))
    _stats[(n, triton.cdiv(h * w, bp))](x, stats, h * w, c, BLOCK_P=bp, BLOCK_C=bc)
    return stats


def select_quantize(x: torch.Tensor, stats: torch.Tensor | None, g: torch.Tensor | None, w: torch.Tensor | None,
                    b: torch.Tensor | None, alpha: torch.Tensor, levels: torch.Tensor, bits: torch.Tensor,
                    k_in: torch.Tensor | None = None, dequant: bool = False, deq_dtype=torch.float32):
    """(q int8 [N,C,H,W] channels_last, scale [N], bits [N], k [N] int32, dequantized x or None). With
    `k_in` the candidate of each tile is given (fixed, tile and layer selection); else it is selected
    from `stats` (computed here when None), the tile gradient g [N,2] and the selector (w [K,C+2], b [K])."""
    n, c, h, wd = x.shape
    kk = alpha.numel()
    x = _cl(x)
    dev = x.device
    full = k_in is None
    if full and stats is None:
        stats = tile_stats(x)
    if full and (g is None or w is None or b is None):
        raise BackendError("select_quantize: full selection needs the tile gradient and the selector weights")
    q = torch.empty((n, c, h, wd), dtype=torch.int8, device=dev, memory_format=torch.channels_last)
    scale = torch.empty(n, dtype=torch.float32, device=dev)
    bits_out = torch.empty(n, dtype=torch.float32, device=dev)
    k_out = torch.empty(n, dtype=torch.int32, device=dev)
    deq = torch.empty((n, c, h, wd), dtype=deq_dtype, device=dev, memory_format=torch.channels_last) if dequant else q
    dummy = scale
    f32 = lambda t: t.float().contiguous() if t is not None else dummy  # noqa: E731
    k_in_t = k_in.to(torch.int32).contiguous() if k_in is not None else k_out
    _select_quant[(n, triton.cdiv(h * wd * c, BLOCK))](
        x, f32(stats), f32(g), f32(w), f32(b), f32(alpha), f32(levels), f32(bits), k_in_t,
        q, scale, bits_out, k_out, deq, h * wd, c,
        K=kk, K_PAD=max(2, triton.next_power_of_2(kk)), C_PAD=triton.next_power_of_2(c), FULL=full, DEQ=dequant,
        BLOCK=BLOCK)
    return q, scale, bits_out, k_out, (deq if dequant else None)
