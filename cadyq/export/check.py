"""Checks of an exported graph, and ONNX Runtime vs torch comparison with per-layer bisection.

- ``check_graph(path)``: ONNX checker (full check), strict shape inference, the CADyQSelect nodes,
  the model-local function and the cadyq metadata.
- ``compare(onnx_path, model, tiles)``: runs the graph in ONNX Runtime and the model in torch on
  the same tiles; reports bit-width agreement, SR errors, and on a mismatch the first layer whose
  outputs diverge. That bisection works as Polygraphy's ``--onnx-outputs mark all``: the tensors
  the exporter recorded for each conv and quantizer (metadata ``cadyq.taps``) are marked as graph
  outputs and compared with the torch outputs of the same modules (forward hooks).

Every bit-width disagreement is traced to a cause:

- ``logit tie``: the torch logits' top-2 gap is within float noise, ``gap <= tie_rtol * S`` with
  ``S = |W|·|features| + |b|`` (the scale of the dot product's rounding error);
- ``rounding boundary``: the layer's input differs between the two runs because an earlier
  quantizer rounded some element differently, and that element's scaled value on the quantizer's top
  grid, ``clamp(x, -a_T, a_T)/a_T*s_T``, lies within ``boundary_eps`` quantization steps of a .5 rounding
  boundary (float noise decides it; the roundings after that one start from the same grid values);
- ``upstream decision``: an earlier layer of the same tile chose another bit-width (itself a tie);
- ``unexplained``: none of these: a real difference between the graph and the model.

SR errors are stated over the tiles whose decisions all agree (a tile with another bit-width
legitimately gives another result); both tolerances are in [0,255] units.
"""
from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import onnx
import torch
import torch.nn as nn
import torch.nn.functional as F

from ..errors import CadyqError
from ..sizes import size_text
from ..quant import ActQuant, BitSelector, ModelInfo, dynamic_quantizers, quant_config
from ..quant.ops import fake_quant, levels, on_top_grid, tile_gradient
from . import op as cadyq_op
from .onnx_export import INPUT, INTEGER_FORMS, META_EXPORT, META_INFO, META_TAPS, OUTPUTS, TILE_GRADIENT, attach_taps
from .onnx_file import load_onnx

__all__ = ["GraphReport", "check_graph", "Report", "Disagreement", "LayerError", "compare", "Tolerances",
           "default_tolerances", "read_metadata"]


# --- graph checks ------------------------------------------------------------------------------------

@dataclass
class GraphReport:
    path: str
    ok: bool
    n_select: int = 0
    n_nodes: int = 0
    opset: int | None = None
    has_function: bool = False
    info: dict | None = None
    export: dict | None = None
    inputs: list[str] = field(default_factory=list)
    outputs: list[str] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)

    def __str__(self) -> str:
        lines = [f"{self.path}: {'OK' if self.ok else 'FAILED'}",
                 f"  nodes {self.n_nodes}, opset {self.opset}, CADyQSelect nodes {self.n_select}"
                 f"{' (model-local function present)' if self.has_function else ''}",
                 f"  inputs {', '.join(self.inputs)}; outputs {', '.join(self.outputs)}"]
        if self.info:
            i = self.info
            lines.append(f"  model: {i['backbone']} x{i['scale']} {i['method']} bits {tuple(i['bits'])} "
                         f"({sum(c['act_bits'] is None for c in i['layers'])} dynamic layers)")
        if self.export:
            lines.append(f"  export: {self.export.get('dtype')} tile {self.export.get('tile')} "
                         f"weights {self.export.get('weights')}")
        lines += [f"  problem: {p}" for p in self.problems]
        return "\n".join(lines)


def _shape(vi: onnx.ValueInfoProto) -> str:
    dims = [d.dim_param or str(d.dim_value) for d in vi.type.tensor_type.shape.dim]
    return f"{vi.name}[{','.join(dims)}]"


def read_metadata(proto: onnx.ModelProto) -> dict[str, str]:
    return {p.key: p.value for p in proto.metadata_props}


