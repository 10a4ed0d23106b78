"""The shipped full-size models load by name and reproduce what their files record (cadyq/zoo/check.py)."""
import pytest

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
def test_fp32_zoo_models_meet_the_held_out_target(name):
    meta = checkpoint.read_metadata(zoo.path_of(name))
    val = meta["extra"]["held_out"]
    assert val["images"] == 5
    assert val["psnr"] - val["bicubic_psnr"] >= GAIN_TARGET[meta["scale"]]
