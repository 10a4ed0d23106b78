"""Per-tile statistics, bit selection and quantization to int8 on channels_last tensors (Triton).

A dynamic quantizer as the lowering defines it (`cadyq.quant.lowering`, `ops.on_top_grid`): the input rounded to the
top candidate's grid, v = round(clamp(x, -a_T, a_T) / a_T * s_T); the choice k from the statistics of v; then
k's levels expressed on the top grid again, q = tables[k][v] (`IntQuantizer.tables`, built from the reference
arithmetic). Every q is on the one grid of step t = a_T / s_T, the conv's input scale.

    stats = tile_stats(x, a_T, s_T)                          [N, 2, C] int64: sum v and sum v^2 per tile and channel
    q, scale, bits, k, deq = select_quantize(x, stats, g, W, b, (a_T, s_T), t, tables, bits)        (mode "full")
    q, scale, bits, k, deq = select_quantize(x, None, ..., k_in=k)                       (fixed / tile / layer)

sigma = t * sqrt((S2 - S1^2 / HW) / (HW - 1)) from the exact integer sums (float64), k = argmax(W @ [g, sigma] + b)
(first maximum). The statistics usually come from the producing convolution's epilogue (conv_int8 with
`stats_grid`), so selection and quantization are one light pass: grid (N, blocks of the tile's elements), and every
program recomputes its tile's choice from the C statistics (no synchronisation, nothing to allocate).
"""
from __future__ import annotations

import torch
import triton
import triton.language as tl

from ..errors import BackendError
from .rounding import quantize

BLOCK = 2048


@triton.jit
def _stats(x_ptr, stats_ptr, HW, C, a_t, s_t, BLOCK_P: tl.constexpr, BLOCK_C: tl.constexpr):
    n, pb = tl.program_id(0), tl.program_id(1)
    p = pb * BLOCK_P + tl.arange(0, BLOCK_P)
    x_n = x_ptr + n.to(tl.int64) * HW * C
    for c0 in range(0, C, BLOCK_C):
        c = c0 + tl.arange(0, BLOCK_C)
        m = (p[:, None] < HW) & (c[None, :] < C)
        v = quantize(tl.load(x_n + p[:, None] * C + c[None, :], mask=m, other=0.0).to(tl.float32), a_t, s_t)
        v = v.to(tl.int32)  # masked elements are 0
        tl.atomic_add(stats_ptr + n * 2 * C + c, tl.sum(v, axis=0).to(tl.int64), mask=c < C)
        tl.atomic_add(stats_ptr + n * 2 * C + C + c, tl.sum(v * v, axis=0).to(tl.int64), mask=c < C)


@triton.jit
def _select_quant(x_ptr, stats_ptr, g_ptr, w_ptr, b_ptr, bits_ptr, kin_ptr, lut_ptr,
                  q_ptr, scale_ptr, bits_out_ptr, k_out_ptr, deq_ptr, HW, C, a_t, s_t, t,
                  K: tl.constexpr, K_PAD: tl.constexpr, C_PAD: tl.constexpr, FULL: tl.constexpr, DEQ: tl.constexpr,
                  BLOCK: tl.constexpr):
    n, blk = tl.program_id(0), tl.program_id(1)
    if FULL:
        c = tl.arange(0, C_PAD)
        c_ok = c < C
        s1 = tl.load(stats_ptr + n * 2 * C + c, mask=c_ok, other=0).to(tl.float64)
        s2 = tl.load(stats_ptr + n * 2 * C + C + c, mask=c_ok, other=0).to(tl.float64)
        var = (s2 - s1 * s1 / HW) / (HW - 1)
        sigma = (tl.sqrt(tl.maximum(var, 0.0)) * t).to(tl.float32)
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
    offs = blk * BLOCK + tl.arange(0, BLOCK)
    m = offs < HW * C
    base = n.to(tl.int64) * HW * C
    v = quantize(tl.load(x_ptr + base + offs, mask=m, other=0.0).to(tl.float32), a_t, s_t)
    q = tl.load(lut_ptr + k * 256 + (v.to(tl.int32) + 128), mask=m, other=128).to(tl.int32) - 128
    tl.store(q_ptr + base + offs, q.to(tl.int8), mask=m)
    if DEQ:
        tl.store(deq_ptr + base + offs, (q.to(tl.float32) * t).to(deq_ptr.dtype.element_ty), mask=m)
    if blk == 0:
        tl.store(scale_ptr + n, t)
        tl.store(bits_out_ptr + n, tl.load(bits_ptr + k))
        tl.store(k_out_ptr + n, k)