def check_graph(path: str | Path) -> GraphReport:
    """Checker (full_check) + strict shape inference + CADyQSelect/metadata checks. Never raises for
    a bad graph: the report lists the problems; a missing or unreadable file raises CadyqError."""
    path = Path(path)
    proto = load_onnx(path)
    rep = GraphReport(str(path), ok=True, n_nodes=len(proto.graph.node))
    rep.opset = next((o.version for o in proto.opset_import if o.domain in ("", "ai.onnx")), None)
    rep.inputs = [_shape(v) for v in proto.graph.input]
    rep.outputs = [_shape(v) for v in proto.graph.output]
    try:
        onnx.checker.check_model(proto, full_check=True)
    except Exception as e:
        rep.problems.append(f"ONNX checker: {e}")
    try:
        onnx.shape_inference.infer_shapes(proto, check_type=True, strict_mode=True, data_prop=True)
    except Exception as e:
        rep.problems.append(f"shape inference: {e}")
    sel = [n for n in proto.graph.node if n.domain == cadyq_op.DOMAIN and n.op_type == cadyq_op.OP_TYPE]
    rep.n_select = len(sel)
    rep.has_function = any(f.domain == cadyq_op.DOMAIN and f.name == cadyq_op.OP_TYPE for f in proto.functions)
    if sel and not rep.has_function:
        rep.problems.append("CADyQSelect nodes without the model-local function: ONNX Runtime cannot run it; "
                            "re-export, or call cadyq.export.op.add_functions")
    for n in sel:
        attrs = {a.name for a in n.attribute}
        if not {"bits", "plugin_namespace", "plugin_version"} <= attrs:
            rep.problems.append(f"CADyQSelect node {n.name!r} lacks bits/plugin_namespace/plugin_version")
            break
    meta = read_metadata(proto)
    if META_INFO not in meta:
        rep.problems.append("no 'cadyq' metadata: not exported by cadyq (export it with `cadyq export`)")
    else:
        try:
            rep.info = json.loads(meta[META_INFO])
            info = ModelInfo.from_dict(rep.info)
        except Exception as e:
            rep.problems.append(f"'cadyq' metadata unreadable: {e}")
        else:
            if info.method == "cadyq" and info.mode == "full" and rep.n_select != info.n_layers:
                rep.problems.append(f"{rep.n_select} CADyQSelect nodes, but the model has {info.n_layers} dynamic layers")
            if info.method != "cadyq" and rep.n_select:
                rep.problems.append(f"a {info.method} model should have no CADyQSelect nodes, found {rep.n_select}")
    if META_EXPORT in meta:
        rep.export = json.loads(meta[META_EXPORT])
    names_in = [v.name for v in proto.graph.input]
    names_out = [v.name for v in proto.graph.output]
    if names_in != [INPUT] or names_out[:2] != list(OUTPUTS):
        rep.problems.append(f"expected input {INPUT!r} and outputs {list(OUTPUTS)}, got {names_in} -> {names_out}")
    rep.ok = not rep.problems
    return rep


# --- torch vs ONNX Runtime --------------------------------------------------------------------------------

@dataclass(frozen=True)
class Tolerances:
    sr_mean: float  # mean |sr_ort - sr_torch| over agreeing tiles, [0,255] units
    sr_max: float  # max |...| over agreeing tiles
    min_agreement: float = 0.999  # fraction of (tile, layer) decisions with the same bit-width
    tie_rtol: float = 1e-4  # logit tie: top-2 gap <= tie_rtol * (|W|·|feat| + |b|)
    boundary_eps: float = 1e-2  # rounding boundary: within this many quantization steps of .5
    layer_rtol: float = 1e-3  # a layer's outputs diverge when mean|diff| / mean|ref| exceeds this on a tile
    # (quantized graphs: 1e-2, as rounding-boundary propagation alone reaches ~1e-3)


def default_tolerances(dtype: str = "fp32", method: str = "cadyq") -> Tolerances:
    """Tolerances for a graph of this compute dtype and method (measured in tests/test_ort_parity.py).

    Quantized models get loose end-to-end SR tolerances on purpose: ONNX Runtime's and torch's
    convolutions round differently (~1e-7 relative), which flips the odd element that sits on a
    rounding boundary; at 4 bits such a flip moves that element by alpha/7, and the following
    quantizers propagate it (a random-weight full-size EDSR with ~30% 4-bit choices reaches a mean
    |diff| of 0.27 and a max of 8.9 over 64 tiles of 32 px). What proves the graph right is the
    local check of every module on the graph's own inputs, which has tight tolerances."""
    quantized = method != "fp32"
    if dtype == "fp16":
        if not quantized:
            return Tolerances(sr_mean=0.05, sr_max=1.0, layer_rtol=1e-2)
        return Tolerances(sr_mean=1.0, sr_max=32.0, min_agreement=0.99, tie_rtol=2e-3, boundary_eps=0.25,
                          layer_rtol=3e-2)
    if not quantized:
        return Tolerances(sr_mean=1e-3, sr_max=1e-2)
    return Tolerances(sr_mean=0.5, sr_max=16.0, layer_rtol=1e-2)


@dataclass
class Disagreement:
    tile: int
    layer: int
    name: str  # the selector module
    torch_bits: float
    ort_bits: float
    gap: float  # torch top-2 logit gap
    cause: str  # "logit tie" | "rounding boundary" | "upstream decision" | "unexplained"
    detail: str = ""


@dataclass
class LayerError:
    key: str  # module path (":in" = the quantizer input, ":bits" = the chosen bit-widths)
    max_abs: float
    mean_abs: float
    rel_mean: float  # max over tiles of mean|diff| / mean|ref|


