"""CARN (Ahn et al. 2018): cascading residual network, 3 cascading blocks of 3 residual blocks.

Takes and returns [0,255] like the other backbones; internally it works in [0,1] as the official
code does (which divides the input by 255 outside the model)."""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn as nn

from .common import MeanShift, PixelShuffleUpsampler, check_scale, conv3x3
from .registry import register_model


@dataclass(frozen=True)
class CARNConfig:
    scale: int = 4
    n_feats: int = 64
    name: str = "carn"


class ResidualBlock(nn.Module):
    def __init__(self, f: int):
        super().__init__()
        self.body = nn.Sequential(conv3x3(f, f), nn.ReLU(inplace=True), conv3x3(f, f))

    def forward(self, x):
        return torch.relu(self.body(x) + x)


class BasicBlock(nn.Module):
    def __init__(self, cin: int, cout: int):
        super().__init__()
        self.body = nn.Sequential(nn.Conv2d(cin, cout, 1), nn.ReLU(inplace=True))

    def forward(self, x):
        return self.body(x)


class Cascade(nn.Module):
    """o_i = c_i(cat(x, b_1..b_i)): the cascading connection shared by the block and the network."""

    def __init__(self, f: int, make_block):
        super().__init__()
        self.b1, self.b2, self.b3 = make_block(), make_block(), make_block()
        self.c1, self.c2, self.c3 = BasicBlock(2 * f, f), BasicBlock(3 * f, f), BasicBlock(4 * f, f)

    def forward(self, x):
        c, o = x, x
        for b, cc in ((self.b1, self.c1), (self.b2, self.c2), (self.b3, self.c3)):
            c = torch.cat([c, b(o)], dim=1)
            o = cc(c)
        return o


class CARNBlock(Cascade):
    def __init__(self, f: int):
        super().__init__(f, lambda: ResidualBlock(f))


class Upsample(nn.Module):
    def __init__(self, scale: int, f: int):
        super().__init__()
        self.up = PixelShuffleUpsampler(scale, f, act=lambda: nn.ReLU(inplace=True))

    def forward(self, x):
        return self.up(x)


class CARN(Cascade):
    def __init__(self, config: CARNConfig):
        f = config.n_feats
        super().__init__(f, lambda: CARNBlock(f))
        check_scale(config.scale, (2, 3, 4, 8), "CARN")
        self.config = config
        self.sub_mean = MeanShift(1.0, -1)
        self.entry = conv3x3(3, f)
        self.upsample = Upsample(config.scale, f)
        self.exit = conv3x3(f, 3)
        self.add_mean = MeanShift(1.0, +1)

    def forward(self, x):
        x = self.entry(self.sub_mean(x / 255.0))
        return self.add_mean(self.exit(self.upsample(super().forward(x)))) * 255.0


@register_model
def carn(scale: int = 4, **kwargs) -> CARN:
    return CARN(CARNConfig(scale=scale, **kwargs))
