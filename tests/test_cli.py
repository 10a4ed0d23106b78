import json

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
