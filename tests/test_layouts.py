from pathlib import Path

import numpy as np
import pytest
from PIL import Image as PILImage

from cadyq.data.layouts import Pair, find_pairs, load_pair
from cadyq.data.resize import bicubic_downscale
from cadyq.errors import CadyqError, DataError

RNG = np.random.default_rng(0)


def save(path: Path, hw=(12, 12), channels=3) -> np.ndarray:
    path.parent.mkdir(parents=True, exist_ok=True)
    a = RNG.integers(0, 256, (*hw, channels) if channels > 1 else hw, dtype=np.int64).astype(np.uint8)
    PILImage.fromarray(a).save(path)
    return a


def test_benchmark_layout_both_lr_namings(tmp_path):
    s5 = tmp_path / "benchmark" / "Set5"
    save(s5 / "HR" / "bird.png")
    save(s5 / "HR" / "baby.png")
    save(s5 / "LR_bicubic" / "X4" / "babyx4.png", (3, 3))   # EDSR's benchmark.tar naming
    lr_bird = save(s5 / "LR_bicubic" / "X4" / "bird.png", (3, 3))  # CADyQ's renamed files
    save(s5 / "LR_bicubic" / "X2" / "babyx2.png", (6, 6))
    pairs = find_pairs(s5, 4)
    assert pairs == [Pair("baby", s5 / "HR" / "baby.png", s5 / "LR_bicubic" / "X4" / "babyx4.png"),
                     Pair("bird", s5 / "HR" / "bird.png", s5 / "LR_bicubic" / "X4" / "bird.png")]
    lr, hr = load_pair(pairs[1], 4)
    assert lr.shape == (3, 3, 3) and hr.shape == (12, 12, 3) and lr.dtype == hr.dtype == np.uint8
    np.testing.assert_array_equal(lr, lr_bird)
    with pytest.raises(DataError, match=r"bird\.png"):  # X2 has no LR for bird: named, no fallback
        find_pairs(s5, 2)


def test_test2k_layout(tmp_path):
    root = tmp_path / "test2k"
    hr = save(root / "HR" / "img_1201.png", (8, 10))
    lr = save(root / "LR" / "X2" / "img_1201.png", (4, 5))
    (pair,) = find_pairs(root, 2)
    assert pair.lr == root / "LR" / "X2" / "img_1201.png"
    got_lr, got_hr = load_pair(pair, 2)
    np.testing.assert_array_equal(got_lr, lr)
    np.testing.assert_array_equal(got_hr, hr)


def test_div2k_layout(tmp_path):
    d = tmp_path / "DIV2K"
    for n in ("0801", "0802"):
        save(d / "DIV2K_valid_HR" / f"{n}.png")
        save(d / "DIV2K_valid_LR_bicubic" / "X3" / f"{n}x3.png", (4, 4))
    save(d / "DIV2K_train_HR" / "0001.png")
    save(d / "DIV2K_train_LR_bicubic" / "X3" / "0001x3.png", (4, 4))
    pairs = find_pairs(d, 3)  # both splits: the validation set is taken
    assert [p.name for p in pairs] == ["0801", "0802"]
    assert pairs[0].lr == d / "DIV2K_valid_LR_bicubic" / "X3" / "0801x3.png"
    # pointing at the HR folder itself still finds the sibling LR folder
    assert find_pairs(d / "DIV2K_valid_HR", 3) == pairs
    (train,) = find_pairs(d / "DIV2K_train_HR", 3)
    assert train.lr == d / "DIV2K_train_LR_bicubic" / "X3" / "0001x3.png"
    lr, hr = load_pair(pairs[0], 3)
    assert lr.shape == (4, 4, 3) and hr.shape == (12, 12, 3)
    with pytest.raises(DataError, match=r"X4.*found: X3"):
        find_pairs(d, 4)


