"""ONNX export: graph structure, INT8 weights, metadata, fp16, atomic writes, check_graph/compare,
and the onnxruntime backend. Small backbones (conftest.tiny) and 24 px tiles keep it fast."""
import json
import os

import numpy as np
import onnx
import pytest
import torch
from conftest import tiny

from cadyq import quantize
from cadyq.errors import BackendError, CadyqError, ExportError
from cadyq.export import export_onnx, op, weight_dequant_error
from cadyq.export.check import check_graph, compare
from cadyq.quant import ModelInfo, QConv2d, observe, selected_bits

BACKBONES = ("edsr", "srresnet", "carn", "idn")
METHODS = ("fp32", "pams8", "cadyq")
TILE = 24


def _model(name, method, seed=0):
    torch.manual_seed(seed)
    m = quantize(tiny(name), method).eval()
    if method != "fp32":
        with torch.no_grad(), observe(m):
            m(torch.rand(4, 3, TILE, TILE) * 255)
    return m



pytestmark = pytest.mark.usefixtures("one_torch_thread")

_CACHE = {}


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    """(name, method, dtype) -> (model, path), exported once per module."""
    root = tmp_path_factory.mktemp("onnx")

    def get(name, method, dtype="fp32", form="int8"):
        key = (name, method, dtype, form)
        if key not in _CACHE:
            m = _model(name, method)
            _CACHE[key] = (m, export_onnx(m, root / f"{name}_{method}_{dtype}_{form}.onnx", tile=TILE, dtype=dtype,
                                          form=form))
        return _CACHE[key]
    yield get
    _CACHE.clear()


def _ort(path):
    import onnxruntime as ort

    so = ort.SessionOptions()
    so.log_severity_level = 3
    return ort.InferenceSession(str(path), so, providers=["CPUExecutionProvider"])


def _dims(vi):
    return [d.dim_param or d.dim_value for d in vi.type.tensor_type.shape.dim]


@pytest.mark.parametrize("form", ("int8", "ort", "fakequant"))
@pytest.mark.parametrize("method", METHODS)
@pytest.mark.parametrize("name", BACKBONES)
def test_graph_structure(exported, name, method, form):
    m, path = exported(name, method, form=form)
    rep = check_graph(path)
    assert rep.ok, str(rep)
    proto = onnx.load(str(path))
    info = ModelInfo.from_model(m)
    meta = {p.key: p.value for p in proto.metadata_props}
    assert ModelInfo.from_dict(json.loads(meta["cadyq"])) == info
    assert json.loads(meta["cadyq.export"])["tile"] == TILE
    s, L = m.config.scale, info.n_layers
    g = proto.graph
    assert [i.name for i in g.input] == ["lr"] and [o.name for o in g.output] == ["sr", "bits"]
    assert _dims(g.input[0]) == ["N", 3, TILE, TILE]
    assert _dims(g.output[0]) == ["N", 3, TILE * s, TILE * s]
    assert _dims(g.output[1]) == ["N", L]
    assert "[0,255]" in g.doc_string and "[0,255]" in g.input[0].doc_string
    ops = [n.op_type for n in g.node]
    assert rep.n_select == (L if method == "cadyq" else 0) == ops.count("CADyQSelect")
    assert not any(n.domain == "cadyq_export" for n in g.node)
    if method == "cadyq":  # the tile gradient: standard ops computed from the input, inside the graph
        assert {"Pad", "Abs", "ReduceMean"} <= set(ops)
    qconvs = [n for n, c in m.named_modules() if isinstance(c, QConv2d)]
    inits = {t.name: t for t in g.initializer}
    assert json.loads(meta["cadyq.export"])["form"] == ("fakequant" if method == "fp32" else form)
    if form == "int8" and method != "fp32":
        _check_int8_form(g, qconvs, L, method)
        return
    if form == "ort" and method != "fp32":
        _check_ort_form(g, qconvs, L, method)
        return
    assert ops.count("DequantizeLinear") == len(qconvs)
    for c in qconvs:
        assert inits[f"{c}.weight_q"].data_type == onnx.TensorProto.INT8
        assert f"model.{c}.weight" not in inits  # no float copy of a quantized weight
    if method == "pams8" and name == "edsr":  # fixed-bit PAMS quantizers: standard ops, round half to even
        assert {"Round", "Min", "Max"} <= set(ops)


def _graph_maps(g):
    """(tensor -> producing node, initializer name -> tensor, tensor -> consuming nodes)."""
    consumers = {}
    for n in g.node:
        for i in n.input:
            consumers.setdefault(i, []).append(n)
    return {o: n for n in g.node for o in n.output}, {t.name: t for t in g.initializer}, consumers


