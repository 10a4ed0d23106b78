"""Export a cadyq model (fp32, pams8 or cadyq; any backbone) to ONNX.

The graph
---------
- input ``lr``: float32 [N,3,T,T], RGB in [0,255] (not normalized; the model subtracts its mean).
  N is dynamic unless ``dynamic_batch=False`` (then N = 1).
- output ``sr``: float32 [N,3,T*s,T*s], in [0,255] but **unclamped** (clamp/round when encoding).
- output ``bits``: float32 [N,L], the activation bit-width of each (tile, dynamic layer): the choice
  of the CADyQ selectors; 8 everywhere for pams8; **32 everywhere for fp32 models** (a constant, so
  every export has the same two outputs and the runtime needs no special case).

How the parts are exported
--------------------------
- The tile gradient (mean |Sobel| of the grayscale tile, [N,2]) is computed inside the graph from
  ``lr`` with standard ops (Einsum, Pad edge, Conv, Abs, ReduceMean).
- Each CADyQ selector (mode "full") is one ``cadyq::CADyQSelect`` node (see ``op.py``): a
  model-local function with a standard-op body, plus ``plugin_namespace``/``plugin_version``
  attributes for a TensorRT plugin. Selectors in modes "tile"/"layer" export as standard ops.
- Fixed-bit PAMS quantizers (``ActQuant``) are standard ops in the same order of operations as
  ``fake_quant``: Min(a), Max(-a), Div(a), Mul(s), Round (half to even), Div(s), Mul(a).
- Quantized conv weights are INT8 initializers ``<conv>.weight_q`` with a float32 scale
  ``<conv>.weight_scale`` (per tensor, or per output channel). With ``exact_weights=True`` (the
  default) the graph computes ``Div(DequantizeLinear(q, m), 2^(b-1)-1)`` with ``m = max|w| + 1e-8``:
  the same two roundings as ``quantize_weight`` (``round(w*s/m) * m / s``), so the weights are
  the torch model's bit for bit (0 ulp; only the sign of zero differs: DequantizeLinear gives +0.0
  where torch rounds a tiny negative weight to -0.0, which no conv can tell apart). ``exact_weights=False`` stores ``scale = m/s`` and feeds the
  DequantizeLinear straight into the Conv (the canonical TensorRT Q/DQ weight pattern); the weights
  then differ from torch's by up to 2 ulp (1-2 measured on the four backbones; ``weight_dequant_error``
  measures it).
- ``dtype="fp16"``: convolutions, activations and the upsampler run in float16 (weights stored as
  INT8, dequantized in float32, then cast). Kept in float32 because their precision matters: the
  I/O (``lr``/``sr`` stay float32), the tile gradient, every quantizer (the CADyQSelect statistics,
  logits and argmax; fake quantization, whose rounding boundaries need more than fp16's 11 bits
  at 127 levels), the quantizer clip values and the weight dequantization.

Metadata (``ModelProto.metadata_props``): ``cadyq`` = ``ModelInfo.to_dict()`` (json), which the
runtime reads back with ``ModelInfo.from_dict``; ``cadyq.model`` = the checkpoint metadata
(architecture); ``cadyq.export`` = export settings; ``cadyq.taps`` = the ONNX tensor that holds
each module's output (convs, quantizers), which ``check.compare`` uses to find the first layer
whose outputs diverge.

Route: the TorchScript exporter (``torch.onnx.export(..., dynamo=False)``, still in torch 2.13)
with ``autograd.Function.symbolic`` for the custom nodes. The torch.export-based exporter needs
onnxscript and a custom translation table per op; the TorchScript route emits the custom-domain
nodes directly and needs nothing beyond torch. Temporary marker nodes (``cadyq_export::Tap``,
``cadyq_export::QuantizeWeight``) are emitted during tracing and removed by the post-processing.
"""
from __future__ import annotations

import copy
import io
import json
import warnings
from pathlib import Path

import numpy as np
import onnx
import torch
import torch.nn as nn
from onnx import TensorProto, helper, numpy_helper