@dataclass
class Report:
    onnx_path: str
    n_tiles: int
    tile_shape: tuple[int, int]
    n_layers: int
    provider: str
    dtype: str
    tolerances: Tolerances
    n_decisions: int = 0
    n_agree: int = 0
    disagreements: list[Disagreement] = field(default_factory=list)
    sr_mean_abs: float = 0.0  # over tiles whose decisions all agree
    sr_max_abs: float = 0.0
    sr_max_abs_all: float = 0.0  # over every tile
    first_divergent: str | None = None  # first tap whose outputs differ (mean rel > layer_rtol) on a bisected tile
    first_local_mismatch: str | None = None  # first module computing otherwise than torch on the same input
    local_failures: list[str] = field(default_factory=list)
    bisected_tiles: list[int] = field(default_factory=list)
    layers: list[LayerError] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)

    @property
    def bit_agreement(self) -> float:
        return self.n_agree / self.n_decisions if self.n_decisions else 1.0

    @property
    def unexplained(self) -> list[Disagreement]:
        return [d for d in self.disagreements if d.cause == "unexplained"]

    @property
    def passed(self) -> bool:
        return not self.problems

    ok = passed

    def to_dict(self) -> dict:
        d = asdict(self)
        d.update(bit_agreement=self.bit_agreement, passed=self.passed)
        return d

    def __str__(self) -> str:
        t = self.tolerances
        h, w = self.tile_shape
        lines = [f"{self.onnx_path} vs torch on {self.n_tiles} tiles {size_text(h, w)} ({self.provider}, {self.dtype})"]
        if self.n_layers:
            lines.append(f"  bits: {100 * self.bit_agreement:.3f}% agree ({self.n_agree}/{self.n_decisions} decisions, "
                         f"need >= {100 * t.min_agreement:g}%)")
        causes: dict[str, int] = {}
        for d in self.disagreements:
            causes[d.cause] = causes.get(d.cause, 0) + 1
        if causes:
            lines.append("  disagreements: " + ", ".join(f"{n} {c}" for c, n in causes.items()))
        for d in self.disagreements[:8]:
            lines.append(f"    tile {d.tile} layer {d.layer} ({d.name}): torch {d.torch_bits:g} vs ort {d.ort_bits:g} bits, "
                         f"{d.cause}{': ' + d.detail if d.detail else ''}")
        if len(self.disagreements) > 8:
            lines.append(f"    ... {len(self.disagreements) - 8} more")
        lines.append(f"  sr: mean abs {self.sr_mean_abs:.3g} (tol {t.sr_mean:g}), max abs {self.sr_max_abs:.3g} "
                     f"(tol {t.sr_max:g}) over agreeing tiles; max abs {self.sr_max_abs_all:.3g} over all")
        if self.bisected_tiles:
            lines.append(f"  first diverging layer: {self.first_divergent or 'none'} (tiles {self.bisected_tiles})")
            lines.append(f"  first layer computing otherwise than torch on the same input: "
                         f"{self.first_local_mismatch or 'none (differences are rounding-boundary propagation)'}")
            lines += [f"    {m}" for m in self.local_failures[:5]]
            worst = sorted(self.layers, key=lambda e: -e.rel_mean)[:3]
            for e in worst:
                lines.append(f"    {e.key}: rel mean {e.rel_mean:.3g}, max abs {e.max_abs:.3g}")
        lines += [f"  FAIL: {p}" for p in self.problems]
        lines.append("PASS" if self.passed else "FAIL")
        return "\n".join(lines)


def _as_model(model) -> nn.Module:
    if isinstance(model, nn.Module):
        return model
    from ..checkpoint import load

    return load(model)


def _as_tiles(tiles) -> torch.Tensor:
    t = torch.as_tensor(np.asarray(tiles)) if not isinstance(tiles, torch.Tensor) else tiles
    if t.dim() == 3:
        t = t[None]
    if t.dim() != 4 or t.shape[1] != 3:
        raise CadyqError(f"tiles must be [N,3,h,w] RGB in [0,255], got shape {tuple(t.shape)}")
    return t.detach().float().cpu().contiguous()


def _session(proto: onnx.ModelProto, providers):
    import onnxruntime as ort

    so = ort.SessionOptions()
    so.log_severity_level = 3
    return ort.InferenceSession(proto.SerializeToString(), so, providers=providers or ["CPUExecutionProvider"])


def _tapped(proto: onnx.ModelProto, tensors: list[str]) -> onnx.ModelProto:
    """A copy of `proto` with the given tensors marked as graph outputs."""
    m = onnx.ModelProto()
    m.CopyFrom(proto)
    types = {v.name: v.type.tensor_type.elem_type for v in list(m.graph.value_info) + list(m.graph.output)}
    have = {o.name for o in m.graph.output}
    for t in tensors:
        if t not in have:
            m.graph.output.append(onnx.helper.make_tensor_value_info(t, types.get(t, onnx.TensorProto.FLOAT), None))
            have.add(t)
    return m


