"""Post-training calibration: the clip rules, the targets, E2B thresholds, and the model it writes."""
import torch
from conftest import photo_crops, tiny

from cadyq import quantize
from cadyq.calib import calibrate, mse_clip
from cadyq.quant import ActQuant, BitSelector, all_quantizers, fake_quant, observe, quant_config
from cadyq.quant.gdq import tile_entropy


def _batches(n=24, size=24, seed=0):
    t = photo_crops(n, size, seed=seed)
    return [t[i:i + 8] for i in range(0, n, 8)]


def test_mse_clip_is_the_grid_minimiser_and_shrinks_with_fewer_bits():
    x = torch.randn(20000).abs() * 3
    hi = float(x.max())
    for bits in (4, 8):
        grid = [hi * i / 100 for i in range(1, 101)]
        errs = [float((fake_quant(x, torch.tensor(a), 2 ** (bits - 1) - 1) - x).pow(2).mean()) for a in grid]
        assert abs(mse_clip(x, bits, hi) - grid[errs.index(min(errs))]) < 1e-6
    assert mse_clip(x, 4, hi) < mse_clip(x, 8, hi) < hi


def test_max_rule_is_the_pams_warm_start():
    fp = tiny("edsr")
    ptq = calibrate(fp, _batches(), "pams8", "max")
    ref = quantize(tiny("edsr"), "pams8")
    with torch.no_grad(), observe(ref):
        for b in _batches():
            ref(b)
    for a, b in zip(all_quantizers(ptq), all_quantizers(ref)):
        torch.testing.assert_close(a.alpha.detach(), b.alpha.detach(), rtol=1e-4, atol=1e-4)
    assert quant_config(ptq).method == "pams8" and ptq.calibration["tiles"] == 24
    assert torch.equal(ptq.head[0].weight, fp.head[0].weight)  # the weights are the fp32 model's


def test_percentile_and_targets():
    fp = tiny("carn")
    p = calibrate(fp, _batches(), "pams8", "percentile", percentile=99.0)
    m = calibrate(fp, _batches(), "pams8", "max")
    assert all(float(a.alpha) <= float(b.alpha) * 1.5 for a, b in zip(all_quantizers(p), all_quantizers(m)))
    c = calibrate(fp, _batches(), "cadyq", "mse")
    sels = [q for q in all_quantizers(c) if isinstance(q, BitSelector)]
    assert sels and all(bool(q.alpha[0] < q.alpha[2]) for q in sels)  # fewer bits: a tighter clip
    six = calibrate(fp, _batches(), "pams8", "mse", bits=(6,))
    assert quant_config(six).act_bits == (6,)


def test_gdq_thresholds_are_the_entropy_quantiles():
    fp = tiny("edsr")
    g = calibrate(fp, _batches(32), "gdq", "max")
    h = tile_entropy(torch.cat(_batches(32)))
    torch.testing.assert_close(g.gdq.thresholds, torch.quantile(h, torch.tensor([0.5, 0.9])))
    assert all(isinstance(q, (ActQuant, BitSelector)) for q in all_quantizers(g))