from ..errors import CadyqError, ExportError
from ..quant import ActQuant, BitSelector, ModelInfo, QConv2d, dynamic_quantizers, quant_config, quantize_weight
from ..quant.ops import levels
from . import op as cadyq_op

__all__ = ["export_onnx", "export_model_proto", "weight_dequant_error", "DTYPES", "FORMS", "INTEGER_FORMS", "INPUT",
           "OUTPUTS", "META_INFO", "META_EXPORT", "META_TAPS", "META_MODEL", "EXPORT_FORMAT"]

DTYPES = ("fp32", "fp16")
FORMS = ("int8", "ort", "fakequant")  # and "static" (one graph of a tile-routed set: cadyq.export.routed)
INTEGER_FORMS = ("int8", "ort")  # the integer program's graphs: TensorRT's Q/DQ form, ONNX Runtime's scaled form
INPUT = "lr"
OUTPUTS = ("sr", "bits")
META_INFO = "cadyq"
META_MODEL = "cadyq.model"
META_EXPORT = "cadyq.export"
META_TAPS = "cadyq.taps"
EXPORT_FORMAT = 1
_TMP_DOMAIN = "cadyq_export"
TILE_GRADIENT = "tile_gradient"

GRAPH_DOC = (
    "cadyq super-resolution graph. Input lr: float32 [N,3,{t},{t}] RGB in [0,255] (not normalized). "
    "Output sr: float32 [N,3,{ts},{ts}] in [0,255], unclamped. Output bits: float32 [N,{L}] activation "
    "bit-width per (tile, dynamic layer): CADyQ choices (cadyq), 8 (pams8), constant 32 (fp32 models). "
    "Compute dtype: {dtype}. CADyQSelect (domain cadyq) is a model-local function; see cadyq/export/op.py."
)


# --- tracing helpers -------------------------------------------------------------------------------

class _Tap(torch.autograd.Function):
    """Identity that leaves a marker node in the trace, naming the tensor of a module output."""

    @staticmethod
    def forward(ctx, x, key):
        return x.clone()

    @staticmethod
    def symbolic(g, x, key):
        y = g.op(f"{_TMP_DOMAIN}::Tap", x, key_s=key)
        y.setType(x.type())
        return y


class _QuantizeWeight(torch.autograd.Function):
    """quantize_weight(w) in eager; a marker node replaced by INT8 + DequantizeLinear afterwards."""

    @staticmethod
    def forward(ctx, w, path, bits, per_channel):
        return quantize_weight(w, bits, per_channel)

    @staticmethod
    def symbolic(g, w, path, bits, per_channel):
        y = g.op(f"{_TMP_DOMAIN}::QuantizeWeight", w, path_s=path, bits_i=bits, per_channel_i=int(per_channel))
        y.setType(w.type())
        return y


class _Select(torch.autograd.Function):
    """The CADyQ selector as one `cadyq::CADyQSelect` node (eager: the selector's own select_fn)."""

    @staticmethod
    def forward(ctx, x, g, w, b, a, bits, fn):
        return fn(x, g, w, b, a, torch.tensor(bits, dtype=torch.float32, device=x.device))

    @staticmethod
    def symbolic(g, x, gr, w, b, a, bits, fn):
        y, bo = g.op(f"{cadyq_op.DOMAIN}::{cadyq_op.OP_TYPE}", x, gr, w, b, a, bits_i=list(bits), outputs=2)
        y.setType(x.type())
        sizes = x.type().sizes()
        bo.setType(x.type().with_dtype(torch.float32).with_sizes([sizes[0] if sizes else None]))
        return y, bo


def _select_fn_for(q: BitSelector, key: str):
    bits = tuple(int(b) for b in q.bits.tolist())
    eager = q.select_fn

    def select(x, grad, weight, bias, alpha, _bits):
        return _Select.apply(x, grad, weight, bias, alpha, bits, eager)
    return select