class _TorchRun:
    """Forward hooks recording the selectors' logits (always) and every tap (when asked)."""

    def __init__(self, model: nn.Module, keys: list[str] | None):
        self.model, self.keys = model, set(keys or ())
        self.sel = [q for q in dynamic_quantizers(model)]
        self.handles = []
        self.logits: list[torch.Tensor] = []
        self.scales: list[torch.Tensor] = []
        self.taps: dict[str, torch.Tensor] = {}
        self.keep: list[int] | None = None
        for j, q in enumerate(self.sel):
            if isinstance(q, BitSelector):
                self.handles.append(q.register_forward_pre_hook(self._logits_hook(j)))
        if keys:
            tap_handles, _ = attach_taps(model, self._record)
            self.handles += tap_handles

    def _record(self, key, t):
        if key in self.keys:
            t = t.detach()
            self.taps[key] = (t if self.keep is None else t[self.keep]).float().cpu().clone()

    def _logits_hook(self, j):
        def hook(q, args):
            n = args[0].shape[0]
            if q.mode == "full":
                feat = torch.cat([q.state.grad.double(), _top(q, args[0]).double().std(dim=(2, 3))], 1)
                w, b = q.net.weight.double(), q.net.bias.double()
                lg = F.linear(feat, w, b)
                sc = feat.abs() @ w.abs().t() + b.abs()
            else:
                lg = q.logits(args[0]).detach().double()
                sc = lg.abs() + 1.0
            self.logits[j], self.scales[j] = lg.reshape(n, -1), sc.reshape(n, -1)
        return hook

    @torch.no_grad()
    def __call__(self, x, keep: list[int] | None = None):
        """Run the model on x; record the taps of the tiles `keep` only (all when None)."""
        self.keep = keep
        self.logits = [None] * len(self.sel)
        self.scales = [None] * len(self.sel)
        self.taps = {}
        sr = self.model(x)
        bits = (torch.stack([q.last_bits for q in self.sel], 1) if self.sel and quant_config(self.model).method != "fp32"
                else torch.full((x.shape[0], 0), 32.0))
        return sr.float(), bits.float()

    def close(self):
        for h in self.handles:
            h.remove()


def _top_grid(q) -> tuple[float, int]:
    """(a_T, s_T): the clip value and levels of the grid the quantizer rounds its input to first, and returns its
    values on: the top candidate's (ops.on_top_grid); a fixed quantizer's own."""
    if isinstance(q, ActQuant):
        return float(q.alpha.detach().reshape(-1)[0]), levels(q.bits)
    return float(q.alpha.detach()[-1]), levels(int(q.bits[-1]))


def _candidates(q: BitSelector, device) -> tuple[torch.Tensor, torch.Tensor]:
    """(alpha [K], levels [K]) of a selector, float32 on `device`."""
    return q.alpha.detach().float().to(device), (2.0 ** (q.bits - 1) - 1).to(device)


def _top(q: BitSelector, x: torch.Tensor) -> torch.Tensor:
    """A selector's input on its top grid (float32): what its statistics are taken of."""
    return on_top_grid(x.detach().float(), *_candidates(q, x.device))[0]


def _quantize_as(q, x: torch.Tensor, bits: float) -> torch.Tensor:
    """What quantizer q returns for input x (every tile) with `bits` chosen (float32)."""
    x = x.detach().float()
    if isinstance(q, ActQuant):
        return fake_quant(x, q.alpha.detach().float().to(x.device), levels(q.bits))
    k = torch.full((x.shape[0],), int((q.bits == bits).nonzero()[0, 0]), dtype=torch.long, device=x.device)
    return on_top_grid(x, *_candidates(q, x.device), k)[1]


