import pytest
import torch
import torch.nn.functional as F

from cadyq.models import create_model
from cadyq.quant import dynamic_quantizers, plan_for, quantize, selected_bits
from cadyq.train.losses import (BitWeightSchedule, Distiller, FeatureTap, at, at_loss, bit_loss, l1_loss,
                                make_optimizer, param_groups)
from cadyq.train.recipes import recipe_for


def tiny(method="cadyq", seed=0, **kw):
    torch.manual_seed(seed)
    return quantize(create_model("edsr", scale=2, n_resblocks=2, n_feats=8), method, **kw)


def lr_batch(n=3, size=12, seed=1):
    g = torch.Generator().manual_seed(seed)
    return torch.rand(n, 3, size, size, generator=g) * 255


def test_at_matches_official_formula():
    x = torch.randn(2, 5, 4, 6)
    ref = F.normalize(x.pow(2).mean(1).view(2, -1))
    assert torch.allclose(at(x), ref)
    y = torch.randn(2, 5, 4, 6)
    assert torch.allclose(at_loss(x, y), (ref - at(y)).pow(2).mean())
    assert float(at_loss(x, 3 * x)) < 1e-12  # attention maps are scale invariant


def test_at_of_bf16_channels_last_features_matches_the_float32_formula_and_gradient():
    x = torch.randn(2, 8, 5, 7).to(torch.bfloat16).contiguous(memory_format=torch.channels_last).requires_grad_()
    x32 = x.detach().float().requires_grad_()
    ref = F.normalize(x32.pow(2).mean(1).view(2, -1))
    out = at(x)
    assert out.dtype == torch.float32 and torch.allclose(out, ref, atol=1e-6)
    w = torch.randn_like(ref)
    (out * w).sum().backward()
    (ref * w).sum().backward()
    assert torch.allclose(x.grad.float(), x32.grad, rtol=1e-2, atol=1e-3)


def test_l1():
    a, b = torch.zeros(2, 3, 4, 4), torch.full((2, 3, 4, 4), 2.0)
    assert float(l1_loss(a, b)) == 2.0


def test_bit_losses_values_and_gradients():
    model = tiny().train()
    x = lr_batch()
    # capture the logits of every selector to compute the expected bits independently
    logits = []
    hooks = [q.net.register_forward_hook(lambda m, a, o: logits.append(o.detach())) for q in dynamic_quantizers(model)]
    model(x)
    for h in hooks:
        h.remove()
    hard = selected_bits(model)  # [N, L]
    bits = torch.tensor([4.0, 6.0, 8.0])
    expected = torch.stack([lg.softmax(1) @ bits for lg in logits], 1)
    w = 1e-3
    assert torch.allclose(bit_loss(model, w, "plain"), w * hard.sum())
    weighted = bit_loss(model, w, "weighted")
    assert torch.allclose(weighted, w * (hard / expected).sum(), rtol=1e-5)
    weighted.backward()
    # the bit loss reaches the selectors only (std and the image gradient are not back-propagated)
    for name, p in model.named_parameters():
        if ".input_quant.net." in name:
            assert p.grad is not None and p.grad.abs().sum() > 0, name
        else:
            assert p.grad is None or float(p.grad.abs().sum()) == 0.0, name


def test_plain_bit_loss_lowers_bits():
    model = tiny().train()
    x = lr_batch(4, 12)
    model(x)
    before = float(selected_bits(model).mean())
    opt = torch.optim.SGD([p for n, p in model.named_parameters() if ".input_quant.net." in n], lr=0.05)
    for _ in range(60):
        opt.zero_grad()
        model(x)
        bit_loss(model, 1.0, "plain").backward()
        opt.step()
    model(x)
    assert before == 8.0 and float(selected_bits(model).mean()) < 8.0


def test_bit_loss_rejects_unknown_kind_and_fp32():
    from cadyq.errors import CadyqError

    model = tiny()
    model(lr_batch())
    with pytest.raises(CadyqError):
        bit_loss(model, 1.0, "nope")
    m32 = tiny("fp32")
    m32(lr_batch())
    with pytest.raises(CadyqError):
        bit_loss(m32, 1.0)


