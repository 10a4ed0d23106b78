"""The shipped full-size models load by name and reproduce what their files record (cadyq/zoo/check.py)."""
import numpy as np
import pytest
import torch

from cadyq import checkpoint, zoo
from cadyq.zoo.check import crop_psnr

FULL_SIZE = [n for n in zoo.available() if not n.endswith("-cpu")]  # the tiny demo models end in -cpu
GAIN_TARGET = {2: 1.5, 4: 1.0}  # fp32 on the held-out photos over bicubic (issue 8)


@pytest.mark.parametrize("name", FULL_SIZE)
def test_zoo_model_reproduces_its_recorded_crop_psnr(name):
    model = checkpoint.load_model(name)
    meta = checkpoint.read_metadata(zoo.path_of(name))
    assert meta["method"] in name and f"x{meta['scale']}" in name
    recorded, now = meta["extra"]["crop_check"], crop_psnr(model)
    assert now["bicubic_psnr"] == pytest.approx(recorded["bicubic_psnr"], abs=1e-3)
    assert now["fqr"] == pytest.approx(recorded["fqr"], abs=1e-3)  # the same bits chosen
    assert now["psnr"] == pytest.approx(recorded["psnr"], abs=0.02)
    assert now["psnr"] > now["bicubic_psnr"] + 0.3


@pytest.mark.parametrize("name", [n for n in FULL_SIZE if "-fp32-" in n])
def test_fp32_zoo_models_meet_the_gain_target_on_both_photo_sets(name):
    meta = checkpoint.read_metadata(zoo.path_of(name))
    for s in ("report", "decision"):
        val = meta["extra"][s]
        assert val["images"] >= (8 if s == "report" else 20)
        assert val["psnr"] - val["bicubic_psnr"] >= GAIN_TARGET[meta["scale"]], s


def test_the_full_size_models_are_shipped_and_the_content_aware_cadyq_x4_is_the_default():
    assert {"edsr-fp32-x4", "edsr-pams8-x4", "edsr-cadyq-x4", "edsr-cadyq-alloc-x4", "edsr-gdq-alloc-x4", "edsr-fp32-x2",
            "edsr-pams8-x2", "edsr-cadyq-x2", "edsr-cadyq-alloc-x2", "edsr-gdq-alloc-x2"} <= set(FULL_SIZE)
    assert zoo.default_name() == zoo.DEFAULT_MODEL == "edsr-cadyq-alloc-x4"


@pytest.mark.parametrize("name", [zoo.DEFAULT_MODEL, *(n for n in FULL_SIZE if "-alloc-" in n and n != zoo.DEFAULT_MODEL)])
@torch.no_grad()
def test_content_aware_models_give_a_flat_tile_fewer_bits_than_a_detailed_one(name):
    """Issue 21: the default's selectors choose per tile, not per layer. The check crop's LR (foliage and rock) and
    the same tile flattened to its mean colour (sky-like) must get bits at least one bit apart, fewer for the flat
    one (the layer-wise trained edsr-cadyq-x4 gives 6.38 and 6.25)."""
    from cadyq.data.io import read_image
    from cadyq.data.resize import bicubic_downscale
    from cadyq.quant import selected_bits
    from cadyq.zoo.check import CROP

    model = checkpoint.load_model(name).eval()
    s = model.config.scale
    lr = torch.from_numpy(bicubic_downscale(np.ascontiguousarray(read_image(CROP).rgb), s)).permute(2, 0, 1).float()
    flat = lr.mean(dim=(1, 2), keepdim=True).expand_as(lr) + torch.randn(lr.shape, generator=torch.Generator().manual_seed(0))
    model(torch.stack([lr, flat]))
    detailed_bits, flat_bits = selected_bits(model).mean(dim=1).tolist()
    assert flat_bits <= detailed_bits - 1.0, (flat_bits, detailed_bits)


SCALES = sorted({checkpoint.read_metadata(zoo.path_of(n))["scale"] for n in FULL_SIZE})


def _decision(m, scale):
    return checkpoint.read_metadata(zoo.path_of(f"edsr-{m}-x{scale}"))["extra"]["decision"]


@pytest.mark.parametrize("scale", [pytest.param(s, marks=pytest.mark.xfail(
    strict=True, reason="issue 37: edsr-pams8-x2 is 0.327 dB below edsr-fp32-x2 on the 22-photo decision set (0.263 with the "
                        "float tail; it was "
                        "0.091 on the 5 photos it was chosen on; MODEL_CARD.md says so)")) if s == 2 else s
    for s in SCALES])
