"""Parity of the integer program (any kernels) with the fake-quant model, decision by decision.

    rep = compare(model, lower(model).use(kernels), tiles, run=per_tile)
    rep.agreement, rep.unexplained, rep.sr_max, rep.psnr_db

Both executors are run on the same tiles with every dynamic layer's input recorded. A (tile, layer)
decision that differs is explained as:
- "follows": an earlier decision of the same tile differs;
- "tie": the model's two best logits are within `tie_rtol` of each other;
- "boundary": a quantizer of the same tile up to this layer's own rounded some element to a different integer on
  its top grid in the two runs (the rounding float noise can decide: the statistics read it, and the chosen
  candidate's levels start from it, ops.on_top_grid), and that element's scaled value
  clamp(x, -a_T, a_T)/a_T*s_T sat within `boundary_tol` of a .5 rounding boundary (the two executors'
  convolutions round differently in the last bits);
- else "unexplained" (a bug).
"""
from __future__ import annotations

import contextlib
import math
from dataclasses import dataclass, field

import torch

from .lowering import IntegerProgram, IntQuantizer, Kernels
from .ops import tile_gradient
from .transform import dynamic_quantizers


@dataclass
class Disagreement:
    tile: int
    layer: int
    model_bits: float
    program_bits: float
    cause: str
    detail: str = ""


@dataclass
class ParityReport:
    n_decisions: int
    n_agree: int
    sr_max: float
    sr_mean: float
    psnr_db: float  # SR of the program against the model's, peak 255
    disagreements: list[Disagreement] = field(default_factory=list)

    @property
    def agreement(self) -> float:
        return self.n_agree / self.n_decisions if self.n_decisions else 1.0

    @property
    def unexplained(self) -> list[Disagreement]:
        return [d for d in self.disagreements if d.cause == "unexplained"]

    def __str__(self) -> str:
        causes: dict[str, int] = {}
        for d in self.disagreements:
            causes[d.cause] = causes.get(d.cause, 0) + 1
        return (f"decisions {self.n_agree}/{self.n_decisions} agree ({self.agreement:.4%}); disagreements by cause "
                f"{causes or '{}'}; SR max {self.sr_max:.4g}, mean {self.sr_mean:.3g}, PSNR {self.psnr_db:.2f} dB")


class _Recorder(Kernels):
    """Wraps kernels and keeps each dynamic layer's input (float, on the CPU) in call order."""

    def __init__(self, inner: Kernels, watch: list[IntQuantizer]):
        self.inner, self.name = inner, inner.name
        self.watch = {id(q): i for i, q in enumerate(watch)}
        self.inputs: dict[int, list[torch.Tensor]] = {i: [] for i in range(len(watch))}

    def tile_gradient(self, lr):
        return self.inner.tile_gradient(lr)

    def select_quantize(self, x, quant, ctx, dequant=False):
        if id(quant) in self.watch:
            self.inputs[self.watch[id(quant)]].append(x.detach().float().cpu())
        return self.inner.select_quantize(x, quant, ctx, dequant)

    def dequantize(self, qa):
        return self.inner.dequantize(qa)

    def conv(self, qa, conv):
        return self.inner.conv(qa, conv)

    def fake_quant(self, x, alpha, s):
        return self.inner.fake_quant(x, alpha, s)


@contextlib.contextmanager
def _recording(program, quants):
    """{layer: [inputs]} of the program's dynamic quantizers while the block runs: through its kernels (a lowered
    program) or its own taps (a fused program that computes them in place, `cadyq.runtime.native_cpu`)."""
    if isinstance(program, IntegerProgram):
        recorder, inner = _Recorder(program.kernels, quants), program.kernels
        program.use(recorder)
        try:
            yield recorder.inputs
        finally:
            program.use(inner)
        return
    program.taps = {i: [] for i in range(len(quants))}
    try:
        yield program.taps
    finally:
        program.taps = None


def _model_run(model, tiles):
    qs = dynamic_quantizers(model)
    inputs: dict[int, torch.Tensor] = {}
    hooks = [q.register_forward_pre_hook(lambda m, a, i=i: inputs.__setitem__(i, a[0].detach().float().cpu()))
             for i, q in enumerate(qs)]
    try:
        with torch.no_grad():
            sr = model(tiles)
        bits = torch.stack([q.last_bits.float() for q in qs], 1)
    finally:
        for h in hooks:
            h.remove()
    return sr.float().cpu(), bits.cpu(), inputs