def _qconv_forward(conv: QConv2d, path: str):
    def forward(x):
        w = _QuantizeWeight.apply(conv.weight, path, int(conv.weight_bits), bool(conv.per_channel))
        bias = conv.bias
        if x.dtype != w.dtype:  # fp16 export: dequantize in fp32, then cast
            w, bias = w.to(x.dtype), None if bias is None else bias.to(x.dtype)
        return conv._conv_forward(x, w, bias)
    return forward


class _Exported(nn.Module):
    """model(lr) -> (sr, bits [N,L]) with bits as the runtime expects them."""

    def __init__(self, model: nn.Module, n_layers: int):
        super().__init__()
        self.model = model
        self.n_layers = n_layers
        self.quantized = quant_config(model).method != "fp32"

    def forward(self, lr):
        sr = self.model(lr).float()
        if not self.quantized:
            return sr, lr.new_full((lr.shape[0], self.n_layers), 32.0)
        return sr, torch.stack([q.last_bits.float() for q in dynamic_quantizers(self.model)], dim=1)


def attach_taps(model: nn.Module, fn) -> tuple[list, list[str]]:
    """Hooks that pass the tile gradient, every conv and quantizer input and output, and every
    selector's bit choice through ``fn(key, tensor) -> tensor | None`` (None: unchanged). Keys:
    ``tile_gradient``, the module path (its output), ``path:in`` (its input, after any input
    quantizer), ``path:bits`` (a selector's choices); a module called again in the same
    forward gets ``path#1``, ``path#2``... Returns the hook handles and the list of keys of the last
    forward, in execution order (filled as the model runs). The exporter and ``check.compare`` use
    the same keys."""
    calls: dict[str, int] = {}
    order: list[str] = []
    handles = []

    def reset(mod, args):
        calls.clear()
        order.clear()

    def emit(key, t):
        order.append(key)
        r = fn(key, t)
        return t if r is None else r

    def pre(name):
        def hook(mod, args):
            c = calls.get(name, 0)
            key = (name if c == 0 else f"{name}#{c}") + ":in"
            return (emit(key, args[0]),) + tuple(args[1:])
        return hook

    def post(name, quantizer):
        def hook(mod, args, out):
            c = calls.get(name, 0)
            calls[name] = c + 1
            key = name if c == 0 else f"{name}#{c}"
            out = emit(key, out)
            if isinstance(mod, BitSelector) and mod.last_bits is not None:
                mod.last_bits = emit(key + ":bits", mod.last_bits)
            return out
        return hook

    def grad(mod, args):  # after quantize()'s hook that computes the tile gradient
        state = getattr(mod, "_tile_state", None)
        if state is not None and state.grad is not None:
            state.grad = emit(TILE_GRADIENT, state.grad)

    handles.append(model.register_forward_pre_hook(reset, prepend=True))
    handles.append(model.register_forward_pre_hook(grad))
    for name, mod in model.named_modules():
        if isinstance(mod, (ActQuant, BitSelector, nn.Conv2d, nn.ConvTranspose2d)):
            handles.append(mod.register_forward_pre_hook(pre(name)))
            handles.append(mod.register_forward_hook(post(name, True)))
    return handles, order


def _prepare(model: nn.Module, dtype: str) -> tuple[nn.Module, list[str], list]:
    """A deep copy of `model` set up for tracing; returns it, the tap keys (in execution order once
    it has run) and the hook handles."""
    m = copy.deepcopy(model).eval()
    keep32: set[int] = set()
    quantizers = (ActQuant, BitSelector)
    for name, mod in m.named_modules():
        if isinstance(mod, quantizers) or isinstance(mod, QConv2d) or name == "tile_selector":
            keep32.update(id(sub) for sub in mod.modules())
    handles = []
    for name, mod in m.named_modules():
        if isinstance(mod, QConv2d):
            mod.forward = _qconv_forward(mod, name)
        if isinstance(mod, BitSelector) and mod.mode == "full":
            mod.select_fn = _select_fn_for(mod, name)
        if isinstance(mod, quantizers) and dtype == "fp16":  # quantizers compute in float32
            handles.append(mod.register_forward_pre_hook(lambda mod, args: (args[0].float(),) + tuple(args[1:])))
            handles.append(mod.register_forward_hook(lambda mod, args, out: out.half()))
    tap_handles, keys = attach_taps(m, lambda key, t: _Tap.apply(t, key))
    handles += tap_handles
    if dtype == "fp16":
        for mod in m.modules():
            if id(mod) in keep32:
                continue
            for p in mod.parameters(recurse=False):
                p.data = p.data.half()
            for bname, b in list(mod.named_buffers(recurse=False)):
                if b.is_floating_point():
                    setattr(mod, bname, b.half())
        # after the tile gradient (computed by the quantize() pre-hook, registered earlier) in fp32
        handles.append(m.register_forward_pre_hook(lambda mod, args: (args[0].half(),) + tuple(args[1:])))
    return m, keys, handles


