import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image as PILImage

from cadyq.cli import main
from cadyq.metrics import psnr


def test_upscale_folder_with_a_bad_file(ckpt, photo, tmp_path, capsys):
    src = tmp_path / "in"
    src.mkdir()
    PILImage.fromarray(photo[:60, :70]).save(src / "a.png")
    PILImage.fromarray(photo[100:150, 200:290]).convert("L").save(src / "b.jpg")
    (src / "c.png").write_bytes(b"\x89PNG\r\n\x1a\ntruncated")
    out = tmp_path / "out"
    rc = main(["upscale", str(src), "-o", str(out), "--model", str(ckpt), "--device", "cpu", "--tile", "32",
               "--batch", "4", "--bitmap", "--json", str(tmp_path / "r.json")])
    assert rc == 1  # one file failed
    assert "c.png" in capsys.readouterr().err
    a = np.asarray(PILImage.open(out / "a_x2.png"))
    assert a.shape == (120, 140, 3)
    b = PILImage.open(out / "b_x2.png")
    assert b.mode == "L" and b.size == (180, 100)
    bits = np.asarray(PILImage.open(out / "a_x2_bits.png"))  # the 120x140 map, a legend strip below it
    assert bits.shape[0] > 120 and bits.shape[1] >= 140 and (bits[120:, :140] == 24).mean() > 0.5
    rep = json.loads((tmp_path / "r.json").read_text())
    assert [i["input"].rsplit("/", 1)[1] for i in rep["images"]] == ["a.png", "b.jpg"]
    assert rep["failed"][0].endswith("c.png")
    first = rep["images"][0]
    assert first["fqr"] == 8.0 and first["tiles"] == [3, 3] and first["sr_size"] == [120, 140]


def test_upscale_single_file_output(ckpt, photo, tmp_path):
    PILImage.fromarray(photo[:40, :40]).save(tmp_path / "x.png")
    assert main(["upscale", str(tmp_path / "x.png"), "-o", str(tmp_path / "y.png"), "--model", str(ckpt),
                 "--device", "cpu", "--tile", "32"]) == 0
    assert PILImage.open(tmp_path / "y.png").size == (80, 80)


def test_eval_benchmark_layout(ckpt, photo, tmp_path, capsys):
    root = tmp_path / "Set2"
    (root / "HR").mkdir(parents=True)
    (root / "LR_bicubic" / "X2").mkdir(parents=True)
    from cadyq.data.resize import bicubic_downscale

    for name, crop in (("p1", photo[:64, :80]), ("p2", photo[200:260, 100:164])):
        PILImage.fromarray(crop).save(root / "HR" / f"{name}.png")
        PILImage.fromarray(bicubic_downscale(crop, 2)).save(root / "LR_bicubic" / "X2" / f"{name}x2.png")
    rc = main(["eval", "--model", str(ckpt), "--data", str(root), "--device", "cpu", "--tile", "32",
               "--json", str(tmp_path / "e.json")])
    assert rc == 0
    table = capsys.readouterr().out
    assert "p1" in table and "mean" in table
    rep = json.loads((tmp_path / "e.json").read_text())
    assert [r["name"] for r in rep["images"]] == ["p1", "p2"]
    # the reported PSNR is that of the image `upscale` writes
    main(["upscale", str(root / "LR_bicubic" / "X2" / "p1x2.png"), "-o", str(tmp_path / "p1.png"), "--model", str(ckpt),
          "--device", "cpu", "--tile", "32"])
    sr = np.asarray(PILImage.open(tmp_path / "p1.png"))
    assert rep["images"][0]["psnr"] == pytest.approx(psnr(sr, photo[:64, :80], 2))
    assert rep["mean"]["psnr"] == pytest.approx(np.mean([r["psnr"] for r in rep["images"]]))


def test_info(ckpt, capsys):
    assert main(["info", str(ckpt)]) == 0
    out = capsys.readouterr().out
    assert "edsr x2" in out and "cadyq" in out and "4 dynamic" in out and "4, 6, 8" in out
    assert "clip values          free" in out and "INT8 upsampler       no clips" in out


def test_info_names_snapped_clips_and_upsampler_clips(capsys):
    """`cadyq info` says whether the lower clips sit on the 8-bit grid's odd multiples (derived from the values,
    `cadyq.quant.clips_snapped`) and which convs carry INT8-upsampler clips; the shipped Granular-DQ model is snapped."""
    from cadyq.quant import clips_snapped, snap_clips
    from cadyq.zoo import load_pretrained

    assert main(["info", "edsr-gdq-alloc-x4"]) == 0
    out = capsys.readouterr().out
    assert "clip values          on odd multiples" in out and "INT8 upsampler       calibrated clips for body.16" in out
    m = load_pretrained("edsr-tiny-cadyq-x2-cpu")
    assert clips_snapped(m) is False and snap_clips(m) > 0 and clips_snapped(m) is True
    assert clips_snapped(load_pretrained("edsr-pams8-x4")) is None


