"""CADyQSelect TensorRT plugin: module selection, build-time methods, ONNX parsing, AOT registration.

`trt` tests need a TensorRT builder (TensorRT-RTX is enough: it parses and builds on a CPU-only machine).
"""
import importlib
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from onnx import TensorProto, helper, numpy_helper

from cadyq import trt_plugins
from cadyq.errors import EngineError
from cadyq.export import op
from cadyq.trt_plugins import aot
from cadyq.trt_plugins import cadyq_select as cs
from conftest import needs_trt_builder

REPO = Path(__file__).resolve().parents[1]




def conv_select_conv(N="N", C=4, H=8, W=8, bits=(4, 6, 8)):
    rng = np.random.default_rng(0)
    K = len(bits)
    inits = {"w1": (0.3 * rng.standard_normal((C, 3, 3, 3))).astype(np.float32),
             "w2": (0.3 * rng.standard_normal((3, C, 1, 1))).astype(np.float32),
             "Wsel": rng.standard_normal((K, C + 2)).astype(np.float32),
             "bsel": np.zeros(K, np.float32), "asel": np.ones(K, np.float32)}
    vi = helper.make_tensor_value_info
    graph = helper.make_graph(
        [helper.make_node("Conv", ["x", "w1"], ["h"], pads=[1, 1, 1, 1]),
         op.make_select_node(["h", "g", "Wsel", "bsel", "asel"], ["hq", "bits"], bits, name="select0"),
         helper.make_node("Conv", ["hq", "w2"], ["out"])], "csc",
        [vi("x", TensorProto.FLOAT, [N, 3, H, W]), vi("g", TensorProto.FLOAT, [N, 2])],
        [vi("out", TensorProto.FLOAT, [N, 3, H, W]), vi("bits", TensorProto.FLOAT, [N])],
        [numpy_helper.from_array(v, k) for k, v in inits.items()])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=10)
    op.add_functions(model)
    return model


def test_trt_module_error_says_how_to_install(monkeypatch):
    def fail(name, *a, **k):
        raise ImportError(f"No module named {name!r}")
    monkeypatch.setattr(importlib, "import_module", fail)
    with pytest.raises(EngineError, match="pip install tensorrt-rtx-cu13-bindings"):
        trt_plugins.trt_module()


def test_parse_bits_and_raw_pointer_wrapper():
    class Field:
        def __init__(self, name, data):
            self.name, self.data = name, data
    assert cs.parse_bits([Field("plugin_version", b"1"), Field("bits", np.int32([4, 6, 8]))]) == (4, 6, 8)
    with pytest.raises(EngineError, match="missing plugin field 'bits'"):
        cs.parse_bits([Field("other", np.int32([1]))])
    with pytest.raises(EngineError, match=r"\[2, 16\]"):
        cs.parse_bits([Field("bits", np.int32([1, 8]))])
    with pytest.raises(EngineError, match="distinct"):
        cs.parse_bits([Field("bits", np.int32([8, 4, 8]))])
    torch = pytest.importorskip("torch")
    jit = pytest.importorskip("triton.runtime.jit")
    if not hasattr(jit, "mangle_type"):
        pytest.skip("this triton has no mangle_type")
    # Triton types a raw pointer like a tensor of that dtype
    assert jit.mangle_type(cs.DevPtr(1 << 20, torch.float32)) == jit.mangle_type(torch.zeros(4))
    assert jit.mangle_type(cs.DevPtr(1 << 20, torch.float16)) == "*fp16"


def test_aot_extra_args_match_kernel_launch_params():
    pytest.importorskip("triton")
    from cadyq.kernels.select_quant import LAUNCH_PARAMS
    n_in = len(op.INPUTS)
    assert LAUNCH_PARAMS[n_in:n_in + len(aot.EXTRA_ARGS)] == aot.EXTRA_ARGS
    assert len(LAUNCH_PARAMS) == len(op.INPUTS) + len(aot.EXTRA_ARGS) + len(op.OUTPUTS)


def test_register_aot_needs_tensorrt_plugin():
    try:
        importlib.import_module("tensorrt.plugin")
    except ImportError:
        with pytest.raises(EngineError, match="tensorrt.plugin"):
            trt_plugins.register_aot(cc=80)
    else:
        assert trt_plugins.register_aot(cc=80) == "cadyq_aot::CADyQSelect"


