"""IDN (Hui et al. 2018): information distillation network, 4 distillation blocks, bicubic skip."""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn as nn
import torch.nn.functional as F

from .common import check_scale
from .registry import register_model


@dataclass(frozen=True)
class IDNConfig:
    scale: int = 4
    n_feats: int = 64
    d: int = 16  # distilled channels
    s: int = 4  # groups of the grouped convs
    n_blocks: int = 4
    name: str = "idn"


def _conv(cin, cout, groups=1):
    return nn.Conv2d(cin, cout, 3, padding=1, groups=groups)


def _lrelu():
    return nn.LeakyReLU(0.05, inplace=True)


class FBlock(nn.Module):
    def __init__(self, f: int):
        super().__init__()
        self.module = nn.Sequential(_conv(3, f), _lrelu(), _conv(f, f), _lrelu())

    def forward(self, x):
        return self.module(x)


class DBlock(nn.Module):
    def __init__(self, f: int, d: int, s: int):
        super().__init__()
        self.split = f - d
        self.enhancement_top = nn.Sequential(
            _conv(f, f - d), _lrelu(), _conv(f - d, f - 2 * d, groups=s), _lrelu(), _conv(f - 2 * d, f), _lrelu()
        )
        self.enhancement_bottom = nn.Sequential(
            _conv(f - d, f), _lrelu(), _conv(f, f - d, groups=s), _lrelu(), _conv(f - d, f + d), _lrelu()
        )
        self.compression = nn.Conv2d(f + d, f, 1)

    def forward(self, x):
        top = self.enhancement_top(x)
        slice_1, slice_2 = top[:, : self.split], top[:, self.split :]
        return self.compression(self.enhancement_bottom(slice_1) + torch.cat([x, slice_2], dim=1))


class IDN(nn.Module):
    def __init__(self, config: IDNConfig):
        super().__init__()
        check_scale(config.scale, (2, 3, 4), "IDN")
        self.config = config
        f, sc = config.n_feats, config.scale
        self.fblock = FBlock(f)
        self.dblocks = nn.Sequential(*[DBlock(f, config.d, config.s) for _ in range(config.n_blocks)])
        # output_padding = scale-1 gives exactly H*scale, what the official code gets via output_size
        self.deconv = nn.ConvTranspose2d(f, 3, 17, stride=sc, padding=8, output_padding=sc - 1)

    def forward(self, x):
        up = F.interpolate(x, scale_factor=self.config.scale, mode="bicubic", align_corners=False)
        return up + self.deconv(self.dblocks(self.fblock(x)))


@register_model
def idn(scale: int = 4, **kwargs) -> IDN:
    return IDN(IDNConfig(scale=scale, **kwargs))
