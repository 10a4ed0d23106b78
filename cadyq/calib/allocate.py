"""Bit allocation from measured sensitivity: which layer, and which tile within a layer, can take fewer bits.

    sens = measure(model, lr_tiles)                 # a cadyq model with calibrated clip values
    alloc = allocate(sens, fqr=6.0)                 # per layer: thresholds on the selector's statistic
    alloc = allocate(sens, fqr=6.0, dynamic=False)  # per layer: one bit-width (static mixed precision)
    apply(model, alloc)                             # writes the selectors' weights

`measure` runs the model with every selector forced: all layers at the highest candidate (the base), then each
layer alone at each lower candidate. Damage D[j, k, i] = mean squared change of SR tile i (0..255 scale) when layer
j runs at candidate k; t[j, i] = the statistic a CADyQ selector can see of layer j's input, the mean over channels
of its per-channel standard deviation (the input std predicts the damage within a layer: rank correlation +0.8 on
EDSR's block inputs, `benchmarks/sensitivity.md`). The damage is measured against the model's own top-bit output,
so no HR images are needed.

`allocate` minimises sum_ij D[j, k_ij, i] + lam * bits[k_ij] (damages taken as additive over layers) with lam
bisected until the calibration tiles' FQR is at most the target. Dynamic: per layer, the tiles sorted by t are cut
into consecutive runs of increasing candidates (dynamic programming), so a tile's bits can only grow with its
input's std; static: one candidate per layer for every tile. Both come from the same measurement, so the static
allocation is the honest baseline of the dynamic one at the same FQR.

`apply` expresses a dynamic layer's cut points exactly in CADyQ's selector form (logits = W [grad, sigma] + b):
with the candidates some tile takes numbered r = 0, 1, ... and tau_r the cut below the r-th,
logit = gamma * (r * t - sum_{q<=r} tau_q), whose argmax is the candidate whose interval holds t (the others get a
constant -1e4); gamma = 4 / std(t) keeps the logits trainable.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np
import torch
import torch.nn as nn

from ..errors import CadyqError
from ..quant import dynamic_quantizers, quant_config
from ..quant.ops import on_top_grid



@dataclass
class Sensitivity:
    bits: list[int]  # the candidates, ascending
    damage: np.ndarray  # [L, K, N]: MSE change of each SR tile with layer j alone at candidate k (0 at the top)
    stat: np.ndarray  # [L, N]: mean over channels of layer j's per-channel input std, at the base run
    tiles: int

    def to_dict(self) -> dict:
        return {"bits": self.bits, "tiles": self.tiles, "damage": self.damage.tolist(), "stat": self.stat.tolist()}

    @classmethod
    def from_dict(cls, d: dict) -> "Sensitivity":
        return cls(list(d["bits"]), np.asarray(d["damage"], np.float64), np.asarray(d["stat"], np.float64),
                   int(d["tiles"]))


@dataclass
class Allocation:
    bits: list[int]
    cuts: list[list[float]]  # per layer: K-1 cut points on t (-inf/inf: a candidate no tile takes)
    dynamic: bool
    lam: float
    fqr: float  # on the calibration tiles
    estimated_damage: float  # sum of the chosen damages, mean per tile

    def to_dict(self) -> dict:
        d = asdict(self)
        d["cuts"] = [[c if np.isfinite(c) else (1e30 if c > 0 else -1e30) for c in row] for row in self.cuts]
        return d


def _selectors(model: nn.Module) -> list[nn.Module]:
    cfg = quant_config(model)
    if cfg.method != "cadyq" or cfg.mode != "full":
        raise CadyqError(f"bit allocation sets CADyQ's per-layer selectors; this model is {cfg.method} ({cfg.mode})")
    return dynamic_quantizers(model)


@torch.no_grad()
def force_candidates(selectors: list[nn.Module], ks) -> None:
    """Fix each CADyQ selector on one candidate for every tile: `ks[j]` is the index into the candidates of
    selector j (constant logits; the measurement's forced runs and the uniform-bit baselines)."""
    for q, k in zip(selectors, ks, strict=True):
        q.net.weight.zero_()
        q.net.bias.zero_()
        q.net.bias[k] = 1.0


@torch.no_grad()
def measure(model: nn.Module, lr: torch.Tensor, batch: int = 8, progress=None) -> Sensitivity:
    """The damage of each layer's drop to each lower candidate on each LR tile [N,3,h,w] (0..255)."""
    sel = _selectors(model)
    model.eval()
    bits = [int(b) for b in sel[0].bits.tolist()]
    kept = [(q.net.weight.clone(), q.net.bias.clone()) for q in sel]
    L, K, N = len(sel), len(bits), lr.shape[0]

    stats: list[list[torch.Tensor]] = [[] for _ in sel]
    hooks = []

    def run():
        return _sr(model, lr, batch, progress)

    try:
        force_candidates(sel, [K - 1] * L)
        hooks = [q.register_forward_pre_hook(lambda m, a, j=j: stats[j].append(_selector_std(m, a[0]).mean(1)))
                 for j, q in enumerate(sel)]
        base = run()
        for h in hooks:
            h.remove()
        hooks = []
        damage = np.zeros((L, K, N))
        for j in range(L):
            for k in range(K - 1):
                force_candidates(sel, [k if i == j else K - 1 for i in range(L)])
                damage[j, k] = ((run() - base) ** 2).mean(dim=(1, 2, 3)).double().numpy()
    finally:
        for h in hooks:
            h.remove()
        for q, (w, b) in zip(sel, kept):
            q.net.weight.copy_(w)
            q.net.bias.copy_(b)
    stat = torch.stack([torch.cat(s) for s in stats]).double().numpy()
    return Sensitivity(bits, damage, stat, N)


def _selector_std(q, x: torch.Tensor) -> torch.Tensor:
    """The per-channel std a selector reads [N, C]: of its input on the top candidate's grid (ops.on_top_grid)."""
    return on_top_grid(x.float(), q.alpha.detach(), 2.0 ** (q.bits - 1) - 1)[0].std(dim=(2, 3))


def _sr(model: nn.Module, lr: torch.Tensor, batch: int, progress) -> torch.Tensor:
    """The model's SR tiles of `lr`, `batch` at a time; `progress(1)` after each batch."""
    out = []
    for i in range(0, lr.shape[0], batch):
        out.append(model(lr[i:i + batch].float()).float())
        if progress is not None:
            progress(1)
    return torch.cat(out)


def _cut_layer(d: np.ndarray, t: np.ndarray, cost: np.ndarray, dynamic: bool) -> np.ndarray:
    """Candidate per tile [N] minimising sum_i d[k_i, i] + cost[k_i], with k non-decreasing in t (dynamic) or
    the same for every tile (static)."""
    K, N = d.shape
    if not dynamic:
        return np.full(N, int(np.argmin(d.sum(1) + cost * N)))
    order = np.argsort(t, kind="stable")
    c = np.concatenate([np.zeros((K, 1)), np.cumsum(d[:, order] + cost[:, None], 1)], 1)  # [K, N+1] prefix costs
    # f[k, p]: least cost of the first p sorted tiles with candidates 0..k; the run of k is [s, p), s = arg[k, p]
    f, arg = np.empty((K, N + 1)), np.zeros((K, N + 1), dtype=int)
    f[0] = c[0]
    for k in range(1, K):
        g = f[k - 1] - c[k]
        arg[k] = _argmin_prefix(g)
        f[k] = c[k] + g[arg[k]]
    ks, p = np.zeros(N, dtype=int), N
    for k in range(K - 1, 0, -1):
        s = arg[k, p]
        ks[order[s:p]] = k
        p = s
    return ks


def _argmin_prefix(g: np.ndarray) -> np.ndarray:
    """For each p, the index s <= p of the least g[s]."""
    out, best = np.zeros(len(g), dtype=int), 0
    for p in range(len(g)):
        if g[p] < g[best]:
            best = p
        out[p] = best
    return out


def _cuts(ks: np.ndarray, t: np.ndarray, K: int) -> list[float]:
    """Cut points tau_1..tau_{K-1} on t reproducing ks (non-decreasing in t): midpoints between runs."""
    cuts = []
    for k in range(1, K):
        lo, hi = t[ks < k], t[ks >= k]
        if not len(hi):
            cuts.append(np.inf)
        elif not len(lo):
            cuts.append(-np.inf)
        else:
            cuts.append(float((lo.max() + hi.min()) / 2))
    return cuts


def _three_runs_within(d: np.ndarray, t: np.ndarray, bits: np.ndarray, fqr: float) -> np.ndarray:
    """Candidate per tile [N] minimising sum_i d[k_i, i] over assignments non-decreasing in t (three runs) whose mean
    bits are at most `fqr`: every pair of cut positions, O(N^2). (The Lagrangian path of `allocate` can jump over a
    budget: here a single decision per tile makes the exact search cheap.)"""
    K, N = d.shape
    order = np.argsort(t, kind="stable")
    c = np.concatenate([np.zeros((K, 1)), np.cumsum(d[:, order], 1)], 1)  # [3, N+1]
    a, b = np.triu_indices(N + 1)  # a <= b: tiles [0, a) at k0, [a, b) at k1, [b, N) at k2
    cost = c[0, a] + c[1, b] - c[1, a] + c[2, N] - c[2, b]
    total_bits = a * bits[0] + (b - a) * bits[1] + (N - b) * bits[2]
    cost[total_bits > fqr * N + 1e-9] = np.inf
    best = int(np.argmin(cost))
    ks = np.empty(N, dtype=int)
    ks[order[:a[best]]], ks[order[a[best]:b[best]]], ks[order[b[best]:]] = 0, 1, 2
    return ks


def allocate(sens: Sensitivity, fqr: float, dynamic: bool = True) -> Allocation:
    """Bits for every layer (and tile, if dynamic) at an FQR of at most `fqr` on the calibration tiles."""
    bits = np.asarray(sens.bits, np.float64)
    if not bits[0] <= fqr:
        raise CadyqError(f"--fqr {fqr} is below the lowest candidate ({sens.bits[0]} bits)")
    L, K, N = sens.damage.shape
    if L == 1 and K == 3 and dynamic:  # one decision per tile (Granular-DQ): the exact optimum within the budget
        ks = _three_runs_within(sens.damage[0], sens.stat[0], bits, fqr)[None]
        dmg = float(sens.damage[0, ks[0], np.arange(N)].sum() / N)
        return Allocation(list(sens.bits), [_cuts(ks[0], sens.stat[0], K)], True, float("nan"), float(bits[ks].mean()), dmg)

    def solve(lam):
        ks = np.stack([_cut_layer(sens.damage[j], sens.stat[j], lam * bits, dynamic) for j in range(L)])
        return ks, float(bits[ks].mean())

    lo, hi = 0.0, 1.0
    while solve(hi)[1] > fqr and hi < 1e12:
        hi *= 4
    for _ in range(40):  # the smallest lam whose FQR is within the target
        mid = (lo + hi) / 2
        lo, hi = (mid, hi) if solve(mid)[1] > fqr else (lo, mid)
    ks, q = solve(hi)
    dmg = float(sum(sens.damage[j, ks[j], np.arange(N)].sum() for j in range(L)) / N)
    cuts = [_cuts(ks[j], sens.stat[j], K) for j in range(L)]
    return Allocation(list(sens.bits), cuts, dynamic, hi, q, dmg)


@torch.no_grad()
def apply(model: nn.Module, alloc: Allocation, sens: Sensitivity) -> nn.Module:
    """Write the allocation into the model's selectors (in place); returns the model."""
    sel = _selectors(model)
    if len(sel) != len(alloc.cuts):
        raise CadyqError(f"the allocation has {len(alloc.cuts)} layers, the model {len(sel)} selectors")
    if [int(b) for b in sel[0].bits.tolist()] != list(alloc.bits):
        raise CadyqError(f"the allocation is for bits {tuple(alloc.bits)}, the model's candidates are "
                         f"{tuple(int(b) for b in sel[0].bits.tolist())}; measure this model (another --sensitivity file)")
    for j, (q, cuts) in enumerate(zip(sel, alloc.cuts)):
        _write_selector(q.net.weight, q.net.bias, cuts, sens.stat[j], offset=2, channels=q.net.weight.shape[1] - 2)
    return model


def _write_selector(w: torch.Tensor, b: torch.Tensor, cuts, stat: np.ndarray, offset: int, channels: int) -> None:
    """Logits over the candidates that pick the one whose interval of cuts holds t = the mean of the `channels`
    inputs from `offset` on."""
    w.zero_()
    b.zero_()
    bounds = [-np.inf, *cuts, np.inf]
    used = [k for k in range(len(cuts) + 1) if bounds[k] < bounds[k + 1]]  # candidates some t selects
    if len(used) == 1:  # one candidate for every tile
        b[used[0]] = 1.0
        return
    # the used candidates in order, r = 0, 1, ...: logit = gamma * (r * t - sum of the cuts below); the others
    # can never win. Finite cuts only: no large constants, so no precision lost near a cut.
    gamma = 4.0 / max(float(np.std(stat)), 1e-6)
    below = 0.0
    for k in range(len(cuts) + 1):
        if k not in used:
            b[k] = -1e4
            continue
        r = used.index(k)
        if r:
            below += bounds[k]  # the cut between the previous used candidate and k
        w[k, offset:offset + channels] = gamma * r / channels
        b[k] = -gamma * below


# Granular-DQ (one bit-width per tile for every layer). Its controller (GBC) picks among b0, b2, b3 from the head
# feature's statistics; b1 is reached only through the entropy refinement (E2B) of b3 tiles, which an allocation
# switches off. The measurement is exact for this decision space: the whole network at b0 and at b2 against b3,
# per tile (no additivity over layers needed), with t = the channel mean of the head feature's per-channel std
# (the first C inputs of the GBC). `allocate` then cuts the tiles sorted by t into runs of b0, b2, b3 as for one
# CADyQ layer, and `apply` writes the cuts into the GBC's Linear in the same selector form.
GDQ_CLASSES = (0, 2, 3)  # the candidates the GBC's three classes stand for


def _gdq(model: nn.Module):
    cfg = quant_config(model)
    if cfg.method != "gdq":
        raise CadyqError(f"a per-tile allocation sets Granular-DQ's controller; this model is {cfg.method}")
    return model.gdq


@torch.no_grad()
def measure_tiles(model: nn.Module, lr: torch.Tensor, batch: int = 8, progress=None) -> Sensitivity:
    """Granular-DQ: the damage [1, 3, N] of running every layer at b0 and at b2 instead of b3 on each LR tile, and
    the GBC's statistic t [1, N]."""
    from ..quant import plan_for

    gdq = _gdq(model)
    model.eval()
    kept = (gdq.gbc.weight.clone(), gdq.gbc.bias.clone(), gdq.thresholds.clone())
    N, stats = lr.shape[0], []
    head = model.get_submodule(plan_for(model).head)

    def run(cls):
        gdq.gbc.weight.zero_()
        gdq.gbc.bias.zero_()
        gdq.gbc.bias[cls] = 1.0
        gdq.thresholds.fill_(-1.0)  # entropy >= 0 > t2: a b3 tile stays b3
        return _sr(model, lr, batch, progress)

    hook = head.register_forward_hook(lambda m, a, out: stats.append(out.float().std(dim=(2, 3)).mean(1)))
    try:
        base = run(2)
        hook.remove()
        damage = np.zeros((1, 3, N))
        for c in (0, 1):
            damage[0, c] = ((run(c) - base) ** 2).mean(dim=(1, 2, 3)).double().numpy()
    finally:
        hook.remove()
        gdq.gbc.weight.copy_(kept[0])
        gdq.gbc.bias.copy_(kept[1])
        gdq.thresholds.copy_(kept[2])
    bits = [int(gdq.bits[k]) for k in GDQ_CLASSES]
    return Sensitivity(bits, damage, torch.cat(stats)[None].double().numpy(), N)


@torch.no_grad()
def apply_tiles(model: nn.Module, alloc: Allocation, sens: Sensitivity) -> nn.Module:
    """Write a per-tile allocation (from `measure_tiles`) into the Granular-DQ controller (in place); E2B is switched
    off (b3 tiles stay b3). Returns the model."""
    gdq = _gdq(model)
    bits = [int(gdq.bits[k]) for k in GDQ_CLASSES]
    if len(alloc.cuts) != 1 or list(alloc.bits) != bits:
        raise CadyqError(f"the allocation is not a per-tile one for this model's controller (bits {tuple(bits)}); "
                         "measure this model (another --sensitivity file)")
    _write_selector(gdq.gbc.weight, gdq.gbc.bias, alloc.cuts[0], sens.stat[0], offset=0,
                    channels=gdq.gbc.weight.shape[1] // 3)
    gdq.thresholds.fill_(-1.0)
    return model


__all__ = ["Sensitivity", "Allocation", "measure", "allocate", "apply", "measure_tiles", "apply_tiles"]
