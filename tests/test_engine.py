"""TensorRT engines: build every backbone's CADyQ graph (function inlined / CADyQSelect plugin), the cache and
sidecar, and the tensorrt backend's checks (on a CPU-only machine only its error paths can run).

Builds need a TensorRT builder; TensorRT-RTX builds without a GPU (CPU-only AOT), so these run in CI.
"""
import json
import time

import pytest
import torch
from conftest import needs_trt_builder, tiny

from cadyq import quantize
from cadyq.errors import BackendError, EngineError
from cadyq.export import export_onnx
from cadyq.export import engine as E
from cadyq.quant import ModelInfo, observe

BACKBONES = ("edsr", "srresnet", "carn", "idn")
TILE = 24
BATCH = (1, 2, 4)
pytestmark = [pytest.mark.trt, needs_trt_builder]


def _model(name, photo_tiles, method="cadyq"):
    m = quantize(tiny(name), method)
    with torch.no_grad(), observe(m):
        m(photo_tiles)
    return m.eval()


@pytest.fixture(scope="module")
def graphs(tmp_path_factory, photo_tiles):
    """Tiny CADyQ models of every backbone exported at 24x24 (the int8 graph form): name -> (onnx path, ModelInfo);
    "<name>-pams8" for the PAMS-8 models."""
    d = tmp_path_factory.mktemp("onnx")
    out = {}
    for name in BACKBONES:
        for method in ("cadyq", "pams8"):
            m = _model(name, photo_tiles, method)
            key = name if method == "cadyq" else f"{name}-pams8"
            out[key] = (export_onnx(m, d / f"{key}.onnx", tile=TILE), ModelInfo.from_model(m))
    return out


@pytest.fixture(scope="module")
def edsr_engine(graphs, tmp_path_factory):
    """One engine (edsr, inlined) for the cache and backend tests."""
    d = tmp_path_factory.mktemp("engine")
    return E.build_engine(graphs["edsr"][0], d / "edsr.engine", batch=BATCH)


RESULTS = {}


@pytest.mark.slow
@pytest.mark.parametrize("plugin", [False, True], ids=["inlined", "plugin"])
@pytest.mark.parametrize("method", ["cadyq", "pams8"])
@pytest.mark.parametrize("name", BACKBONES)
def test_build_every_backbone(graphs, tmp_path, name, method, plugin):
    """The builder sees standard layers (TopK for the argmax, no plugin) without the plugin, and exactly
    one PLUGIN_V3 layer per CADyQSelect node (and no TopK) with it; the engine builds in both cases, and the
    builder's engine-layer information shows every quantized conv as an INT8 convolution (Int8 input and
    Int8 weights), none in float."""
    onnx_path, info = graphs[name if method == "cadyq" else f"{name}-pams8"]
    t0 = time.perf_counter()
    eng = E.build_engine(onnx_path, tmp_path / f"{name}.engine", batch=BATCH, plugin=plugin)
    wall = time.perf_counter() - t0
    net = eng.network
    RESULTS[(name, plugin)] = (net.n_layers, net.n_plugin_layers, round(eng.build_time_s, 2), round(wall, 2))
    print(f"{name} plugin={plugin}: {net.n_layers} layers, {net.n_plugin_layers} plugin, build {eng.build_time_s:.2f} s, "
          f"total {wall:.2f} s, {eng.size_bytes / 1e6:.1f} MB")
    assert eng.path.is_file() and eng.size_bytes > 20_000
    assert eng.plugin is (plugin and method == "cadyq") and eng.tile == TILE and eng.batch == BATCH and not eng.cached
    n_select = info.n_layers if method == "cadyq" else 0
    if plugin and method == "cadyq":
        assert net.n_plugin_layers == n_select and net.layer_types.get("PLUGIN_V3") == n_select
        assert "TOPK" not in net.layer_types                           # the function body was not inlined
    else:
        assert not net.has_plugin and net.layer_types.get("TOPK", 0) == n_select   # ArgMax of each selector
    # every quantized conv (dynamic and fixed) is one INT8 convolution layer of the engine, none runs in float
    prec = eng.precision_summary
    assert len(eng.quantized_convs) == len(info.layers) == prec["quantized_convs"], eng.quantized_convs
    assert set(eng.quantized_convs.values()) == {"int8"} and prec["int8_convs"] == len(info.layers), eng.quantized_convs
    int8_layers = [lay for lay in eng.engine_layers if lay["inputs"][:1] == ["Int8"] and lay["weights"][:1] == ["Int8"]]
    assert len(int8_layers) == len(info.layers)
    assert net.layer_types.get("CONVOLUTION", 0) > 0
    sc = E.read_sidecar(eng.path)
    assert sc["plugin"] is eng.plugin and sc["batch"] == list(BATCH) and sc["tile"] == TILE
    assert ModelInfo.from_dict(sc["model"]) == info and sc["bits"] == list(info.bits) and sc["n_layers"] == info.n_layers
    assert sc["builder"]["name"] == eng.builder and sc["engine_sha256"] == E.sha256_file(eng.path)
    assert sc["network"]["n_layers"] == net.n_layers
    assert sc["outputs"][1]["shape"] == ["N", info.n_layers]
    assert sc["precisions"]["int8_convs"] == len(info.layers) and sc["quantized_convs"] == eng.quantized_convs
    assert sc["engine_layers"] and all({"name", "type", "inputs", "weights", "outputs"} <= set(x) for x in sc["engine_layers"])
    if eng.plugin:
        assert sc["plugin_namespace"] == "cadyq" and sc["plugin_version"] == "2"  # the integer form of CADyQSelect


