"""EDSR-baseline (Lim et al. 2017): 16 residual blocks of 64 channels, res_scale 1."""
from __future__ import annotations

from dataclasses import dataclass

import torch.nn as nn

from .common import MeanShift, PixelShuffleUpsampler, check_scale, conv3x3
from .registry import register_model


@dataclass(frozen=True)
class EDSRConfig:
    scale: int = 4
    n_feats: int = 64
    n_resblocks: int = 16
    res_scale: float = 1.0
    name: str = "edsr"


class ResBlock(nn.Module):
    def __init__(self, n_feats: int, res_scale: float):
        super().__init__()
        self.body = nn.Sequential(conv3x3(n_feats, n_feats), nn.ReLU(inplace=True), conv3x3(n_feats, n_feats))
        self.res_scale = res_scale

    def forward(self, x):
        y = self.body(x)
        return (y if self.res_scale == 1 else y * self.res_scale) + x


class EDSR(nn.Module):
    def __init__(self, config: EDSRConfig):
        super().__init__()
        check_scale(config.scale, (2, 3, 4, 8), "EDSR")
        self.config = config
        f = config.n_feats
        self.sub_mean = MeanShift(255.0, -1)
        self.head = nn.Sequential(conv3x3(3, f))
        self.body = nn.Sequential(*[ResBlock(f, config.res_scale) for _ in range(config.n_resblocks)], conv3x3(f, f))
        self.tail = nn.Sequential(PixelShuffleUpsampler(config.scale, f), conv3x3(f, 3))
        self.add_mean = MeanShift(255.0, +1)

    def forward(self, x):
        x = self.head(self.sub_mean(x))
        return self.add_mean(self.tail(self.body(x) + x))


@register_model
def edsr(scale: int = 4, **kwargs) -> EDSR:
    return EDSR(EDSRConfig(scale=scale, **kwargs))
