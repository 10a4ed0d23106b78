from __future__ import annotations

import math

import torch
import torch.nn as nn

from ..errors import ModelError

DIV2K_MEAN = (0.4488, 0.4371, 0.4040)


def conv3x3(cin: int, cout: int, bias: bool = True, groups: int = 1) -> nn.Conv2d:
    return nn.Conv2d(cin, cout, 3, padding=1, bias=bias, groups=groups)


class MeanShift(nn.Module):
    """Adds (sign=+1) or subtracts (sign=-1) the DIV2K RGB mean, scaled to the input range.
    A constant, not a parameter: EDSR-PyTorch's frozen 1x1 conv keys are dropped on import."""

    def __init__(self, value_range: float, sign: int):
        super().__init__()
        self.register_buffer("shift", sign * value_range * torch.tensor(DIV2K_MEAN).view(1, 3, 1, 1), persistent=False)

    def forward(self, x):
        return x + self.shift


def check_scale(scale: int, supported: tuple[int, ...], name: str) -> None:
    if scale not in supported:
        raise ModelError(f"{name} supports scales {supported}, not x{scale}")


class PixelShuffleUpsampler(nn.Sequential):
    """EDSR's Upsampler: (conv 4C, shuffle 2) per factor 2, or (conv 9C, shuffle 3); optional act."""

    def __init__(self, scale: int, channels: int, bias: bool = True, act: type[nn.Module] | None = None):
        layers: list[nn.Module] = []
        if scale & (scale - 1) == 0:
            for _ in range(int(math.log2(scale))):
                layers += [conv3x3(channels, 4 * channels, bias), nn.PixelShuffle(2)]
                if act is not None:
                    layers.append(act())
        elif scale == 3:
            layers += [conv3x3(channels, 9 * channels, bias), nn.PixelShuffle(3)]
            if act is not None:
                layers.append(act())
        else:
            raise ModelError(f"upsampler supports x2, x3, x4, x8, not x{scale}")
        super().__init__(*layers)