def test_errors_are_one_line(tmp_path, capsys):
    assert main(["info", str(tmp_path / "nope.safetensors")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("cadyq: error:")


def test_skip_existing_resumes_a_batch(tmp_path, capsys):
    """An interrupted batch resumes: --skip-existing runs only the inputs whose outputs are missing, and says so."""
    import numpy as np

    from cadyq.data.io import Image, write_image

    src, out = tmp_path / "in", tmp_path / "out"
    src.mkdir()
    rng = np.random.default_rng(0)
    for n in "abc":
        write_image(src / f"{n}.png", Image(rng.integers(0, 256, (30, 40, 3), dtype=np.uint8), None, 8, False, None,
                                            None, "RGB"))
    args = ["upscale", str(src), "-o", str(out), "--model", "edsr-tiny-cadyq-x2-cpu", "--json", str(tmp_path / "r.json")]
    assert main(args) == 0
    kept = (out / "a_x2.png").stat().st_mtime_ns
    (out / "b_x2.png").unlink()
    assert main(args) == 2 and "--skip-existing" in capsys.readouterr().err  # refused as a whole, and told how
    assert main(args + ["--skip-existing"]) == 0
    assert "skipped 2 of 3 images: their outputs exist" in capsys.readouterr().err
    assert (out / "b_x2.png").is_file() and (out / "a_x2.png").stat().st_mtime_ns == kept
    assert [i["input"] for i in json.loads((tmp_path / "r.json").read_text())["images"]] == [str(src / "b.png")]
    assert main(args + ["--skip-existing", "--overwrite"]) == 2


# ---- a newcomer's first hour (issue 38) ---------------------------------------------------------------------------

X2 = "edsr-tiny-cadyq-x2-cpu"


def _image(path, width, height, seed=0):
    from cadyq.data.io import Image, write_image

    rgb = np.random.default_rng(seed).integers(0, 256, (height, width, 3), dtype=np.uint8)
    write_image(path, Image(rgb, None, 8, False, None, None, "RGB"))
    return path


@pytest.fixture
def no_model_load(monkeypatch):
    """Fails the test if the command loads a model: what it refuses, it refuses before that wait."""
    import cadyq.checkpoint

    def refuse(*a, **k):
        raise AssertionError("the model was loaded")
    monkeypatch.setattr(cadyq.checkpoint, "load_model", refuse)
    monkeypatch.setattr(cadyq.checkpoint, "load", refuse)


def _one_error_line(capsys) -> str:
    err = [line for line in capsys.readouterr().err.splitlines() if line.strip()]
    assert len(err) == 1 and err[0].startswith("cadyq: error:"), err
    return err[0]


def test_a_tile_step_of_a_few_pixels_is_refused_before_the_model_loads(tmp_path, capsys, no_model_load):
    src = _image(tmp_path / "a.png", 64, 48)
    assert main(["upscale", str(src), "-o", str(tmp_path / "o.png"), "--tile", "8"]) == 2
    line = _one_error_line(capsys)
    assert "every 2 px" in line and "--overlap 4 or less" in line
    assert main(["upscale", str(src), "-o", str(tmp_path / "o.png"), "--tile", "4"]) == 2
    line = _one_error_line(capsys)
    assert "--overlap 2" in line and "--overlap 6" not in line  # never the value it rejects
    assert not (tmp_path / "o.png").exists()


@pytest.mark.parametrize("model", [X2, None], ids=["zoo-name", "default-model"])
@pytest.mark.parametrize("into_folder", [False, True], ids=["file", "folder"])
def test_an_existing_output_is_refused_before_the_model_loads(model, into_folder, tmp_path, capsys, no_model_load):
    from cadyq import zoo
    from cadyq.checkpoint import read_metadata

    src = _image(tmp_path / "a.png", 40, 30)
    scale = read_metadata(zoo.path_of(model or zoo.default_name()))["scale"]
    out = tmp_path / "out" if into_folder else tmp_path / "o.png"
    existing = out / f"a_x{scale}.png" if into_folder else out
    existing.parent.mkdir(exist_ok=True)
    existing.write_bytes(b"precious")
    argv = ["upscale", str(src), "-o", str(out)] + (["--model", model] if model else [])
    assert main(argv) == 2
    assert "exists; pass --overwrite" in _one_error_line(capsys)  # and no `backend:` line before it
    assert main(argv + ["--skip-existing", "--overwrite"]) == 2
    assert "pass one of them" in _one_error_line(capsys)
    assert existing.read_bytes() == b"precious"


def test_sizes_are_width_by_height(tmp_path, capsys):
    src = _image(tmp_path / "wide.png", 70, 40)  # 3 tiles across, 2 down at --tile 32
    assert main(["upscale", str(src), "-o", str(tmp_path / "o.png"), "--model", X2, "--tile", "32"]) == 0
    line = next(x for x in capsys.readouterr().err.splitlines() if x.startswith("wide.png:"))
    assert line.startswith(f"wide.png: 70x40 -> {tmp_path / 'o.png'} 140x80  tiles 3x2 "), line


def _pty_stderr(argv, monkeypatch) -> tuple[int, str]:
    """main(argv) with stderr on a pseudo-terminal nobody sized (0 x 0, as under script(1) or `docker exec -t`)."""
    import io
    import os
    import sys
    import threading

    master, slave = os.openpty()
    chunks = []

    def read():
        while True:
            try:
                data = os.read(master, 65536)
            except OSError:
                return
            if not data:
                return
            chunks.append(data)
    reader = threading.Thread(target=read, daemon=True)
    reader.start()
    term = io.TextIOWrapper(io.FileIO(slave, "w", closefd=True), write_through=True)
    assert os.get_terminal_size(term.fileno()) == (0, 0)
    before = sys.stderr
    monkeypatch.setattr(sys, "stderr", term)
    try:
        rc = main(argv)
    finally:
        monkeypatch.setattr(sys, "stderr", before)
        term.close()
        reader.join(timeout=10)
        os.close(master)
    return rc, b"".join(chunks).decode(errors="replace")


def test_tile_progress_on_a_terminal_and_none_in_a_log(tmp_path, monkeypatch, capsys):
    """Per-tile progress with its rate inside one image, on any terminal (a 0 x 0 one made tqdm draw nothing); a
    log (stderr not a terminal) gets the result line only."""
    src = _image(tmp_path / "a.png", 70, 40)  # 6 tiles of 32 in 3 batches of 2
    argv = ["upscale", str(src), "-o", str(tmp_path / "o.png"), "--model", X2, "--tile", "32", "--batch", "2"]
    rc, shown = _pty_stderr(argv, monkeypatch)
    assert rc == 0, shown
    assert "a.png:" in shown and "0/6 [" in shown and "tile/s]" in shown, shown
    assert main(argv + ["--overwrite"]) == 0
    logged = capsys.readouterr().err
    assert "a.png: 70x40" in logged and "tile/s" not in logged and "\r" not in logged


def test_an_interrupted_batch_reports_what_was_done_and_the_resumed_run_what_it_skipped(tmp_path, monkeypatch,
                                                                                         capsys):
    from cadyq.runtime import upscaler

    src, out, rep = tmp_path / "in", tmp_path / "out", tmp_path / "r.json"
    src.mkdir()
    for n, name in enumerate("abc"):
        _image(src / f"{name}.png", 30, 20, seed=n)
    argv = ["upscale", str(src), "-o", str(out), "--model", X2, "--json", str(rep)]
    real, calls = upscaler.Upscaler.upscale, []

    def interrupted_at_the_second(self, *a, **k):
        calls.append(1)
        if len(calls) == 2:
            raise KeyboardInterrupt  # Ctrl-C (or SIGTERM, raised as a KeyboardInterrupt) during b.png
        return real(self, *a, **k)
    monkeypatch.setattr(upscaler.Upscaler, "upscale", interrupted_at_the_second)
    assert main(argv) == 130
    monkeypatch.undo()
    first = json.loads(rep.read_text())
    assert first["interrupted"] is True and [i["input"] for i in first["images"]] == [str(src / "a.png")]
    assert first["not_done"] == [str(src / "b.png"), str(src / "c.png")]
    assert "1 of 3 images done before the interrupt" in capsys.readouterr().err

    assert main(argv + ["--skip-existing"]) == 0
    assert "skipped 1 of 3 images: their outputs exist (--skip-existing): a.png" in capsys.readouterr().err
    second = json.loads(rep.read_text())
    assert second["interrupted"] is False and [i["input"] for i in second["images"]] == [str(src / "b.png"),
                                                                                       str(src / "c.png")]
    (skipped,) = second["skipped"]
    assert skipped["input"] == str(src / "a.png") and skipped["output"] == str(out / "a_x2.png")
    assert skipped["earlier"] == first["images"][0]  # what the interrupted run measured for it is kept
    assert main(argv + ["--skip-existing"]) == 0  # a third run keeps them all, carried from report to report
    assert [s["earlier"]["input"] for s in json.loads(rep.read_text())["skipped"]] == [str(src / n) for n in
                                                                                      ("a.png", "b.png", "c.png")]


def test_models_lists_the_shipped_weights(capsys, no_model_load):
    from cadyq import zoo

    assert main(["models"]) == 0
    out = capsys.readouterr().out.splitlines()
    names = [line.split()[0] for line in out[1:-1]]
    assert names == zoo.available()
    default = next(line for line in out if line.startswith(zoo.default_name()))
    assert default.split()[1] == "*" and "over bicubic" in default


def test_running_an_export_meant_for_tensorrt_hints_at_faster_forms(tmp_path, capsys):
    for form in ("int8", "ort"):
        assert main(["export", "-m", X2, "-o", str(tmp_path / f"{form}.onnx"), "--tile", "32", "--form", form]) == 0
    src = _image(tmp_path / "a.png", 40, 30)
    capsys.readouterr()
    for form, hinted in (("int8", True), ("ort", False)):
        assert main(["upscale", str(src), "-o", str(tmp_path / f"{form}.png"), "--model", str(tmp_path / f"{form}.onnx"),
                     "--tile", "32", "--device", "cpu"]) == 0
        warned = [x for x in capsys.readouterr().err.splitlines() if x.startswith("warning:")]
        assert any("--form ort" in x and "native" in x for x in warned) == hinted, warned


def test_the_quick_starts_untrained_model_is_named_as_such(tmp_path, capsys):
    """README's create_model + quantize + save, then upscale: a warning says it was never trained."""
    import cadyq

    model = cadyq.create_model("edsr", scale=2, n_resblocks=1, n_feats=8)
    cadyq.quantize(model, method="cadyq", bits=(4, 6, 8))
    cadyq.save(model, tmp_path / "m.safetensors")
    src = _image(tmp_path / "a.png", 40, 30)
    assert main(["upscale", str(src), "-o", str(tmp_path / "o.png"), "--model", str(tmp_path / "m.safetensors")]) == 0
    warned = [x for x in capsys.readouterr().err.splitlines() if x.startswith("warning:")]
    assert any("never trained" in x for x in warned), warned


OVERWRITE_CASES = {  # every command that writes a file, with an output that exists ({f}), in a world of {w}
    "export": ["export", "-m", X2, "-o", "{f}.onnx"],
    "export-aoti": ["export", "-m", X2, "--format", "aoti", "-o", "{f}.pt2"],
    "eval": ["eval", "-m", X2, "--data", "{w}/photos", "--json", "{f}.json"],
    "check": ["check", "{w}/graph.onnx", "--json", "{f}.json"],
    "engine": ["engine", "{w}/graph.onnx", "-o", "{f}.engine"],
    "engine-json": ["engine", "{w}/graph.onnx", "--json", "{f}.json"],
    "engine-beside-its-graph": ["engine", "{w}/graph.onnx"],  # writes {w}/graph.engine
    "bench": ["bench", "--model", X2, "--json", "{f}.json"],
    "calibrate": ["calibrate", "--model", X2, "--data", "{w}/photos", "-o", "{f}.safetensors"],
}


@pytest.mark.parametrize("case", OVERWRITE_CASES, ids=list(OVERWRITE_CASES))
def test_every_command_refuses_to_replace_an_existing_output_without_overwrite(case, tmp_path, capsys,
                                                                              no_model_load):
    (tmp_path / "photos").mkdir()
    _image(tmp_path / "photos" / "p.png", 48, 48)
    (tmp_path / "graph.onnx").write_bytes(b"not read: refused before")
    argv = [a.format(w=tmp_path, f=tmp_path / "existing") for a in OVERWRITE_CASES[case]]
    target = tmp_path / "graph.engine" if case == "engine-beside-its-graph" else \
        next(Path(a) for a in argv if "existing" in a)
    target.write_bytes(b"precious")
    assert main(argv) == 2
    assert f"{target}: exists; pass --overwrite" in _one_error_line(capsys)
    assert target.read_bytes() == b"precious"


def test_export_replaces_an_existing_file_with_overwrite(tmp_path, capsys):
    out = tmp_path / "m.onnx"
    out.write_bytes(b"old")
    assert main(["export", "-m", X2, "-o", str(out), "--tile", "16"]) == 2
    assert main(["export", "-m", X2, "-o", str(out), "--tile", "16", "--overwrite"]) == 0
    assert out.read_bytes()[:3] != b"old" and out.stat().st_size > 1000