def test_inspect_network_plugin_present_or_absent(graphs):
    onnx_path, info = graphs["srresnet"]
    inlined = E.inspect_network(onnx_path, plugin=False)
    with_plugin = E.inspect_network(onnx_path, plugin=True)
    assert not inlined.has_plugin and inlined.layer_types["TOPK"] == info.n_layers
    assert with_plugin.n_plugin_layers == info.n_layers and "TOPK" not in with_plugin.layer_types
    assert with_plugin.n_layers < inlined.n_layers
    assert [i["name"] for i in inlined.inputs] == ["lr"] and [o["name"] for o in inlined.outputs] == ["sr", "bits"]
    assert inlined.inputs[0]["shape"] == [-1, 3, TILE, TILE]


def test_registered_creator_does_not_capture_an_inlined_build(graphs):
    """A CADyQSelect creator registered in this process would win over the function body in the parser;
    plugin=False must still give standard layers."""
    from cadyq.trt_plugins import deregister, register

    trt = E._trt()
    register(trt=trt, force=True)
    try:
        net = E.inspect_network(graphs["edsr"][0], plugin=False)
    finally:
        deregister(trt=trt)
    assert not net.has_plugin and net.layer_types["TOPK"] == graphs["edsr"][1].n_layers


def test_rtx_plugin_parse_aborts_without_the_library_shim(graphs, monkeypatch):
    """Why plugin builds run in a child on TensorRT-RTX: without an unversioned libtensorrt_rtx.so on the
    library path its ONNX parser aborts the process when it imports a plugin node; the EngineError carries
    the child's last output."""
    if not E._is_rtx(E._trt()):
        pytest.skip("TensorRT-RTX only")
    monkeypatch.setattr(E, "rtx_library_shim", lambda trt, folder: None)
    try:
        net = E.inspect_network(graphs["edsr"][0], plugin=True)
    except EngineError as e:
        assert "killed by signal 6" in str(e) and "terminate called" in str(e)
    else:  # a TensorRT-RTX whose wheel (or LD_LIBRARY_PATH) provides libtensorrt_rtx.so
        assert net.has_plugin


def test_rtx_target_tag_and_default(graphs):
    trt = E._trt()
    if not E._is_rtx(trt):
        pytest.skip("TensorRT-RTX setting")
    assert E.resolve_target(trt)[:2] == ("sm80_86_89_120", ("8.0", "8.6", "8.9", "12.0"))
    assert E.resolve_target(trt, ["sm86", "8.9"])[:2] == ("sm86_89", ("8.6", "8.9"))
    with pytest.raises(EngineError, match="9.0.*H100"):
        E.resolve_target(trt, ["sm90"])


