"""cadyq::CADyQSelect: the ONNX model-local function vs the numpy reference (ONNX Runtime, CPU)."""
import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from cadyq.errors import ExportError
from cadyq.export import op
from conftest import select_tie_case, select_ties

ort = pytest.importorskip("onnxruntime")


def _levels(bits):
    return np.float32(2.0) ** (np.asarray(bits, np.float32) - np.float32(1.0)) - np.float32(1.0)


def selector(K, C, rng, tile_k):
    """W, b whose g-part makes tile n pick tile_k[n] by a wide margin (g_n = 4 * e_k)."""
    W = (0.05 * rng.standard_normal((K, C + 2))).astype(np.float32)
    angles = 2 * np.pi * np.arange(K) / K
    W[:, :2] = np.stack([np.cos(angles), np.sin(angles)], 1)
    g = 4 * W[tile_k, :2].astype(np.float32)
    return W, np.zeros(K, np.float32), g.astype(np.float32)


def conv_select_conv_model(C_in, C, C_out, H, W_, Wsel, b, a, bits, opset, rng):
    """x -> Conv3x3 -> CADyQSelect -> Conv1x1 -> out; also returns the conv and select outputs."""
    w1 = (0.5 * rng.standard_normal((C, C_in, 3, 3))).astype(np.float32)
    w2 = (0.5 * rng.standard_normal((C_out, C, 1, 1))).astype(np.float32)
    nodes = [helper.make_node("Conv", ["x", "w1"], ["h"], pads=[1, 1, 1, 1]),
             op.make_select_node(["h", "g", "Wsel", "bsel", "asel"], ["hq", "bits"], bits, name="select0"),
             helper.make_node("Conv", ["hq", "w2"], ["out"])]
    inits = [numpy_helper.from_array(v, n) for n, v in
             [("w1", w1), ("w2", w2), ("Wsel", Wsel), ("bsel", b), ("asel", a)]]
    vi = helper.make_tensor_value_info
    graph = helper.make_graph(
        nodes, "conv_select_conv",
        [vi("x", TensorProto.FLOAT, ["N", C_in, H, W_]), vi("g", TensorProto.FLOAT, ["N", 2])],
        [vi("out", TensorProto.FLOAT, ["N", C_out, H, W_]), vi("h", TensorProto.FLOAT, ["N", C, H, W_]),
         vi("hq", TensorProto.FLOAT, ["N", C, H, W_]), vi("bits", TensorProto.FLOAT, ["N"])], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)], ir_version=10)
    op.add_functions(model)
    return model, w2


def select_model(shape, Wsel, b, a, bits, opset=17):
    vi = helper.make_tensor_value_info
    graph = helper.make_graph(
        [op.make_select_node(["x", "g", "W", "b", "a"], ["y", "bits"], bits)], "select",
        [vi("x", TensorProto.FLOAT, list(shape)), vi("g", TensorProto.FLOAT, [shape[0], 2])],
        [vi("y", TensorProto.FLOAT, list(shape)), vi("bits", TensorProto.FLOAT, [shape[0]])],
        [numpy_helper.from_array(v, n) for n, v in [("W", Wsel), ("b", b), ("a", a)]])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)], ir_version=10)
    op.add_functions(model)
    return model


def run(model, **feeds):
    sess = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    return sess.run(None, feeds)


