"""INT8 implicit-GEMM convolution (NHWC) with the CADyQ epilogue, in Triton.

    y[n, p, o] = act(acc[n, p, o] * (t * w_scale[o]) + bias[o])       acc = sum_{kh,kw,c} q[n, p + (kh,kw), c] * w[kh,kw,c,o]
    (optional) y = fake_quant(y, a_out, s_out)   then   y = y + residual[n, p, o]
    (optional) stats[n, o] += (sum_p v, sum_p v^2),  v = round(clamp(y, -a, a) / a * s)    the next layer's sigma
                                                  on its top grid (a, s) (`stats_grid`), exact integers, no extra pass

t is the input scale, one per layer: every tile's integers lie on the top candidate's grid whatever it chose
(`cadyq.quant.lowering`).

q: int8 [N, H, W, C] (channels_last memory); w: int8 [KH*KW*C, O] (K-major, `pack_weight`; grouped convs
dense block-diagonal); products
int8 x int8 accumulate in int32 on the tensor cores (`tl.dot(..., out_dtype=tl.int32)`); zero padding
is a masked load of 0, which is the quantized value of 0. Each program computes BLOCK_M output pixels
of one tile (image n) by BLOCK_N output channels, so its channel statistics go to stats[n] with one
integer atomic add per channel (exact, so in any order the same sums). Grid: (N * ceil(HW_out / BLOCK_M), ceil(O / BLOCK_N)).

The same source runs compiled on CUDA and under TRITON_INTERPRET=1 on the CPU (how CI tests it).
"""
from __future__ import annotations

import torch
import triton
import triton.language as tl

from ..errors import BackendError
from .rounding import fake_quant, quantize

ACTS = {"none": 0, "relu": 1, "leaky": 2}


def _configs():
    return [triton.Config({"BLOCK_M": bm, "BLOCK_N": bn, "BLOCK_K": bk}, num_warps=w, num_stages=st)
            for bm, bn, bk, w, st in ((64, 64, 32, 4, 3), (128, 64, 32, 4, 3), (128, 64, 64, 8, 3),
                                      (64, 64, 64, 4, 4), (256, 64, 32, 8, 3))]


@triton.jit
def _conv_int8(q_ptr, w_ptr, ws_ptr, bias_ptr, y_ptr, res_ptr, stats_ptr,
               H, W, C, O, HO, WO, t, slope, a_out, s_out, a_st, s_st,
               KH: tl.constexpr, KW: tl.constexpr, STRIDE: tl.constexpr, PAD: tl.constexpr,
               ACT: tl.constexpr, OUT_FQ: tl.constexpr, RESIDUAL: tl.constexpr, STATS: tl.constexpr,
               BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr):
    pid_m, pid_n = tl.program_id(0), tl.program_id(1)
    blocks_per_tile = tl.cdiv(HO * WO, BLOCK_M)
    n = pid_m // blocks_per_tile
    p = (pid_m % blocks_per_tile) * BLOCK_M + tl.arange(0, BLOCK_M)  # output pixels of tile n
    o = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)  # output channels
    p_ok, o_ok = p < HO * WO, o < O
    ho, wo = p // WO, p % WO
    acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.int32)
    q_n = q_ptr + n.to(tl.int64) * H * W * C
    for kh in range(KH):
        for kw in range(KW):
            hi, wi = ho * STRIDE - PAD + kh, wo * STRIDE - PAD + kw
            inside = p_ok & (hi >= 0) & (hi < H) & (wi >= 0) & (wi < W)
            row = (hi * W + wi) * C
            for c0 in range(0, C, BLOCK_K):
                c = c0 + tl.arange(0, BLOCK_K)
                c_ok = c < C
                a = tl.load(q_n + row[:, None] + c[None, :], mask=inside[:, None] & c_ok[None, :], other=0)
                k = (kh * KW + kw) * C + c
                b = tl.load(w_ptr + k[:, None] * O + o[None, :], mask=c_ok[:, None] & o_ok[None, :], other=0)
                acc += tl.dot(a, b, out_dtype=tl.int32)
    ws = tl.load(ws_ptr + o, mask=o_ok, other=0.0)
    y = acc.to(tl.float32) * (t * ws)[None, :] + tl.load(bias_ptr + o, mask=o_ok, other=0.0)[None, :]
    if ACT == 1:
        y = tl.maximum(y, 0.0)
    elif ACT == 2:
        y = tl.where(y >= 0.0, y, y * slope)
    if OUT_FQ:
        y = fake_quant(y, a_out, s_out)
    out_off = (n.to(tl.int64) * HO * WO + p)[:, None] * O + o[None, :]
    m = p_ok[:, None] & o_ok[None, :]
    if RESIDUAL:
        y += tl.load(res_ptr + out_off, mask=m, other=0.0).to(tl.float32)
    y = y.to(y_ptr.dtype.element_ty)
    tl.store(y_ptr + out_off, y, mask=m)
    if STATS:  # of y as stored: what the next layer reads
        v = tl.where(m, quantize(y.to(tl.float32), a_st, s_st), 0.0).to(tl.int32)
        tl.atomic_add(stats_ptr + n * 2 * O + o, tl.sum(v, axis=0).to(tl.int64), mask=o_ok)
        tl.atomic_add(stats_ptr + n * 2 * O + O + o, tl.sum(v * v, axis=0).to(tl.int64), mask=o_ok)