def test_build_for_one_target_names_it(graphs, tmp_path):
    if not E._is_rtx(E._trt()):
        pytest.skip("TensorRT-RTX setting")
    eng = E.build_engine(graphs["edsr"][0], tmp_path / "e86.engine", batch=(1, 1, 2), targets=["sm86"])
    assert eng.target == "sm86" and eng.target_ccs == ("8.6",)
    assert E.read_sidecar(eng.path)["target"] == {"tag": "sm86", "ccs": ["8.6"]}


def test_cache_reuses_and_rebuilds(graphs, tmp_path):
    onnx_path = graphs["edsr"][0]
    cache = tmp_path / "cache"
    a = E.build_engine(onnx_path, batch=BATCH, cache_dir=cache)
    assert not a.cached and a.path.parent == cache
    name = a.path.name
    assert name.startswith("edsr-cadyq-x2-") and f"-{a.builder}-{a.builder_version}-{a.target}-t{TILE}-b1_2_4-fp32.engine" in name
    b = E.build_engine(onnx_path, tmp_path / "out.engine", batch=BATCH, cache_dir=cache)
    assert b.cached and b.build_time_s == 0 and b.path == tmp_path / "out.engine"
    assert b.path.read_bytes() == a.path.read_bytes()
    assert E.read_sidecar(b.path)["engine"] == "out.engine"
    c = E.build_engine(onnx_path, batch=(1, 2, 8), cache_dir=cache)               # other shapes: another engine
    assert not c.cached and c.path.name != name
    a.path.write_bytes(a.path.read_bytes()[:1000])                                  # a damaged cache entry is rebuilt
    d = E.build_engine(onnx_path, batch=BATCH, cache_dir=cache)
    assert not d.cached and E.sha256_file(d.path) == E.read_sidecar(d.path)["engine_sha256"]


def test_precision_follows_the_graph(graphs, photo_tiles, tmp_path):
    name, version = E.builder_identity(E._trt())
    onnx32 = graphs["edsr"][0]
    if name == "tensorrt-rtx" or int(version.split(".")[0]) >= 11:
        with pytest.raises(EngineError, match="strongly typed.*--dtype fp16"):
            E.build_engine(onnx32, tmp_path / "x.engine", batch=BATCH, fp16=True)
    onnx16 = export_onnx(_model("edsr", photo_tiles), tmp_path / "edsr16.onnx", tile=TILE, dtype="fp16", form="fakequant")
    eng = E.build_engine(onnx16, tmp_path / "e16.engine", batch=BATCH, fp16=True)
    assert eng.precision == "fp16" and eng.path.name == "e16.engine"


def test_fp32_model_has_no_plugin_layers(photo_tiles, tmp_path):
    m = _model("edsr", photo_tiles, method="pams8")
    onnx_path = export_onnx(m, tmp_path / "pams.onnx", tile=TILE)
    eng = E.build_engine(onnx_path, tmp_path / "pams.engine", batch=(1, 1, 2), plugin=True)
    assert eng.plugin is False and not eng.network.has_plugin        # nothing to replace: built as is


def test_parse_batch_and_bad_inputs(graphs, tmp_path):
    assert E.parse_batch("1:16:64") == (1, 16, 64) and E.parse_batch("8") == (8, 8, 8)
    assert E.parse_batch((2, 4, 8)) == (2, 4, 8)
    for bad in ("16:1:64", "0:1:2", "a:b:c", "1:2"):
        with pytest.raises(EngineError, match="MIN:OPT:MAX"):
            E.parse_batch(bad)
    with pytest.raises(EngineError, match="no such ONNX file"):
        E.build_engine(tmp_path / "missing.onnx", tmp_path / "m.engine")
    junk = tmp_path / "junk.onnx"
    junk.write_bytes(b"not a protobuf at all")
    with pytest.raises(EngineError, match="not a readable ONNX file|no cadyq metadata"):
        E.build_engine(junk, tmp_path / "j.engine")


def test_static_batch_graph_needs_batch_one(photo_tiles, tmp_path):
    onnx_path = export_onnx(_model("srresnet", photo_tiles), tmp_path / "s.onnx", tile=TILE, dynamic_batch=False)
    with pytest.raises(EngineError, match="fixed batch of 1"):
        E.build_engine(onnx_path, tmp_path / "s.engine", batch=BATCH)
    eng = E.build_engine(onnx_path, tmp_path / "s.engine", batch=(1, 1, 1))
    assert eng.batch == (1, 1, 1)


