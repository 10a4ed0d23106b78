import pytest
import torch
from conftest import tiny

from cadyq import create_model, quantize
from cadyq.quant import ModelInfo, fqr


def test_fqr_is_the_plain_mean():
    assert fqr(torch.tensor([[4.0, 8.0], [6.0, 6.0], [8.0, 8.0]])) == pytest.approx(40 / 6)


def test_bitops_by_hand():
    m = quantize(create_model("edsr", scale=2, n_resblocks=1, n_feats=8), "cadyq")
    info = ModelInfo.from_model(m)
    assert [c.macs_per_pixel for c in info.layers] == [8 * 8 * 9, 8 * 8 * 9]
    bits = torch.tensor([[4.0, 8.0], [6.0, 6.0]])
    ops = info.bitops(bits, 10, 12)
    hand = [2 * 576 * 8 * (4 + 8) * 120 / 1024, 2 * 576 * 8 * (6 + 6) * 120 / 1024]
    assert ops.tolist() == pytest.approx(hand)


def test_paper_table5_carn():
    # CARN, 1280x720 output (320x180 LR): 76.44 G BitOPs at 32 bits = FLOPs of the 18 body convs,
    # PAMS 8-bit: 4.78 G
    fp = ModelInfo.from_model(quantize(create_model("carn", 4), "fp32"))
    assert fp.flops(180, 320) / 1e9 == pytest.approx(76.44, abs=0.005)
    assert float(fp.bitops(fp.default_bits(1), 180, 320)) == pytest.approx(fp.flops(180, 320))
    p8 = ModelInfo.from_model(quantize(create_model("carn", 4), "pams8"))
    assert float(p8.bitops(p8.default_bits(1), 180, 320)) / 1e9 == pytest.approx(4.78, abs=0.005)


def test_idn_counts_its_8bit_feature_block():
    info = ModelInfo.from_model(quantize(tiny("idn"), "cadyq"))
    fixed = [c for c in info.layers if c.act_bits is not None]
    assert [c.name for c in fixed] == ["fblock.module.0", "fblock.module.2"] and info.n_layers == 6
    b = torch.full((1, 6), 4.0)
    dyn = sum(2 * c.macs_per_pixel * 8 * 4 for c in info.layers if c.act_bits is None)
    fix = sum(2 * c.macs_per_pixel * 8 * 8 for c in fixed)
    assert float(info.bitops(b, 5, 7)) == pytest.approx((dyn + fix) * 35 / 1024)


def test_info_round_trips_through_json():
    import json

    info = ModelInfo.from_model(quantize(tiny("srresnet"), "cadyq"))
    assert ModelInfo.from_dict(json.loads(json.dumps(info.to_dict()))) == info
