"""Activation quantizers (PAMS), the CADyQ bit selector, and the 8-bit weight conv."""
from __future__ import annotations

from typing import Callable

import torch
import torch.nn as nn
import torch.nn.functional as F

from .ops import fake_quant, levels, on_top_grid, quantize_weight
from .train_ops import FakeQuantSTE, SelectQuantSTE, channel_std


class TileState:
    """What a forward shares between the quantizers of one model: the tile gradient of the input
    (and the tile-mode decision). A plain object so it is not registered as a module."""

    def __init__(self):
        self.grad: torch.Tensor | None = None
        self.tile_logits: torch.Tensor | None = None  # cadyq tile mode: logits [N,K] of the tile selector
        self.tile_probs: torch.Tensor | None = None  # gdq: candidate probabilities [N,K] (one-hot valued)
        self.tile_choice: torch.Tensor | None = None  # gdq: candidate index [N]
        self.entropy: torch.Tensor | None = None  # gdq: the input tiles' entropy [N]


class ActQuant(nn.Module):
    """PAMS activation quantizer: symmetric, one learnable clip alpha.

    While `observing` is set, the input passes unchanged and alpha becomes the running mean of the
    per-sample max |x| (the warm start). The official code instead overwrites alpha with each batch's
    maximum during the whole first epoch, which also throws away the alphas of a PAMS checkpoint."""

    def __init__(self, bits: int = 8, alpha: float = 10.0):
        super().__init__()
        self.bits = bits
        self.alpha = nn.Parameter(torch.tensor([alpha]))
        self.register_buffer("n_observed", torch.zeros((), dtype=torch.long), persistent=False)
        self.observing = False
        self.last_bits: torch.Tensor | None = None

    def forward(self, x):
        if self.observing:
            self._observe(x)
            return x
        self.last_bits = x.new_full((x.shape[0],), float(self.bits))
        if torch.is_grad_enabled() and (x.requires_grad or self.alpha.requires_grad):
            return FakeQuantSTE.apply(x, self.alpha, float(levels(self.bits)))
        return fake_quant(x, self.alpha, levels(self.bits))

    @torch.no_grad()
    def _observe(self, x):
        m = x.detach().abs().flatten(1).amax(1).mean()
        n = self.n_observed.item()
        self.alpha.copy_((self.alpha * n + m) / (n + 1) if n else m.reshape(1))
        self.n_observed += 1


def _levels(bits: torch.Tensor) -> torch.Tensor:
    return 2.0 ** (bits - 1) - 1


def _default_select(x, grad, weight, bias, alpha, bits):
    """The CADyQSelect op in eager torch (inference): the input on the top candidate's grid, the per-tile choice from
    its channel statistics, the chosen candidate's levels on the top grid (ops.on_top_grid)."""
    s = _levels(bits)
    (x_top,) = on_top_grid(x, alpha, s)
    sigma = x_top.std(dim=(2, 3))
    k = F.linear(torch.cat([grad, sigma], 1), weight, bias).argmax(1)
    return on_top_grid(x, alpha, s, k)[1], bits[k]


class _Bias(nn.Module):
    def __init__(self, k: int):
        super().__init__()
        self.bias = nn.Parameter(torch.zeros(k))