# ---- the tensorrt backend: checks before anything runs -----------------------------------------------------

def _backend():
    from cadyq.runtime.tensorrt_backend import TensorRTBackend

    return TensorRTBackend


def _copy_engine(eng, tmp_path, name="copy.engine"):
    dst = tmp_path / name
    dst.write_bytes(eng.path.read_bytes())
    E.sidecar_path(dst).write_text(E.sidecar_path(eng.path).read_text())
    return dst


@pytest.fixture
def fake_gpu(monkeypatch):
    """torch believes in a CUDA GPU of the given compute capability (checks only; nothing runs on it)."""
    def set_cc(major, minor, name="Fake GPU"):
        monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
        monkeypatch.setattr(torch.cuda, "current_device", lambda: 0)
        monkeypatch.setattr(torch.cuda, "get_device_capability", lambda *a, **k: (major, minor))
        monkeypatch.setattr(torch.cuda, "get_device_name", lambda *a, **k: name)
    return set_cc


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the no-GPU error")
def test_backend_without_gpu_says_what_to_do(edsr_engine):
    from cadyq.runtime import Upscaler, create_backend

    with pytest.raises(EngineError, match="no CUDA GPU.*--backend torch or onnxruntime"):
        _backend()(edsr_engine.path, "auto")
    with pytest.raises(EngineError, match="no CUDA GPU"):
        create_backend("auto", edsr_engine.path, "auto")                   # .engine -> the tensorrt backend
    with pytest.raises(EngineError, match="no CUDA GPU"):
        Upscaler(str(edsr_engine.path), tile=TILE)


