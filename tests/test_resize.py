import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image as PILImage

from cadyq.data.resize import bicubic_downscale, imresize, mod_crop

RNG = np.random.default_rng(0)


# A slow, plain-Python MATLAB imresize written from the formulas (imresize.m, 'bicubic'):
# Keys kernel a=-0.5; antialias by h(x) = s*k(s*x), width 4/s when s < 1; u = x/s + 0.5*(1-1/s);
# taps floor(u - width/2) + 0..ceil(width)+1; weights normalised; indices mirrored [1..n, n..1].
def ref_kernel(x):
    x = abs(x)
    if x <= 1:
        return 1.5 * x ** 3 - 2.5 * x ** 2 + 1
    if x <= 2:
        return -0.5 * x ** 3 + 2.5 * x ** 2 - 4 * x + 2
    return 0.0


def ref_1d(v, out_len, s, antialias=True):
    n, out = len(v), []
    aa = s < 1 and antialias
    width = 4 / s if aa else 4
    for i in range(1, out_len + 1):
        u = i / s + 0.5 * (1 - 1 / s)
        left = math.floor(u - width / 2)
        taps = list(range(left, left + math.ceil(width) + 2))
        ws = [s * ref_kernel(s * (u - j)) if aa else ref_kernel(u - j) for j in taps]
        total = sum(ws)
        acc = 0.0
        for w, j in zip(ws, taps):
            k = (j - 1) % (2 * n)               # 0-based position in [1..n, n..1]
            acc += w / total * v[k if k < n else 2 * n - 1 - k]
        out.append(acc)
    return out


def ref_imresize(img, out_hw, scales, antialias=True, uint8=False):
    a = [list(map(float, row)) for row in img]
    dims = [0, 1] if scales[0] <= scales[1] else [1, 0]
    for d in dims:
        if d == 1:
            a = [ref_1d(row, out_hw[1], scales[1], antialias) for row in a]
        else:
            cols = [ref_1d([row[c] for row in a], out_hw[0], scales[0], antialias) for c in range(len(a[0]))]
            a = [[cols[c][r] for c in range(len(cols))] for r in range(out_hw[0])]
        if uint8:
            a = [[min(255.0, max(0.0, math.floor(x + 0.5))) for x in row] for row in a]
    return np.array(a)


@pytest.mark.parametrize("shape,scale", [((7, 9), 0.5), ((12, 10), 1 / 3), ((13, 11), 0.25), ((5, 6), 2),
                                         ((4, 7), 3), ((6, 5), 4), ((11, 9), 0.7), ((6, 7), 1.3)])
def test_matches_reference_loop_scale(shape, scale):
    x = RNG.uniform(0, 255, shape)
    out_hw = (math.ceil(scale * shape[0]), math.ceil(scale * shape[1]))
    got = imresize(x, scale)
    assert got.shape == out_hw and got.dtype == np.float64
    np.testing.assert_allclose(got, ref_imresize(x, out_hw, (scale, scale)), rtol=0, atol=1e-9)


@pytest.mark.parametrize("shape,size", [((9, 8), (5, 13)), ((6, 10), (11, 3)), ((7, 7), (7, 7))])
def test_matches_reference_loop_size(shape, size):
    x = RNG.uniform(0, 1, shape)
    want = ref_imresize(x, size, (size[0] / shape[0], size[1] / shape[1]))
    np.testing.assert_allclose(imresize(x, size=size), want, rtol=0, atol=1e-12)
    np.testing.assert_allclose(imresize(x, size=size, antialias=False),
                               ref_imresize(x, size, (size[0] / shape[0], size[1] / shape[1]), False),
                               rtol=0, atol=1e-12)