# --- graph post-processing ---------------------------------------------------------------------------

def _attr(node: onnx.NodeProto, name: str):
    for a in node.attribute:
        if a.name == name:
            return helper.get_attribute_value(a)
    raise ExportError(f"internal: node {node.name} has no attribute {name}")


def _weight_nodes(node, model: nn.Module, exact: bool, graph: onnx.GraphProto) -> list[onnx.NodeProto]:
    path = _attr(node, "path").decode()
    bits, per_channel = int(_attr(node, "bits")), bool(_attr(node, "per_channel"))
    if bits > 8:
        raise ExportError(f"{path}: {bits}-bit weights do not fit INT8 initializers; export weight_bits <= 8")
    w = model.get_submodule(path).weight.detach().float().cpu()
    s = levels(bits)
    # the same expressions as quantize_weight, so q and m are bit-identical to what torch uses
    if per_channel:
        m = w.abs().amax(dim=tuple(range(1, w.dim())), keepdim=True) + 1e-8
    else:
        m = w.abs().max() + 1e-8
    q = torch.round(w * s / m)
    ref = quantize_weight(w, bits, per_channel)
    if not torch.equal(q * m / s, ref):  # cannot happen unless quantize_weight changes
        raise ExportError(f"{path}: INT8 weights do not reproduce quantize_weight(); the exporter is out of date")
    q8 = numpy_helper.from_array(q.to(torch.int8).numpy(), f"{path}.weight_q")
    scale = (m if exact else m / s).reshape(-1 if per_channel else ()).numpy().astype(np.float32)
    sc = numpy_helper.from_array(scale, f"{path}.weight_scale")
    graph.initializer.extend([q8, sc])
    out = node.output[0]
    dq_kw = {"axis": 0} if per_channel else {}
    if not exact:
        return [helper.make_node("DequantizeLinear", [q8.name, sc.name], [out], name=f"{path}/weight_dq", **dq_kw)]
    s_name = f"{path}.weight_levels"
    graph.initializer.append(numpy_helper.from_array(np.array(s, dtype=np.float32), s_name))
    return [helper.make_node("DequantizeLinear", [q8.name, sc.name], [out + "_int"], name=f"{path}/weight_dq", **dq_kw),
            helper.make_node("Div", [out + "_int", s_name], [out], name=f"{path}/weight_div")]


