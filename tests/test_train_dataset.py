import numpy as np
import pytest
import torch
from PIL import Image

from cadyq.data.resize import bicubic_downscale, mod_crop
from cadyq.data.train_dataset import (SRTrainDataset, StreamBatchSampler, TrainDataConfig, augment, downscale_crop,
                                      find_train_pairs, make_loader)
from cadyq.errors import DataError


def _photo(seed, h, w):
    """A smooth random colour image (uint8)."""
    rng = np.random.default_rng(seed)
    small = rng.integers(0, 256, (h // 8 + 2, w // 8 + 2, 3), dtype=np.uint8)
    return np.asarray(Image.fromarray(small).resize((w, h), Image.BICUBIC))


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    d = tmp_path_factory.mktemp("hr")
    for i, (h, w) in enumerate([(50, 61), (64, 40), (45, 45)]):
        Image.fromarray(_photo(i, h, w)).save(d / f"img{i}.png")
    return d


@pytest.fixture(scope="module")
def div2k(tmp_path_factory):
    root = tmp_path_factory.mktemp("DIV2K")
    (root / "DIV2K_train_HR").mkdir()
    (root / "DIV2K_train_LR_bicubic" / "X2").mkdir(parents=True)
    (root / "DIV2K_valid_HR").mkdir()  # must not be picked for training
    lrs = {}
    for i in (1, 2):
        hr = _photo(10 + i, 40, 48)
        Image.fromarray(hr).save(root / "DIV2K_train_HR" / f"{i:04d}.png")
        lr = _photo(20 + i, 20, 24)  # deliberately not the downscaled HR: must be read from the file
        Image.fromarray(lr).save(root / "DIV2K_train_LR_bicubic" / "X2" / f"{i:04d}x2.png")
        lrs[f"{i:04d}"] = lr
    Image.fromarray(_photo(99, 40, 48)).save(root / "DIV2K_valid_HR" / "0801.png")
    return root, lrs


def test_plain_folder_patches_match_bicubic_lr(folder):
    ds = SRTrainDataset(TrainDataConfig(str(folder), scale=2, patch=10, augment=False))
    assert len(ds) == 3
    for i in range(20):
        lr, hr = ds[i]
        assert lr.dtype == torch.uint8 and lr.shape == (3, 10, 10) and hr.shape == (3, 20, 20)
        img, y, x, flags = ds.sample_params(i, lambda k: ds._images[k][0].shape[:2])
        full_hr = mod_crop(np.asarray(Image.open(ds.pairs[img].hr).convert("RGB")), 2)
        full_lr = bicubic_downscale(np.ascontiguousarray(full_hr), 2)
        assert np.array_equal(lr.permute(1, 2, 0).numpy(), full_lr[y:y + 10, x:x + 10])
        assert np.array_equal(hr.permute(1, 2, 0).numpy(), full_hr[2 * y:2 * y + 20, 2 * x:2 * x + 20])


def test_div2k_layout_reads_lr_files(div2k):
    root, lrs = div2k
    pairs = find_train_pairs(root, 2)
    assert [p.name for p in pairs] == ["0001", "0002"] and all(p.lr is not None for p in pairs)
    ds = SRTrainDataset(TrainDataConfig(str(root), scale=2, patch=8, augment=False))
    for i in range(10):
        lr, _ = ds[i]
        img, y, x, _ = ds.sample_params(i, lambda k: ds._images[k][0].shape[:2])
        assert np.array_equal(lr.permute(1, 2, 0).numpy(), lrs[ds.pairs[img].name][y:y + 8, x:x + 8])


def test_same_seed_same_samples_and_caches_agree(folder, tmp_path):
    base = dict(root=str(folder), scale=2, patch=10)
    a = SRTrainDataset(TrainDataConfig(**base, seed=3))
    b = SRTrainDataset(TrainDataConfig(**base, seed=3, cache="npy", cache_dir=str(tmp_path / "c")))
    b2 = SRTrainDataset(TrainDataConfig(**base, seed=3, cache="npy", cache_dir=str(tmp_path / "c")))  # reuses files
    c = SRTrainDataset(TrainDataConfig(**base, seed=3, cache="none"))
    other = SRTrainDataset(TrainDataConfig(**base, seed=4))
    assert len(list((tmp_path / "c").glob("*.npy"))) == 6
    differ = 0
    for i in (0, 1, 7, 123, 10**9):
        ref = a[i]
        for ds in (b, b2, c):
            assert all(torch.equal(u, v) for u, v in zip(ref, ds[i]))
        differ += not torch.equal(ref[0], other[i][0])
    assert differ >= 4


def test_downscale_crop_is_exact():
    rng = np.random.default_rng(0)
    for s in (2, 3, 4):
        hr = rng.integers(0, 256, (14 * s, 17 * s, 3), dtype=np.uint8)
        full = bicubic_downscale(hr, s)
        for y, x, p in [(0, 0, 5), (3, 4, 6), (9, 12, 5), (8, 0, 6), (0, 5, 12)]:
            assert np.array_equal(downscale_crop(hr, s, y, x, p), full[y:y + p, x:x + p])


def test_augment_applies_same_transform():
    lr = np.arange(2 * 3 * 3).reshape(2, 3, 3)
    hr = np.arange(4 * 6 * 3).reshape(4, 6, 3)
    a, b = augment(lr, hr, (True, True, True))
    assert np.array_equal(a, lr[::-1, ::-1].transpose(1, 0, 2))
    assert np.array_equal(b, hr[::-1, ::-1].transpose(1, 0, 2))
    assert augment(lr, hr, (False, False, False))[0] is lr


def test_augment_flags_are_balanced(folder):
    ds = SRTrainDataset(TrainDataConfig(str(folder), scale=2, patch=10, seed=0))
    flags = np.array([ds.sample_params(i, lambda k: (20, 20))[3] for i in range(400)])
    assert np.all(np.abs(flags.mean(0) - 0.5) < 0.1)
    imgs = [ds.sample_params(i, lambda k: (20, 20))[0] for i in range(300)]
    assert set(imgs) == {0, 1, 2}


def test_sampler_sharding_and_resume():
    one = list(StreamBatchSampler(8, 0, 5))
    r0, r1 = list(StreamBatchSampler(8, 0, 5, 0, 2)), list(StreamBatchSampler(8, 0, 5, 1, 2))
    assert [a + b for a, b in zip(r0, r1)] == one
    assert list(StreamBatchSampler(8, 3, 5)) == one[3:]
    assert len(StreamBatchSampler(8, 3, 5)) == 2
    with pytest.raises(DataError):
        StreamBatchSampler(7, 0, 1, 0, 2)


def test_loader_workers_give_same_batches(folder):
    ds = SRTrainDataset(TrainDataConfig(str(folder), scale=2, patch=10, seed=5))
    plain = [b for b in make_loader(ds, 4, 2, 6, workers=0)]
    workers = [b for b in make_loader(ds, 4, 2, 6, workers=2)]
    assert len(plain) == 4
    for (a, b), (c, d) in zip(plain, workers):
        assert torch.equal(a, c) and torch.equal(b, d)
    resumed = [b for b in make_loader(ds, 4, 4, 6, workers=0)]
    assert all(torch.equal(a[0], b[0]) for a, b in zip(plain[2:], resumed))


def test_too_small_images_and_bad_options(folder, tmp_path):
    with pytest.raises(DataError, match="smaller than"):
        SRTrainDataset(TrainDataConfig(str(folder), scale=2, patch=30))
    with pytest.raises(DataError, match="smaller than"):
        SRTrainDataset(TrainDataConfig(str(folder), scale=2, patch=30, cache="none"))[0]
    with pytest.raises(DataError):
        SRTrainDataset(TrainDataConfig(str(folder), cache="disk"))
    (tmp_path / "empty").mkdir()
    with pytest.raises(DataError):
        SRTrainDataset(TrainDataConfig(str(tmp_path / "empty")))