def test_pams8_is_within_0_1_db_of_fp32_on_the_decision_set(scale):
    """Issue 8's first step, on the decision set, where it is decided (README and MODEL_CARD quote the report set too)."""
    fp32, pams8 = _decision("fp32", scale), _decision("pams8", scale)
    assert pams8["psnr"] >= fp32["psnr"] - 0.1 and pams8["fqr"] == 8


@pytest.mark.parametrize("scale", SCALES)
def test_cadyq_is_within_0_1_db_of_pams8_at_fqr_6_5_on_the_decision_set(scale):
    """Issue 8's second step: cadyq within 0.1 dB of pams8 at FQR <= 6.5, on the decision set."""
    pams8, cadyq = _decision("pams8", scale), _decision("cadyq", scale)
    assert cadyq["psnr"] >= pams8["psnr"] - 0.1 and cadyq["fqr"] <= 6.5


def _script(name):
    import importlib.util
    from pathlib import Path

    path = Path(__file__).parents[1] / "benchmarks" / name
    spec = importlib.util.spec_from_file_location(path.stem, path)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def test_the_zoo_files_record_both_photo_sets_as_measured():
    """Issue 37: every shipped full-size file records its report-set figures first and its decision-set figures beside
    them, as benchmarks/zoo_sets.json measured them (`python benchmarks/zoo_sets.py apply` writes them; a re-shipped
    file without a re-measured row fails here)."""
    import json

    sets = _script("zoo_sets.py")
    stored = json.loads(sets.JSON.read_text())
    assert set(stored["models"]) == set(FULL_SIZE)
    for name in FULL_SIZE:
        extra = checkpoint.read_metadata(zoo.path_of(name))["extra"]
        assert list(extra)[:2] == ["report", "decision"] and "held_out" not in extra, name
        for s in ("report", "decision"):
            row = stored["models"][name][s]
            assert extra[s]["images"] == row["images"] == stored["sets"][s]["images"], (name, s)
            assert extra[s]["psnr"] == pytest.approx(row["psnr"], abs=0.005), (name, s)  # native vs torch reference
            assert extra[s]["fqr"] == pytest.approx(row["fqr"], abs=0.01), (name, s)
            assert extra[s]["set"].startswith(s)
    assert "| `edsr-cadyq-alloc-x4` |" in sets.table(stored)


def test_issue_21_summary_table_reads_the_report_set_as_the_zoo_files_record_it():
    """benchmarks/allocation/summary.py assembles issue 21's table from stored measurements; its KDE columns are the
    report set, measured before issue 36 (the papers' arithmetic, float upsampler). So every shipped model's KDE row
    must read the report-set figure of that arithmetic (benchmarks/int8_upsampler.json, "before": what the zoo files
    recorded at a14f642) to 0.03 dB, since those rows were measured in earlier sessions on other CPUs (the native
    backend runs its float layers in fp32 on AVX2 CPUs, in bf16 on this one; the x2 rows differ by up to 0.024 dB) and
    some with the torch reference; and the zoo file's record (issue 36's defaults on a VNNI CPU) must be that figure
    moved by the measured changes, the one arithmetic and the INT8 tail (int8_upsampler.json)."""
    import json

    summary = _script("allocation/summary.py")
    upsampler = json.loads((_script("int8_upsampler.py").JSON).read_text())
    shown = set()
    for name, row in summary.shipped():
        rec = checkpoint.read_metadata(zoo.path_of(name))["extra"]["report"]
        if name in upsampler["models"]:
            before = upsampler["before"]["psnr"][name]["report"]
            assert row["psnr"] == pytest.approx(before, abs=0.03), name
            assert rec["psnr"] == pytest.approx(upsampler["models"][name]["report"]["on"]["psnr"], abs=0.005), name
        else:  # fp32: no quantizer, no INT8 tail
            assert row["psnr"] == pytest.approx(rec["psnr"], abs=0.03), name
        assert row["fqr"] == pytest.approx(rec["fqr"], abs=0.01), name
        shown.add(name)
    assert shown == set(FULL_SIZE)
    for scale in summary.ROWS:
        summary.table(scale)  # every measurement the table names is there
