"""`cadyq export`, `cadyq check` and `cadyq engine` (incl. the `make engine` path) through cadyq.cli.main."""
import json

import onnx
import pytest
import torch
from conftest import needs_trt_builder, tiny

import cadyq
from cadyq.cli import main
from cadyq.quant import observe, quantize




@pytest.fixture(scope="module")
def graph(ckpt, tmp_path_factory):
    out = tmp_path_factory.mktemp("onnx") / "edsr.onnx"
    assert main(["export", "--model", str(ckpt), "-o", str(out), "--tile", "24"]) == 0
    return out


def test_export_prints_what_it_wrote(ckpt, tmp_path, capsys):
    out = tmp_path / "m.onnx"
    assert main(["export", "-m", str(ckpt), "-o", str(out), "--tile", "32", "--dtype", "fp16", "--opset", "18"]) == 0
    text = capsys.readouterr().out
    assert f"wrote {out}" in text and "MB)" in text
    assert "lr[N,3,32,32]" in text and "sr[N,3,64,64]" in text and "bits[N,4]" in text
    assert "4 CADyQSelect nodes" in text and "opset 18" in text and "fp16" in text
    proto = onnx.load(str(out))
    assert proto.graph.input[0].name == "lr"


def test_export_errors_are_one_line(tmp_path, capsys):
    assert main(["export", "-m", str(tmp_path / "missing.safetensors"), "-o", str(tmp_path / "x.onnx")]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("cadyq: error:") and "no such checkpoint" in err and len(err.splitlines()) == 1
    assert main(["export", "-m", str(tmp_path / "m.onnx"), "-o", str(tmp_path / "x.onnx")]) == 2
    assert "checkpoint" in capsys.readouterr().err


def test_check_graph_and_against_photo_tiles(graph, ckpt, tmp_path, capsys):
    assert main(["check", str(graph)]) == 0
    assert ": OK" in capsys.readouterr().out
    report = tmp_path / "r.json"
    assert main(["check", str(graph), "--against", str(ckpt), "--tiles", "6", "--json", str(report)]) == 0
    out = capsys.readouterr().out
    assert "vs torch on 6 tiles 24x24" in out and "PASS" in out
    assert json.loads(report.read_text())["compare"]["passed"] is True


def test_check_against_an_image_file(graph, ckpt, photo, tmp_path, capsys):
    from PIL import Image

    img = tmp_path / "photo.png"
    Image.fromarray(photo[100:300, 50:330]).save(img)
    assert main(["check", str(graph), "--against", str(ckpt), "--tiles", "4", "--image", str(img)]) == 0
    assert "on 4 tiles" in capsys.readouterr().out


def test_check_fails_on_mismatch(graph, tmp_path, photo_tiles, capsys):
    other = quantize(tiny("edsr"), "cadyq")                         # same architecture, other weights
    torch.manual_seed(5)
    with torch.no_grad():
        for p in other.parameters():
            p.add_(0.1 * torch.randn_like(p))
        with observe(other):
            other(photo_tiles)
    path = tmp_path / "other.safetensors"
    cadyq.save(other, path)
    assert main(["check", str(graph), "--against", str(path), "--tiles", "4"]) == 1
    assert "FAIL" in capsys.readouterr().out


def test_check_broken_graph(graph, tmp_path, capsys):
    proto = onnx.load(str(graph))
    del proto.functions[:]
    bad = tmp_path / "bad.onnx"
    onnx.save(proto, str(bad))
    assert main(["check", str(bad)]) == 1
    assert "FAILED" in capsys.readouterr().out


@pytest.mark.trt
@needs_trt_builder
def test_engine_from_graph_and_check_it(graph, tmp_path, capsys):
    out = tmp_path / "e.engine"
    rc = main(["engine", str(graph), "-o", str(out), "--batch", "1:2:4", "--plugin", "--workspace", "256",
               "--cache-dir", str(tmp_path / "cache"), "--json", str(tmp_path / "e.json")])
    assert rc == 0
    text = capsys.readouterr().out
    assert f"wrote {out}" in text and "CADyQSelect plugin" in text and "N = 1:2:4" in text
    d = json.loads((tmp_path / "e.json").read_text())
    assert d["plugin"] is True and d["network"]["layer_types"]["PLUGIN_V3"] == 4
    assert out.is_file() and (tmp_path / "e.engine.json").is_file() and len(list((tmp_path / "cache").glob("*.engine"))) == 1
    assert main(["engine", str(graph), "-o", str(out), "--batch", "1:2:4", "--plugin",
                 "--cache-dir", str(tmp_path / "cache")]) == 2  # an existing engine is replaced only when asked
    assert main(["engine", str(graph), "-o", str(out), "--batch", "1:2:4", "--plugin",
                 "--cache-dir", str(tmp_path / "cache"), "--overwrite"]) == 0
    assert "from the cache" in capsys.readouterr().out
    assert main(["check", str(out)]) == 0
    assert ": OK" in capsys.readouterr().out


@pytest.mark.trt
@needs_trt_builder
def test_engine_default_output_name(graph, tmp_path, capsys):
    src = tmp_path / "g.onnx"
    src.write_bytes(graph.read_bytes())
    assert main(["engine", str(src), "--batch", "1:1:2"]) == 0
    assert (tmp_path / "g.engine").is_file() and (tmp_path / "g.engine.json").is_file()


@pytest.mark.trt
@needs_trt_builder
def test_engine_errors(graph, tmp_path, capsys):
    from cadyq.export.engine import builder_identity, _trt

    assert main(["engine"]) == 2
    assert "--make" in capsys.readouterr().err
    assert main(["engine", str(graph), "--batch", "64:16:1"]) == 2
    assert "MIN:OPT:MAX" in capsys.readouterr().err
    assert main(["engine", str(graph), "-o", str(tmp_path / "x.trt")]) == 2
    assert "*.engine" in capsys.readouterr().err
    assert main(["engine", str(graph), "--model", "x"]) == 2
    assert "goes with --make" in capsys.readouterr().err
    name, version = builder_identity(_trt())
    if name == "tensorrt-rtx" or int(version.split(".")[0]) >= 11:
        assert main(["engine", str(graph), "-o", str(tmp_path / "x.engine"), "--fp16"]) == 2
        assert "--dtype fp16" in capsys.readouterr().err


@pytest.mark.trt
@needs_trt_builder
def test_make_engine_with_a_checkpoint(ckpt, tmp_path, capsys):
    """`make engine MODEL=ckpt`: export + build into --out-dir."""
    rc = main(["engine", "--make", "--backbone", "edsr", "--scale", "2", "--method", "cadyq", "--model", str(ckpt),
               "--tile", "24", "--batch", "1:2:4", "--out-dir", str(tmp_path / "build")])
    assert rc == 0
    out = capsys.readouterr()
    assert (tmp_path / "build" / "edsr-cadyq-x2-t24-fp32.onnx").is_file()
    assert (tmp_path / "build" / "edsr-cadyq-x2-t24-b1_2_4-fp32.engine").is_file()
    assert "4 CADyQSelect nodes" in out.out and "wrote" in out.out and "warning" not in out.err
    rc = main(["engine", "--make", "--backbone", "carn", "--model", str(ckpt), "--tile", "24", "--out-dir", str(tmp_path)])
    assert rc == 2 and "is a edsr x2 cadyq model" in capsys.readouterr().err


@pytest.mark.trt
@needs_trt_builder
def test_make_engine_without_shipped_weights_warns(tmp_path, capsys, monkeypatch):
    """No zoo weights for srresnet x2 pams8: a freshly initialised model, with a warning on stderr
    (create_model is shrunk here to keep the test fast)."""
    import cadyq.models

    from cadyq import zoo

    assert "srresnet-pams8-x2" not in zoo.available()
    real = cadyq.models.create_model
    monkeypatch.setattr(cadyq.models, "create_model", lambda name, scale=4, **kw: real(name, scale=scale, n_resblocks=1,
                                                                                      n_feats=8))
    rc = main(["engine", "--make", "--backbone", "srresnet", "--scale", "2", "--method", "pams8", "--tile", "24",
               "--batch", "1:1:2", "--fp16", "--out-dir", str(tmp_path)])
    assert rc == 0
    out = capsys.readouterr()
    assert "warning: no shipped weights 'srresnet-pams8-x2'" in out.err and "freshly initialised" in out.err
    assert (tmp_path / "srresnet-pams8-x2-t24-fp16.onnx").is_file()
    assert (tmp_path / "srresnet-pams8-x2-t24-b1_1_2-fp16.engine").is_file() and "precision fp16" in out.out
