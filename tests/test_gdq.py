"""Granular-DQ: the entropy (hand-computed), E2B thresholds and rule, the GBC features, determinism,
layer-invariant bits on every backbone, training, the integer lowering, export and checkpoints."""
import math

import numpy as np
import pytest
import torch
from conftest import photo_crops, tiny

from cadyq import load, quantize, save
from cadyq.errors import ModelError
from cadyq.quant import ModelInfo, observe, selected_bits
from cadyq.quant.gdq import e2b_reference, granularity_features, tile_entropy
from cadyq.quant.lowering import lower
from cadyq.quant.parity import compare

BACKBONES = ("edsr", "srresnet", "carn", "idn")
pytestmark = pytest.mark.usefixtures("one_torch_thread")


def _entropy_by_hand(gray01: np.ndarray, bins=32, sigma=0.0255) -> float:
    centres = (np.arange(bins) + 0.5) / bins
    hist = np.exp(-0.5 * ((gray01.reshape(-1, 1) - centres) / sigma) ** 2).sum(0)
    p = hist / hist.sum()
    return float(-(p[p > 0] * np.log(p[p > 0])).sum())


def test_entropy_hand_computed():
    # a constant tile at a bin centre: only that bin and its neighbours (1.23 bin widths from it) get mass
    c = 255 * (10.5 / 32)
    flat = torch.full((1, 3, 8, 8), c)
    centres = (np.arange(32) + 0.5) / 32
    w = np.exp(-0.5 * ((centres - 10.5 / 32) / 0.0255) ** 2)
    p = w / w.sum()
    by_hand = -(p * np.log(p)).sum()
    assert abs(float(tile_entropy(flat)) - by_hand) < 1e-5
    assert 1.0 < by_hand < math.log(7)  # the kernel spreads one level over about 7 bins
    # two equal halves far apart: ln 2 more than one level
    two = flat.clone()
    two[..., :, :4] = 255 * (25.5 / 32)
    assert abs(float(tile_entropy(two)) - (by_hand + math.log(2))) < 1e-4
    # a photo tile, against the numpy formula with the official grey weights
    t = photo_crops(1, 24)
    gray = (t[0].numpy() / 255.0 * np.array([0.2989, 0.587, 0.114]).reshape(3, 1, 1)).sum(0)
    assert abs(float(tile_entropy(t)) - _entropy_by_hand(gray)) < 1e-4
    assert float(tile_entropy(t)) <= math.log(32)


def test_e2b_thresholds_are_the_calibration_quantiles_and_the_rule():
    m = quantize(tiny("edsr"), "gdq").eval()
    tiles = photo_crops(40, 24, seed=3)
    with torch.no_grad(), observe(m):
        m(tiles[:20])
        m(tiles[20:])
    h = tile_entropy(tiles)
    t1, t2 = torch.quantile(h, torch.tensor([0.5, 0.9]))
    torch.testing.assert_close(m.gdq.thresholds, torch.stack([t1, t2]))
    idx = m.gdq.e2b(h)
    got = [m.gdq.bits[i] for i in idx.tolist()]
    assert got == e2b_reference(h.tolist(), float(t1), float(t2)) and set(got) == {4, 5, 8}


def test_granularity_features_differ_by_scale():
    f = photo_crops(2, 24).repeat(1, 4, 1, 1)  # a 12-channel "head feature" with real texture
    g = granularity_features(f).view(2, 3, 12)
    assert (g[:, 0] >= g[:, 1] - 1e-4).all() and (g[:, 1] >= g[:, 2] - 1e-4).all()
    assert ((g[:, 0] - g[:, 2]) / g[:, 0]).min() > 0.05  # pooling removes detail: the three are not one vector
    flat = granularity_features(torch.ones(1, 4, 16, 16))
    assert torch.equal(flat, torch.zeros_like(flat))


@pytest.mark.parametrize("name", BACKBONES)
def test_bits_are_layer_invariant_and_deterministic(name):
    m = quantize(tiny(name), "gdq")
    tiles = photo_crops(24, 24)
    with torch.no_grad(), observe(m):
        m(tiles)
        torch.nn.init.normal_(m.gdq.gbc.weight, std=0.3)
    m.eval()
    with torch.no_grad():
        m(tiles)
        b = selected_bits(m)
        m(tiles)
        assert torch.equal(b, selected_bits(m))  # no Gumbel noise at inference
    assert b.shape == (24, ModelInfo.from_model(m).n_layers) and (b == b[:, :1]).all()
    assert set(b[:, 0].tolist()) <= {4.0, 5.0, 6.0, 8.0} and len(set(b[:, 0].tolist())) >= 2
    m.train()
    torch.manual_seed(1)
    m(tiles)
    train_bits = selected_bits(m)
    assert (train_bits == train_bits[:, :1]).all()  # invariant in training too (Gumbel is per tile)


def test_gdq_needs_four_candidates_and_tile_mode():
    with pytest.raises(ModelError, match="4 bit candidates"):
        quantize(tiny("edsr"), "gdq", bits=(4, 6, 8))
    with pytest.raises(ModelError, match="tile"):
        quantize(tiny("edsr"), "gdq", mode="layer")


def test_training_moves_the_controller_and_checkpoints_round_trip(tmp_path):
    from cadyq.train.losses import bit_loss

    m = quantize(tiny("carn"), "gdq")
    tiles = photo_crops(8, 24)
    with torch.no_grad(), observe(m):
        m(tiles)
    m.train()
    sr = m(tiles)
    loss = sr.mean() + bit_loss(m, 1e-2)
    loss.backward()
    assert m.gdq.gbc.weight.grad is not None and m.gdq.gbc.weight.grad.abs().sum() > 0
    assert all(q.alpha.grad is not None for q in m.modules() if hasattr(q, "alpha") and q.alpha.requires_grad)
    save(m, tmp_path / "g.safetensors")
    back = load(tmp_path / "g.safetensors")
    assert torch.equal(back.gdq.thresholds, m.gdq.thresholds)
    m.eval()
    with torch.no_grad():
        a, b = m(tiles), back(tiles)
    assert torch.equal(a, b) and torch.equal(selected_bits(m), selected_bits(back))


@pytest.mark.parametrize("name", BACKBONES)
def test_integer_program_and_onnx_keep_the_decisions(name, tmp_path):
    import onnxruntime as ort

    from cadyq.export import export_onnx

    m = quantize(tiny(name), "gdq").eval()
    with torch.no_grad(), observe(m):
        m(photo_crops(16, 24, seed=3))
        torch.nn.init.normal_(m.gdq.gbc.weight, std=0.3)
    tiles = photo_crops(48, 24)
    rep = compare(m, lower(m), tiles)
    assert rep.agreement >= 0.999 and not rep.unexplained and rep.psnr_db > 60, str(rep)
    path = export_onnx(m, tmp_path / "g.onnx", tile=24)
    sr, bits = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"]).run(None, {"lr": tiles.numpy()})
    with torch.no_grad():
        ref = m(tiles)
    assert (torch.from_numpy(bits) == selected_bits(m)).float().mean() >= 0.999
    assert (torch.from_numpy(sr) - ref).abs().mean() < 1e-3
