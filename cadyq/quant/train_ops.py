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
"""
from __future__ import annotations

import torch


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
        return _fq(x, a, s)

    @staticmethod
    def backward(ctx, g):
        x, a = ctx.saved_tensors
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
        a = alpha[k].view(-1, 1, 1, 1).to(x.dtype)
        s = levels[k].view(-1, 1, 1, 1).to(x.dtype)
        ctx.save_for_backward(x, alpha, levels, p)
        return _fq(x, a, s)

    @staticmethod
    def backward(ctx, g):
        x, alpha, levels, p = ctx.saved_tensors
        n, kk = p.shape
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
