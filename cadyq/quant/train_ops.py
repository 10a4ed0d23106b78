"""The quantizers' training arithmetic as two autograd functions with hand-written backward passes.

Same values and gradients as autograd through `fake_quant` (straight-through round) and through the
bit selector's hard-forward / probability-weighted-backward mix, but without the autograd graph of
every elementwise op, and for the selector without the [N, K, C, H, W] tensor of all candidates: the
forward computes only the chosen candidate, the backward recomputes what it needs per candidate.

For y = round(clamp(x, -a, a) / a * s) / s * a with the straight-through round:
    dy/dx = 1 where |x| < a, else 0;   dy/da = (y - x) / a where |x| < a, else sign(x).
The selector's output is the hard choice; its gradient is that of the mix sum_k p_k * y_k:
    dL/dx = g * sum_k p_k * [|x| < a_k],   dL/da_k = sum_n p_nk * sum(g * dy_k/da_k),
    dL/dp_nk = sum(g * y_k) over the tile.

On the CPU both backward passes are one C kernel (cadyq/kernels/cpu/quant.c, `cadyq_quant_backward`):
one read of x and g and one write of dL/dx for all candidates, tiles split over the torch threads,
float32 or bfloat16 tensors (computed in float32). Elsewhere, or without a C compiler, torch ops.
"""
from __future__ import annotations

import ctypes
import functools
from concurrent.futures import ThreadPoolExecutor

import torch


@functools.lru_cache(maxsize=1)
def _lib():
    try:
        from ..kernels.cpu.build import library

        return library()
    except Exception:  # no compiler, no ctypes: the torch ops below
        return None


@functools.lru_cache(maxsize=1)
def _pool(workers: int) -> ThreadPoolExecutor:
    return ThreadPoolExecutor(workers)


def _layout(x: torch.Tensor) -> torch.memory_format:
    """The memory format that keeps x's layout (each tile one contiguous block either way)."""
    return (torch.channels_last if x.dim() == 4 and not x.is_contiguous()
            and x.is_contiguous(memory_format=torch.channels_last) else torch.contiguous_format)


