"""The Granular-DQ chain from the command line: calibrate an fp32 checkpoint to gdq, upscale through ONNX
Runtime with bit maps, export the tile-routed graphs, upscale through them, and build their engines."""
import json

import numpy as np
import pytest
from conftest import needs_trt_builder, tiny

from cadyq import save
from cadyq.cli import main
from cadyq.data.io import Image, read_image, write_image

pytestmark = pytest.mark.usefixtures("one_torch_thread")
TILE = "24"


@pytest.fixture(scope="module")
def chain(tmp_path_factory):
    from skimage import data

    d = tmp_path_factory.mktemp("gdq_cli")
    photos = d / "photos"
    photos.mkdir()
    for name, (y, x) in (("astronaut", (0, 100)), ("coffee", (100, 200)), ("chelsea", (40, 120))):
        rgb = getattr(data, name)()[y:y + 96, x:x + 96]
        write_image(photos / f"{name}.png", Image(np.ascontiguousarray(rgb), None, 8, False, None, None, "RGB"))
    save(tiny("edsr"), d / "fp32.safetensors")
    assert main(["calibrate", "--model", str(d / "fp32.safetensors"), "--data", str(photos), "--target", "gdq",
                 "--tile", TILE, "-o", str(d / "gdq.safetensors")]) == 0
    src = d / "in.png"
    rgb = data.chelsea()[60:60 + 40, 150:150 + 56]
    write_image(src, Image(np.ascontiguousarray(rgb), None, 8, False, None, None, "RGB"))
    return d, photos, src


def _report(path):
    return json.loads(path.read_text())["images"][0]


def test_calibrate_writes_a_gdq_model(chain):
    from cadyq.checkpoint import load_model
    from cadyq.quant import quant_config

    d, _, _ = chain
    m = load_model(str(d / "gdq.safetensors"))
    assert quant_config(m).method == "gdq" and tuple(quant_config(m).bits) == (4, 5, 6, 8)
    lo, hi = (float(t) for t in m.gdq.thresholds)
    assert lo < hi and abs(lo - 2.8009) > 1e-3  # the E2B quantiles of the calibration tiles, not the official ones


def test_upscale_gdq_through_onnxruntime_and_routed_graphs_agree(chain, capsys):
    d, photos, src = chain
    assert main(["upscale", str(src), "--model", str(d / "gdq.safetensors"), "--backend", "onnxruntime",
                 "--tile", TILE, "--bitmap", "-o", str(d / "ort.png"), "--json", str(d / "ort.json")]) == 0
    ort = _report(d / "ort.json")
    assert (d / "ort_bits.png").is_file() and ort["n_tiles"] == 6
    per_tile = np.array(ort["bits_per_tile"])
    assert set(per_tile.ravel()) <= {4.0, 5.0, 6.0, 8.0}  # one bit-width per tile: its mean is a candidate

    routed = d / "routed"
    assert main(["export", "--model", str(d / "gdq.safetensors"), "--routed", "--calib", str(photos),
                 "--tile", TILE, "-o", str(routed)]) == 0
    assert "static INT8 graphs for bits 4, 5, 6, 8" in capsys.readouterr().out
    assert main(["upscale", str(src), "--model", str(routed), "--tile", TILE, "--bitmap",
                 "-o", str(d / "routed.png"), "--json", str(d / "routed.json")]) == 0
    r = _report(d / "routed.json")
    assert r["bits_per_tile"] == ort["bits_per_tile"]
    diff = np.abs(read_image(d / "routed.png").rgb.astype(int) - read_image(d / "ort.png").rgb.astype(int))
    assert diff.mean() < 3  # the static graphs requantize conv outputs to 8 bits (cadyq.export.routed)
    capsys.readouterr()
    assert main(["upscale", str(src), "--model", str(routed), "--backend", "native", "-o", str(d / "n.png")]) == 2
    err = capsys.readouterr().err.strip()
    assert "tile-routed export" in err and len(err.splitlines()) == 1 and not (d / "n.png").exists()


def test_routed_export_mistakes_are_one_line(chain, tmp_path, capsys):
    d, photos, _ = chain
    cases = [(["--routed", "-o", str(tmp_path / "r")], "--calib"),
             (["--routed", "--calib", str(photos), "-o", str(tmp_path / "r.onnx")], "name a folder"),
             (["--calib", str(photos), "-o", str(tmp_path / "x.onnx")], "--calib goes with --routed")]
    for extra, msg in cases:
        assert main(["export", "--model", str(d / "gdq.safetensors"), "--tile", TILE] + extra) == 2
        err = capsys.readouterr().err.strip()
        assert msg in err and len(err.splitlines()) == 1, err
    assert main(["calibrate", "--model", str(d / "fp32.safetensors"), "--data", str(photos), "--bits", "x",
                 "-o", str(tmp_path / "c.safetensors")]) == 2
    assert "--bits" in capsys.readouterr().err
    assert not (tmp_path / "c.safetensors").exists()


@needs_trt_builder
@pytest.mark.trt
def test_engine_builds_every_bit_width_of_a_routed_export(chain, tmp_path, capsys):
    d, photos, _ = chain
    routed = tmp_path / "routed"
    assert main(["export", "--model", str(d / "gdq.safetensors"), "--routed", "--calib", str(photos),
                 "--tile", TILE, "-o", str(routed)]) == 0
    assert main(["engine", str(routed), "-o", str(tmp_path / "eng"), "--batch", "1:2:4",
                 "--cache-dir", str(tmp_path / "cache")]) == 0
    m = json.loads((tmp_path / "eng" / "routed-engines.json").read_text())
    assert sorted(m["graphs"]) == ["4", "5", "6", "8"]
    assert all(e["int8_convs"] == e["quantized_convs"] > 0 for e in m["engines"].values())