def test_feature_tap_input_and_output():
    model = tiny("fp32")
    plan = plan_for(model)
    tap = FeatureTap(model, [plan.feature, *plan.block_features])
    x = lr_batch()
    captured = {}
    h = model.tail.register_forward_pre_hook(lambda m, a: captured.setdefault("tail", a[0]))
    model(x)
    h.remove()
    feats = tap.take()
    assert torch.equal(feats[0], captured["tail"])
    assert len(feats) == 3 and feats[1].shape == (3, 8, 12, 12)
    with pytest.raises(RuntimeError):
        tap.take()
    tap.remove()
    model(x)
    assert tap.features == {}


def test_distiller_matches_manual_and_freezes_teacher():
    teacher = tiny("pams8", seed=0)
    student = tiny("cadyq", seed=1)
    d = Distiller(student, teacher)
    x = lr_batch()
    d.teacher_features(x)
    student.train()
    student(x)
    loss = d.loss()
    # manual: body feature 1e3, each block 1e2
    names = [plan_for(student).feature, *plan_for(student).block_features]
    tt, st = FeatureTap(teacher, names), FeatureTap(student, names)
    with torch.no_grad():
        teacher(x)
    student(x)
    t, s = tt.take(), st.take()
    manual = 1e3 * at_loss(s[0], t[0]) + 1e2 * sum(at_loss(a, b) for a, b in zip(s[1:], t[1:]))
    assert torch.allclose(loss, manual, rtol=1e-5)
    assert all(not p.requires_grad for p in teacher.parameters()) and not teacher.training
    loss.backward()
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in student.parameters())


def test_distiller_zero_for_identical_models():
    teacher = tiny("pams8", seed=0)
    student = tiny("pams8", seed=0).train()
    d = Distiller(student, teacher)
    x = lr_batch()
    d.teacher_features(x)
    student(x)
    assert float(d.loss().detach()) < 1e-10


def test_distiller_needs_same_blocks():
    from cadyq.errors import CadyqError

    torch.manual_seed(0)
    other = quantize(create_model("edsr", scale=2, n_resblocks=3, n_feats=8), "pams8")
    with pytest.raises(CadyqError, match="blocks"):
        Distiller(tiny(), other)


def test_w_bit_schedule():
    s = BitWeightSchedule()
    assert s(0) == 1e-4 and s(999) == 1e-4
    assert s(1000) == pytest.approx(1.01e-4) and s(2500) == pytest.approx(1.02e-4)
    assert s(300_000) == pytest.approx(1e-4 + 300 * 1e-6)


def test_param_groups_and_optimizer():
    model = tiny()
    groups = param_groups(model)
    names = {id(p): n for n, p in model.named_parameters()}
    assert all(names[id(p)].endswith("alpha") for p in groups["alpha"])
    assert all(".input_quant.net." in names[id(p)] for p in groups["selector"])
    assert len(groups["selector"]) == 2 * 4  # weight + bias of 4 selectors
    assert sum(map(len, groups.values())) == len(list(model.parameters()))
    opt, sched = make_optimizer(model, step_size=3)
    lrs = {g["name"]: g["lr"] for g in opt.param_groups}
    assert lrs == {"net": 1e-4, "alpha": 1e-2, "selector": 1e-4}
    assert opt.defaults["betas"] == (0.9, 0.999) and opt.defaults["eps"] == 1e-8
    for _ in range(3):
        opt.step()
        sched.step()
    assert {g["name"]: g["lr"] for g in opt.param_groups} == {"net": 5e-5, "alpha": 5e-3, "selector": 5e-5}
    # fp32: one group
    opt32, _ = make_optimizer(tiny("fp32"))
    assert [g["name"] for g in opt32.param_groups] == ["net"]


def test_tile_mode_selector_group():
    model = tiny(mode="tile")
    assert any(n.startswith("tile_selector.") for n, _ in model.named_parameters())
    groups = param_groups(model)
    names = {id(p): n for n, p in model.named_parameters()}
    assert any(names[id(p)].startswith("tile_selector.") for p in groups["selector"])


def test_recipes():
    assert recipe_for("edsr").iters == 300_000 and recipe_for("edsr").decay == 150_000
    carn = recipe_for("carn")
    assert (carn.iters, carn.decay, carn.selector_lr) == (600_000, 400_000, 1e-3)
    assert recipe_for("EDSR-baseline").batch == 16 and recipe_for("idn").patch == 48
