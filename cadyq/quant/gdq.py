"""Granular-DQ (AAAI 2025): one bit-width per tile for every layer, from a granularity-bit controller
(GBC) on the head feature, refined for high-bit tiles by entropy-to-bit (E2B).

Candidates: four bit-widths (b0 < b1 < b2 < b3), default (4, 5, 6, 8).

- GBC: features [sigma_1, sigma_2, sigma_4] of the head feature f [N,C,H,W], sigma_g = the per-channel
  spatial standard deviation of avgpool_g(f) (input detached). The official controller global-averages
  f, avgpool2(f) and avgpool4(f): for tiles whose size is divisible by 4 those three means are equal,
  so its "three granularities" are one vector three times. The standard deviation after pooling
  differs per scale: pooling removes the detail finer than its window, so sigma_1 >= sigma_2 >= sigma_4
  and their gaps measure how much of the tile's content is fine, medium or coarse. Then
  Linear(3C -> 3) picks a class among (b0, b2, b3); initialised to pick b3 (as CADyQ's selectors).
  Training: Gumbel-softmax, hard one-hot forward, soft gradient (tau 1, as the official code);
  inference: argmax, deterministic (the official code samples Gumbel noise at inference too).
- E2B, for the tiles the GBC gave b3: entropy H of the tile's grayscale (0.2989, 0.587, 0.114)/255 in
  a 32-bin Gaussian-kernel histogram on [0, 1] (sigma 0.0255), H = -sum p ln p (nats, at most ln 32).
  H <= t1 -> b0, t1 < H <= t2 -> b1, H > t2 -> b3. t1, t2 are the quantiles (0.5, 0.9) of H over a
  calibration set (the official E2B.json holds such quantiles; its generating script is not
  released): `observe()` and `cadyq calibrate` set them.
"""
from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

from ..errors import ModelError

GRAINS = (1, 2, 4)
HIST_BINS = 32
HIST_SIGMA = 0.0255
GRAY_GDQ = (0.2989, 0.587, 0.114)
QUANTILES = (0.5, 0.9)


def tile_entropy(lr: torch.Tensor, bins: int = HIST_BINS, sigma: float = HIST_SIGMA) -> torch.Tensor:
    """Entropy (nats) of each tile's grayscale in a Gaussian-kernel histogram: [N,3,H,W] in [0,255] -> [N]."""
    gray = (lr.float() / 255.0 * lr.new_tensor(GRAY_GDQ, dtype=torch.float32).view(1, 3, 1, 1)).sum(1).flatten(1)
    centres = (torch.arange(bins, device=lr.device, dtype=torch.float32) + 0.5) / bins
    k = torch.exp(-0.5 * ((gray.unsqueeze(-1) - centres) / sigma) ** 2)  # [N, HW, bins]
    hist = k.sum(1)
    p = hist / hist.sum(1, keepdim=True).clamp_min(1e-30)
    return -(p * torch.log(p.clamp_min(1e-30))).sum(1)


def granularity_features(f: torch.Tensor) -> torch.Tensor:
    """[sigma_1, sigma_2, sigma_4] of the head feature [N,C,H,W] -> [N, 3C]."""
    f = f.detach().float()
    out = []
    for g in GRAINS:
        p = f if g == 1 else F.avg_pool2d(f, g, ceil_mode=True)
        out.append(p.std(dim=(2, 3)) if p.shape[2] * p.shape[3] > 1 else torch.zeros_like(p[:, :, 0, 0]))
    return torch.cat(out, 1)


def _gumbel_hard(logits: torch.Tensor) -> torch.Tensor:
    u = torch.rand_like(logits).clamp_(1e-10, 1 - 1e-10)
    y = ((logits - torch.log(-torch.log(u)))).softmax(1)
    hard = F.one_hot(y.argmax(1), y.shape[1]).to(y.dtype)
    return hard - y.detach() + y


class GranularDQ(nn.Module):
    """The tile decision of Granular-DQ: GBC on the head feature + E2B on the input tile.
    `decide(head, entropy)` -> (probabilities over the 4 candidates [N,4] (value one-hot; soft
    gradient in training), candidate index [N])."""

    def __init__(self, channels: int, bits=(4, 5, 6, 8)):
        super().__init__()
        bits = tuple(sorted(int(b) for b in bits))
        if len(bits) != 4:
            raise ModelError(f"Granular-DQ takes 4 bit candidates (b0 < b1 < b2 < b3, default 4,5,6,8), got {bits}")
        self.bits = bits
        self.gbc = nn.Linear(len(GRAINS) * channels, 3)
        with torch.no_grad():  # like CADyQ's selectors: start at the highest bit-width
            self.gbc.weight.zero_()
            self.gbc.bias.copy_(torch.tensor([0.0, 0.0, 1.0]))
        self.register_buffer("thresholds", torch.tensor([2.8009, 3.1828]))  # the official E2B at (0.5, 0.9)
        self.register_buffer("quantiles", torch.tensor(QUANTILES))
        self.observing = False
        self._seen: list[torch.Tensor] = []
        self.last_entropy: torch.Tensor | None = None

    def observe_entropy(self, entropy: torch.Tensor) -> None:
        self._seen.append(entropy.detach().float().cpu())

    @torch.no_grad()
    def finish_observing(self) -> None:
        """t1, t2 = the quantiles of the entropies seen while observing."""
        if self._seen:
            h = torch.cat(self._seen)
            self.thresholds.copy_(torch.quantile(h, self.quantiles.cpu()).to(self.thresholds))
        self._seen = []

    def e2b(self, entropy: torch.Tensor) -> torch.Tensor:
        """Candidate index for a high-bit tile: 0 (b0) if H <= t1, 1 (b1) if H <= t2, else 3 (b3)."""
        t1, t2 = self.thresholds[0], self.thresholds[1]
        return torch.where(entropy <= t1, 0, torch.where(entropy <= t2, 1, 3))

    def decide(self, head: torch.Tensor, entropy: torch.Tensor):
        logits = self.gbc(granularity_features(head))
        # Gumbel sampling trains the controller; a frozen one (an allocation being fine-tuned) decides as at inference
        noisy = self.training and self.gbc.weight.requires_grad
        y = _gumbel_hard(logits) if noisy else F.one_hot(logits.argmax(1), 3).to(logits.dtype)
        refine = F.one_hot(self.e2b(entropy), 4).to(y.dtype)  # where the b3 class goes
        gbc_to = torch.zeros(3, 4, dtype=y.dtype, device=y.device)
        gbc_to[0, 0] = gbc_to[1, 2] = 1.0  # classes b0, b2 map to themselves
        p = y[:, :2] @ gbc_to[:2] + y[:, 2:3] * refine
        return p, p.argmax(1)

    def extra_repr(self) -> str:
        return f"bits={self.bits}, thresholds={[round(float(t), 4) for t in self.thresholds]}"


def e2b_reference(entropy, t1: float, t2: float, bits=(4, 5, 6, 8)) -> list[int]:
    """The E2B rule in plain Python, for tests: bits of a b3 tile of each entropy."""
    return [bits[0] if h <= t1 else bits[1] if h <= t2 else bits[3] for h in entropy]


__all__ = ["GranularDQ", "tile_entropy", "granularity_features", "e2b_reference", "GRAINS", "QUANTILES"]