def test_hr_only_and_plain_folder_make_lr(tmp_path):
    hr = save(tmp_path / "set" / "HR" / "a.png", (13, 14))
    (pair,) = find_pairs(tmp_path / "set", 4)
    assert pair.lr is None and pair.name == "a"
    lr, got_hr = load_pair(pair, 4)
    assert got_hr.shape == (12, 12, 3) and lr.shape == (3, 3, 3)
    np.testing.assert_array_equal(got_hr, hr[:12, :12])
    np.testing.assert_array_equal(lr, bicubic_downscale(hr[:12, :12], 4))

    plain = tmp_path / "photos"
    save(plain / "z.jpg", (8, 8))
    save(plain / "y.png", (8, 8))
    (plain / "notes.txt").write_text("x")
    pairs = find_pairs(plain, 2)
    assert [(p.name, p.lr) for p in pairs] == [("y", None), ("z", None)]
    # the HR folder of a set that has LR images: LR is generated instead
    save(tmp_path / "set" / "LR_bicubic" / "X4" / "a.png", (3, 3))
    assert find_pairs(tmp_path / "set", 4)[0].lr is not None
    assert find_pairs(tmp_path / "set" / "HR", 4)[0].lr is None


def test_missing_lr_names_the_hr_file(tmp_path):
    root = tmp_path / "Set14"
    save(root / "HR" / "a.png")
    save(root / "HR" / "b.png")
    save(root / "LR_bicubic" / "X2" / "ax2.png", (6, 6))
    with pytest.raises(DataError) as e:
        find_pairs(root, 2)
    assert "b.png" in str(e.value) and "bx2.png" in str(e.value)
    assert isinstance(e.value, CadyqError)


def test_empty_and_wrong_folders(tmp_path):
    (tmp_path / "empty").mkdir()
    with pytest.raises(DataError, match=r"no images.*expected one of.*LR_bicubic"):
        find_pairs(tmp_path / "empty", 4)
    save(tmp_path / "benchmark" / "Set5" / "HR" / "a.png")
    save(tmp_path / "benchmark" / "Urban100" / "HR" / "a.png")
    with pytest.raises(DataError, match=r"Set5, Urban100.*pass one"):
        find_pairs(tmp_path / "benchmark", 4)
    with pytest.raises(DataError, match="no such folder"):
        find_pairs(tmp_path / "nowhere", 4)
    (tmp_path / "onlyhr" / "HR").mkdir(parents=True)
    with pytest.raises(DataError, match="no images"):
        find_pairs(tmp_path / "onlyhr", 2)


def test_load_pair_checks_sizes(tmp_path):
    hr = tmp_path / "HR" / "a.png"
    save(hr, (12, 12))
    save(tmp_path / "LR" / "X4" / "a.png", (4, 3))
    with pytest.raises(DataError, match=r"LR.*a\.png.*should be 3x3"):
        load_pair(find_pairs(tmp_path, 4)[0], 4)
    small = tmp_path / "small.png"
    save(small, (3, 8))
    with pytest.raises(DataError, match="smaller than the scale"):
        load_pair(Pair("small", small, None), 4)


def test_load_pair_normalises_modes(tmp_path):
    g = save(tmp_path / "g.png", (8, 8), channels=1)
    lr, hr = load_pair(Pair("g", tmp_path / "g.png", None), 2)
    assert hr.shape == (8, 8, 3) and lr.shape == (4, 4, 3)
    np.testing.assert_array_equal(hr[..., 2], g)
    rgba = save(tmp_path / "a.png", (8, 8), channels=4)
    _, hr = load_pair(Pair("a", tmp_path / "a.png", None), 2)
    np.testing.assert_array_equal(hr, rgba[..., :3])
    g16 = (np.arange(64, dtype=np.uint16).reshape(8, 8) * 1000)
    PILImage.fromarray(g16).save(tmp_path / "g16.png")
    _, hr = load_pair(Pair("g16", tmp_path / "g16.png", None), 2)
    assert hr.dtype == np.uint8
    np.testing.assert_array_equal(hr[..., 0], np.rint(g16 / 257.0).astype(np.uint8))