def _check_int8_form(g, qconvs, n_layers, method):
    """Every quantized conv: Conv(DequantizeLinear(int8 q, 1), DequantizeLinear(int8 w, scale, axis 0)) with no
    bias, then Mul by the input scale and Add of the bias; q comes from CADyQSelect-2 or QuantizeLinear."""
    producer, inits, consumers = _graph_maps(g)
    int_convs = []
    for conv in (n for n in g.node if n.op_type == "Conv"):
        x_dq, w_dq = producer.get(conv.input[0]), producer.get(conv.input[1])
        if not (x_dq is not None and x_dq.op_type == "DequantizeLinear" and w_dq is not None
                and w_dq.op_type == "DequantizeLinear"):
            continue
        int_convs.append(conv)
        assert len(conv.input) == 2  # no bias in the conv
        assert inits[w_dq.input[0]].data_type == onnx.TensorProto.INT8
        assert onnx.helper.get_attribute_value(next(a for a in w_dq.attribute if a.name == "axis")) == 0
        src = producer[x_dq.input[0]]
        assert src.op_type == "QuantizeLinear" and inits.get(src.input[2]) is None or \
            onnx.numpy_helper.to_array(inits[src.input[2]]).dtype == np.int8
        scale = onnx.numpy_helper.to_array(inits[x_dq.input[1]]) if x_dq.input[1] in inits else None
        if scale is not None:
            assert float(scale) == 1.0
        nxt = consumers[conv.output[0]]
        assert [n.op_type for n in nxt] == ["Mul"] and [n.op_type for n in consumers[nxt[0].output[0]]] == ["Add"]
    assert len(int_convs) == len(qconvs)
    assert not any(n.op_type == "Conv" and len(n.input) == 2 and producer.get(n.input[1]) is not None and
                   producer[n.input[1]].op_type == "Div" for n in g.node)  # no fake-quant weight path left
    sel = [n for n in g.node if n.op_type == "CADyQSelect"]
    assert all(len(n.output) == 3 for n in sel) and len(sel) == (n_layers if method == "cadyq" else 0)


@pytest.mark.parametrize("name", BACKBONES)
def test_int8_weights_are_bit_exact(exported, name):
    m, path = exported(name, "cadyq", form="fakequant")
    errs = weight_dequant_error(path, m)
    assert errs and set(errs.values()) == {0}, errs


def test_fused_dq_weights_within_two_ulp(tmp_path):
    m = _model("carn", "pams8")
    path = export_onnx(m, tmp_path / "fused.onnx", tile=TILE, exact_weights=False, form="fakequant")
    proto = onnx.load(str(path))
    consumers = {i: n.op_type for n in proto.graph.node for i in n.input}
    dq = [n for n in proto.graph.node if n.op_type == "DequantizeLinear"]
    assert dq and all(consumers[n.output[0]] == "Conv" for n in dq)  # the TensorRT Q/DQ weight pattern
    errs = weight_dequant_error(path, m)
    assert max(errs.values()) <= 2, errs


def _check_ort_form(g, qconvs, n_layers, method):
    """Every quantized conv: Conv(Mul(integers, input scale), float weights, bias) and nothing after it but its
    activation; the integers come from CADyQSelect-2 or a Round; no Quantize/DequantizeLinear anywhere."""
    producer, inits, consumers = _graph_maps(g)
    assert not {"QuantizeLinear", "DequantizeLinear"} & {n.op_type for n in g.node}
    scaled = []
    for conv in (n for n in g.node if n.op_type == "Conv"):
        mul = producer.get(conv.input[0])
        src = producer.get(mul.input[0]) if mul is not None and mul.op_type == "Mul" else None
        if src is None or src.op_type not in ("CADyQSelect", "Round"):
            continue
        scaled.append(conv)
        assert src.op_type == "Round" or list(src.output).index(mul.input[0]) == 0  # CADyQSelect's q
        assert len(conv.input) == 3 and inits[conv.input[1]].data_type == onnx.TensorProto.FLOAT
        assert inits[conv.input[2]].data_type == onnx.TensorProto.FLOAT
        assert {n.op_type for n in consumers[conv.output[0]]} <= {"Relu", "LeakyRelu", "Add", "Concat", "Conv",
                                                                   "DepthToSpace", "Mul", "Cast", "Min", "Max"}
        nxt = consumers[conv.output[0]]
        assert not (len(nxt) == 1 and nxt[0].op_type == "Mul" and
                    [n.op_type for n in consumers.get(nxt[0].output[0], [])] == ["Add"])  # no scale + bias after it
    assert len(scaled) == len(qconvs)
    sel = [n for n in g.node if n.op_type == "CADyQSelect"]
    assert all(len(n.output) == 3 for n in sel) and len(sel) == (n_layers if method == "cadyq" else 0)


