"""FQR and BitOPs.

FQR is the plain mean of the selected activation bit-widths over tiles and dynamic layers (the
official code's average bit). BitOPs sum 2*MACs*b_w*b_a/1024 over the quantized convs, so a 32-bit
model's BitOPs equal its FLOPs (the paper's Table 5 convention: CARN 76.44 G at 320x180)."""
from __future__ import annotations

from dataclasses import asdict, dataclass

import torch
import torch.nn as nn

from .plans import plan_for
from .transform import quant_config


@dataclass(frozen=True)
class LayerCost:
    name: str
    macs_per_pixel: int  # MACs per LR pixel of the conv's output
    weight_bits: int
    act_bits: int | None  # None: dynamic (taken from the bit map)


@dataclass(frozen=True)
class ModelInfo:
    """What a runtime needs to know about a model, JSON-able (stored with exports and engines)."""

    backbone: str
    scale: int
    method: str
    bits: tuple[int, ...]
    mode: str
    layers: tuple[LayerCost, ...]

    @property
    def n_layers(self) -> int:
        return sum(c.act_bits is None for c in self.layers)

    @classmethod
    def from_model(cls, model: nn.Module) -> "ModelInfo":
        cfg = quant_config(model)
        plan = plan_for(model)
        fp = cfg.method == "fp32"
        wb = 32 if fp else cfg.weight_bits

        def cost(path, act_bits):
            c = model.get_submodule(path)
            macs = c.out_channels * (c.in_channels // c.groups) * c.kernel_size[0] * c.kernel_size[1]
            return LayerCost(path, macs, wb, act_bits)

        dyn = tuple(cost(s.conv, None) for s in plan.dynamic)
        fixed = tuple(cost(s.conv, 32 if fp else cfg.fixed_bits) for s in plan.fixed_inputs)
        return cls(model.config.name, model.config.scale, cfg.method, cfg.act_bits, cfg.mode, dyn + fixed)

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> "ModelInfo":
        layers = tuple(LayerCost(**c) for c in d["layers"])
        return cls(d["backbone"], int(d["scale"]), d["method"], tuple(d["bits"]), d["mode"], layers)

    def default_bits(self, n: int) -> torch.Tensor:
        """Bits [n, L] of a model without choices (fp32: 32, fixed: its bit-width)."""
        return torch.full((n, self.n_layers), float(self.bits[0]))

    def bitops(self, bits: torch.Tensor, height: int, width: int) -> torch.Tensor:
        """BitOPs per tile [N] of tiles height x width (LR px) given bits [N, L]."""
        dyn = [c for c in self.layers if c.act_bits is None]
        fixed = sum(2 * c.macs_per_pixel * c.weight_bits * c.act_bits for c in self.layers if c.act_bits is not None)
        w = torch.tensor([2.0 * c.macs_per_pixel * c.weight_bits for c in dyn], dtype=torch.float64)
        per_pixel = bits.to(torch.float64) @ w + fixed
        return per_pixel * height * width / 1024.0

    def flops(self, height: int, width: int) -> float:
        """FLOPs (2*MACs) of the quantized convs at full precision: the 32-bit BitOPs."""
        return 2.0 * sum(c.macs_per_pixel for c in self.layers) * height * width


def fqr(bits: torch.Tensor) -> float:
    """Mean selected bit-width over tiles and layers."""
    return float(bits.to(torch.float64).mean())
