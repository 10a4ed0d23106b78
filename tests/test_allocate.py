"""Bit allocation from measured sensitivity: the per-layer cut is optimal, the selectors reproduce it, the FQR
target holds, and the static allocation is one bit-width per layer."""
import itertools

import numpy as np
import pytest
import torch
from conftest import photo_crops, tiny

from cadyq.calib import calibrate
from cadyq.calib.allocate import _cut_layer, _cuts, _three_runs_within, allocate, apply, measure
from cadyq.quant import dynamic_quantizers, selected_bits

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def test_dynamic_cut_is_the_best_monotone_assignment_and_the_cut_points_reproduce_it():
    rng = np.random.default_rng(0)
    for _ in range(100):
        K, N = 3, 7
        d = rng.random((K, N)) * 3
        d[-1] = 0
        t, cost = rng.random(N), np.array([4.0, 6.0, 8.0]) * rng.random()
        ks = _cut_layer(d, t, cost, True)
        order = np.argsort(t)
        best = np.inf
        for a in itertools.combinations_with_replacement(range(K), N):  # every non-decreasing assignment
            kk = np.empty(N, int)
            kk[order] = a
            best = min(best, d[kk, np.arange(N)].sum() + cost[kk].sum())
        assert abs(d[ks, np.arange(N)].sum() + cost[ks].sum() - best) < 1e-9
        cuts = _cuts(ks, t, K)
        assert [sum(ti > c for c in cuts) for ti in t] == ks.tolist()
        static = _cut_layer(d, t, cost, False)
        assert len(set(static.tolist())) == 1
        # one decision per tile: the exact optimum under the bit budget
        bits, fqr = np.array([4.0, 6.0, 8.0]), 4 + 4 * rng.random()
        ks = _three_runs_within(d, t, bits, fqr)
        assert bits[ks].mean() <= fqr + 1e-9
        best = np.inf
        for a in itertools.combinations_with_replacement(range(K), N):
            kk = np.empty(N, int)
            kk[order] = a
            if bits[kk].mean() <= fqr + 1e-9:
                best = min(best, d[kk, np.arange(N)].sum())
        assert abs(d[ks, np.arange(N)].sum() - best) < 1e-9


def _model_and_tiles():
    tiles = photo_crops(16, 24, seed=3)
    m = calibrate(tiny("edsr"), [tiles[:8], tiles[8:]], target="cadyq", method="mse")
    return m, tiles


def test_measured_allocation_runs_in_the_selectors_at_the_target_fqr():
    torch.manual_seed(0)
    m, tiles = _model_and_tiles()
    sens = measure(m, tiles, batch=8)
    L = len(dynamic_quantizers(m))
    assert sens.damage.shape == (L, 3, 16) and sens.stat.shape == (L, 16)
    assert (sens.damage[:, -1] == 0).all() and (sens.damage[:, 0] > 0).any()
    assert (sens.damage[:, 0].sum(1) >= sens.damage[:, 1].sum(1)).all()  # 4 bits hurt more than 6
    for dynamic in (True, False):
        alloc = allocate(sens, fqr=6.0, dynamic=dynamic)
        assert alloc.fqr <= 6.0 + 1e-9
        apply(m, alloc, sens)
        with torch.no_grad():
            m(tiles)
        bits = selected_bits(m)  # [N, L]
        # the first selector sees the same input as in the measurement: its bits are the allocation's
        want0 = [alloc.bits[sum(t > c for c in alloc.cuts[0])] for t in sens.stat[0]]
        assert bits[:, 0].tolist() == [float(b) for b in want0]
        if not dynamic:
            assert (bits == bits[:1]).all()  # one bit-width per layer for every tile
            assert float(bits.mean()) == alloc.fqr
    # a lower target gives fewer bits and more estimated damage
    a5, a7 = allocate(sens, 5.0), allocate(sens, 7.0)
    assert a5.fqr <= 5.0 < a7.fqr <= 7.0 and a5.estimated_damage >= a7.estimated_damage


def test_calibrate_fqr_from_the_command_line(tmp_path, capsys):
    import json

    from skimage import data

    from cadyq import save
    from cadyq.checkpoint import load_model, read_metadata
    from cadyq.cli import main
    from cadyq.data.io import Image, write_image

    photos = tmp_path / "photos"
    photos.mkdir()
    for name in ("astronaut", "coffee", "chelsea"):
        rgb = getattr(data, name)()[:96, :120]
        write_image(photos / f"{name}.png", Image(np.ascontiguousarray(rgb), None, 8, False, None, None, "RGB"))
    save(tiny("edsr"), tmp_path / "fp32.safetensors")
    sens = tmp_path / "sens.json"
    common = ["calibrate", "--model", str(tmp_path / "fp32.safetensors"), "--data", str(photos), "--target", "cadyq",
              "--tile", "24", "--sensitivity-tiles", "8", "--sensitivity", str(sens), "--fqr", "6"]
    assert main(common + ["-o", str(tmp_path / "dyn.safetensors")]) == 0
    assert sens.is_file() and json.loads(sens.read_text())["tiles"] == 8
    assert main(common + ["--static", "-o", str(tmp_path / "static.safetensors")]) == 0
    assert f"sensitivity: read {sens}" in capsys.readouterr().err  # the second run reuses the measurement
    for name, dynamic in (("dyn", True), ("static", False)):
        meta = read_metadata(tmp_path / f"{name}.safetensors")["extra"]["allocation"]
        assert meta["dynamic"] is dynamic and meta["fqr"] <= 6.0 and meta["tiles"] == 8
        m = load_model(str(tmp_path / f"{name}.safetensors"))
        w = [q.net.weight for q in dynamic_quantizers(m)]
        assert dynamic or all(float(x.detach().abs().sum()) == 0 for x in w)  # static: constant selectors
    assert main(common + ["--bits", "4,8", "-o", str(tmp_path / "b.safetensors")]) == 2  # measured with 4,6,8
    assert "the allocation is for bits (4, 6, 8)" in capsys.readouterr().err
    gdq = ["calibrate", "--model", str(tmp_path / "fp32.safetensors"), "--data", str(photos), "--target", "gdq",
           "--tile", "24", "--sensitivity-tiles", "8", "--fqr", "6"]
    assert main(gdq + ["--static", "-o", str(tmp_path / "g.safetensors")]) == 2
    assert "Granular-DQ cannot express" in capsys.readouterr().err and not (tmp_path / "g.safetensors").exists()
    assert main(gdq + ["-o", str(tmp_path / "g.safetensors")]) == 0
    meta = read_metadata(tmp_path / "g.safetensors")["extra"]["allocation"]
    assert meta["bits"] == [4, 6, 8] and len(meta["cuts"]) == 1 and meta["fqr"] <= 6.0
    assert main(["calibrate", "--model", str(tmp_path / "fp32.safetensors"), "--data", str(photos), "--target", "pams8",
                 "--fqr", "5", "-o", str(tmp_path / "p.safetensors")]) == 2
    assert "--fqr allocates the bit selectors of cadyq or gdq" in capsys.readouterr().err


