import math

import numpy as np
import pytest
import torch

skimage = pytest.importorskip("skimage")
from skimage import data  # noqa: E402
from skimage.color import rgb2ycbcr  # noqa: E402
from skimage.metrics import peak_signal_noise_ratio, structural_similarity  # noqa: E402

from cadyq.errors import ImageError  # noqa: E402
from cadyq.metrics import psnr, rgb_to_y, ssim  # noqa: E402


def degrade(img, seed, sigma=8.0):
    """Box-blur plus Gaussian noise, rounded to uint8 like a saved SR output."""
    rng = np.random.default_rng(seed)
    x = img.astype(np.float64)
    x = (x + np.roll(x, 1, 0) + np.roll(x, 1, 1) + np.roll(x, (1, 1), (0, 1))) / 4
    return np.clip(np.round(x + rng.normal(0, sigma, x.shape)), 0, 255).astype(np.uint8)


@pytest.fixture(scope="module", params=["astronaut", "chelsea", "coffee"])
def pair(request):
    hr = getattr(data, request.param)()[:200, :240]  # keep it small: 2 cores
    return degrade(hr, seed=len(request.param)), hr


def sk_y(img):
    return rgb2ycbcr(img)[..., 0]  # independent MATLAB-compatible luma


def test_rgb_to_y_matches_skimage_and_layouts(pair):
    sr, _ = pair
    y = rgb_to_y(sr)
    np.testing.assert_allclose(y, sk_y(sr), rtol=0, atol=1e-9)
    t = torch.from_numpy(sr).permute(2, 0, 1)
    np.testing.assert_allclose(rgb_to_y(t).numpy(), y, atol=1e-9)
    np.testing.assert_allclose(rgb_to_y(torch.stack([t, t]).float())[1].numpy(), y, atol=1e-9)
    assert rgb_to_y(np.zeros((1, 1, 3)))[0, 0] == 16.0 and rgb_to_y(np.full((1, 1, 3), 255.0))[0, 0] == 235.0
    with pytest.raises(ImageError):
        rgb_to_y(np.zeros((4, 4)))


@pytest.mark.parametrize("scale", [2, 4])
def test_psnr_matches_skimage(pair, scale):
    sr, hr = pair
    c = slice(scale, -scale)
    want_y = peak_signal_noise_ratio(sk_y(hr)[c, c], sk_y(sr)[c, c], data_range=255)
    want_rgb = peak_signal_noise_ratio(hr[c, c].astype(np.float64), sr[c, c].astype(np.float64), data_range=255)
    assert psnr(sr, hr, scale) == pytest.approx(want_y, abs=1e-9)
    assert psnr(sr, hr, scale, y_only=False) == pytest.approx(want_rgb, abs=1e-9)
    assert 20 < want_y < 40 and abs(want_y - want_rgb) > 0.1  # degraded, and the modes differ
    t = lambda x: torch.from_numpy(x).permute(2, 0, 1)  # noqa: E731
    assert psnr(t(sr)[None].float(), t(hr), scale) == pytest.approx(want_y, abs=1e-9)


@pytest.mark.parametrize("scale", [2, 3])
def test_ssim_matches_skimage(pair, scale):
    sr, hr = pair
    c = slice(scale, -scale)
    kw = dict(gaussian_weights=True, sigma=1.5, use_sample_covariance=False, data_range=255)
    want_y = structural_similarity(sk_y(hr)[c, c], sk_y(sr)[c, c], **kw)
    want_rgb = structural_similarity(hr[c, c].astype(np.float64), sr[c, c].astype(np.float64), channel_axis=2, **kw)
    assert ssim(sr, hr, scale) == pytest.approx(want_y, abs=1e-9)
    assert ssim(sr, hr, scale, y_only=False) == pytest.approx(want_rgb, abs=1e-9)
    assert 0.3 < want_y < 0.99


def test_hand_computed_offset():
    rng = np.random.default_rng(0)
    hr = rng.integers(20, 200, (40, 50, 3)).astype(np.uint8)
    sr = hr + np.uint8(5)
    # Y difference = 5 * (65.481 + 128.553 + 24.966) / 255 = 5 * 219 / 255 everywhere
    assert psnr(sr, hr, 2) == pytest.approx(20 * math.log10(255 / (5 * 219 / 255)), abs=1e-9)
    assert psnr(sr, hr, 2, y_only=False) == pytest.approx(20 * math.log10(255 / 5), abs=1e-9)
    got = psnr(sr / 255, hr / 255, 2, y_only=False, data_range=1.0)
    assert got == pytest.approx(20 * math.log10(255 / 5), abs=1e-9)
    assert psnr(hr, hr, 2) == math.inf and ssim(hr, hr, 2) == pytest.approx(1.0, abs=1e-12)
    # SSIM of a constant pair: only luminance term, (2ab + C1) / (a^2 + b^2 + C1)
    a, b, c1 = 100.0, 110.0, (0.01 * 255) ** 2
    got = ssim(np.full((30, 30), a), np.full((30, 30), b), 0)
    assert got == pytest.approx((2 * a * b + c1) / (a * a + b * b + c1), abs=1e-12)


def test_shave():
    rng = np.random.default_rng(1)
    hr = rng.integers(0, 256, (30, 30, 3)).astype(np.uint8)
    sr = hr.copy()
    sr[:3] = 0
    sr[:, -3:] = 255
    assert psnr(sr, hr, 3) == math.inf and ssim(sr, hr, 3) == pytest.approx(1.0, abs=1e-12)
    assert psnr(sr, hr, 2) < 30
    sr[15, 15, 0] ^= 1  # one pixel inside: R off by one
    want = 10 * math.log10(255**2 / ((65.481 / 255) ** 2 / 24**2))
    assert psnr(sr, hr, 3) == pytest.approx(want, abs=1e-9)


def test_edsr_coefficients_differ_negligibly():
    """The official CADyQ PSNR uses EDSR's [65.738, 129.057, 25.064] / 256 on the difference."""
    hr = data.astronaut()[:256, :256]
    sr = degrade(hr, seed=3)
    diff = (sr.astype(np.float64) - hr) / 255
    y = (diff * np.array([65.738, 129.057, 25.064]) / 256).sum(-1)[4:-4, 4:-4]
    official = -10 * math.log10(np.mean(y**2))
    assert 0 < abs(psnr(sr, hr, 4) - official) < 1e-4  # ~5e-6 dB: same coefficients, rounded


def test_errors():
    a = np.zeros((20, 20, 3), np.uint8)
    with pytest.raises(ImageError, match="mod-crop"):
        psnr(a, np.zeros((20, 24, 3), np.uint8), 2)
    with pytest.raises(ImageError, match="mod-crop"):
        ssim(a, np.zeros((20, 20), np.uint8), 2)
    with pytest.raises(ImageError, match="too small"):
        psnr(a, a, 10)
    with pytest.raises(ImageError, match="11x11"):
        ssim(a, a, 5)
    with pytest.raises(ImageError):
        psnr(torch.zeros(2, 3, 8, 8), torch.zeros(2, 3, 8, 8), 1)
    with pytest.raises(ImageError):
        psnr([[1]], [[1]], 0)
