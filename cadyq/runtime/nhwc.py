"""Float layers rewritten for channels_last execution (the native backends' float part).

torch's pixel_shuffle on a channels_last tensor gathers every output element from a channel stride of
r*r: 4x slower than the copy it could be. Ordering the producing conv's output channels as (i, j, c)
instead of (c, i, j) makes the shuffle a copy of whole C-channel runs:

    conv output, NHWC memory [N, H, W, r, r, C]  ->  [N, H, r, W, r, C] = NHWC [N, H*r, W*r, C]

Same values as conv -> PixelShuffle, bit for bit.
"""
from __future__ import annotations

import torch
import torch.nn as nn


class NHWCPixelShuffle(nn.Module):
    """PixelShuffle(r) of a channels_last tensor whose channels are ordered (i, j, c)."""

    def __init__(self, r: int):
        super().__init__()
        self.r = r

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        n, crr, h, w = x.shape
        r = self.r
        c = crr // (r * r)
        m = x.contiguous(memory_format=torch.channels_last).permute(0, 2, 3, 1)  # [N,H,W,rrC], a view
        y = m.reshape(n, h, w, r, r, c).permute(0, 1, 3, 2, 4, 5).reshape(n, h * r, w * r, c)
        return y.permute(0, 3, 1, 2)


def ijc_order(channels: int, r: int) -> torch.Tensor:
    """Output-channel permutation: new channel (i*r + j)*C + c takes old channel c*r*r + i*r + j."""
    return torch.tensor([c * r * r + i * r + j for i in range(r) for j in range(r) for c in range(channels)])


def nhwc_pixel_shuffles(net: nn.Module) -> int:
    """In place: every plain Conv2d -> PixelShuffle pair of an nn.Sequential gets (i, j, c)-ordered output
    channels and an NHWCPixelShuffle. Returns the number of pairs rewritten."""
    done = 0
    for seq in list(net.modules()):
        if not isinstance(seq, nn.Sequential):
            continue
        names = list(seq._modules)
        for a, b in zip(names, names[1:]):
            conv, shuffle = seq._modules[a], seq._modules[b]
            if type(conv) is not nn.Conv2d or type(shuffle) is not nn.PixelShuffle:
                continue
            r = shuffle.upscale_factor
            perm = ijc_order(conv.out_channels // (r * r), r)
            with torch.no_grad():
                conv.weight.copy_(conv.weight[perm])
                if conv.bias is not None:
                    conv.bias.copy_(conv.bias[perm])
            seq._modules[b] = NHWCPixelShuffle(r)
            done += 1
    return done