def _cl(x: torch.Tensor) -> torch.Tensor:
    return x.contiguous(memory_format=torch.channels_last)


def tile_stats(x: torch.Tensor, a_t: float, s_t: float) -> torch.Tensor:
    """[N, 2, C] int64: per tile and channel, the sum and the sum of squares over H*W of
    v = round(clamp(x, -a_t, a_t) / a_t * s_t)."""
    n, c, h, w = x.shape
    x = _cl(x)
    stats = torch.zeros((n, 2, c), dtype=torch.int64, device=x.device)
    bp, bc = 64, min(64, triton.next_power_of_2(c))
    _stats[(n, triton.cdiv(h * w, bp))](x, stats, h * w, c, a_t, s_t, BLOCK_P=bp, BLOCK_C=bc)
    return stats


def select_quantize(x: torch.Tensor, stats: torch.Tensor | None, g: torch.Tensor | None, w: torch.Tensor | None,
                    b: torch.Tensor | None, grid: tuple[float, float], t: float, tables: torch.Tensor,
                    bits: torch.Tensor, k_in: torch.Tensor | None = None, dequant: bool = False,
                    deq_dtype=torch.float32):
    """(q int8 [N,C,H,W] channels_last, scale [N] (= t), bits [N], k [N] int32, dequantized x (q * t) or None).
    grid: (a_T, s_T) of the top candidate; t: a_T / s_T (float32); tables: [K, 256] uint8 (`IntQuantizer.tables`).
    With `k_in` the candidate of each tile is given (fixed, tile and layer selection); else it is selected from
    `stats` (`tile_stats`, computed here when None), the tile gradient g [N,2] and the selector (w [K,C+2], b [K])."""
    n, c, h, wd = x.shape
    kk = tables.shape[0]
    x = _cl(x)
    dev = x.device
    full = k_in is None
    if full and stats is None:
        stats = tile_stats(x, *grid)
    if full and (g is None or w is None or b is None):
        raise BackendError("select_quantize: full selection needs the tile gradient and the selector weights")
    if tables.dtype != torch.uint8 or tuple(tables.shape) != (kk, 256) or bits.numel() != kk:
        raise BackendError(f"select_quantize: tables must be uint8 [K, 256] for the {bits.numel()} candidates")
    q = torch.empty((n, c, h, wd), dtype=torch.int8, device=dev, memory_format=torch.channels_last)
    scale = torch.empty(n, dtype=torch.float32, device=dev)
    bits_out = torch.empty(n, dtype=torch.float32, device=dev)
    k_out = torch.empty(n, dtype=torch.int32, device=dev)
    deq = torch.empty((n, c, h, wd), dtype=deq_dtype, device=dev, memory_format=torch.channels_last) if dequant else q
    dummy = scale
    f32 = lambda t: t.float().contiguous() if t is not None else dummy  # noqa: E731
    k_in_t = k_in.to(torch.int32).contiguous() if k_in is not None else k_out
    _select_quant[(n, triton.cdiv(h * wd * c, BLOCK))](
        x, stats if full else dummy, f32(g), f32(w), f32(b), f32(bits), k_in_t, tables.contiguous(),
        q, scale, bits_out, k_out, deq, h * wd, c, grid[0], grid[1], t,
        K=kk, K_PAD=max(2, triton.next_power_of_2(kk)), C_PAD=triton.next_power_of_2(c), FULL=full, DEQ=dequant,
        BLOCK=BLOCK)
    return q, scale, bits_out, k_out, (deq if dequant else None)
