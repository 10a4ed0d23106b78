import numpy as np
import pytest
import torch
from conftest import tiny

from cadyq import create_model, quantize
from cadyq.errors import ModelError
from cadyq.quant import (ActQuant, BitSelector, QConv2d, bit_terms, dynamic_quantizers, fake_quant, fqr, observe,
                         quantize_weight, selected_bits, tile_gradient)


def test_fake_quant_by_hand():
    x = torch.tensor([0.26, -2.0, 5.0, 0.5, 0.0, -0.74])
    # 3 bits: s = 3 levels per side, clip a = 1: grid {0, 1/3, 2/3, 1}
    y = fake_quant(x, torch.tensor(1.0), 3)
    assert torch.allclose(y, torch.tensor([1 / 3, -1.0, 1.0, 2 / 3, 0.0, -2 / 3]))
    # round half to even at the boundary: 0.5 * 3 = 1.5 -> 2 ; 2.5 -> 2
    assert fake_quant(torch.tensor([0.5, 2.5 / 3]), torch.tensor(1.0), 3).mul(3).tolist() == [2.0, 2.0]


def test_weight_quant_per_tensor_and_channel():
    w = torch.randn(4, 3, 3, 3)
    q = quantize_weight(w, 8)
    m = w.abs().max() + 1e-8
    assert torch.allclose(q * 127 / m, (q * 127 / m).round(), atol=1e-4)  # on the 8-bit grid
    assert (q - w).abs().max() <= m / 127 / 2 + 1e-6
    qc = quantize_weight(w, 4, per_channel=True)
    for c in range(4):
        mc = w[c].abs().max() + 1e-8
        assert torch.allclose(qc[c] * 7 / mc, (qc[c] * 7 / mc).round(), atol=1e-4)
        assert len(torch.unique(qc[c])) <= 15


def test_tile_gradient_against_scipy(photo_tiles):
    from scipy import ndimage

    g = tile_gradient(photo_tiles)
    for n in range(4):
        gray = (photo_tiles[n].double().numpy() / 255.0 * np.array([0.299, 0.587, 0.114])[:, None, None]).sum(0)
        dx = ndimage.sobel(gray, axis=1, mode="nearest") / 8
        dy = ndimage.sobel(gray, axis=0, mode="nearest") / 8
        assert g[n].tolist() == pytest.approx([np.abs(dx).mean() * 1e3, np.abs(dy).mean() * 1e3], rel=1e-5)


@pytest.mark.parametrize("name, n_selectors", [("edsr", 32), ("srresnet", 32), ("carn", 18), ("idn", 24)])
def test_quantize_wraps_the_papers_layers(name, n_selectors):
    m = create_model(name, scale=4)
    fp_keys = set(m.state_dict())
    quantize(m, "cadyq")
    sels = [q for q in m.modules() if isinstance(q, BitSelector)]
    assert len(sels) == len(dynamic_quantizers(m)) == n_selectors
    assert fp_keys <= set(m.state_dict())  # backbone weights keep their names
    n_qconv = sum(isinstance(c, QConv2d) for c in m.modules())
    assert n_qconv == n_selectors + (2 if name == "idn" else 0)  # IDN's feature block is 8-bit too
    fixed = [q for q in m.modules() if isinstance(q, ActQuant)]
    assert len(fixed) == {"edsr": 16, "srresnet": 0, "carn": 0, "idn": 2}[name]
    if name == "idn":  # selector widths by position: top (64, 48, 32), bottom (48, 64, 48)
        assert [s.net.in_features - 2 for s in sels[:6]] == [64, 48, 32, 48, 64, 48]


def test_quantize_twice_and_bad_args():
    m = quantize(create_model("edsr", 2), "pams8")
    with pytest.raises(ModelError, match="already"):
        quantize(m, "cadyq")
    with pytest.raises(ModelError, match="method"):
        quantize(create_model("edsr", 2), "int4")
    with pytest.raises(ModelError, match="bit candidates"):
        quantize(create_model("edsr", 2), "cadyq", bits=(4, 4))