def test_channels_and_torch_agree():
    x = RNG.uniform(0, 255, (10, 14, 3))
    np_out = imresize(x, 0.5)
    assert np_out.shape == (5, 7, 3)
    for c in range(3):
        np.testing.assert_allclose(np_out[..., c], imresize(x[..., c], 0.5), atol=1e-12)
    t = torch.from_numpy(np.ascontiguousarray(x.transpose(2, 0, 1)))[None].repeat(2, 1, 1, 1)
    t_out = imresize(t, 0.5)
    assert isinstance(t_out, torch.Tensor) and t_out.shape == (2, 3, 5, 7) and t_out.dtype == torch.float64
    np.testing.assert_allclose(t_out[1].numpy().transpose(1, 2, 0), np_out, atol=1e-10)
    t32 = imresize(t.float(), size=(3, 20))
    assert t32.dtype == torch.float32 and t32.shape == (2, 3, 3, 20)
    u8 = imresize(torch.full((1, 4, 4), 7, dtype=torch.uint8), 2)
    assert u8.dtype == torch.float32 and torch.allclose(u8, torch.full((1, 8, 8), 7.0))


# ---------------------------------------------------------------- exact values


def test_constant_stays_constant():
    for scale in (0.25, 1 / 3, 0.5, 0.7, 2, 3, 4):
        out = imresize(np.full((13, 9), 42.0), scale)
        np.testing.assert_allclose(out, 42.0, atol=1e-12)
    np.testing.assert_array_equal(bicubic_downscale(np.full((12, 12, 3), 200, np.uint8), 4), 200)


def test_upscaled_ramp_is_linear_inside():
    # The Keys kernel reproduces linear functions: away from the borders out = u = j/2 + 0.25.
    out = imresize(np.arange(1, 21, dtype=float)[None, :], 2)[0]
    j = np.arange(1, 41)
    np.testing.assert_allclose(out[4:-4], (j / 2 + 0.25)[4:-4], atol=1e-12)
    assert abs(out[0] - 0.75) > 0.1  # the mirrored border is not linear


def test_downscaled_ramp_known_values():
    # Worked out by hand from the algorithm (weights h(d) = k(d/2)/2 at d = +-0.5, +-1.5, ...; the
    # mirrored border samples 1, 2, 3 stand in for the ramp's 0, -1, -2):
    #   antialiased: 1.5 + 5*k(1.75)/2 + 3*k(1.25)/2 + 1*k(0.75)/2 = 1.44921875, and by symmetry 9 - that;
    #   no antialias: 1.5 - 1*k(1.5) = 1.4375.
    x = np.arange(1, 9, dtype=float)[None, :]
    np.testing.assert_allclose(imresize(x, 0.5)[0], [1.44921875, 3.48828125, 5.51171875, 7.55078125],
                               rtol=0, atol=1e-14)
    np.testing.assert_allclose(imresize(x, 0.5, antialias=False)[0], [1.4375, 3.5, 5.5, 7.5625],
                               rtol=0, atol=1e-14)
    long = imresize(np.arange(1, 41, dtype=float)[None, :], 0.5)[0]  # interior: u = 2j - 0.5
    np.testing.assert_allclose(long[3:-3], (2 * np.arange(1, 21) - 0.5)[3:-3], atol=1e-12)


def test_uint8_rounds_half_away_from_zero_per_pass():
    # [2, 3] -> 2.5 exactly; MATLAB's uint8() gives 3 (numpy's round-half-even would give 2).
    assert bicubic_downscale(np.array([[2, 3], [2, 3]], np.uint8), 2).tolist() == [[3]]
    assert bicubic_downscale(np.array([[0, 255]] * 2, np.uint8), 2).tolist() == [[128]]


def test_bicubic_downscale_matches_reference_uint8():
    x = RNG.integers(0, 256, (12, 15), dtype=np.int64).astype(np.uint8)
    x[:4, :4] = 255  # saturated corner: clipping between passes matters here
    x[4:8, 4:8] = 0
    for s in (2, 3):
        got = bicubic_downscale(x, s)
        out_hw = (math.ceil(x.shape[0] / s), math.ceil(x.shape[1] / s))
        np.testing.assert_array_equal(got, ref_imresize(x, out_hw, (1 / s, 1 / s), uint8=True))
    rgb = np.dstack([x, x[::-1], x[:, ::-1]])
    out = bicubic_downscale(rgb, 3)
    assert out.dtype == np.uint8 and out.shape == (4, 5, 3)
    np.testing.assert_array_equal(out[..., 1], bicubic_downscale(np.ascontiguousarray(x[::-1]), 3))