def compare(onnx_path: str | Path, model, tiles, *, tolerances: Tolerances | None = None, providers=None,
            batch: int = 16, bisect: str = "always", max_bisect_tiles: int = 2, max_trace_tiles: int = 16) -> Report:
    """Run `onnx_path` in ONNX Runtime and `model` (nn.Module or checkpoint path) in torch on
    `tiles` ([N,3,h,w] float in [0,255]); return a Report (``print(report)``, ``report.passed``).

    bisect: "always" (default) marks the intermediate outputs (as Polygraphy's "mark all") and
    runs them on the `max_bisect_tiles` tiles with the largest SR error plus the tiles with a
    bit-width disagreement (at most `max_trace_tiles`): first diverging layer, local checks of every
    module on the graph's own inputs, and the cause of each disagreement. "auto": only when
    something fails or a decision differs; "never": outputs only."""
    if bisect not in ("always", "auto", "never"):
        raise CadyqError(f"bisect must be 'always', 'auto' or 'never', not {bisect!r}")
    onnx_path = Path(onnx_path)
    proto = load_onnx(onnx_path)
    meta = read_metadata(proto)
    if META_INFO not in meta:
        raise CadyqError(f"{onnx_path}: no 'cadyq' metadata, so not a cadyq export; export the model with `cadyq export`")
    info = ModelInfo.from_dict(json.loads(meta[META_INFO]))
    exp = json.loads(meta.get(META_EXPORT, "{}"))
    taps = json.loads(meta.get(META_TAPS, "[]"))
    model = _as_model(model).eval()
    mine = ModelInfo.from_model(model)
    if (mine.backbone, mine.scale, mine.method, mine.n_layers) != (info.backbone, info.scale, info.method, info.n_layers):
        raise CadyqError(f"{onnx_path} holds {info.backbone} x{info.scale} {info.method}, but the model given is "
                         f"{mine.backbone} x{mine.scale} {mine.method}; compare against the checkpoint it was exported from")
    x_all = _as_tiles(tiles)
    dims = [d.dim_value for d in proto.graph.input[0].type.tensor_type.shape.dim]
    if len(dims) == 4 and dims[2] and dims[3] and tuple(dims[2:]) != tuple(x_all.shape[2:]):
        raise CadyqError(f"{onnx_path} takes {size_text(*dims[2:])} tiles, got {size_text(*x_all.shape[2:])}")
    static_batch = dims[0] if dims and dims[0] else None
    if static_batch:
        batch = static_batch
    dtype = exp.get("dtype", "fp32")
    tol = tolerances or default_tolerances(dtype, info.method)
    device = next(model.parameters()).device
    sess = _session(proto, providers)
    rep = Report(str(onnx_path), x_all.shape[0], tuple(x_all.shape[2:]), info.n_layers,
                 sess.get_providers()[0], dtype, tol)
    run = _TorchRun(model, None)
    sel_names = {id(m): n for n, m in model.named_modules()}
    sel_names = [sel_names[id(q)] for q in run.sel]
    sr_err_sum, sr_count, n = 0.0, 0, x_all.shape[0]
    pending: list[tuple[int, int, float, float, float, float]] = []  # tile, layer, bt, bo, gap, scale
    tile_err = np.zeros(n)
    try:
        for s in range(0, n, batch):
            x = x_all[s:s + batch]
            nb = x.shape[0]
            feed = x
            if static_batch and nb < static_batch:  # pad a static-batch graph with copies
                feed = torch.cat([x, x[-1:].expand(static_batch - nb, -1, -1, -1)])
            sr_o, bits_o = sess.run(list(OUTPUTS), {INPUT: feed.numpy()})
            sr_o, bits_o = torch.from_numpy(sr_o[:nb]).float(), torch.from_numpy(bits_o[:nb]).float()
            sr_t, bits_t = run(x.to(device))
            sr_t, bits_t = sr_t.cpu(), bits_t.cpu()
            err = (sr_o - sr_t).abs()
            per_tile_max = err.flatten(1).amax(1)
            tile_err[s:s + nb] = per_tile_max.numpy()
            rep.sr_max_abs_all = max(rep.sr_max_abs_all, float(per_tile_max.max()))
            if info.method == "fp32" or bits_t.shape[1] == 0:
                agree_tiles = torch.ones(nb, dtype=torch.bool)
            else:
                eq = bits_o == bits_t
                rep.n_decisions += eq.numel()
                rep.n_agree += int(eq.sum())
                agree_tiles = eq.all(1)
                for i, j in (~eq).nonzero().tolist():
                    lg = run.logits[j]
                    gap, scale = (float("nan"), float("nan")) if lg is None else _gap(lg[i], run.scales[j][i])
                    pending.append((s + i, j, float(bits_t[i, j]), float(bits_o[i, j]), gap, scale))
            if agree_tiles.any():
                e = err[agree_tiles]
                sr_err_sum += float(e.double().sum())
                sr_count += e.numel()
                rep.sr_max_abs = max(rep.sr_max_abs, float(e.max()))
    finally:
        run.close()
    rep.sr_mean_abs = sr_err_sum / sr_count if sr_count else 0.0

    def problems():
        p = []
        if rep.bit_agreement < tol.min_agreement:
            p.append(f"bit agreement {100 * rep.bit_agreement:.3f}% < {100 * tol.min_agreement:g}%")
        if rep.sr_mean_abs > tol.sr_mean:
            p.append(f"SR mean abs error {rep.sr_mean_abs:.3g} > {tol.sr_mean:g}")
        if rep.sr_max_abs > tol.sr_max:
            p.append(f"SR max abs error {rep.sr_max_abs:.3g} > {tol.sr_max:g}")
        return p

    failing = problems()
    need = bisect == "always" or (bisect == "auto" and (failing or pending))
    if need and taps:
        bad_tiles = sorted({p[0] for p in pending})[:max_trace_tiles]
        if failing or bisect == "always":
            worst = [int(i) for i in np.argsort(-tile_err)[:max_bisect_tiles]]
            bad_tiles = sorted(set(bad_tiles) | set(worst))
        rep.bisected_tiles = bad_tiles
        _bisect(rep, proto, providers, model, x_all, taps, bad_tiles, pending, sel_names, tol, device, static_batch, batch,
                integer=exp.get("form") in INTEGER_FORMS)
    else:
        for t, j, bt, bo, gap, scale in pending:
            tie = gap <= tol.tie_rtol * scale
            rep.disagreements.append(Disagreement(
                t, j, sel_names[j], bt, bo, gap, "logit tie" if tie else "unexplained",
                f"gap {gap:.3g} {'<=' if tie else '>'} {tol.tie_rtol * scale:.3g}" + ("" if tie else " (no taps to trace it)")))
    rep.problems = failing
    if rep.local_failures:
        rep.problems.append(f"{len(rep.local_failures)} local mismatches (a module of the graph computes otherwise than "
                            f"torch on the same input), the first at {rep.first_local_mismatch}")
    if rep.unexplained:
        rep.problems.append(f"{len(rep.unexplained)} bit-width disagreements not explained by a logit tie or a rounding boundary")
    return rep


def _gap(logits: torch.Tensor, scale: torch.Tensor) -> tuple[float, float]:
    """(top-2 gap, rounding scale of that difference: S_first + S_second)."""
    if logits.numel() < 2:
        return float("inf"), 0.0
    top = torch.topk(logits, 2)
    return float(top.values[0] - top.values[1]), float(scale[top.indices].sum())