def test_backend_corrupt_engine(edsr_engine, tmp_path):
    dst = _copy_engine(edsr_engine, tmp_path)
    data = bytearray(dst.read_bytes())
    data[len(data) // 2] ^= 0xFF
    dst.write_bytes(bytes(data))
    with pytest.raises(EngineError, match="corrupt, truncated or was replaced"):
        _backend()(dst, "auto")
    dst.write_bytes(bytes(data[:4096]))
    with pytest.raises(EngineError, match="corrupt, truncated"):
        _backend()(dst, "auto")


def test_backend_missing_or_garbled_sidecar(edsr_engine, tmp_path):
    dst = _copy_engine(edsr_engine, tmp_path)
    sc = E.sidecar_path(dst)
    sc.write_text("{ not json")
    with pytest.raises(EngineError, match="unreadable engine sidecar"):
        _backend()(dst, "auto")
    d = json.loads(E.sidecar_path(edsr_engine.path).read_text())
    del d["model"]
    sc.write_text(json.dumps(d))
    with pytest.raises(EngineError, match="sidecar lacks"):
        _backend()(dst, "auto")
    sc.unlink()
    with pytest.raises(EngineError, match="sidecar is missing"):
        _backend()(dst, "auto")
    with pytest.raises(EngineError, match="no such engine file"):
        _backend()(tmp_path / "nope.engine", "auto")
    with pytest.raises(EngineError, match="ONNX graph; build an engine"):
        _backend()(tmp_path / "model.onnx", "auto")
    with pytest.raises(BackendError, match="engine files"):
        _backend()(torch.nn.Conv2d(3, 3, 1), "auto")


def test_backend_sidecar_that_does_not_match_the_model(edsr_engine, tmp_path):
    dst = _copy_engine(edsr_engine, tmp_path)
    sc = E.sidecar_path(dst)
    good = json.loads(sc.read_text())
    bad = json.loads(json.dumps(good))
    bad["model"]["scale"] = 4                                    # sr output is 48 px = 24 x2, not x4
    sc.write_text(json.dumps(bad))
    with pytest.raises(EngineError, match="consistent model.*scale"):
        _backend()(dst, "auto")
    bad = json.loads(json.dumps(good))
    bad["model"]["layers"] = bad["model"]["layers"][1:]         # one dynamic layer fewer than the bits output
    sc.write_text(json.dumps(bad))
    with pytest.raises(EngineError, match="dynamic layers"):
        _backend()(dst, "auto")
    sc.write_text(json.dumps(good))
    other = ModelInfo.from_dict({**good["model"], "backbone": "carn"})
    with pytest.raises(EngineError, match="not the expected carn"):
        _backend()(dst, "auto", expect=other)


def test_backend_checks_the_gpu_and_the_builder(edsr_engine, tmp_path, fake_gpu):
    dst = _copy_engine(edsr_engine, tmp_path)
    sc = E.sidecar_path(dst)
    d = json.loads(sc.read_text())
    if d["builder"]["name"] == "tensorrt-rtx":
        fake_gpu(9, 0, "NVIDIA H100 80GB HBM3")
        with pytest.raises(EngineError, match="8.0, 8.6, 8.9 and 12.x.*H100.*9.0.*full TensorRT"):
            _backend()(dst, "auto")
    fake_gpu(*(int(v) for v in d["target"]["ccs"][0].split(".")))
    with pytest.raises(EngineError, match="CUDA devices, not cpu"):
        _backend()(dst, "cpu")
    d["builder"]["version"] = "0.0.1"
    sc.write_text(json.dumps(d))
    with pytest.raises(EngineError, match=r"built by .* 0\.0\.1, but this machine has .*rebuild it here"):
        _backend()(dst, "auto")


@pytest.fixture(scope="module", autouse=True)
def _report():
    yield
    if RESULTS:
        print("\nlayers / plugin layers / build s / total s:")
        for (name, plugin), r in sorted(RESULTS.items()):
            print(f"  {name:9s} {'plugin ' if plugin else 'inlined'} {r}")


# ---- full TensorRT code paths, with a stand-in module (no full TensorRT can be installed here) ------------

def _fake_trt(version):
    import types

    trt = types.ModuleType("tensorrt")
    trt.__version__ = version
    trt.DataType = types.SimpleNamespace(FLOAT="f32", HALF="f16", INT32="i32")
    trt.BuilderFlag = types.SimpleNamespace(FP16="FP16", PREFER_PRECISION_CONSTRAINTS="PREFER")
    return trt


def test_full_tensorrt_precision_and_target_rules(graphs, monkeypatch):
    g = E._load_graph(graphs["edsr"][0])
    assert E._precision(g, False, _fake_trt("10.13.3")) == "fp32"
    assert E._precision(g, True, _fake_trt("10.13.3")) == "fp16-flag"           # weak typing still exists in 10.x
    with pytest.raises(EngineError, match="tensorrt 11.4.0 builds strongly typed networks only"):
        E._precision(g, True, _fake_trt("11.4.0"))
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with pytest.raises(EngineError, match="full TensorRT builds engines on the GPU"):
        E.resolve_target(_fake_trt("10.13.3"))
    with pytest.raises(EngineError, match="TensorRT-RTX setting"):
        E.resolve_target(_fake_trt("10.13.3"), ["sm86"])
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda *a: (9, 0))
    assert E.resolve_target(_fake_trt("11.4.0"))[:2] == ("sm90", ("9.0",))


def test_weak_fp16_keeps_everything_but_convolutions_in_float32():
    import types

    trt = _fake_trt("10.13.3")

    class Layer:
        def __init__(self, kind, dtypes):
            self.type = types.SimpleNamespace(name=kind)
            self.outs = [types.SimpleNamespace(dtype=d) for d in dtypes]
            self.num_outputs, self.precision, self.set = len(dtypes), None, {}

        def get_output(self, j):
            return self.outs[j]

        def set_output_type(self, j, dt):
            self.set[j] = dt

    layers = [Layer("CONVOLUTION", ["f32"]), Layer("ELEMENTWISE", ["f32"]), Layer("TOPK", ["f32", "i32"]),
              Layer("CONSTANT", ["f32"]), Layer("REDUCE", ["f32"])]
    network = types.SimpleNamespace(num_layers=len(layers), get_layer=lambda i: layers[i])
    flags = []
    config = types.SimpleNamespace(set_flag=flags.append)
    E._fp16_convs_only(trt, network, config)
    assert flags == ["FP16", "PREFER"]
    assert [la.precision for la in layers] == [None, "f32", None, None, "f32"]
    assert layers[1].set == {0: "f32"} and layers[2].set == {}