@pytest.mark.parametrize("form,version", [("fakequant", 1), ("int8", 2), ("ort", 2)])
def test_cadyq_select_nodes_and_function(exported, form, version):
    m, path = exported("srresnet", "cadyq", form=form)
    proto = onnx.load(str(path))
    fn = [f for f in proto.functions if f.domain == op.DOMAIN and f.name == op.OP_TYPE]
    assert len(fn) == 1 and list(fn[0].output) == (["q", "scale", "bits"] if version == 2 else ["y", "bits"])
    assert [o.version for o in proto.opset_import if o.domain == op.DOMAIN] == [version]
    for n in proto.graph.node:
        if n.op_type == op.OP_TYPE:
            attrs = {a.name: onnx.helper.get_attribute_value(a) for a in n.attribute}
            assert n.domain == op.DOMAIN and list(attrs["bits"]) == [4, 6, 8]
            assert attrs["plugin_namespace"] == b"cadyq" and attrs["plugin_version"] == str(version).encode()


@pytest.mark.parametrize("method, expected", [("fp32", 32.0), ("pams8", 8.0)])
def test_fixed_bits_output(exported, method, expected):
    m, path = exported("idn", method)
    x = torch.rand(3, 3, TILE, TILE) * 255
    sr, bits = _ort(path).run(None, {"lr": x.numpy()})
    assert bits.shape == (3, ModelInfo.from_model(m).n_layers) and (bits == expected).all()
    with torch.no_grad():
        ref = m(x)
    assert np.abs(sr - ref.numpy()).max() < (1e-2 if method == "fp32" else 1.0)


def test_dynamic_and_static_batch(exported, tmp_path):
    m, path = exported("edsr", "cadyq")
    sess = _ort(path)
    for n in (1, 5):
        sr, bits = sess.run(None, {"lr": (torch.rand(n, 3, TILE, TILE) * 255).numpy()})
        assert sr.shape == (n, 3, 2 * TILE, 2 * TILE) and bits.shape == (n, 4)
    static = export_onnx(m, tmp_path / "static.onnx", tile=TILE, dynamic_batch=False)
    g = onnx.load(str(static)).graph
    assert _dims(g.input[0]) == [1, 3, TILE, TILE] and _dims(g.output[1]) == [1, 4]


def test_fp16_export(exported, photo_tiles):
    m, path = exported("carn", "cadyq", "fp16", form="fakequant")
    rep = check_graph(path)
    assert rep.ok, str(rep)
    g = onnx.load(str(path)).graph
    f16 = onnx.TensorProto.FLOAT16
    assert g.input[0].type.tensor_type.elem_type == onnx.TensorProto.FLOAT  # fp32 I/O
    assert g.output[0].type.tensor_type.elem_type == onnx.TensorProto.FLOAT
    types = {v.name: v.type.tensor_type.elem_type for v in g.value_info}
    convs = [n for n in g.node if n.op_type == "Conv"]
    sobel = convs[0]  # the tile gradient, fp32
    assert types[sobel.output[0]] == onnx.TensorProto.FLOAT
    assert all(types[c.output[0]] == f16 for c in convs[1:])
    sel = [n for n in g.node if n.op_type == "CADyQSelect"]
    assert all(types[n.input[0]] == onnx.TensorProto.FLOAT for n in sel)  # selection in fp32
    report = compare(path, m, photo_tiles)
    assert not report.local_failures and not report.unexplained, str(report)
    assert report.bit_agreement >= 0.98 and report.sr_mean_abs < 0.5, str(report)


def test_atomic_write_and_errors(tmp_path):
    m = _model("edsr", "pams8")
    target = tmp_path / "m.onnx"
    target.write_bytes(b"old")
    with pytest.raises(ExportError, match="dtype"):
        export_onnx(m, target, tile=TILE, dtype="int4")
    assert target.read_bytes() == b"old"  # a failed export leaves the old file alone
    export_onnx(m, target, tile=TILE)
    assert onnx.load(str(target)).graph.name.startswith("cadyq_edsr")
    assert sorted(os.listdir(tmp_path)) == ["m.onnx"]  # no temporary files left behind
    with pytest.raises(ExportError, match="opset"):
        export_onnx(m, tmp_path / "x.onnx", tile=TILE, opset=11)
    with pytest.raises(ExportError, match="int8 graph form"):
        export_onnx(m, tmp_path / "x.onnx", tile=TILE, dtype="fp16")
    with pytest.raises(ExportError, match="form"):
        export_onnx(m, tmp_path / "x.onnx", tile=TILE, form="int4")
    with pytest.raises(ExportError):
        export_onnx(torch.nn.Conv2d(3, 3, 3), tmp_path / "x.onnx", tile=TILE)
    assert not (tmp_path / "x.onnx").exists()