def test_selectors_reproduce_any_cut_pattern_with_small_logits():
    from cadyq.calib.allocate import Allocation, Sensitivity

    m, _ = _model_and_tiles()
    sel = dynamic_quantizers(m)
    L = len(sel)
    inf = np.inf
    patterns = [[-inf, -inf], [inf, inf], [-inf, 3.0], [3.0, inf], [2.0, 5.0], [4.0, 4.0]]  # 8; 4; 6|8; 4|6; 4|6|8; 4|8
    cuts = [patterns[j % len(patterns)] for j in range(L)]
    sens = Sensitivity([4, 6, 8], np.zeros((L, 3, 4)), np.tile(np.array([1.0, 3.5, 4.5, 6.0]), (L, 1)), 4)
    apply(m, Allocation([4, 6, 8], cuts, True, 0.0, 0.0, 0.0), sens)
    for q, cut in zip(sel, cuts):
        assert float(q.net.bias.detach().abs().max()) <= 1e4 and float(q.net.weight.detach().abs().max()) < 10
        for t in np.linspace(0.0, 8.0, 81):
            if any(abs(t - c) < 1e-6 for c in cut):
                continue
            x = torch.cat([torch.zeros(2), torch.full((q.net.weight.shape[1] - 2,), float(t))])
            k = int(q.net(x).argmax())
            assert k == sum(t > c for c in cut), (cut, t, k)


def test_allocated_model_runs_the_same_bits_on_the_integer_program_and_onnx_runtime(tmp_path):
    from cadyq.export import export_onnx
    from cadyq.export.check import Tolerances, compare as ort_compare
    from cadyq.quant.lowering import lower
    from cadyq.quant.parity import compare

    m, tiles = _model_and_tiles()
    sens = measure(m, tiles, batch=8)
    apply(m, allocate(sens, fqr=6.0), sens)
    test = photo_crops(48, 24, seed=11)
    with torch.no_grad():
        m(test)
    chosen = selected_bits(m)
    assert len(set(chosen.flatten().tolist())) >= 2 and float((chosen != chosen[:1]).float().mean()) > 0.02  # per tile
    rep = compare(m, lower(m), test)
    assert rep.agreement >= 0.99 and not rep.unexplained, str(rep)
    path = export_onnx(m, tmp_path / "m.onnx", tile=24)
    rep = ort_compare(path, m, test, tolerances=Tolerances(sr_mean=0.5, sr_max=16.0, min_agreement=0.99, layer_rtol=1e-2),
                      bisect="always", max_bisect_tiles=2)
    assert not rep.unexplained and rep.passed, str(rep)


def test_granular_dq_per_tile_allocation_runs_in_its_controller_and_the_integer_program():
    """Granular-DQ: the whole network's damage at b0 and b2 per tile, cut on the head feature's std into b0|b2|b3
    runs, written into the GBC; the model and its integer program pick those bits for every layer of a tile."""
    from cadyq.calib.allocate import apply_tiles, measure_tiles
    from cadyq.quant.lowering import lower
    from cadyq.quant.parity import compare

    torch.manual_seed(0)
    tiles = photo_crops(16, 24, seed=3)
    m = calibrate(tiny("edsr"), [tiles[:8], tiles[8:]], target="gdq", method="mse")
    sens = measure_tiles(m, tiles, batch=8)
    assert sens.bits == [4, 6, 8] and sens.damage.shape == (1, 3, 16) and sens.stat.shape == (1, 16)
    assert (sens.damage[0, 2] == 0).all() and (sens.damage[0, 0] > sens.damage[0, 1]).all()  # joint, exact
    seen = set()
    for target in (5.0, 6.5):  # runs 4|6 and 6|8 on these tiles
        alloc = allocate(sens, fqr=target)
        assert alloc.fqr <= target
        apply_tiles(m, alloc, sens)
        with torch.no_grad():
            m(tiles)
        bits = selected_bits(m)
        assert (bits == bits[:, :1]).all()  # one bit-width per tile for every layer
        want = [alloc.bits[sum(t > c for c in alloc.cuts[0])] for t in sens.stat[0]]
        assert bits[:, 0].tolist() == [float(b) for b in want] and len(set(want)) == 2
        seen |= set(want)
    assert seen == {4, 6, 8}
    test = photo_crops(32, 24, seed=11)
    rep = compare(m, lower(m), test)
    assert rep.agreement >= 0.99 and not rep.unexplained, str(rep)