def _local_select(q: BitSelector, x: torch.Tensor, g: torch.Tensor):
    """The selector's logits and rounding scale from given inputs (float64)."""
    feat = torch.cat([g.double(), _top(q, x).double().std(dim=(2, 3))], 1)
    w, b = q.net.weight.detach().double(), q.net.bias.detach().double()
    return F.linear(feat, w, b)[0], (feat.abs() @ w.abs().t() + b.abs())[0]


def _int_conv_reference(model, conv_path: str, ov: dict, modules: dict):
    """What the int8 graph's conv `conv_path` must output given the graph's own quantizer input: the model's
    quantizer (fake quant, the graph's bits), its QConv2d, then the BatchNorm and activation the lowering folds."""
    from ..quant import plan_for

    plan = plan_for(model)
    site = next((s for s in plan.dynamic + plan.fixed_inputs if s.conv == conv_path), None)
    if site is None:
        return None
    qkey = f"{site.at}.input_quant"
    if qkey + ":in" not in ov:
        return None
    q = modules[qkey]
    bits = float(ov[qkey + ":bits"][0]) if qkey + ":bits" in ov and isinstance(q, BitSelector) else float(getattr(q, "bits", 8))
    conv = modules[conv_path]
    with torch.no_grad():
        y = type(conv).forward(conv, _quantize_as(q, ov[qkey + ":in"], bits).to(conv.weight.device))
        fuse = next((f for f in plan.fusions if f.conv == conv_path), None)
        if fuse is not None and fuse.bn:
            y = modules[fuse.bn](y)
        if fuse is not None and fuse.act:
            y = modules[fuse.act](y.clone())
    return y.float().cpu()


def _local_checks(rep: Report, keys, tv, ov, modules, tol, dtype, x_in, model=None) -> list[tuple[int, str]]:
    """Each conv and quantizer of the graph applied to the graph's own inputs vs the torch module
    applied to the same inputs: independent of rounding cascades, so any failure is a real
    difference. Returns [(position in keys, message)]."""
    fails = []
    for pos, k in enumerate(keys):  # the int8 form's integer convs
        if k.endswith(":int") and k in ov and model is not None:
            y_ref = _int_conv_reference(model, k[:-4], ov, modules)
            if y_ref is None:
                continue
            rel = float((y_ref - ov[k]).abs().max() / (y_ref.abs().max() + 1e-12))
            if rel > (1e-2 if dtype == "fp16" else 1e-4):
                fails.append((pos, f"{k[:-4]}: the integer convolution is off by {rel:.3g} (relative) from the model's "
                                   "conv on the same quantizer input"))
    fp16 = dtype == "fp16"
    conv_rtol = 1e-2 if fp16 else 1e-4
    grad_o = ov.get(TILE_GRADIENT)
    if grad_o is not None:
        ref = tile_gradient(x_in)
        rel = float((ref - grad_o).abs().max() / (ref.abs().max() + 1e-12))
        if rel > conv_rtol:
            fails.append((keys.index(TILE_GRADIENT), f"{TILE_GRADIENT}: relative error {rel:.3g} on the same input"))
    for pos, k in enumerate(keys):
        if ":" in k or k == TILE_GRADIENT or k + ":in" not in ov or k not in ov:
            continue
        mod = modules.get(k.split("#")[0])
        x_o, y_o = ov[k + ":in"], ov[k]
        if isinstance(mod, (ActQuant, BitSelector)):
            if isinstance(mod, BitSelector):
                b_o = float(ov[k + ":bits"][0]) if k + ":bits" in ov else float(tv.get(k + ":bits", mod.last_bits)[0])
                if mod.mode == "full" and grad_o is not None:
                    lg, sc = _local_select(mod, x_o, grad_o)
                    b_ref = float(mod.bits[int(lg.argmax())])
                    if b_ref != b_o:
                        gap, scale = _gap(lg, sc)
                        if gap > tol.tie_rtol * scale:
                            fails.append((pos, f"{k}: chose {b_o:g} bits where the model's selector on the same input "
                                               f"chooses {b_ref:g} (logit gap {gap:.3g})"))
                        continue
            else:
                b_o = float(mod.bits)
            y_ref = _quantize_as(mod, x_o, b_o)
            a, s = _top_grid(mod)
            d = (y_ref - y_o).abs()
            off = d > 0.5 * a / s  # half a step of the top grid, which every output lies on
            if bool(off.any()):
                u = (x_o.clamp(-a, a) / a * s)[off].double()
                far = ((u - torch.floor(u)) - 0.5).abs() > tol.boundary_eps
                if bool(far.any()):
                    fails.append((pos, f"{k}: {int(far.sum())} element(s) quantized differently from the model's "
                                       f"quantizer on the same input ({b_o:g} bits; top grid alpha {a:.4g}, {s} levels)"))
                    continue
            noise = float(d[~off].max()) if bool((~off).any()) else 0.0
            if noise > (2e-3 * a if fp16 else 1e-5 * a):
                fails.append((pos, f"{k}: fake-quant values off by {noise:.3g} on the same input (alpha {a:.4g})"))
        elif isinstance(mod, (nn.Conv2d, nn.ConvTranspose2d)):
            with torch.no_grad():
                y_ref = type(mod).forward(mod, x_o.to(mod.weight.device)).float().cpu()
            rel = float((y_ref - y_o).abs().max() / (y_ref.abs().max() + 1e-12))
            if rel > conv_rtol:
                fails.append((pos, f"{k}: relative error {rel:.3g} vs the torch conv on the same input"))
    return fails