@pytest.mark.parametrize("opset", [15, 17, 18, 21])
def test_checker_and_shape_inference(opset):
    rng = np.random.default_rng(0)
    Wsel, b, _ = selector(3, 4, rng, [0])
    model, _ = conv_select_conv_model(3, 4, 2, 6, 5, Wsel, b, np.ones(3, np.float32), [4, 6, 8], opset, rng)
    onnx.checker.check_model(model, full_check=True)
    # drop the declared shapes of the select outputs and let inference recover them through the function body
    for name in ("hq", "bits"):
        out = next(o for o in model.graph.output if o.name == name)
        out.type.tensor_type.ClearField("shape")
    inferred = onnx.shape_inference.infer_shapes(model, check_type=True, strict_mode=True)
    shapes = {o.name: [d.dim_param or d.dim_value for d in o.type.tensor_type.shape.dim]
              for o in list(inferred.graph.output) + list(inferred.graph.value_info)}
    assert shapes["hq"] == ["N", 4, 6, 5] and shapes["bits"] == ["N"]
    fn = model.functions[0]
    assert (fn.domain, fn.name) == (op.DOMAIN, op.OP_TYPE)
    assert {n.op_type for n in fn.node} <= {"Constant", "Cast", "ReduceMean", "Sub", "Mul", "ReduceSum", "Shape",
                                            "Slice", "ReduceProd", "Div", "Sqrt", "Concat", "Gemm", "ArgMax", "Pow",
                                            "Gather", "Unsqueeze", "Neg", "Max", "Min", "Round", "CastLike",
                                            "ReduceMax", "Equal"}
    node = model.graph.node[1]
    attrs = {a.name: helper.get_attribute_value(a) for a in node.attribute}
    assert attrs["plugin_namespace"] == b"cadyq" and attrs["plugin_version"] == b"1" and attrs["bits"] == [4, 6, 8]
    assert ("cadyq", 1) in [(i.domain, i.version) for i in model.opset_import]


@pytest.mark.parametrize("bits,opset", [((4, 6, 8), 17), ((2, 3), 18), ((8, 4, 6, 5, 3), 15), ((5,), 21)])
def test_ort_conv_graph_matches_reference(bits, opset):
    rng = np.random.default_rng(len(bits) * 10 + opset)
    N, C_in, C, C_out, H, W_ = 6, 3, 5, 2, 7, 9
    K = len(bits)
    tile_k = np.arange(N) % K
    Wsel, b, g = selector(K, C, rng, tile_k)
    a = rng.uniform(0.3, 2.0, K).astype(np.float32)
    model, w2 = conv_select_conv_model(C_in, C, C_out, H, W_, Wsel, b, a, bits, opset, rng)
    x = rng.standard_normal((N, C_in, H, W_)).astype(np.float32)
    out, h, hq, bits_out = run(model, x=x, g=g)
    y_ref, bits_ref = op.reference(h, g, Wsel, b, a, bits)
    np.testing.assert_array_equal(bits_out, bits_ref)                      # same k for every tile
    np.testing.assert_array_equal(bits_out, np.asarray(bits, np.float32)[tile_k])
    np.testing.assert_array_max_ulp(hq, y_ref, maxulp=1)
    assert np.mean(hq == y_ref) > 0.999
    np.testing.assert_allclose(out, np.einsum("oc,nchw->nohw", w2[:, :, 0, 0], y_ref), rtol=1e-5, atol=1e-5)
    # the output really is quantized: at most 2*s_k + 1 levels per tile
    for n in range(N):
        assert len(np.unique(hq[n])) <= 2 * _levels(bits)[tile_k[n]] + 1


@pytest.mark.parametrize("bits", [(3, 2, 4), (4, 6, 8), (8, 5, 7)])
def test_ties_and_rounding_boundaries(bits):
    """Logit ties pick the first max; the exact rounding ties of both roundings go the same way in the graph as in
    the reference (half to even: test_reference_agrees_with_torch)."""
    x, g, Wsel, b, a = select_tie_case(bits, np.random.default_rng(1))
    N = x.shape[0]
    assert min(select_ties(x, a, bits)) > 0                     # the case holds ties of both kinds
    y, bits_out = run(select_model(x.shape, Wsel, b, a, bits), x=x, g=g)
    y_ref, bits_ref = op.reference(x, g, Wsel, b, a, bits)
    np.testing.assert_array_equal(bits_out, np.full(N, bits[1], np.float32))   # first of the tied maxima
    np.testing.assert_array_equal(bits_ref, bits_out)
    np.testing.assert_array_equal(y, y_ref)
    # x = ±a_T, ±2a_T clip to the top grid's ends, which candidate 1 clips to its own ±a_1 (< a_T), back on the top grid
    top, s = op.top_candidate(bits), _levels(bits)
    end = np.float32(np.round(a[1] / a[top] * s[top]) / s[top] * a[top])
    np.testing.assert_array_equal(y[:, 0, 0, 2:6], np.tile(np.float32([end, -end, end, -end]), (N, 1)))