def _postprocess(proto: onnx.ModelProto, model: nn.Module, exact: bool) -> dict[str, str]:
    """Replace the marker nodes (weights -> INT8 + DequantizeLinear; taps and Identity nodes
    removed) in one pass; return {tap key: tensor name}."""
    graph = proto.graph
    outputs = {o.name for o in graph.output}
    sources = {i.name for i in graph.input} | {t.name for t in graph.initializer}
    alias: dict[str, str] = {}  # removed tensor -> the tensor that replaces it
    promote: dict[str, str] = {}  # tensor renamed to a graph output name

    def resolve(t: str) -> str:
        while t in alias:
            t = alias[t]
        return promote.get(t, t)

    taps: dict[str, str] = {}
    nodes: list[onnx.NodeProto] = []
    for node in graph.node:
        if node.domain == _TMP_DOMAIN and node.op_type == "QuantizeWeight":
            nodes += _weight_nodes(node, model, exact, graph)
            continue
        if (node.domain == _TMP_DOMAIN and node.op_type == "Tap") or node.op_type == "Identity":
            src, dst = node.input[0], node.output[0]
            while src in alias:
                src = alias[src]
            if dst in outputs and (src in sources or src in outputs or src in promote):
                keep = helper.make_node("Identity", [src], [dst], name=node.name)
                nodes.append(keep)
                final = dst
            elif dst in outputs:
                promote[src] = final = dst
            else:
                alias[dst] = src
                final = src
            if node.op_type == "Tap":
                taps[_attr(node, "key").decode()] = final
            continue
        nodes.append(node)
    for node in nodes:
        for i, t in enumerate(node.input):
            if t:
                node.input[i] = resolve(t)
        for i, t in enumerate(node.output):
            node.output[i] = promote.get(t, t)
    taps = {k: resolve(v) for k, v in taps.items()}
    del graph.node[:]
    graph.node.extend(nodes)
    if any(n.domain == _TMP_DOMAIN for n in graph.node):
        raise ExportError("internal: marker nodes left in the exported graph")
    used = {i for n in graph.node for i in n.input} | outputs
    kept = [t for t in graph.initializer if t.name in used]  # drops the float weights replaced by INT8
    del graph.initializer[:]
    graph.initializer.extend(kept)
    kept_ops = [helper.make_opsetid(o.domain, o.version) for o in proto.opset_import if o.domain != _TMP_DOMAIN]
    del proto.opset_import[:]
    proto.opset_import.extend(kept_ops)
    return taps


def _set_shape(vi: onnx.ValueInfoProto, dims) -> None:
    shape = vi.type.tensor_type.shape
    del shape.dim[:]
    for d in dims:
        dim = shape.dim.add()
        if isinstance(d, str):
            dim.dim_param = d
        else:
            dim.dim_value = d


# --- public API -----------------------------------------------------------------------------------

def _as_model(model) -> nn.Module:
    if isinstance(model, nn.Module):
        return model
    from ..checkpoint import load

    return load(model)