def test_export_leaves_the_model_untouched():
    m = _model("edsr", "cadyq")
    x = torch.rand(2, 3, TILE, TILE) * 255
    with torch.no_grad():
        before, bits_before = m(x), selected_bits(m)
    state = {k: v.clone() for k, v in m.state_dict().items()}
    import tempfile

    with tempfile.TemporaryDirectory() as d:
        export_onnx(m, os.path.join(d, "m.onnx"), tile=TILE, dtype="fp16", form="fakequant")
        export_onnx(m, os.path.join(d, "i.onnx"), tile=TILE)
    with torch.no_grad():
        after = m(x)
    assert torch.equal(before, after) and torch.equal(bits_before, selected_bits(m))
    assert all(torch.equal(state[k], v) for k, v in m.state_dict().items())


# --- check_graph / compare ------------------------------------------------------------------------

def test_check_graph_flags_a_foreign_model(tmp_path):
    from onnx import TensorProto, helper

    g = helper.make_graph([helper.make_node("Relu", ["x"], ["y"])], "g",
                          [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3, 4, 4])],
                          [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 3, 4, 4])])
    path = tmp_path / "relu.onnx"
    onnx.save(helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)]), str(path))
    rep = check_graph(path)
    assert not rep.ok and any("metadata" in p for p in rep.problems)
    with pytest.raises(CadyqError, match="metadata"):
        compare(path, _model("edsr", "fp32"), torch.zeros(1, 3, TILE, TILE))
    with pytest.raises(CadyqError):
        check_graph(tmp_path / "missing.onnx")


def test_compare_passes_and_prints(exported, photo_tiles):
    m, path = exported("idn", "cadyq")
    rep = compare(path, m, photo_tiles)
    assert rep.passed, str(rep)
    assert rep.n_decisions == 16 * ModelInfo.from_model(m).n_layers
    text = str(rep)
    assert "PASS" in text and "agree" in text and "first diverging layer" in text
    assert rep.bisected_tiles and rep.first_local_mismatch is None
    with pytest.raises(CadyqError, match="holds"):
        compare(path, _model("idn", "pams8"), photo_tiles)


@pytest.mark.parametrize("form", ("int8", "fakequant"))
@pytest.mark.parametrize("what", ["alpha", "weight_scale"])
def test_compare_names_the_first_diverging_layer(exported, photo_tiles, tmp_path, what, form):
    """Break one quantizer's clip value / one conv's weight scale in the graph: compare must fail
    and name that module (or, in the int8 form, the next tapped tensor after it) as the first diverging layer."""
    m, path = exported("edsr", "pams8", form=form)
    proto = onnx.load(str(path))
    target = "body.1.body.0" if what == "weight_scale" else "body.1.body_output_quant"
    inits = {t.name: t for t in proto.graph.initializer}
    nxt = target
    if form == "int8":
        suffix = "body.1.body.0.weight_scale" if what == "weight_scale" else "body.1.body_output_quant.alpha"
        name = next(n for n in inits if n.endswith(suffix))
        nxt = "body.1.body.2" if what == "weight_scale" else target  # torch has no tap of the conv + folded ReLU
    else:
        name = f"{target}.weight_scale" if what == "weight_scale" else f"model.{target}.alpha"
    if name not in inits:  # the exporter may have shared an identical alpha: find it through the Min node
        mins = [n for n in proto.graph.node if n.op_type == "Min" and "body_output_quant" in n.name and "body.1" in n.name]
        name = mins[0].input[1]
    t = inits[name]
    arr = onnx.numpy_helper.to_array(t) * 1.5
    t.CopyFrom(onnx.numpy_helper.from_array(arr.astype(np.float32), name))
    broken = tmp_path / "broken.onnx"
    onnx.save(proto, str(broken))
    rep = compare(broken, m, photo_tiles)
    assert not rep.passed
    assert rep.first_local_mismatch is not None and rep.first_local_mismatch.startswith(target), str(rep)
    assert rep.first_divergent is not None and rep.first_divergent.startswith((target, nxt)), str(rep)
    assert "FAIL" in str(rep)


