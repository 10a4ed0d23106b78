"""The `cadyq::CADyQSelect` op: an ONNX model-local function, node helpers and a numpy reference.

The op is a whole dynamic quantizer at inference (`cadyq.quant.ops.on_top_grid`). Per tile n (inputs x [N,C,H,W],
g [N,2], W [K,C+2], b [K], a [K], attribute bits [K]: distinct bit-widths), with s_j = 2^(bits[j] - 1) - 1 and T
the top candidate (the most bits):

    fq(z, a, s) = round(clamp(z, -a, a) / a * s) / s * a                  # minimum, maximum; round half to even
    v[n]        = round(clamp(x[n], -a[T], a[T]) / a[T] * s[T])           # x on the top candidate's grid (integers)
    x_top[n]    = v[n] / s[T] * a[T]
    sigma[n,c]  = sqrt(sum_hw (x_top[n,c] - mean[n,c])^2 / (H*W - 1))     # unbiased, as torch.std, of x_top
    k           = argmax(W @ concat(g[n], sigma[n]) + b)                  # first max on ties
    q[n]        = round(clamp(fq(x_top[n], a[k], s[k]), -a[T], a[T]) / a[T] * s[T])   # k's levels on the top grid
    y[n]        = q[n] / s[T] * a[T]
    bits_out[n] = bits[k]

For k = T, y = x_top (the top candidate's quantizer); the levels of a lower candidate move by at most half a top
step. Version 2 (the integer form, `cadyq export` default) has the same inputs and selection, and three outputs: q
(integers in [-s[T], s[T]], in the type of x), scale[n] = a[T] / s[T] (float32; the same for every tile), bits[n].
The graph then runs QuantizeLinear(q, 1, int8 0) -> DequantizeLinear(1) -> Conv(int8 weights) -> Mul(scale) ->
Add(bias): an INT8 convolution whose input scale is one per layer. (The Q/DQ pair stays outside the function:
TensorRT's parser cannot name the Quantize layers of several inlined instances of one function.)

The function body uses standard ONNX ops only, so ONNX Runtime and TensorRT run it with no plugin;
nodes carry `plugin_namespace`/`plugin_version`, so the TensorRT ONNX parser takes a registered
`CADyQSelect` plugin instead when one is loaded. Pure onnx + numpy (no torch).
"""
from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import onnx
from onnx import AttributeProto, TensorProto, helper

from cadyq.errors import ExportError

DOMAIN = "cadyq"
OP_TYPE = "CADyQSelect"
OP_VERSION = 1
PLUGIN_NAMESPACE = "cadyq"
PLUGIN_VERSION = "1"
MIN_OPSET = 15          # CastLike; ReduceSum/Unsqueeze take axes as inputs, ArgMax select_last_index
MIN_IR_VERSION = 9      # FunctionProto.attribute_proto (defaults of the plugin attributes)
INT_VERSION = 2        # the integer form: outputs (q int8, scale, bits)
INPUTS = ("x", "g", "W", "b", "a")
OUTPUTS = ("y", "bits")
INT_OUTPUTS = ("q", "scale", "bits")


def _check_bits(bits: Sequence[int]) -> list[int]:
    bits = [int(v) for v in bits]
    if not bits or any(v < 2 or v > 16 for v in bits) or len(set(bits)) != len(bits):
        raise ExportError(f"CADyQSelect needs 1+ distinct bit-widths in [2, 16] (2^(b-1)-1 levels); got {bits}")
    return bits


