"""Tile-routed execution: the router, one static INT8 graph per bit-width (QLinearConv in ONNX Runtime, INT8
convolutions in TensorRT-RTX builds), every tile through the graph of its bit-width exactly once."""
import collections

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
from conftest import needs_trt_builder, photo_crops, spread_gdq, tiny

from cadyq import quantize
from cadyq.errors import ExportError
from cadyq.export.routed import export_routed, read_manifest
from cadyq.quant import ModelInfo, observe, selected_bits
from cadyq.runtime import Upscaler, create_backend

pytestmark = pytest.mark.usefixtures("one_torch_thread")
TILE = 24


def _gdq(name):
    m = quantize(tiny(name), "gdq").eval()
    spread_gdq(m, photo_crops(24, TILE, seed=3))
    return m


@pytest.fixture(scope="module")
def routed(tmp_path_factory):
    out = {}
    for name in ("edsr", "idn"):
        m = _gdq(name)
        d = tmp_path_factory.mktemp(f"routed-{name}")
        out[name] = (m, export_routed(m, d, tile=TILE, calib=photo_crops(16, TILE, seed=5)))
    return out


@pytest.mark.parametrize("name", ["edsr", "idn"])
def test_every_tile_runs_once_through_the_graph_of_its_bits(routed, name):
    m, manifest = routed[name]
    be = create_backend("auto", manifest, "cpu")
    assert be.name == "routed" and be.bits == (4, 5, 6, 8)
    tiles = photo_crops(40, TILE)
    sr, bits = be.run(tiles)
    with torch.no_grad():
        ref = m(tiles)
        ref_bits = selected_bits(m)
    assert torch.equal(bits, ref_bits)  # the router's decisions are the model's
    hist = collections.Counter(int(b) for b in ref_bits[:, 0].tolist())
    assert len(hist) >= 2 and be.calls == {b: hist.get(b, 0) for b in be.bits}  # exactly once each
    err = (sr - ref).abs()
    mse = float(((sr.clamp(0, 255).round() - ref.clamp(0, 255).round()) ** 2).mean())
    # the static graphs requantize each conv output to 8 bits (QLinearConv): stated tolerance
    assert float(err.mean()) < 0.5 and 10 * np.log10(255 ** 2 / mse) > 45, (float(err.mean()), mse)


def test_onnxruntime_fuses_every_quantized_conv_into_qlinearconv(routed, tmp_path):
    m, manifest = routed["edsr"]
    man = read_manifest(manifest)
    n_q = len(ModelInfo.from_model(m).layers)
    for b, f in man["graphs"].items():
        so = ort.SessionOptions()
        so.optimized_model_filepath = str(tmp_path / f"opt{b}.onnx")
        ort.InferenceSession(f"{man['_dir']}/{f}", so, providers=["CPUExecutionProvider"])
        ops = collections.Counter(n.op_type for n in onnx.load(so.optimized_model_filepath).graph.node)
        assert ops["QLinearConv"] == n_q, (b, dict(ops))


def test_cadyq_tile_mode_routes_and_full_mode_is_refused(tmp_path):
    m = quantize(tiny("carn"), "cadyq", mode="tile").eval()
    with torch.no_grad(), observe(m):
        m(photo_crops(16, TILE))
        m.tile_selector.weight.normal_(0, 0.05)
    manifest = export_routed(m, tmp_path / "t", tile=TILE, calib=photo_crops(8, TILE, seed=2))
    up = Upscaler(manifest, tile=TILE, batch=8)
    r = up.upscale(np.ascontiguousarray(photo_crops(1, 60)[0].permute(1, 2, 0).numpy().astype(np.uint8)))
    assert r.image.rgb.shape == (120, 120, 3) and (r.bit_map == r.bit_map[..., :1]).all()
    with pytest.raises(ExportError, match="same in every layer"):
        export_routed(quantize(tiny("carn"), "cadyq"), tmp_path / "x", tile=TILE, calib=photo_crops(2, TILE))
    with pytest.raises(ExportError, match="calibration"):
        export_routed(m, tmp_path / "y", tile=TILE, calib=None)


@pytest.mark.trt
@needs_trt_builder
def test_tensorrt_rtx_builds_int8_engines_for_every_bit_width(routed, tmp_path):
    from cadyq.export.engine import build_routed

    m, manifest = routed["idn"]
    path, infos = build_routed(manifest, tmp_path, batch=(1, 2, 4))
    n_q = len(ModelInfo.from_model(m).layers)
    assert sorted(infos) == [4, 5, 6, 8] and path.is_file()
    for b, info in infos.items():
        assert set(info.quantized_convs.values()) == {"int8"} and len(info.quantized_convs) == n_q, (b, info.quantized_convs)
    assert read_manifest(tmp_path)["engines"]["8"]["int8_convs"] == n_q