def export_model_proto(model, tile: int = 96, dtype: str = "fp32", opset: int = 17, dynamic_batch: bool = True,
                       *, form: str = "int8", exact_weights: bool = True, check: bool = True,
                       static=None) -> onnx.ModelProto:
    """The exported graph as a ModelProto (see the module docstring); `export_onnx` writes it.

    form "int8" (default): the integer graph form of quantized models (cadyq.export.int_graph):
    CADyQSelect-2 gives int8 values and their scale that feed INT8 convolutions (TensorRT). "ort": the same
    integers and scales, the scale applied before a float convolution with a fused epilogue (ONNX Runtime).
    "fakequant": the fake-quant form (CADyQSelect-1, float convolutions). fp32 models have one form."""
    model = _as_model(model)
    if dtype not in DTYPES:
        raise ExportError(f"unknown dtype {dtype!r}; choose one of {', '.join(DTYPES)}")
    if form not in FORMS + ("static",):
        raise ExportError(f"unknown graph form {form!r}; choose one of {', '.join(FORMS)}")
    if not hasattr(model, "config"):
        raise ExportError("export_onnx() needs a model from cadyq.create_model (optionally quantized)")
    if opset < cadyq_op.MIN_OPSET:
        raise ExportError(f"opset {opset} is too old; CADyQSelect needs opset >= {cadyq_op.MIN_OPSET}")
    if tile < 4:
        raise ExportError(f"tile {tile} is too small; use at least 4 px (96 is the default)")
    cfg = quant_config(model)
    info = ModelInfo.from_model(model)
    scale, n_layers = model.config.scale, info.n_layers
    integer = form in INTEGER_FORMS and cfg.method != "fp32"
    if integer and dtype != "fp32":
        raise ExportError(f"the {form} graph form is exported in fp32 (its convolutions are exact on integers); for an "
                          "fp16 graph pass form='fakequant' (`cadyq export --form fakequant --dtype fp16`)")
    device = next(model.parameters()).device
    if form == "static":  # (program with fixed quantizers, conv output scales) from cadyq.export.routed
        from . import int_graph
        from .routed import StaticKernels

        program, scales, weights = static
        wrapper = int_graph.ExportedProgram(program, lambda key, t: _Tap.apply(t, key),
                                            lambda emit: StaticKernels(scales, emit, weights))
        traced, keys, device, integer = wrapper.program, wrapper.order, torch.device("cpu"), True
    elif integer:
        from . import int_graph

        kernels = int_graph.ScaledKernels if form == "ort" else int_graph.SymbolicKernels
        wrapper = int_graph.prepare(model.cpu().eval(), lambda key, t: _Tap.apply(t, key), kernels)
        traced, keys, device = wrapper.program, wrapper.order, torch.device("cpu")
    else:
        traced, keys, _handles = _prepare(model, dtype)
        wrapper = _Exported(traced, n_layers)
    gen = torch.Generator().manual_seed(0)
    dummy = (torch.rand(2 if dynamic_batch else 1, 3, tile, tile, generator=gen) * 255).to(device)
    buf = io.BytesIO()
    opsets = {_TMP_DOMAIN: 1}
    if any((isinstance(q, BitSelector) and q.mode == "full") or getattr(q, "mode", None) == "full" and
           type(q).__name__ == "IntQuantizer" for q in traced.modules()):
        if form != "static":
            opsets[cadyq_op.DOMAIN] = cadyq_op.INT_VERSION if integer else cadyq_op.OP_VERSION
    axes = {INPUT: {0: "N"}, "sr": {0: "N"}, "bits": {0: "N"}} if dynamic_batch else None
    try:
        with torch.no_grad(), warnings.catch_warnings():
            warnings.simplefilter("ignore")
            torch.onnx.export(wrapper, (dummy,), buf, dynamo=False, opset_version=opset, input_names=[INPUT],
                              output_names=list(OUTPUTS), dynamic_axes=axes, do_constant_folding=True,
                              custom_opsets=opsets)
    except CadyqError:
        raise
    except Exception as e:  # the exporter raises many types; say which model failed
        raise ExportError(f"ONNX export of {info.backbone} ({cfg.method}) failed: {e}") from e
    proto = onnx.load_from_string(buf.getvalue())
    taps = _postprocess(proto, traced, exact_weights)
    cadyq_op.add_functions(proto)

    graph = proto.graph
    n = "N" if dynamic_batch else 1
    _set_shape(graph.input[0], [n, 3, tile, tile])
    _set_shape(graph.output[0], [n, 3, tile * scale, tile * scale])
    _set_shape(graph.output[1], [n, n_layers])
    graph.input[0].doc_string = "LR tiles, float32 RGB in [0,255] (not normalized)"
    graph.output[0].doc_string = "SR tiles, float32 RGB in [0,255], unclamped"
    graph.output[1].doc_string = "bit-width per (tile, dynamic layer); 32 for fp32 models, 8 for pams8"
    graph.name = f"cadyq_{info.backbone}_x{scale}_{cfg.method}"
    graph.doc_string = GRAPH_DOC.format(t=tile, ts=tile * scale, L=n_layers, dtype=dtype)
    del graph.value_info[:]
    from .. import __version__
    from ..checkpoint import metadata as ckpt_metadata

    proto.producer_name, proto.producer_version = "cadyq", __version__
    proto.doc_string = graph.doc_string
    meta = {
        META_INFO: json.dumps(info.to_dict()),
        META_MODEL: json.dumps(ckpt_metadata(model)),
        META_EXPORT: json.dumps({"format": EXPORT_FORMAT, "form": form if integer else "fakequant", "dtype": dtype,
                                 "tile": tile, "opset": opset,
                                 "dynamic_batch": dynamic_batch, "exact_weights": exact_weights and not integer,
                                 "weights": ("float32" if cfg.method == "fp32" else
                                             "float32 (the int8 weights times their per-channel scale)" if form == "ort"
                                             else "int8+DequantizeLinear(per-channel scale)" if integer
                                             else "int8+DequantizeLinear"),
                                 "activations": (("integers on each layer's 8-bit grid (4/6/8-bit levels) times its "
                                                  "scale, before a float convolution" if form == "ort" else
                                                  "int8 values on each layer's 8-bit grid (4/6/8-bit levels) with its "
                                                  "scale")
                                                 if integer else "fake-quantized float"),
                                 "bits_output": {"fp32": "constant 32"}.get(cfg.method, "chosen bits")}),
        META_TAPS: json.dumps([{"key": k, "tensor": taps[k]} for k in keys if k in taps]),
    }
    del proto.metadata_props[:]
    for k, v in meta.items():
        proto.metadata_props.add(key=k, value=v)
    try:
        proto = onnx.shape_inference.infer_shapes(proto, check_type=True, strict_mode=True, data_prop=True)
        if check:
            onnx.checker.check_model(proto, full_check=True)
    except Exception as e:
        raise ExportError(f"the exported graph fails the ONNX checker: {e}") from e
    return proto


