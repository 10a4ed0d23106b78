"""Issue 37: the decision set chooses, the report set (KDE's photos) is only reported, and no decision code path reads
the report set."""
import ast
import importlib.util
import json
import re
from pathlib import Path

import numpy as np
import pytest

from cadyq import checkpoint
from cadyq.data import photos
from cadyq.data.io import Image, read_image, write_image
from cadyq.errors import DataError

ROOT = Path(__file__).parents[1]
BENCH = ROOT / "benchmarks"
TRAIN_PACKAGES = {p.package for p in photos.PHOTOS if p.split == "train"}


def _script(path: Path):
    spec = importlib.util.spec_from_file_location(path.stem, path)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def _photos(folder: Path, names, size=64, seed=0) -> Path:
    from cadyq.zoo.check import CROP

    folder.mkdir(parents=True, exist_ok=True)
    rgb = read_image(CROP).rgb
    rng = np.random.default_rng(seed)
    for n in names:
        y, x = rng.integers(0, rgb.shape[0] - size), rng.integers(0, rgb.shape[1] - size)
        write_image(folder / f"{n}.png", Image(np.ascontiguousarray(rgb[y:y + size, x:x + size]), None, 8, False, None,
                                               None, "RGB"))
    return folder


def _report_dir(tmp_path) -> Path:
    d = _photos(tmp_path / "report", ["r1", "r2"], seed=1)
    (d / photos.REPORT_MARKER).write_text("report\n")
    return d


def test_the_decision_set_has_at_least_20_photos_apart_from_training_and_the_report_set():
    decision, report = photos.photos("decision"), photos.photos("report")
    assert len(decision) >= 20 and len(report) == 8
    train = photos.photos("train")
    for a, b in ((decision, train), (decision, report), (train, report)):
        assert not {p.path for p in a} & {p.path for p in b}
        assert not {p.name for p in a} & {p.name for p in b}
    # beyond the zoo's 5 original held-out photos, every decision photo comes from a package the zoo does not train on
    new = [p for p in decision if p.package not in TRAIN_PACKAGES]
    assert len(decision) - len(new) == 5 and len(new) >= 15
    assert {p.package for p in report} == {"plasma-workspace-wallpapers"}
    assert all(p.path.startswith(photos.KDE) for p in report)
    assert not any(p.path.startswith(photos.KDE) for p in (*decision, *train))


def test_the_report_set_is_told_apart(tmp_path):
    rep = _report_dir(tmp_path)
    assert photos.is_report(rep) and photos.is_report(rep / "r1.png")
    assert photos.is_report(f"{photos.KDE}/Grey/contents/images/2560x1600.jpg")
    old_layout = _photos(tmp_path / "kde" / "hr", [p.name for p in photos.REPORT[:4]])  # eval_independent.sh's
    assert photos.is_report(old_layout)
    mine = _photos(tmp_path / "mine", ["Grey", "holiday"])  # a user's photo that happens to share a name
    assert not photos.is_report(mine)
    with pytest.raises(DataError, match="report set"):
        photos.refuse_report(mine, rep, use="calibrate on")


def test_training_validation_and_calibration_refuse_the_report_set(tmp_path):
    from cadyq.calib import photo_tiles
    from cadyq.data.train_dataset import SRTrainDataset, TrainDataConfig
    from cadyq.train.trainer import validation_images

    rep = _report_dir(tmp_path)
    with pytest.raises(DataError, match="report set"):
        validation_images(rep, 2)
    with pytest.raises(DataError, match="report set"):
        SRTrainDataset(TrainDataConfig(str(rep), 2, 16, cache="none"))
    with pytest.raises(DataError, match="report set"):
        photo_tiles(rep, 2)
    assert len(validation_images(rep, 2, report=True)) == 2  # reporting reads it


def test_cadyq_train_refuses_the_report_set_before_any_work(tmp_path, capsys):
    from cadyq.cli import main

    rep, train = _report_dir(tmp_path), _photos(tmp_path / "train", ["a", "b"], size=96)
    code = main(["train", "--backbone", "edsr", "--scale", "2", "--method", "fp32", "--data", str(train), "--val",
                 str(rep), "--iters", "1", "--out", str(tmp_path / "run"), "--no-progress"])
    assert code != 0 and "report set" in capsys.readouterr().err
    assert not (tmp_path / "run" / "last_state.pt").exists()