def _ort_optimized_ops(path, tmp_path):
    import collections

    import onnxruntime as ort

    so = ort.SessionOptions()
    so.log_severity_level = 3
    so.optimized_model_filepath = str(tmp_path / f"opt-{os.path.basename(path)}")
    ort.InferenceSession(str(path), so, providers=["CPUExecutionProvider"])
    return collections.Counter(f"{n.domain or 'ai.onnx'}:{n.op_type}"
                               for n in onnx.load(so.optimized_model_filepath).graph.node)


@pytest.mark.parametrize("name", BACKBONES)
def test_ort_form_runs_like_the_float_model_in_onnxruntime(exported, name, tmp_path):
    """ONNX Runtime's optimized graph: the ort form has no Quantize/DequantizeLinear pass and no convolution left in
    the plain (unfused, unblocked) form beyond the fp32 model's (the int8 form keeps some: its scale and bias follow
    the conv; benchmarks/integer_cpu.md)."""
    fp32 = _ort_optimized_ops(exported(name, "fp32")[1], tmp_path)
    ort_form = _ort_optimized_ops(exported(name, "cadyq", form="ort")[1], tmp_path)
    assert ort_form["ai.onnx:QuantizeLinear"] == ort_form["ai.onnx:DequantizeLinear"] == 0, ort_form
    assert ort_form["ai.onnx:Conv"] <= fp32["ai.onnx:Conv"], (ort_form, fp32)
    assert sum(v for k, v in ort_form.items() if k.endswith("Conv")) >= sum(
        v for k, v in fp32.items() if k.endswith("Conv"))  # every conv is there, in some form


# --- the onnxruntime backend ------------------------------------------------------------------------

def test_onnxruntime_backend(exported, photo_tiles):
    from cadyq.runtime.backend import create_backend
    from cadyq.runtime.onnxruntime_backend import OnnxRuntimeBackend

    m, path = exported("carn", "cadyq")
    be = create_backend("auto", path, "cpu")
    assert isinstance(be, OnnxRuntimeBackend) and be.name == "onnxruntime"
    assert be.info == ModelInfo.from_model(m) and be.tile_sizes == (TILE, TILE) and be.max_batch is None
    assert be.device == torch.device("cpu") and be.providers[0] == "CPUExecutionProvider"
    sr, bits = be.run(photo_tiles[:5])
    assert sr.dtype == bits.dtype == torch.float32
    assert sr.shape == (5, 3, 2 * TILE, 2 * TILE) and bits.shape == (5, be.info.n_layers)
    with torch.no_grad():
        ref = m(photo_tiles[:5])
    assert (bits == selected_bits(m)).float().mean() > 0.95
    assert (sr - ref).abs().mean() < 0.5
    with pytest.raises(BackendError, match="tiles"):
        be.run(torch.zeros(1, 3, TILE + 8, TILE))


def test_onnxruntime_backend_fp32_bits_and_module_input():
    from cadyq.runtime.onnxruntime_backend import OnnxRuntimeBackend

    m = _model("srresnet", "fp32")
    be = OnnxRuntimeBackend(m, "cpu")  # an nn.Module is exported first (tile 96)
    assert be.tile_sizes == (96, 96)
    sr, bits = be.run(torch.rand(2, 3, 96, 96) * 255)
    assert sr.shape == (2, 3, 192, 192) and (bits == 32).all() and bits.shape == (2, be.info.n_layers)


def test_onnxruntime_backend_refuses_foreign_files(tmp_path):
    from onnx import TensorProto, helper

    from cadyq.runtime.onnxruntime_backend import OnnxRuntimeBackend

    g = helper.make_graph([helper.make_node("Relu", ["lr"], ["sr"])], "g",
                          [helper.make_tensor_value_info("lr", TensorProto.FLOAT, ["N", 3, 8, 8])],
                          [helper.make_tensor_value_info("sr", TensorProto.FLOAT, ["N", 3, 8, 8])])
    plain = tmp_path / "plain.onnx"
    onnx.save(helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)]), str(plain))
    with pytest.raises(BackendError, match="not a cadyq export"):
        OnnxRuntimeBackend(plain, "cpu")
    junk = tmp_path / "junk.onnx"
    junk.write_bytes(b"\x00not onnx at all")
    with pytest.raises(BackendError):
        OnnxRuntimeBackend(junk, "cpu")
    with pytest.raises(BackendError, match="no such"):
        OnnxRuntimeBackend(tmp_path / "missing.onnx", "cpu")