def _with_quantizer_outputs(keys: list[str], modules: dict) -> list[str]:
    """The int8 graph form has no float quantizer outputs: the key of quantizer X (its value) follows X:bits, or X:in
    for a fixed quantizer (whose bits are a constant, no graph tensor), computed from the graph's own X:in (see
    `_derive_quantizer_outputs`)."""
    out = []
    for k in keys:
        out.append(k)
        if k.endswith(":bits") and k[:-5] not in keys and k[:-5] not in out:
            out.append(k[:-5])
        elif k.endswith(":in") and isinstance(modules.get(k[:-3].split("#")[0]), ActQuant) and k[:-3] not in keys:
            out.append(k[:-3])
    return out


def _derive_quantizer_outputs(ov: dict, keys: list[str], modules: dict) -> None:
    """ov[X] = the model's quantizer X on ov[X:in] with the graph's bits: what the int8 graph's quantizer X stands for."""
    for k in keys:
        mod = modules.get(k.split("#")[0])
        if k in ov or k + ":in" not in ov or not isinstance(mod, (ActQuant, BitSelector)):
            continue
        if isinstance(mod, BitSelector) and k + ":bits" not in ov:
            continue
        ov[k] = _quantize_as(mod, ov[k + ":in"], float(ov[k + ":bits"][0]) if isinstance(mod, BitSelector)
                             else float(mod.bits))