def _over_tiles(n: int, run) -> list:
    """run(n0, n1) on contiguous shares of n tiles, one per torch thread (the C kernels release the GIL)."""
    workers = max(1, min(torch.get_num_threads(), n))
    bounds = [(n * i // workers, n * (i + 1) // workers) for i in range(workers)]
    return [run(*bounds[0])] if workers == 1 else list(_pool(workers).map(lambda b: run(*b), bounds))


def c_quant_backward(x, g, alpha, levels, p, need_dx: bool):
    """(dL/dx or None, gp [N, K], ga [N, K]) from the C kernel, or None where it does not apply.
    gp[n, j] = sum over tile n of g * y_j; ga[n, j] = sum of g * dy_j/da_j; dx = g * sum_j p[n, j] [|x| < a_j]."""
    lib = _lib()
    if lib is None or x.device.type != "cpu" or x.dtype not in (torch.float32, torch.bfloat16) or x.dim() < 1:
        return None
    fmt = _layout(x)
    x = x.detach().contiguous(memory_format=fmt)
    g = g.detach().to(x.dtype).contiguous(memory_format=fmt)
    if g.stride() != x.stride():
        return None
    n, k = p.shape
    m = x.numel() // max(n, 1)
    # the clip values as the forward saw them (in x's dtype), then in float32 for the kernel
    a = alpha.detach().reshape(-1).to(x.dtype).float().contiguous()
    s = levels.detach().reshape(-1).to(x.dtype).float().contiguous()
    pp = p.detach().float().contiguous()
    dx = torch.empty_like(x) if need_dx else None
    gp, ga = torch.empty(n, k), torch.empty(n, k)
    bf16 = int(x.dtype == torch.bfloat16)
    ptr = ctypes.c_void_p

    def run(n0, n1):
        return lib.cadyq_quant_backward(ptr(x.data_ptr()), ptr(g.data_ptr()), ptr(dx.data_ptr() if dx is not None else 0),
                                        n0, n1, m, bf16, k, ptr(a.data_ptr()), ptr(s.data_ptr()), ptr(pp.data_ptr()),
                                        ptr(gp.data_ptr()), ptr(ga.data_ptr()))
    if any(_over_tiles(n, run)):
        return None
    return dx, gp, ga


def channel_std(x: torch.Tensor) -> torch.Tensor:
    """x.std(dim=(2, 3)) of a detached [N, C, H, W] tensor, as float32 [N, C]: one C pass per tile on the CPU
    (torch's reduction over H, W of a channels_last bf16 tensor is several times slower), torch elsewhere."""
    lib = _lib()
    if lib is None or x.device.type != "cpu" or x.dtype not in (torch.float32, torch.bfloat16) or x.dim() != 4 \
            or x.shape[2] * x.shape[3] < 2:
        return x.detach().float().std(dim=(2, 3))
    n, c, h, w = x.shape
    nhwc = _layout(x) == torch.channels_last
    x = x.detach() if nhwc else x.detach().contiguous()
    out = torch.empty(n, c)
    ptr = ctypes.c_void_p
    bf16 = int(x.dtype == torch.bfloat16)

    def run(n0, n1):
        return lib.cadyq_channel_std(ptr(x.data_ptr()), n0, n1, h * w, c, bf16, int(nhwc), ptr(out.data_ptr()))
    if any(_over_tiles(n, run)):
        return x.float().std(dim=(2, 3))
    return out


def c_quant_forward(x, a, s):
    """fake_quant of each tile n of x with (a[n], s[n]) by the C kernel, or None where it does not apply."""
    lib = _lib()
    if lib is None or x.device.type != "cpu" or x.dtype not in (torch.float32, torch.bfloat16) or x.dim() < 1 \
            or x.shape[0] == 0:
        return None
    fmt = _layout(x)
    x = x.contiguous(memory_format=fmt)
    n = x.shape[0]
    m = x.numel() // n
    # the clip values and levels as the torch forward would see them (in x's dtype), in float32
    a = a.detach().reshape(-1).to(x.dtype).float().expand(n).contiguous()
    s = s.detach().reshape(-1).to(x.dtype).float().expand(n).contiguous()
    y = torch.empty_like(x)
    ptr = ctypes.c_void_p
    bf16 = int(x.dtype == torch.bfloat16)

    def run(n0, n1):
        lib.cadyq_quant_forward(ptr(x.data_ptr()), ptr(y.data_ptr()), n0, n1, m, bf16, ptr(a.data_ptr()),
                                ptr(s.data_ptr()))
    _over_tiles(n, run)
    return y


def _fq(x, a, s):
    return torch.round(torch.maximum(torch.minimum(x, a), -a) / a * s) / s * a


def _dy_da(x, y, a, inside):
    return torch.where(inside, (y - x) / a, torch.sign(x))


class FakeQuantSTE(torch.autograd.Function):
    """fake_quant(x, a, s) for training: a is a 1-element tensor (the PAMS clip value), s a float."""

    @staticmethod
    def forward(ctx, x, a, s):
        ctx.save_for_backward(x, a)
        ctx.s = s
        y = c_quant_forward(x, a, torch.tensor([float(s)]))
        return _fq(x, a, s) if y is None else y

    @staticmethod
    def backward(ctx, g):
        x, a = ctx.saved_tensors
        if x.dim() >= 1 and x.shape[0] > 0:
            n = x.shape[0]
            c = c_quant_backward(x, g, a.reshape(1), torch.tensor([ctx.s]), torch.ones(n, 1), ctx.needs_input_grad[0])
            if c is not None:
                dx, _, ga = c
                grad_a = ga.sum().reshape(a.shape).to(a.dtype) if ctx.needs_input_grad[1] else None
                return dx, grad_a, None
        inside = x.abs() < a
        grad_x = g * inside if ctx.needs_input_grad[0] else None
        grad_a = None
        if ctx.needs_input_grad[1]:
            y = _fq(x, a, ctx.s)
            grad_a = (g * _dy_da(x, y, a, inside)).sum().reshape(a.shape).to(a.dtype)
        return grad_x, grad_a, None


class SelectQuantSTE(torch.autograd.Function):
    """The bit selector in training: forward = the candidate `k` [N] of each tile; backward = the gradient of
    sum_k p[:, k] * fake_quant(x, alpha[k], levels[k]). alpha [K] and p [N, K] receive gradients."""

    @staticmethod
    def forward(ctx, x, alpha, levels, p, k):
        ctx.save_for_backward(x, alpha, levels, p)
        y = c_quant_forward(x, alpha[k], levels[k]) if x.dim() >= 1 and x.shape[0] == k.shape[0] else None
        if y is not None:
            return y
        a = alpha[k].view(-1, 1, 1, 1).to(x.dtype)
        s = levels[k].view(-1, 1, 1, 1).to(x.dtype)
        return _fq(x, a, s)

    @staticmethod
    def backward(ctx, g):
        x, alpha, levels, p = ctx.saved_tensors
        n, kk = p.shape
        c = c_quant_backward(x, g, alpha, levels, p, ctx.needs_input_grad[0])
        if c is not None:
            dx, gp, ga = c
            grad_alpha = (ga * p.detach().float()).sum(0).to(alpha.dtype) if ctx.needs_input_grad[1] else None
            return dx, grad_alpha, None, gp.to(p.dtype), None
        ax = x.abs()
        grad_x = torch.zeros_like(x) if ctx.needs_input_grad[0] else None
        grad_alpha = torch.zeros_like(alpha)
        grad_p = torch.zeros_like(p)
        pk4 = p.detach().to(x.dtype).view(n, kk, 1, 1, 1)
        for j in range(kk):
            a, s = alpha[j].to(x.dtype), levels[j].to(x.dtype)
            inside = ax < a
            y = _fq(x, a, s)
            grad_p[:, j] = (g * y).flatten(1).sum(1).to(p.dtype)
            if grad_x is not None:
                grad_x.addcmul_(g * inside, pk4[:, j])
            if ctx.needs_input_grad[1]:
                per_tile = (g * _dy_da(x, y, a, inside)).flatten(1).sum(1)
                grad_alpha[j] = (per_tile * p[:, j].detach().to(per_tile.dtype)).sum().to(alpha.dtype)
        return grad_x, grad_alpha if ctx.needs_input_grad[1] else None, None, grad_p, None