@pytest.mark.trt
@needs_trt_builder
def test_plugin_build_time_methods():
    trt = trt_plugins.trt_module()
    Plugin, Creator = trt_plugins.plugin_classes(trt)
    creator = Creator()
    assert (creator.name, creator.plugin_namespace, creator.plugin_version) == ("CADyQSelect", "cadyq", "1")
    fields = trt.PluginFieldCollection([trt.PluginField("bits", np.int32([4, 6, 8]), trt.PluginFieldType.INT32),
                                        trt.PluginField("plugin_namespace", b"cadyq", trt.PluginFieldType.CHAR)])
    p = creator.create_plugin("select0", fields, trt.TensorRTPhase.BUILD)
    assert p.bits == (4, 6, 8) and p.num_outputs == 2 and p.get_capability_interface(None) is p
    F, H = trt.DataType.FLOAT, trt.DataType.HALF
    assert p.get_output_data_types([F] * 5) == [F, F] and p.get_output_data_types([H] + [F] * 4) == [H, F]

    def desc(dtype, dims=(2, 4, 8, 8), fmt=trt.TensorFormat.LINEAR):
        d = trt.DynamicPluginTensorDesc()
        d.desc.type, d.desc.format, d.desc.dims = dtype, fmt, trt.Dims(list(dims))
        return d
    io = [desc(H), desc(F), desc(F), desc(F), desc(F), desc(H), desc(F)]
    assert all(p.supports_format_combination(i, io, 5) for i in range(7))
    io[5] = desc(F)
    assert not p.supports_format_combination(5, io, 5)               # y must have the type of x
    io[2] = desc(H)
    assert not p.supports_format_combination(2, io, 5)               # W is float32
    io[0] = desc(F, fmt=trt.TensorFormat.CHW32)
    assert not p.supports_format_combination(0, io, 5)
    ins = [desc(F), desc(F, (2, 2)), desc(F, (3, 6)), desc(F, (3,)), desc(F, (3,))]
    outs = [desc(F), desc(F, (2,))]
    p.configure_plugin(ins, outs)
    with pytest.raises(EngineError, match="rows"):
        p.configure_plugin(ins[:2] + [desc(F, (2, 6))] + ins[3:], outs)
    with pytest.raises(EngineError, match="C\\+2"):
        p.configure_plugin(ins[:2] + [desc(F, (3, 7))] + ins[3:], outs)
    assert p.get_workspace_size(ins, outs) == 0
    clone = p.clone()
    assert (clone.bits, clone.plugin_namespace, clone.phase) == (p.bits, p.plugin_namespace, p.phase)
    again = creator.create_plugin("select0", p.get_fields_to_serialize(), trt.TensorRTPhase.RUNTIME)
    assert again.bits == (4, 6, 8) and again.attach_to_context(None).bits == (4, 6, 8)


@pytest.mark.trt
@needs_trt_builder
def test_parse_without_plugin_uses_standard_layers_and_builds():
    trt = trt_plugins.trt_module()
    logger = trt.Logger(trt.Logger.ERROR)
    builder = trt.Builder(logger)
    network = builder.create_network(0)
    parser = trt.OnnxParser(network, logger)
    assert parser.parse(conv_select_conv().SerializeToString()), [parser.get_error(i).desc() for i in range(parser.num_errors)]
    types = {network.get_layer(i).type for i in range(network.num_layers)}
    assert not {t for t in types if "PLUGIN" in t.name}
    assert {trt.LayerType.CONVOLUTION, trt.LayerType.TOPK, trt.LayerType.REDUCE, trt.LayerType.UNARY} <= types
    unary_ops = set()
    for i in range(network.num_layers):
        layer = network.get_layer(i)
        if layer.type == trt.LayerType.UNARY:
            layer.__class__ = trt.IUnaryLayer                           # TensorRT's Python downcast
            unary_ops.add(layer.op)
    assert {trt.UnaryOperation.ROUND, trt.UnaryOperation.SQRT} <= unary_ops
    config = builder.create_builder_config()
    profile = builder.create_optimization_profile()
    profile.set_shape("x", (1, 3, 8, 8), (4, 3, 8, 8), (16, 3, 8, 8))
    profile.set_shape("g", (1, 2), (4, 2), (16, 2))
    config.add_optimization_profile(profile)
    try:
        plan = builder.build_serialized_network(network, config)
    except Exception as e:
        if trt_plugins.is_rtx(trt):
            raise  # TensorRT-RTX builds without a GPU: a failure here is a real one
        pytest.skip(f"full TensorRT cannot build without a GPU: {e}")
    if plan is None and not trt_plugins.is_rtx(trt):
        pytest.skip("full TensorRT could not build here (no GPU?)")
    assert plan is not None and plan.nbytes > 10_000