class BitSelector(nn.Module):
    """CADyQ's bit selector for one layer: picks one of K bit-widths per tile and fake-quantizes.

    mode "full": logits = Linear(C+2 -> K)(cat(|grad I|, std_c(x))) (the paper);
    "layer": logits = a learned bias only (per layer, the same for every tile);
    "tile": the model-level tile decision (shared by all layers; one bit-width per tile).
    Training: hard choice forward, probability-weighted mix backward (STE), as the official code."""

    def __init__(self, channels: int, bits=(4, 6, 8), state: TileState | None = None, mode: str = "full"):
        super().__init__()
        self.mode = mode
        self.state = state if state is not None else TileState()
        self.register_buffer("bits", torch.tensor(sorted(bits), dtype=torch.float32), persistent=False)
        k = len(bits)
        self.alpha = nn.Parameter(torch.full((k,), 10.0))
        # "layer" mode learns only the bias: its logits do not depend on the tile
        self.net = nn.Linear(channels + 2, k) if mode == "full" else _Bias(k)
        with torch.no_grad():  # official init: equal rows, +1 on the highest bit -> picks it
            if mode == "full":
                self.net.weight.fill_(1.0)
            self.net.bias.zero_()
            self.net.bias[-1] = 1.0
        self.observing = False
        self.select_fn: Callable = _default_select
        self.last_bits: torch.Tensor | None = None  # [N] hard choice
        self.last_bits_ste: torch.Tensor | None = None  # [N] hard value, soft gradient
        self.last_weighted: torch.Tensor | None = None  # [N] b / E_p[b] (weighted bit loss)

    def logits(self, x):
        n = x.shape[0]
        if self.mode == "tile":
            return self.state.tile_logits
        if self.mode == "layer":
            return self.net.bias.expand(n, -1)
        sigma = channel_std(x).to(self.state.grad.dtype)
        return self.net(torch.cat([self.state.grad, sigma], 1))

    def forward(self, x):
        if self.observing:
            with torch.no_grad():  # every candidate starts from the observed max
                m = x.abs().flatten(1).amax(1).mean()
                n = getattr(self, "_n_obs", 0)
                self.alpha.copy_((self.alpha * n + m) / (n + 1) if n else m.expand_as(self.alpha))
                self._n_obs = n + 1
            return x
        if not self.training:  # on the top candidate's grid before and after (ops.on_top_grid)
            if self.mode == "full":
                y, b = self.select_fn(x, self.state.grad, self.net.weight, self.net.bias, self.alpha, self.bits)
            else:
                k = self.state.tile_choice if self.mode == "tile" and self.state.tile_choice is not None \
                    else self.logits(x).argmax(1)
                y, b = on_top_grid(x, self.alpha, _levels(self.bits), k)[1], self.bits[k]
            self.last_bits = self.last_bits_ste = b
            self.last_weighted = None
            return y
        levels = _levels(self.bits)
        with torch.no_grad():  # the value inference computes: chosen from the statistics on the top grid
            (x_top,) = on_top_grid(x.detach(), self.alpha.detach(), levels)
        if self.mode == "tile" and self.state.tile_probs is not None:  # gdq: the model-level decision
            p, k = self.state.tile_probs, self.state.tile_choice
        else:
            logits = self.logits(x + (x_top - x).detach())  # statistics of the top grid, gradient to x (STE)
            p, k = logits.softmax(1), logits.argmax(1)
        expected = p @ self.bits
        b_hard = self.bits[k]
        self.last_bits = b_hard.detach()
        self.last_bits_ste = b_hard.detach() + expected - expected.detach()
        self.last_weighted = self.last_bits_ste / expected.detach()
        # the gradient of the probability-weighted mix of all candidates (train_ops), the value inference computes
        y = SelectQuantSTE.apply(x, self.alpha, levels, p, k)
        with torch.no_grad():
            value = on_top_grid(x_top, self.alpha.detach(), levels, k)[1]
        return y + (value - y).detach()


class QConv2d(nn.Conv2d):
    """nn.Conv2d with b-bit weights (re-quantized every forward, as the paper). Same parameter
    names as the conv it replaces, so state_dict keys do not change."""

    weight_bits: int = 8
    per_channel: bool = False

    @classmethod
    def from_conv(cls, conv: nn.Conv2d, bits: int = 8, per_channel: bool = False) -> "QConv2d":
        q = cls.__new__(cls)
        q.__dict__ = conv.__dict__.copy()
        q.__class__ = cls
        q.weight_bits, q.per_channel = bits, per_channel
        return q

    def forward(self, x):
        return self._conv_forward(x, quantize_weight(self.weight, self.weight_bits, self.per_channel), self.bias)