def test_zoo_ship_decides_on_the_decision_set_and_writes_the_report_set_beside_it(tmp_path, monkeypatch):
    """The dynamic check: every read of validation photos is logged; the decision reads only the decision folder, and
    the report folder is read once, after the decision, only to be written down."""
    zoo_ship = _script(BENCH / "zoo_ship.py")
    dec, rep = _photos(tmp_path / "decision", ["d1", "d2", "d3"]), _report_dir(tmp_path)
    reads, decided = [], []
    real_images, real_decide = zoo_ship.validation_images, zoo_ship.decide

    def logged_images(folder, scale, limit=None, *, report=False):
        reads.append((Path(folder), report, bool(decided)))
        return real_images(folder, scale, limit, report=report)

    def logged_decide(a):
        out = real_decide(a)
        decided.append(out[0])
        return out

    weights = str(zoo_ship.zoo.path_of("edsr-tiny-cadyq-x2-cpu"))
    monkeypatch.setattr(zoo_ship, "validation_images", logged_images)
    monkeypatch.setattr(zoo_ship, "decide", logged_decide)
    monkeypatch.setattr(zoo_ship.zoo, "ZOO_DIR", tmp_path)
    assert zoo_ship.main([weights, "shipped", "--decision", str(dec), "--report", str(rep), "--recipe", "test"]) == 0
    assert reads == [(dec, False, False), (rep, True, True)]
    extra = checkpoint.read_metadata(tmp_path / "shipped.safetensors")["extra"]
    assert list(extra).index("report") < list(extra).index("decision") and "held_out" not in extra
    assert extra["decision"]["images"] == 3 and extra["report"]["images"] == 2

    with pytest.raises(DataError, match="report set"):  # the report set cannot stand in for the decision set
        zoo_ship.main([weights, "other", "--decision", str(rep), "--report", str(rep)])


def test_zoo_ship_refuses_a_run_validated_on_the_report_set(tmp_path):
    zoo_ship = _script(BENCH / "zoo_ship.py")
    rep, run = _report_dir(tmp_path), tmp_path / "run"
    run.mkdir()
    (run / "config.json").write_text(json.dumps({"val": str(rep)}))
    (run / "val.csv").write_text("iter,psnr,ssim,fqr,bicubic_psnr,bicubic_ssim,images\n")
    with pytest.raises(DataError, match="report set"):
        zoo_ship.pick(run, 6.5, None)


def test_dynamic_vs_static_refuses_the_report_set_as_its_decision_folder(tmp_path):
    dvs = _script(BENCH / "dynamic_vs_static.py")
    with pytest.raises(DataError, match="report set"):
        dvs.main(["edsr-tiny-cadyq-x2-cpu", "--decision", str(_report_dir(tmp_path))])


def _names_in(node) -> set:
    return {n.id for n in ast.walk(node) if isinstance(n, ast.Name)} | \
        {n.attr for n in ast.walk(node) if isinstance(n, ast.Attribute)}


REPORT_NAMES = {"REPORT", "REPORT_DIR", "prepare_report", "report"}


def test_no_decision_code_path_names_the_report_set():
    """The static check: in zoo_ship.py only `report()` and the --report option name the report set, and `decide()` /
    `pick()` reach nothing that does; the allocation scripts and the training scripts name it only where ship_alloc.sh
    hands it to zoo_ship.py --report."""
    tree = ast.parse((BENCH / "zoo_ship.py").read_text())
    funcs = {f.name: f for f in tree.body if isinstance(f, ast.FunctionDef)}
    for name in ("decide", "pick", "refuse_report_run"):
        body = _names_in(funcs[name])
        assert not body & (REPORT_NAMES - {"report"}), name
        assert not {n for n in body if n in funcs} & {"report"}, name  # no call into report()
        assert not any(isinstance(k, ast.keyword) and k.arg == "report" for k in ast.walk(funcs[name])), name
    assert "report" in _names_in(funcs["main"]) and funcs["report"]
    text = (BENCH / "zoo_ship.py").read_text()
    assert text.index("weights, run, val = decide(a)") < text.index("kde = report(model, a.report)")

    for path in [*(BENCH / "allocation").glob("*.py"), *(BENCH / "allocation").glob("*.sh"),
                 BENCH / "train_zoo.sh", BENCH / "train_gpu.sh", BENCH / "static_mixed.py", BENCH / "sensitivity.py"]:
        if path.name == "summary.py":  # tables only: it reads stored measurements, decides nothing
            continue
        for i, line in enumerate(path.read_text().splitlines(), 1):
            code = line.split("#", 1)[0]
            hits = re.findall(r"wallpapers|/work/data/report|/work/data/kde|REPORT|report=True|prepare_report", code)
            if path.name == "ship_alloc.sh":
                hits = [h for h in hits if not re.search(r'REPORT=\$\{REPORT:-/work/data/report\}|--report "\$REPORT"',
                                                         code)]
            assert not hits, f"{path.relative_to(ROOT)}:{i}: {line.strip()}"