_conv_int8_tuned = triton.autotune(configs=_configs(), key=["C", "O", "HO", "WO", "KH"],
                                   reset_to_zero=["stats_ptr"])(_conv_int8)
INTERPRETED = not isinstance(_conv_int8, triton.runtime.JITFunction)


def pack_weight(w_int8: torch.Tensor, groups: int = 1) -> torch.Tensor:
    """int8 [O, C/groups, KH, KW] -> [KH*KW*C, O] (K-major: kh, kw, c). Grouped weights become the dense
    block-diagonal matrix (zeros across groups): IDN's grouped convs run as dense INT8 GEMMs, `groups`
    times the multiply-adds of a grouped kernel, for one code path with tensor-core-sized blocks."""
    o, cg, kh, kw = w_int8.shape
    if groups > 1:
        dense = torch.zeros((o, cg * groups, kh, kw), dtype=w_int8.dtype, device=w_int8.device)
        og = o // groups
        for gi in range(groups):
            dense[gi * og:(gi + 1) * og, gi * cg:(gi + 1) * cg] = w_int8[gi * og:(gi + 1) * og]
        w_int8 = dense
    return w_int8.permute(2, 3, 1, 0).reshape(-1, o).contiguous()


def conv2d_int8(q: torch.Tensor, w_packed: torch.Tensor, w_scale: torch.Tensor, bias: torch.Tensor, t: float,
                kernel: tuple[int, int], stride: int = 1, padding: int = 1, act: str = "none",
                slope: float = 0.0, out_dtype=torch.float32, out_fq: tuple[float, float] | None = None,
                residual: torch.Tensor | None = None, stats_grid: tuple[float, float] | None = None,
                block: dict | None = None):
    """q int8 [N,C,H,W] in channels_last memory, input scale t -> y [N,O,HO,WO] channels_last (`out_dtype`), and,
    with `stats_grid` (a, s), the per-tile channel statistics [N, 2, O] int64 (`quant_nhwc.tile_stats` of y on that
    grid), else None. `block`: fixed BLOCK_M/N/K (and no autotuning), e.g. for the interpreter."""
    if q.dtype != torch.int8 or q.dim() != 4:
        raise BackendError(f"conv2d_int8 takes int8 [N,C,H,W] activations, got {q.dtype} {tuple(q.shape)}")
    if q.device.type == "cpu" and not INTERPRETED:
        raise BackendError("conv2d_int8 on CPU tensors needs the Triton interpreter (TRITON_INTERPRET=1)")
    n, c, h, w = q.shape
    kh, kw = kernel
    o = w_packed.shape[1]
    if w_packed.shape[0] != kh * kw * c:
        raise BackendError(f"packed weights {tuple(w_packed.shape)} do not fit {c} input channels, {kh}x{kw}")
    ho, wo = (h + 2 * padding - kh) // stride + 1, (w + 2 * padding - kw) // stride + 1
    q = q.contiguous(memory_format=torch.channels_last)
    y = torch.empty((n, o, ho, wo), dtype=out_dtype, device=q.device, memory_format=torch.channels_last)
    stats = stats_grid is not None
    st = torch.zeros((n, 2, o) if stats else (1,), dtype=torch.int64, device=q.device)
    res = residual.contiguous(memory_format=torch.channels_last) if residual is not None else y
    a_out, s_out = out_fq if out_fq is not None else (1.0, 1.0)
    a_st, s_st = stats_grid if stats else (1.0, 1.0)
    args = (q, w_packed, w_scale.float().contiguous(), bias.float().contiguous(), y, res, st,
            h, w, c, o, ho, wo, float(t), float(slope), float(a_out), float(s_out), float(a_st), float(s_st))
    consts = dict(KH=kh, KW=kw, STRIDE=stride, PAD=padding, ACT=ACTS[act], OUT_FQ=out_fq is not None,
                  RESIDUAL=residual is not None, STATS=stats)
    if block is None and INTERPRETED:
        block = {"BLOCK_M": 32, "BLOCK_N": 32, "BLOCK_K": 32}
    if block is not None:
        grid = (n * triton.cdiv(ho * wo, block["BLOCK_M"]), triton.cdiv(o, block["BLOCK_N"]))
        _conv_int8[grid](*args, **consts, **block)
    else:
        grid = lambda meta: (n * triton.cdiv(ho * wo, meta["BLOCK_M"]), triton.cdiv(o, meta["BLOCK_N"]))  # noqa: E731
        _conv_int8_tuned[grid](*args, **consts)
    return y, (st if stats else None)


def tuned_configs() -> dict:
    """The autotuner's choice per shape key (after runs on a GPU), for the benchmark record."""
    cache = getattr(_conv_int8_tuned, "cache", {})
    return {str(k): str(v) for k, v in cache.items()}