@pytest.mark.trt
@needs_trt_builder
def test_register_is_idempotent_and_guarded_on_rtx():
    trt = trt_plugins.trt_module()
    registry = trt.get_plugin_registry()
    if trt_plugins.is_rtx(trt):
        with pytest.raises(EngineError, match="TensorRT-RTX"):
            trt_plugins.register()
    creator = trt_plugins.register(force=True)
    try:
        assert trt_plugins.register(force=True) is creator
        assert registry.get_creator("CADyQSelect", "1", "cadyq") is not None
    finally:
        assert trt_plugins.deregister()
    assert registry.get_creator("CADyQSelect", "1", "cadyq") is None


PARSE_WITH_PLUGIN = """
import json, sys
sys.path.insert(0, "tests")
from test_trt_plugin import conv_select_conv
from cadyq import trt_plugins
trt = trt_plugins.trt_module()
trt_plugins.register(force=True)
logger = trt.Logger(trt.Logger.ERROR)
builder = trt.Builder(logger)
network = builder.create_network(0)
parser = trt.OnnxParser(network, logger)
ok = parser.parse(conv_select_conv(N=2).SerializeToString())
print(json.dumps(dict(ok=ok, layers=[network.get_layer(i).type.name for i in range(network.num_layers)])), flush=True)
"""


@pytest.mark.trt
@needs_trt_builder
def test_parse_with_plugin_registered_gives_plugin_layer():
    """Child process with libtensorrt_rtx.so resolvable (TensorRT-RTX's parser dlopens it for plugin nodes)."""
    import tempfile

    from cadyq.export.engine import rtx_library_shim

    with tempfile.TemporaryDirectory() as tmp:
        env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")])}
        if rtx_library_shim(trt_plugins.trt_module(), tmp) is not None:
            env["LD_LIBRARY_PATH"] = os.pathsep.join([tmp, os.environ.get("LD_LIBRARY_PATH", "")])
        proc = subprocess.run([sys.executable, "-c", PARSE_WITH_PLUGIN], cwd=REPO, env=env,
                              capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    assert result["ok"] and "PLUGIN_V3" in result["layers"]
    assert "TOPK" not in result["layers"]                            # the function body was not inlined


@pytest.mark.gpu
def test_enqueue_on_raw_pointers_in_cuda_graph():
    """The plugin's enqueue body: raw pointers, TensorRT's stream, capturable into a CUDA graph."""
    torch = pytest.importorskip("torch")
    if not torch.cuda.is_available():
        pytest.skip("needs CUDA")
    pytest.importorskip("triton")
    bits = (4, 6, 8)
    rng = np.random.default_rng(0)
    x = torch.from_numpy(rng.standard_normal((8, 16, 24, 24)).astype(np.float32)).cuda()
    g = torch.from_numpy(rng.standard_normal((8, 2)).astype(np.float32)).cuda()
    W = torch.from_numpy(rng.standard_normal((3, 18)).astype(np.float32)).cuda()
    b, a = torch.zeros(3, device="cuda"), torch.tensor([0.5, 1.0, 2.0], device="cuda")
    y, bits_out = torch.empty_like(x), torch.empty(8, device="cuda")
    stream = torch.cuda.Stream()
    args = (bits, False, tuple(x.shape), [t.data_ptr() for t in (x, g, W, b, a)],
            [y.data_ptr(), bits_out.data_ptr()])
    cs.warmup(bits, tuple(x.shape))                                   # compiles the kernel outside capture
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph, stream=stream):
        cs.enqueue_select(*args, stream.cuda_stream)
    y.zero_()
    graph.replay()
    torch.cuda.synchronize()
    y_ref, bits_ref = op.reference(*(t.cpu().numpy() for t in (x, g, W, b, a)), bits)
    np.testing.assert_array_equal(bits_out.cpu().numpy(), bits_ref)
    np.testing.assert_array_max_ulp(y.cpu().numpy(), y_ref, maxulp=1)