@pytest.mark.parametrize("name", ["edsr", "srresnet", "carn", "idn"])
def test_fresh_cadyq_picks_highest_bits(name, photo_tiles):
    m = quantize(create_model(name, scale=2), "cadyq").eval()
    with torch.no_grad():
        m(photo_tiles[:4])
    b = selected_bits(m)
    assert b.shape == (4, len(dynamic_quantizers(m)))
    assert fqr(b) == 8.0


def _observed(m, tiles):
    with torch.no_grad(), observe(m):
        m(tiles)
    return m


def test_bits_follow_selector_weights(photo_tiles):
    m = _observed(quantize(tiny("edsr"), "cadyq").eval(), photo_tiles)
    sels = dynamic_quantizers(m)
    with torch.no_grad():
        for s in sels:
            s.net.bias.copy_(torch.tensor([5.0, 0.0, 0.0]))
        m(photo_tiles)
    assert (selected_bits(m) == 4).all()
    # logits driven by the tile gradient: textured tiles get more bits than flat ones
    g = tile_gradient(photo_tiles)
    thr = g.sum(1).median()
    with torch.no_grad():
        for s in sels:
            s.net.weight.zero_()
            s.net.weight[2, :2] = 1.0  # 8-bit logit = |dx|+|dy|
            s.net.bias.copy_(torch.tensor([float(thr), -1e9, 0.0]))
        m(photo_tiles)
    b = selected_bits(m)
    expect = torch.where(g.sum(1) > thr, 8.0, 4.0)
    assert torch.equal(b[:, 0], expect) and (b == b[:, :1]).all()
    assert 0 < (b == 4).float().mean() < 1


def test_quantized_output_depends_on_bits(photo_tiles):
    m = _observed(quantize(tiny("edsr"), "cadyq").eval(), photo_tiles)
    with torch.no_grad():
        y8 = m(photo_tiles)
        for s in dynamic_quantizers(m):
            s.net.bias.copy_(torch.tensor([5.0, 0.0, 0.0]))
        y4 = m(photo_tiles)
    assert (y8 - y4).abs().mean() > 0.01


def test_training_forward_matches_eval_and_trains_selectors(photo_tiles):
    m = _observed(quantize(tiny("edsr"), "cadyq"), photo_tiles)
    torch.manual_seed(1)
    with torch.no_grad():
        for s in dynamic_quantizers(m):
            s.net.weight.normal_(0, 0.05)
    m.eval()
    with torch.no_grad():
        y_eval = m(photo_tiles)
        b_eval = selected_bits(m)
    m.train()
    y = m(photo_tiles)
    assert torch.equal(selected_bits(m), b_eval)
    assert torch.allclose(y, y_eval, atol=1e-3)  # hard value forward (the soft mix only carries the gradient)
    bits, weighted = bit_terms(m)
    (weighted.sum() + y.mean()).backward()
    s0 = dynamic_quantizers(m)[0]
    assert s0.net.weight.grad is not None and s0.net.weight.grad.abs().sum() > 0
    assert s0.alpha.grad is not None and s0.alpha.grad.abs().sum() > 0
    assert torch.allclose(bits.detach(), b_eval.sum(1))


def test_observe_sets_alpha_to_mean_max(photo_tiles):
    m = quantize(tiny("edsr"), "pams8")
    q = dynamic_quantizers(m)[0]  # quantizes the first block's input
    seen = []
    h = m.body[0].register_forward_pre_hook(lambda mod, a: seen.append(a[0].abs().flatten(1).amax(1).mean()))
    with torch.no_grad(), observe(m):
        m(photo_tiles[:8])
        m(photo_tiles[8:])
    h.remove()
    assert q.alpha.item() == pytest.approx(float(sum(seen) / 2), rel=1e-5)