@pytest.mark.parametrize("bits", [(4, 6, 8), (8, 5, 7)])
def test_integer_form_matches_reference(bits):
    """Version 2: q, the integers on the top grid, and scale = a_T / s_T for every tile; q * scale is y of version 1
    up to the order of the last two roundings."""
    x, g, Wsel, b, a = select_tie_case(bits, np.random.default_rng(4), N=5)
    vi = helper.make_tensor_value_info
    graph = helper.make_graph(
        [op.make_select_node(["x", "g", "W", "b", "a"], ["q", "scale", "bits"], bits)], "select_int",
        [vi("x", TensorProto.FLOAT, ["N", *x.shape[1:]]), vi("g", TensorProto.FLOAT, ["N", 2])],
        [vi("q", TensorProto.FLOAT, ["N", *x.shape[1:]]), vi("scale", TensorProto.FLOAT, ["N"]),
         vi("bits", TensorProto.FLOAT, ["N"])],
        [numpy_helper.from_array(v, n) for n, v in [("W", Wsel), ("b", b), ("a", a)]])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=10)
    op.add_functions(model)
    onnx.checker.check_model(model, full_check=True)
    assert ("cadyq", op.INT_VERSION) in [(i.domain, i.version) for i in model.opset_import]
    q, scale, bits_out = run(model, x=x, g=g)
    q_ref, scale_ref, bits_ref = op.reference(x, g, Wsel, b, a, bits, integer=True)
    np.testing.assert_array_equal(bits_out, bits_ref)
    np.testing.assert_array_equal(q, q_ref)
    np.testing.assert_array_equal(scale, scale_ref)
    top, s = op.top_candidate(bits), _levels(bits)
    assert np.all(scale == a[top] / s[top]) and np.all(np.abs(q) <= s[top]) and np.all(q == np.round(q))
    y_ref, _ = op.reference(x, g, Wsel, b, a, bits)
    np.testing.assert_allclose(q * scale[:, None, None, None], y_ref, rtol=1e-6, atol=0)


def test_float16_graph_computes_in_float32():
    """A float16 model (x, g, W, b, a fp16): statistics and quantization in float32, y cast back to fp16."""
    rng = np.random.default_rng(5)
    bits, N, C, H, W_ = (4, 6, 8), 6, 4, 24, 24
    Wsel, b, g = selector(3, C, rng, np.arange(N) % 3)
    a = np.float16([0.5, 1.0, 2.0])
    x = (8 * rng.standard_normal((N, C, H, W_))).astype(np.float16)   # fp16 sum of squares would overflow
    model = select_model(x.shape, Wsel.astype(np.float16), b.astype(np.float16), a, bits, opset=17)
    for io in list(model.graph.input) + [model.graph.output[0]]:
        io.type.tensor_type.elem_type = TensorProto.FLOAT16
    onnx.checker.check_model(model, full_check=True)
    y, bits_out = run(model, x=x, g=g.astype(np.float16))
    assert y.dtype == np.float16 and bits_out.dtype == np.float32
    f32 = lambda v: np.asarray(v).astype(np.float16).astype(np.float32)  # noqa: E731
    y_ref, bits_ref = op.reference(f32(x), f32(g), f32(Wsel), f32(b), f32(a), bits)
    np.testing.assert_array_equal(bits_out, bits_ref)
    np.testing.assert_array_equal(bits_out, np.float32(bits)[np.arange(N) % 3])
    np.testing.assert_array_max_ulp(y, y_ref.astype(np.float16), maxulp=1)


