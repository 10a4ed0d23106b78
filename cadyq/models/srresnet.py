"""SRResNet (Ledig et al. 2017) as CADyQ uses it: 9x9 head, 16 BN residual blocks, no mean shift.

Deviation from the official CADyQ file: there one PReLU object (one slope) is shared by the head and
all blocks; here each block has its own, as in the original SRResNet. Importing an official
checkpoint copies the shared slope into every block, which reproduces it exactly."""
from __future__ import annotations

from dataclasses import dataclass

import torch.nn as nn

from .common import PixelShuffleUpsampler, check_scale, conv3x3
from .registry import register_model


@dataclass(frozen=True)
class SRResNetConfig:
    scale: int = 4
    n_feats: int = 64
    n_resblocks: int = 16
    res_scale: float = 1.0
    name: str = "srresnet"


class ResBlock(nn.Module):
    def __init__(self, n_feats: int, res_scale: float):
        super().__init__()
        self.conv1 = conv3x3(n_feats, n_feats)
        self.bn1 = nn.BatchNorm2d(n_feats)
        self.act = nn.PReLU()
        self.conv2 = conv3x3(n_feats, n_feats)
        self.bn2 = nn.BatchNorm2d(n_feats)
        self.res_scale = res_scale

    def forward(self, x):
        res = self.act(self.bn1(self.conv1(x)))
        y = self.bn2(self.conv2(res))
        return (y if self.res_scale == 1 else y * self.res_scale) + x


class SRResNet(nn.Module):
    def __init__(self, config: SRResNetConfig):
        super().__init__()
        check_scale(config.scale, (2, 4), "SRResNet")
        self.config = config
        f = config.n_feats
        self.head = nn.Sequential(nn.Conv2d(3, f, 9, padding=4, bias=False), nn.PReLU())
        self.body = nn.Sequential(
            *[ResBlock(f, config.res_scale) for _ in range(config.n_resblocks)],
            conv3x3(f, f, bias=False),
            nn.BatchNorm2d(f),
        )
        self.tail = nn.Sequential(
            PixelShuffleUpsampler(config.scale, f, bias=False, act=nn.PReLU), nn.Conv2d(f, 3, 9, padding=4, bias=False)
        )

    def forward(self, x):
        x = self.head(x)
        return self.tail(self.body(x) + x)


@register_model
def srresnet(scale: int = 4, **kwargs) -> SRResNet:
    return SRResNet(SRResNetConfig(scale=scale, **kwargs))