def make_function(opset: int, integer: bool = False) -> onnx.FunctionProto:
    """CADyQSelect as a FunctionProto in domain `cadyq` whose body uses standard ONNX ops (default domain at `opset`).

    x (and g, W, b, a) may be float32 or float16: statistics, selector and quantization run in float32
    (fp16 sums of squares over a 96x96 tile overflow), y is cast back to the type of x; bits is float32.
    """
    if opset < MIN_OPSET:
        raise ExportError(f"CADyQSelect needs ONNX opset >= {MIN_OPSET}; export with opset_version={MIN_OPSET} or newer")
    f32, i64 = TensorProto.FLOAT, TensorProto.INT64
    const = lambda out, dt, vals, dims: helper.make_node(  # noqa: E731
        "Constant", [], [out], value=helper.make_tensor(out, dt, dims, vals))
    # ReduceMean takes axes as an attribute before opset 18, as an input from 18 on.
    mean = (helper.make_node("ReduceMean", ["x_top", "hw_axes"], ["mean"], keepdims=1) if opset >= 18
            else helper.make_node("ReduceMean", ["x_top"], ["mean"], axes=[2, 3], keepdims=1))
    bits_ints = helper.make_node("Constant", [], ["bits_i"])
    bits_ints.attribute.append(AttributeProto(name="value_ints", ref_attr_name="bits", type=AttributeProto.INTS))
    N = helper.make_node

    def fake_quant(z, a, s, out, dequantize=True):
        """out = round(clamp(z, -a, a) / a * s) (/ s * a when `dequantize`), op for op as cadyq.quant.ops.fake_quant."""
        rounded = out + "_int" if dequantize else out
        nodes = [N("Neg", [a], [out + "_neg_a"]), N("Min", [z, a], [out + "_hi"]),
                 N("Max", [out + "_hi", out + "_neg_a"], [out + "_clamped"]),
                 N("Div", [out + "_clamped", a], [out + "_unit"]), N("Mul", [out + "_unit", s], [out + "_scaled"]),
                 N("Round", [out + "_scaled"], [rounded])]
        if dequantize:
            nodes += [N("Div", [rounded, s], [out + "_deq"]), N("Mul", [out + "_deq", a], [out])]
        return nodes

    nodes = [
        const("hw_axes", i64, [2, 3], [2]), const("nchw_tail", i64, [1, 2, 3], [3]),
        const("start2", i64, [2], [1]), const("end4", i64, [4], [1]),
        const("one", f32, [1.0], []), const("two", f32, [2.0], []),
        bits_ints, N("Cast", ["bits_i"], ["bits_f"], to=f32),
        *(N("Cast", [v], [v + "f"], to=f32) for v in INPUTS),         # no-ops for float32 graphs
        # s_j = 2^(b_j-1) - 1; the top candidate T (the most bits): a_T, s_T as [1] (no TopK: one per selector)
        N("Sub", ["bits_f", "one"], ["bits_m1"]), N("Pow", ["two", "bits_m1"], ["levels"]),
        N("Sub", ["levels", "one"], ["s_all"]),
        N("ReduceMax", ["bits_f"], ["bits_t"], keepdims=1), N("Equal", ["bits_f", "bits_t"], ["is_top"]),
        N("Cast", ["is_top"], ["top_mask"], to=f32), N("Mul", ["af", "top_mask"], ["a_top_only"]),
        N("ReduceSum", ["a_top_only"], ["a_t"], keepdims=1),
        N("Sub", ["bits_t", "one"], ["bits_t_m1"]), N("Pow", ["two", "bits_t_m1"], ["levels_t"]),
        N("Sub", ["levels_t", "one"], ["s_t"]),
        # x_top = fq(x, a_T, s_T): the input on the top grid
        *fake_quant("xf", "a_t", "s_t", "x_top"),
        # sigma: unbiased per-channel std of x_top over H, W
        mean, N("Sub", ["x_top", "mean"], ["d"]), N("Mul", ["d", "d"], ["d2"]),
        N("ReduceSum", ["d2", "hw_axes"], ["ss"], keepdims=0),
        N("Shape", ["x"], ["shape"]), N("Slice", ["shape", "start2", "end4"], ["hw_dims"]),
        N("ReduceProd", ["hw_dims"], ["hw"], keepdims=0), N("Cast", ["hw"], ["hw_f"], to=f32),
        N("Sub", ["hw_f", "one"], ["hw1"]), N("Div", ["ss", "hw1"], ["var"]), N("Sqrt", ["var"], ["sigma"]),
        # selector: logits = W @ [g, sigma] + b, k = first argmax
        N("Concat", ["gf", "sigma"], ["feat"], axis=1),
        N("Gemm", ["feat", "Wf", "bf"], ["logits"], transB=1),
        N("ArgMax", ["logits"], ["k"], axis=1, keepdims=0, select_last_index=0),
        # per-tile a_k, s_k and the chosen bit-width
        N("Gather", ["af", "k"], ["a_n"], axis=0), N("Gather", ["s_all", "k"], ["s_n"], axis=0),
        N("Gather", ["bits_f", "k"], ["bits"], axis=0),
        N("Unsqueeze", ["a_n", "nchw_tail"], ["a4"]), N("Unsqueeze", ["s_n", "nchw_tail"], ["s4"]),
        # q = k's levels on the top grid: round(clamp(fq(x_top, a_k, s_k), -a_T, a_T) / a_T * s_T)
        *fake_quant("x_top", "a4", "s4", "y_k"),
        *fake_quant("y_k", "a_t", "s_t", "qf", dequantize=False),
    ]
    if integer:  # scale [N] = a_T / s_T, one value for every tile
        nodes += [N("CastLike", ["qf", "x"], ["q"]), N("Div", ["a_t", "s_t"], ["step"]),
                  const("start0", i64, [0], [1]), const("end1", i64, [1], [1]),
                  N("Slice", ["shape", "start0", "end1"], ["n_dim"]), N("Expand", ["step", "n_dim"], ["scale"])]
    else:
        nodes += [N("Div", ["qf", "s_t"], ["deq"]), N("Mul", ["deq", "a_t"], ["yf"]), N("CastLike", ["yf", "x"], ["y"])]
    return helper.make_function(
        DOMAIN, OP_TYPE, list(INPUTS), list(INT_OUTPUTS if integer else OUTPUTS), nodes,
        opset_imports=[helper.make_opsetid("", opset)],
        attributes=["bits"],
        attribute_protos=[helper.make_attribute("plugin_namespace", PLUGIN_NAMESPACE),
                          helper.make_attribute("plugin_version", str(INT_VERSION) if integer else PLUGIN_VERSION)],
        doc_string=("CADyQ bit selection + quantization to int8 per tile on the top candidate's grid, with its scale"
                    if integer else "CADyQ bit selection + fake quantization per tile") + " (see cadyq/export/op.py).",
    )