def _logits(q: IntQuantizer, x: torch.Tensor, grad: torch.Tensor, tile_logits) -> torch.Tensor | None:
    """Float64 logits of the candidates for inputs x [N,C,H,W] (None when they do not depend on x): the statistics
    of x on the top grid, as the quantizer reads them."""
    if q.mode == "full":
        sigma = (q.top_integers(x.float()) / q.levels[-1] * q.alpha[-1]).double().std(dim=(2, 3))
        return torch.cat([grad.double(), sigma], 1) @ q.weight.double().t() + q.bias.double()
    if q.mode == "tile" and tile_logits is not None:
        return tile_logits.double()
    return None


def _scaled(q: IntQuantizer, x: torch.Tensor) -> torch.Tensor:
    """x on q's top grid before rounding: clamp(x, -a_T, a_T) / a_T * s_T."""
    a, s = q.alpha[-1].double(), q.levels[-1].double()
    return x.double().clamp(-a, a) / a * s


def compare(model, program: IntegerProgram, tiles: torch.Tensor, *, run=None, tie_rtol: float = 1e-4,
            boundary_tol: float = 1e-3) -> ParityReport:
    """Run `model` (fake quant) and `program` on `tiles` and explain every differing decision.
    `run(program, tiles) -> (sr, bits)` runs the program (default: one call on the whole batch)."""
    quants = program.dynamic
    sr_m, bits_m, in_m = _model_run(model, tiles)
    with _recording(program, quants) as inputs:
        with torch.no_grad():
            sr_p, bits_p = run(program, tiles) if run is not None else program(tiles)
    sr_p, bits_p = sr_p.float().cpu(), bits_p.float().cpu()
    in_p = {i: torch.cat(v) for i, v in inputs.items()}
    with torch.no_grad():
        grad = tile_gradient(tiles.float()).cpu()
        tile_logits = program.net.tile_selector(grad) if hasattr(program.net, "tile_selector") else None
    diff = (sr_p - sr_m).abs()
    mse = float((sr_p.clamp(0, 255).round() - sr_m.clamp(0, 255).round()).double().pow(2).mean())
    rep = ParityReport(bits_m.numel(), int((bits_m == bits_p).sum()), float(diff.max()), float(diff.mean()),
                       10 * math.log10(255.0 ** 2 / mse) if mse > 0 else math.inf)
    for n, j in (bits_m != bits_p).nonzero().tolist():
        rep.disagreements.append(_explain(n, j, quants, bits_m, bits_p, in_m, in_p, grad, tile_logits, tie_rtol,
                                          boundary_tol))
    return rep


def _explain(n, j, quants, bits_m, bits_p, in_m, in_p, grad, tile_logits, tie_rtol, boundary_tol) -> Disagreement:
    d = Disagreement(n, j, float(bits_m[n, j]), float(bits_p[n, j]), "unexplained")
    if (bits_m[n, :j] != bits_p[n, :j]).any():
        d.cause = "follows"
        return d
    q = quants[j]
    lg = _logits(q, in_m[j][n:n + 1], grad[n:n + 1], None if tile_logits is None else tile_logits[n:n + 1])
    if lg is not None:
        top = lg[0].sort(descending=True).values
        if float(top[0] - top[1]) <= tie_rtol * max(1.0, float(top[0].abs())):
            d.cause, d.detail = "tie", f"logit gap {float(top[0] - top[1]):.3g}"
            return d
    for jj in range(j + 1):  # a quantizer of this tile up to this one that rounded an element differently
        um, up = _scaled(quants[jj], in_m[jj][n]), _scaled(quants[jj], in_p[jj][n])
        flips = torch.round(um) != torch.round(up)
        if flips.any():
            near = (um[flips] - um[flips].floor() - 0.5).abs().min()
            near_p = (up[flips] - up[flips].floor() - 0.5).abs().min()
            if float(torch.minimum(near, near_p)) <= boundary_tol:
                d.cause, d.detail = "boundary", f"layer {jj}: {int(flips.sum())} element(s) rounded differently"
                return d
    return d


def bit_hist(bits: torch.Tensor) -> dict[int, int]:
    return {int(b): int((bits == b).sum()) for b in bits.unique()}


__all__ = ["compare", "ParityReport", "Disagreement", "bit_hist"]