def export_onnx(model, path: str | Path, tile: int = 96, dtype: str = "fp32", opset: int = 17,
                dynamic_batch: bool = True, *, form: str = "int8", exact_weights: bool = True) -> Path:
    """Export `model` (an nn.Module from cadyq, or a checkpoint path) to `path` (written atomically).

    Input ``lr`` [N,3,tile,tile] float32 in [0,255]; outputs ``sr`` [N,3,tile*s,tile*s] and
    ``bits`` [N,L] (see the module docstring for every choice). Raises ExportError."""
    from ..checkpoint import atomic_write

    proto = export_model_proto(model, tile, dtype, opset, dynamic_batch, form=form, exact_weights=exact_weights)
    path = Path(path)
    atomic_write(path, lambda tmp: onnx.save_model(proto, tmp))
    return path


def _ordinal(x: np.ndarray) -> np.ndarray:
    """float32 -> integers in value order, adjacent floats differ by 1 (+0 and -0 both map to 0)."""
    i = np.asarray(x, dtype=np.float32).view(np.int32).astype(np.int64)
    return np.where(i < 0, -(i & 0x7FFFFFFF), i)


def weight_dequant_error(proto_or_path, model: nn.Module) -> dict[str, int]:
    """Max ulp difference, per quantized conv, between the weights the graph computes (evaluated
    with ONNX Runtime) and ``quantize_weight`` in torch. 0 everywhere for exact_weights=True."""
    import onnxruntime as ort

    proto = onnx.load(str(proto_or_path)) if isinstance(proto_or_path, (str, Path)) else proto_or_path
    nodes = [n for n in proto.graph.node if n.name.endswith("/weight_dq")]
    out_of = {n.name.rsplit("/", 1)[0]: n for n in proto.graph.node if n.name.endswith(("/weight_div", "/weight_dq"))}
    sub = onnx.ModelProto()
    sub.CopyFrom(proto)
    g = sub.graph
    keep = []
    for n in g.node:
        if n.name.endswith(("/weight_dq", "/weight_div")):
            keep.append(n)
    del g.node[:]
    g.node.extend(keep)
    del g.input[:], g.output[:], g.value_info[:], sub.functions[:]
    names = {}
    for n in nodes:
        path = n.name.rsplit("/", 1)[0]
        names[path] = out_of[path].output[0] if out_of[path].op_type == "Div" else n.output[0]
        g.output.append(helper.make_tensor_value_info(names[path], TensorProto.FLOAT, None))
    if not names:
        return {}
    used = {i for n in g.node for i in n.input}
    kept = [t for t in g.initializer if t.name in used]
    del g.initializer[:]
    g.initializer.extend(kept)
    so = ort.SessionOptions()
    so.log_severity_level = 3
    sess = ort.InferenceSession(sub.SerializeToString(), so, providers=["CPUExecutionProvider"])
    vals = dict(zip(names, sess.run(list(names.values()), {})))
    result = {}
    for path, v in vals.items():
        conv = model.get_submodule(path)
        ref = quantize_weight(conv.weight.detach().float().cpu(), conv.weight_bits, conv.per_channel).numpy()
        result[path] = int(np.abs(_ordinal(v) - _ordinal(ref)).max()) if v.size else 0
    return result