def make_select_node(inputs: Sequence[str], outputs: Sequence[str], bits: Sequence[int], name: str | None = None,
                     plugin_namespace: str = PLUGIN_NAMESPACE, plugin_version: str | None = None) -> onnx.NodeProto:
    """A `cadyq::CADyQSelect` node: inputs (x, g, W, b, a), outputs (y, bits), or (q, scale, bits) for the
    integer form (plugin_version "2")."""
    if len(inputs) != 5 or len(outputs) not in (2, 3):
        raise ExportError(f"CADyQSelect takes inputs (x, g, W, b, a) and outputs (y, bits) or (q, scale, bits); "
                          f"got {list(inputs)} -> {list(outputs)}")
    plugin_version = plugin_version or (str(INT_VERSION) if len(outputs) == 3 else PLUGIN_VERSION)
    return helper.make_node(OP_TYPE, list(inputs), list(outputs), name=name, domain=DOMAIN, bits=_check_bits(bits),
                            plugin_namespace=plugin_namespace, plugin_version=plugin_version)


def _select_nodes(graph: onnx.GraphProto):
    for node in graph.node:
        if node.domain == DOMAIN and node.op_type == OP_TYPE:
            yield node
        for attr in node.attribute:  # nodes inside If/Loop/Scan bodies
            for sub in ([attr.g] if attr.type == AttributeProto.GRAPH else list(attr.graphs)):
                yield from _select_nodes(sub)


def _default_opset(model: onnx.ModelProto) -> int:
    for imp in model.opset_import:
        if imp.domain in ("", "ai.onnx"):
            return imp.version
    raise ExportError("the model imports no default ONNX opset; build it with opset_imports=[('', 17)] or similar")