def test_reference_agrees_with_torch():
    """The numpy reference is the torch quantizer's inference arithmetic (quantizers._default_select, ops.on_top_grid)
    and, in the integer form, the lowering's (ReferenceKernels.select_quantize)."""
    torch = pytest.importorskip("torch")
    from cadyq.quant.lowering import IntQuantizer, ReferenceKernels, _Context
    from cadyq.quant.quantizers import _default_select

    rng = np.random.default_rng(3)
    x, g = rng.standard_normal((5, 4, 6, 7)).astype(np.float32), rng.standard_normal((5, 2)).astype(np.float32)
    W, b = rng.standard_normal((3, 6)).astype(np.float32), rng.standard_normal(3).astype(np.float32)
    a, bits = np.float32([0.5, 1.0, 2.0]), (4, 6, 8)
    y, bits_out = op.reference(x, g, W, b, a, bits)
    t = [torch.from_numpy(v) for v in (x, g, W, b, a)]
    yt, bits_t = _default_select(*t, torch.tensor(bits, dtype=torch.float32))
    np.testing.assert_array_equal(bits_out, bits_t.numpy())
    assert len(set(bits_out.tolist())) > 1                            # several candidates chosen
    np.testing.assert_array_max_ulp(y, yt.numpy(), maxulp=1)
    q, scale, _ = op.reference(x, g, W, b, a, bits, integer=True)
    ctx = _Context(ReferenceKernels())
    ctx.grad = t[1]
    qa = ReferenceKernels().select_quantize(t[0], IntQuantizer("full", bits, t[4], t[2], t[3]), ctx)
    np.testing.assert_array_equal(q, qa.q.numpy())
    np.testing.assert_array_equal(scale, qa.scale.numpy())


def test_add_functions_idempotent_and_errors():
    rng = np.random.default_rng(0)
    Wsel, b, _ = selector(3, 4, rng, [0])
    model, _ = conv_select_conv_model(3, 4, 2, 5, 5, Wsel, b, np.ones(3, np.float32), [4, 6, 8], 17, rng)
    op.add_functions(model)
    assert len(model.functions) == 1 and [i.domain for i in model.opset_import].count("cadyq") == 1
    node = model.graph.node[1]
    assert [a.name for a in node.attribute].count("plugin_namespace") == 1
    other = helper.make_model(helper.make_graph([], "empty", [], []), opset_imports=[helper.make_opsetid("", 17)])
    op.add_functions(other)
    assert len(other.functions) == 0                                   # nothing to add without CADyQSelect nodes
    with pytest.raises(ExportError, match="opset"):
        op.make_function(14)
    with pytest.raises(ExportError, match="bit-widths"):
        op.make_select_node(["x", "g", "W", "b", "a"], ["y", "bits"], bits=[1, 8])
    with pytest.raises(ExportError, match="distinct"):                 # one top candidate
        op.make_select_node(["x", "g", "W", "b", "a"], ["y", "bits"], bits=[4, 8, 8])
    del node.attribute[:]
    with pytest.raises(ExportError, match="bits"):
        op.add_functions(model)


def test_aot_namespace_is_selectable():
    rng = np.random.default_rng(0)
    Wsel, b, _ = selector(2, 3, rng, [0])
    model = select_model((1, 3, 4, 4), Wsel, b, np.ones(2, np.float32), (4, 8))
    node = model.graph.node[0]
    del node.attribute[:]
    node.attribute.append(helper.make_attribute("bits", [4, 8]))
    op.add_functions(model, plugin_namespace="cadyq_aot")
    assert helper.get_attribute_value(next(a for a in node.attribute if a.name == "plugin_namespace")) == b"cadyq_aot"
    onnx.checker.check_model(model, full_check=True)