def _bisect(rep: Report, proto, providers, model, x_all, taps, tiles: list[int], pending, sel_names, tol, device,
            static_batch, batch, integer: bool = False):
    graph_keys = [t["key"] for t in taps]
    modules = dict(model.named_modules())
    keys = _with_quantizer_outputs(graph_keys, modules) if integer else graph_keys
    tensors = [t["tensor"] for t in taps]
    sess = _session(_tapped(proto, tensors), providers)
    run = _TorchRun(model, keys)
    layer_idx = {name: j for j, name in enumerate(sel_names)}
    stats: dict[str, list[float]] = {k: [0.0, 0.0, 0.0] for k in keys}  # max_abs, sum_abs, rel_mean
    counts = {k: 0 for k in keys}
    by_tile: dict[int, list] = {}
    for p in pending:
        by_tile.setdefault(p[0], []).append(p)
    first_pos = first_local = None
    traced = set()
    try:
        # torch's convolutions round differently with another batch size (oneDNN picks other
        # algorithms), so torch reruns each tile inside the same batch as in the first pass; ONNX
        # Runtime's CPU results do not depend on the batch, so its tapped run takes one tile at a time.
        groups: dict[int, list[int]] = {}
        for t in tiles:
            groups.setdefault(t // batch * batch, []).append(t)
        todo = []
        for start, members in sorted(groups.items()):
            run(x_all[start:start + batch].to(device), keep=[t - start for t in members])
            for i, t in enumerate(members):
                todo.append((t, {k: v[i:i + 1] for k, v in run.taps.items()}))
        for t, tv in todo:
            x = x_all[t:t + 1]
            feed = x if not static_batch or static_batch == 1 else torch.cat([x] * static_batch)
            outs = sess.run(tensors, {INPUT: feed.numpy()})
            ov = {k: torch.from_numpy(np.asarray(v[:1], dtype=np.float32)) for k, v in zip(graph_keys, outs)}
            if integer:
                _derive_quantizer_outputs(ov, keys, modules)
            diverged = []
            for pos, k in enumerate(keys):
                if k not in tv:
                    continue
                a, b = tv[k], ov[k]
                if a.shape != b.shape:
                    rep.local_failures.append(f"tile {t}: {k} has shape {tuple(b.shape)} in the graph, {tuple(a.shape)} in torch")
                    diverged.append(pos)
                    continue
                d = (a - b).abs()
                rel = float(d.mean() / (a.abs().mean() + 1e-12)) if d.numel() else 0.0
                st = stats[k]
                st[0] = max(st[0], float(d.max()) if d.numel() else 0.0)
                st[1] += float(d.double().sum())
                st[2] = max(st[2], rel)
                counts[k] += d.numel()
                if rel > tol.layer_rtol:
                    diverged.append(pos)
            if diverged and (first_pos is None or diverged[0] < first_pos):
                first_pos = diverged[0]
            for pos, msg in _local_checks(rep, keys, tv, ov, modules, tol, rep.dtype, x.to(device), model):
                rep.local_failures.append(f"tile {t}: {msg}")
                if first_local is None or pos < first_local:
                    first_local = pos
            earlier: list[Disagreement] = []
            for p in sorted(by_tile.get(t, []), key=lambda p: p[1]):
                earlier.append(_trace(p, keys, tv, ov, modules, layer_idx, sel_names, tol, earlier))
                traced.add((p[0], p[1]))
            rep.disagreements += earlier
    finally:
        run.close()
    for p in pending:  # disagreements on tiles not bisected (none with the defaults)
        if (p[0], p[1]) not in traced:
            rep.disagreements.append(Disagreement(p[0], p[1], sel_names[p[1]], p[2], p[3], p[4], "unexplained", "not traced"))
    rep.disagreements.sort(key=lambda d: (d.tile, d.layer))
    rep.layers = [LayerError(k, stats[k][0], stats[k][1] / max(counts[k], 1), stats[k][2]) for k in keys if counts[k]]
    rep.first_divergent = keys[first_pos] if first_pos is not None else None
    rep.first_local_mismatch = keys[first_local] if first_local is not None else None


def _trace(p, keys, tv, ov, modules, layer_idx, sel_names, tol, earlier: list[Disagreement]) -> Disagreement:
    """The cause of one decision disagreement (tile t, layer j), from the taps of both runs.
    `earlier`: the disagreements already traced on the same tile (lower layers)."""
    t, j, bt, bo, gap, scale = p
    name = sel_names[j]
    d = Disagreement(t, j, name, bt, bo, gap, "unexplained")
    if gap <= tol.tie_rtol * scale:
        d.cause, d.detail = "logit tie", f"top-2 gap {gap:.3g} <= {tol.tie_rtol * scale:.3g}"
        return d
    x_key = name + ":in"
    moved = ""
    if x_key in tv and x_key in ov:
        xt, xo = tv[x_key], ov[x_key]
        moved = f"; this layer's input differs by {float((xt - xo).abs().mean() / (xt.abs().mean() + 1e-12)):.2g} (rel. mean)"
    if name + ":bits" in ov and float(ov[name + ":bits"][0]) != bo:
        moved += f"; not reproduced with the outputs marked (that run chose {float(ov[name + ':bits'][0]):g})"
    if earlier:  # a lower layer of this tile already chose another bit-width: the big perturbation
        root = earlier[0]
        ok = root.cause != "unexplained"
        d.cause = "upstream decision" if ok else "unexplained"
        d.detail = f"follows layer {root.layer} ({root.name}) on this tile ({root.cause}), gap {gap:.3g}{moved}"
        return d
    here = keys.index(x_key) if x_key in keys else len(keys)
    # the earliest quantizer before this layer whose output differs by at least half a step somewhere
    for pos in range(here):
        k = keys[pos]
        if ":" in k:
            continue
        mod = modules.get(k.split("#")[0])
        if not isinstance(mod, (ActQuant, BitSelector)) or k not in tv or k + ":in" not in tv or k not in ov:
            continue
        yt, yo, xt = tv[k][0], ov[k][0], tv[k + ":in"][0]
        if isinstance(mod, BitSelector):
            bt_up = float(tv[k + ":bits"][0]) if k + ":bits" in tv else float(mod.last_bits[0])
            bo_up = float(ov[k + ":bits"][0]) if k + ":bits" in ov else bt_up
            if bt_up != bo_up:  # only in the tapped run (marking outputs changes ORT's fusions)
                d.cause = "upstream decision"
                d.detail = f"layer {layer_idx.get(k, -1)} ({k}) chose {bt_up:g} vs {bo_up:g} bits in the tapped run{moved}"
                return d
        a, s = _top_grid(mod)
        diff = (yt - yo).abs() > 0.5 * a / s
        if not bool(diff.any()):
            continue
        return _rounding_boundary(d, k, diff, xt, a, s, tol, f"(gap {gap:.3g}){moved}")
    # the statistics read the input rounded to the top grid: float noise at a .5 boundary there moves sigma by a step
    sel = modules.get(name)
    if isinstance(sel, BitSelector) and x_key in tv and x_key in ov:
        xt, xo = tv[x_key], ov[x_key]
        diff = (_top(sel, xt) != _top(sel, xo))[0]
        if bool(diff.any()):
            a, s = _top_grid(sel)
            return _rounding_boundary(d, f"{name}'s own rounding onto its top grid (its statistics' input)", diff,
                                      xt[0], a, s, tol, f"(gap {gap:.3g}){moved}")
    d.detail = f"inputs agree up to this layer and the logit gap {gap:.3g} > {tol.tie_rtol * scale:.3g}"
    return d


def _rounding_boundary(d: Disagreement, where: str, diff, x, a: float, s: int, tol, note: str) -> Disagreement:
    """d's cause when the elements `diff` of quantizer input x rounded differently onto the grid (a, s): a rounding
    boundary if one of them lies within boundary_eps steps of a .5 boundary (float noise decides it)."""
    u = (x.clamp(-a, a) / a * s)[diff].double()
    dmin = float(((u - torch.floor(u)) - 0.5).abs().min())
    if dmin <= tol.boundary_eps:
        d.cause = "rounding boundary"
        d.detail = (f"first at {where}: {int(diff.sum())} element(s) rounded differently, {dmin:.2g} steps from a .5 "
                    f"boundary {note}")
    else:
        d.detail = f"{where} differs in {int(diff.sum())} element(s) away from rounding boundaries (min {dmin:.2g} steps)"
    return d