def add_functions(model: onnx.ModelProto, plugin_namespace: str = PLUGIN_NAMESPACE) -> None:
    """Make the `cadyq::CADyQSelect` nodes of `model` runnable anywhere, in place.

    Adds the model-local function (replacing an older copy), the `cadyq` opset import, and the
    `plugin_namespace`/`plugin_version` attributes on every node that lacks them.
    """
    nodes = list(_select_nodes(model.graph))
    if not nodes:
        return
    forms = {len(n.output) for n in nodes}
    if len(forms) != 1 or forms - {2, 3}:
        raise ExportError("CADyQSelect nodes must all have 2 outputs (y, bits) or all 3 (q, scale, bits); got a mix")
    integer = forms == {3}
    for node in nodes:
        attrs = {a.name: a for a in node.attribute}
        if "bits" not in attrs:
            raise ExportError(f"CADyQSelect node {node.name!r} has no 'bits' attribute; build it with make_select_node(..., bits=[4, 6, 8])")
        _check_bits(attrs["bits"].ints)
        if len(node.input) != 5:
            raise ExportError(f"CADyQSelect node {node.name!r} must have 5 inputs (x, g, W, b, a)")
        if "plugin_namespace" not in attrs:
            node.attribute.append(helper.make_attribute("plugin_namespace", plugin_namespace))
        if "plugin_version" not in attrs:
            node.attribute.append(helper.make_attribute("plugin_version", str(INT_VERSION) if integer else PLUGIN_VERSION))
    fn = make_function(_default_opset(model), integer)
    kept = [f for f in model.functions if not (f.domain == DOMAIN and f.name == OP_TYPE)]
    del model.functions[:]
    model.functions.extend(kept + [fn])
    kept_ops = [imp for imp in model.opset_import if imp.domain != DOMAIN]
    del model.opset_import[:]
    model.opset_import.extend(kept_ops + [helper.make_opsetid(DOMAIN, INT_VERSION if integer else OP_VERSION)])
    model.ir_version = max(model.ir_version, MIN_IR_VERSION)


def top_candidate(bits: Sequence[int]) -> int:
    """The index of the top candidate: the most bits (the last one when sorted)."""
    bits = _check_bits(bits)
    return bits.index(max(bits))


def reference(x, g, W, b, a, bits, integer: bool = False) -> tuple[np.ndarray, ...]:
    """numpy float32 reference, same order of operations as the ONNX body and the Triton kernel: (y, bits), or
    with `integer` the outputs of version 2, (q, scale, bits).

    Inputs are converted to float32; for a float16 model compare with `y.astype(np.float16)`.
    """
    x, g, W, b, a = (np.asarray(t, dtype=np.float32) for t in (x, g, W, b, a))
    bits_f = np.asarray(_check_bits(bits), dtype=np.float32)
    s = np.float32(2.0) ** (bits_f - np.float32(1.0)) - np.float32(1.0)
    top = top_candidate(bits)
    a_t, s_t = a[top], s[top]

    def quantize(z, a, s):  # round(clamp(z, -a, a) / a * s), round half to even
        return np.round(np.maximum(np.minimum(z, a), -a) / a * s)

    x_top = quantize(x, a_t, s_t) / s_t * a_t
    hw = x.shape[2] * x.shape[3]
    mean = x_top.mean(axis=(2, 3), keepdims=True, dtype=np.float32)
    d = x_top - mean
    sigma = np.sqrt((d * d).sum(axis=(2, 3), dtype=np.float32) / np.float32(hw - 1))
    logits = np.concatenate([g, sigma], axis=1) @ W.T + b
    k = logits.argmax(axis=1)                       # first max on ties
    a4, s4 = a[k][:, None, None, None], s[k][:, None, None, None]
    q = quantize(quantize(x_top, a4, s4) / s4 * a4, a_t, s_t).astype(np.float32)
    if integer:
        return q, np.full(x.shape[0], a_t / s_t, np.float32), bits_f[k]
    return (q / s_t * a_t).astype(np.float32), bits_f[k]
