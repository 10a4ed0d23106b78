import pytest
import torch

from cadyq import create_model, list_models
from cadyq.errors import ModelError


def n_params(m):
    return sum(p.numel() for p in m.parameters())


def conv(cin, cout, k=3, bias=True, groups=1):
    return cout * cin // groups * k * k + (cout if bias else 0)


def test_registry():
    assert list_models() == ["carn", "edsr", "idn", "srresnet"]
    assert type(create_model("EDSR-baseline", scale=2)).__name__ == "EDSR"
    with pytest.raises(ModelError, match="unknown backbone"):
        create_model("rcan")


@pytest.mark.parametrize("scale, expected", [(2, 1_369_859), (3, 1_554_499), (4, 1_517_571)])
def test_edsr_baseline_parameters(scale, expected):
    # EDSR-baseline x4 has 1,517,571 parameters (EDSR-PyTorch's 1.5 M); hand count of the structure:
    up = {2: conv(64, 256), 3: conv(64, 576), 4: 2 * conv(64, 256)}[scale]
    hand = conv(3, 64) + 16 * 2 * conv(64, 64) + conv(64, 64) + up + conv(64, 3)
    assert hand == expected
    assert n_params(create_model("edsr", scale=scale)) == expected


def test_srresnet_parameters():
    bn = 2 * 64
    block = 2 * conv(64, 64) + 2 * bn + 1  # convs with bias (as CADyQ builds them), BNs, PReLU
    hand = conv(3, 64, 9, bias=False) + 1 + 16 * block + conv(64, 64, bias=False) + bn \
        + 2 * (conv(64, 256, bias=False) + 1) + conv(64, 3, 9, bias=False)
    assert n_params(create_model("srresnet", scale=4)) == hand == 1_548_819
    with pytest.raises(ModelError, match="x3"):
        create_model("srresnet", scale=3)


def test_carn_parameters():
    block = 3 * 2 * conv(64, 64) + conv(128, 64, 1) + conv(192, 64, 1) + conv(256, 64, 1)
    body = conv(3, 64) + 3 * block + conv(128, 64, 1) + conv(192, 64, 1) + conv(256, 64, 1) + conv(64, 3)
    ups = {2: conv(64, 256), 3: conv(64, 576), 4: 2 * conv(64, 256)}
    for s in (2, 3, 4):
        assert n_params(create_model("carn", scale=s)) == body + ups[s]
    # the paper's 1,592K counts the multi-scale model: all three upsamplers
    assert body + sum(ups.values()) == 1_591_939


def test_idn_parameters():
    top = conv(64, 48) + conv(48, 32, groups=4) + conv(32, 64)
    bottom = conv(48, 64) + conv(64, 48, groups=4) + conv(48, 80)
    hand = conv(3, 64) + conv(64, 64) + 4 * (top + bottom + conv(80, 64, 1)) + 64 * 3 * 17 * 17 + 3
    for s in (2, 3, 4):
        assert n_params(create_model("idn", scale=s)) == hand == 590_915


@pytest.mark.parametrize("name, scale", [("edsr", 2), ("edsr", 3), ("srresnet", 4), ("carn", 3), ("idn", 4), ("idn", 3)])
def test_output_shape_and_range(name, scale):
    m = create_model(name, scale=scale).eval()
    x = torch.rand(2, 3, 13, 17) * 255
    with torch.no_grad():
        y = m(x)
    assert y.shape == (2, 3, 13 * scale, 17 * scale)
    assert torch.isfinite(y).all()


def test_idn_adds_bicubic_skip():
    m = create_model("idn", scale=2).eval()
    torch.nn.init.zeros_(m.deconv.weight)
    torch.nn.init.zeros_(m.deconv.bias)
    x = torch.rand(1, 3, 10, 10) * 255
    with torch.no_grad():
        ref = torch.nn.functional.interpolate(x, scale_factor=2, mode="bicubic", align_corners=False)
        assert torch.equal(m(x), ref)