@pytest.mark.parametrize("mode", ["tile", "layer", "fixed"])
def test_ablation_modes(mode, photo_tiles):
    m = _observed(quantize(tiny("carn"), "cadyq", bits=(4, 6, 8) if mode != "fixed" else (6,), mode=mode).eval(), photo_tiles)
    torch.manual_seed(0)
    with torch.no_grad():
        if mode == "tile":
            thr = float(tile_gradient(photo_tiles).sum(1).median())
            m.tile_selector.weight.copy_(torch.tensor([[0.0, 0.0], [0.0, 0.0], [1.0, 1.0]]))
            m.tile_selector.bias.copy_(torch.tensor([thr, -1e9, 0.0]))
        elif mode == "layer":
            for i, s in enumerate(dynamic_quantizers(m)):
                s.net.bias.copy_(torch.eye(3)[i % 3])
        m(photo_tiles)
    b = selected_bits(m)
    if mode == "tile":  # one bit-width per tile, shared by every layer
        assert (b == b[:, :1]).all() and len(b[:, 0].unique()) > 1
    elif mode == "layer":  # per layer, the same for every tile
        assert (b == b[:1]).all() and b[0, :3].tolist() == [4.0, 6.0, 8.0]
    else:
        assert (b == 6).all()


@pytest.mark.parametrize("name", ["edsr", "srresnet", "carn", "idn"])
@pytest.mark.parametrize("method", ["pams8", "cadyq"])
def test_every_quantizer_runs_once_per_forward(name, method, photo_tiles):
    m = quantize(tiny(name), method).eval()
    calls = {}
    for path, q in m.named_modules():
        if isinstance(q, (ActQuant, BitSelector)):
            q.register_forward_hook(lambda mod, a, out, path=path: calls.__setitem__(path, calls.get(path, 0) + 1))
    with torch.no_grad():
        m(photo_tiles[:2])
    assert calls and set(calls.values()) == {1}
    assert len(calls) == sum(isinstance(q, (ActQuant, BitSelector)) for q in m.modules())


def test_snapped_clips_make_the_one_grid_compute_the_papers_quantizer():
    """ops.snap_to_top_grid: each lower candidate's step becomes an odd multiple of the 8-bit step, so on_top_grid (the
    input rounded to the 8-bit grid, the chosen levels re-expressed on it) equals the papers' fake_quant with the
    snapped clip; unsnapped it does not."""
    from cadyq.quant.ops import fake_quant, on_top_grid, snap_to_top_grid

    g = torch.Generator().manual_seed(0)
    s = torch.tensor([7.0, 15.0, 31.0, 127.0])
    alpha = torch.tensor([23.3, 31.9, 40.2, 64.0])
    snapped = snap_to_top_grid(alpha, s)
    step = 64.0 / 127.0
    m = snapped[:-1] / s[:-1] / step
    assert torch.allclose(m, m.round(), atol=1e-4) and (m.round() % 2 == 1).all() and snapped[-1] == 64.0
    assert ((snapped[:-1] - alpha[:-1]).abs() <= s[:-1] * step + 1e-4).all()  # at most one multiple
    x = torch.randn(6, 4, 9, 9, generator=g) * 25
    for k in range(3):
        kk = torch.full((6,), k)
        assert torch.allclose(on_top_grid(x, snapped, s, kk)[1], fake_quant(x, snapped[k], s[k]), atol=1e-4)
    unsnapped = on_top_grid(x, alpha, s, torch.zeros(6, dtype=torch.long))[1]
    assert not torch.allclose(unsnapped, fake_quant(x, alpha[0], s[0]), atol=1e-4)  # what snapping is for


def test_snap_clips_moves_only_the_lower_candidates_of_a_dynamic_model():
    from cadyq.quant import dynamic_quantizers, snap_clips

    m = quantize(tiny("edsr"), "cadyq").eval()
    for q in dynamic_quantizers(m):
        with torch.no_grad():
            q.alpha.copy_(torch.tensor([5.3, 9.1, 17.0]))
    before = [q.alpha.detach().clone() for q in dynamic_quantizers(m)]
    assert snap_clips(m) > 0
    for q, b in zip(dynamic_quantizers(m), before):
        assert q.alpha[-1] == b[-1] and not torch.equal(q.alpha, b)
    assert snap_clips(m) == 0  # idempotent
    assert snap_clips(quantize(tiny("edsr"), "pams8")) == 0