# ---------------------------------------------------------------- other implementations


@pytest.mark.parametrize("s", [2, 3, 4])
@pytest.mark.parametrize("up", [False, True])
def test_interior_agrees_with_torch_antialias(s, up):
    """torch's antialiased bicubic (PIL's algorithm, a = -0.5) equals MATLAB's away from the borders.

    At the borders torch truncates the kernel and renormalises where MATLAB mirrors the image;
    measured on uniform [0, 255] noise, 48x60: max |diff| about 15 (downscale) / 6-8 (upscale),
    mean about 1-2.3 over the differing pixels, within ~2 output pixels (down) / ~2s (up) of an edge.
    """
    x = RNG.uniform(0, 255, (48, 60))
    out_hw = (48 * s, 60 * s) if up else (48 // s, 60 // s)
    src = x if up else x[: out_hw[0] * s, : out_hw[1] * s]
    ours = imresize(src, size=out_hw)
    ref = F.interpolate(torch.from_numpy(src)[None, None], size=out_hw, mode="bicubic",
                        antialias=True, align_corners=False)[0, 0].numpy()
    m = 3 * s if up else 3
    np.testing.assert_allclose(ours[m:-m, m:-m], ref[m:-m, m:-m], rtol=0, atol=1e-9)
    border = np.abs(ours - ref)
    assert 0.5 < border.max() < 30


@pytest.mark.parametrize("s", [2, 3, 4])
def test_astronaut_close_to_pil(s):
    skdata = pytest.importorskip("skimage.data")
    hr = mod_crop(skdata.astronaut(), s)
    lr = bicubic_downscale(hr, s)
    assert lr.shape == (512 // s, 512 // s, 3) and lr.dtype == np.uint8
    assert bicubic_downscale(skdata.astronaut(), s).shape == (math.ceil(512 / s),) * 2 + (3,)
    pil = np.asarray(PILImage.fromarray(hr).resize(lr.shape[1::-1], PILImage.BICUBIC)).astype(int)
    d = np.abs(lr.astype(int) - pil)
    psnr = 10 * np.log10(255 ** 2 / np.mean(d ** 2.0))
    # Measured: PSNR ~54-55 dB, mean |diff| ~0.16-0.19; interior max 4-6 (PIL filters columns
    # first and uses fixed-point weights; clipping between passes then differs), border max ~12.
    assert psnr > 50 and d.mean() < 0.3 and d[3:-3, 3:-3].max() <= 8


# ---------------------------------------------------------------- mod_crop, arguments


def test_mod_crop():
    a = np.zeros((10, 13, 3))
    assert mod_crop(a, 4).shape == (8, 12, 3)
    assert mod_crop(a[..., 0], 3).shape == (9, 12)
    t = torch.arange(2 * 3 * 10 * 13).reshape(2, 3, 10, 13)
    c = mod_crop(t, 4)
    assert c.shape == (2, 3, 8, 12) and torch.equal(c, t[..., :8, :12])
    with pytest.raises(ValueError):
        mod_crop(np.zeros((3, 9)), 4)


def test_bad_arguments():
    x = np.zeros((4, 4))
    with pytest.raises(ValueError):
        imresize(x)
    with pytest.raises(ValueError):
        imresize(x, 2, size=(8, 8))
    with pytest.raises(ValueError):
        imresize(x, -1)
    with pytest.raises(ValueError):
        bicubic_downscale(x, 2)  # not uint8
    with pytest.raises(ValueError):
        bicubic_downscale(x.astype(np.uint8), 2.5)
