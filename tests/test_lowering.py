"""The integer lowering: the torch integer reference against the fake-quant model, every backbone and
mode, on real photo tiles (selectors randomized so that 4, 6 and 8 bits are all chosen)."""
import pytest
import torch
from conftest import photo_crops, randomize_selectors, tiny

from cadyq import create_model, quantize
from cadyq.errors import ModelError
from cadyq.quant import ModelInfo, observe, quantize_weight, tile_gradient
from cadyq.quant.lowering import IntConv2d, IntQuantizer, ReferenceKernels, integer_weights, lower
from cadyq.quant.parity import bit_hist, compare

BACKBONES = ("edsr", "srresnet", "carn", "idn")
CASES = [("pams8", "full"), ("cadyq", "full"), ("cadyq", "tile"), ("cadyq", "layer"), ("cadyq", "fixed")]

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def prepared(name, method, mode, size=24, **kw):
    torch.manual_seed(0)
    m = quantize(tiny(name, **kw) if size <= 32 else create_model(name, 4), method, mode=mode).eval()
    calib = photo_crops(16, size, seed=7)
    if method == "cadyq" and mode == "full":
        randomize_selectors(m, calib)
    else:
        with torch.no_grad(), observe(m):
            m(calib)
    if mode == "tile":  # a tile selector that spreads the tiles over the candidates by their gradient z-score
        gsum = tile_gradient(calib).sum(1)
        mu, sd = float(gsum.mean()), float(gsum.std())
        with torch.no_grad():
            m.tile_selector.weight.copy_(torch.tensor([[-1.0, -1.0], [0.0, 0.0], [1.0, 1.0]]) / sd)
            m.tile_selector.bias.copy_(torch.tensor([mu / sd - 0.4, 0.0, -mu / sd - 0.4]))
    if mode == "layer":
        with torch.no_grad():
            for i, q in enumerate(m.modules()):
                if hasattr(q, "net") and hasattr(q.net, "bias") and q.net.bias.numel() == 3:
                    q.net.bias.copy_(torch.roll(torch.tensor([1.0, 0.0, 0.0]), i % 3))
    if name == "srresnet":  # non-trivial BatchNorm statistics: the folding must matter
        g = torch.Generator().manual_seed(3)
        for bn in (x for x in m.modules() if isinstance(x, torch.nn.BatchNorm2d)):
            bn.running_mean.copy_(torch.randn(bn.num_features, generator=g) * 0.1)
            bn.running_var.copy_(torch.rand(bn.num_features, generator=g) + 0.5)
            bn.weight.data.copy_(torch.rand(bn.num_features, generator=g) + 0.5)
    return m


@pytest.mark.parametrize("method,mode", CASES)
@pytest.mark.parametrize("name", BACKBONES)
def test_integer_reference_matches_fake_quant(name, method, mode):
    m = prepared(name, method, mode)
    n_layers = ModelInfo.from_model(m).n_layers
    tiles = photo_crops(max(48, -(-1000 // n_layers)), 24)
    rep = compare(m, lower(m), tiles)
    print(f"\n{name} {method}/{mode}: {rep}")
    assert rep.agreement >= 0.999 and not rep.unexplained, str(rep)
    assert rep.n_decisions >= 1000
    assert rep.sr_mean <= 1e-3 and rep.sr_max <= 2.0, str(rep)
    if method == "cadyq" and mode != "fixed":
        hist = bit_hist(lower(m)(tiles)[1])
        assert len(hist) == 3 and min(hist.values()) > 0.05 * rep.n_decisions, hist  # selection is not trivial


def test_lowering_replaces_every_quantizer_and_folds_epilogues():
    m = prepared("srresnet", "cadyq", "full")
    p = lower(m)
    convs = [x for x in p.modules() if isinstance(x, IntConv2d)]
    assert len(convs) == ModelInfo.from_model(m).n_layers == len(p.dynamic)
    assert all(isinstance(x, IntQuantizer) for x in p.dynamic)
    assert not any(isinstance(x, torch.nn.BatchNorm2d) for x in p.net.body[:-2].modules())  # folded
    assert {c.act for c in convs} == {"leaky", "none"}  # PReLU folded into conv1 of each block
    assert any(isinstance(x, torch.nn.BatchNorm2d) for x in m.modules())  # the model itself is untouched


def test_integer_weights_are_the_exported_int8_and_the_fake_quant_values():
    m = quantize(tiny("edsr"), "cadyq", per_channel=True)
    conv = m.body[0].body[0]
    q, scale = integer_weights(conv)
    assert q.dtype == torch.int8 and int(q.abs().max()) == 127
    ref = quantize_weight(conv.weight.detach(), 8, per_channel=True)
    torch.testing.assert_close(q.float() * scale.view(-1, 1, 1, 1), ref, rtol=2e-7, atol=0)


def test_reference_conv_is_exact_integer_accumulation():
    g = torch.Generator().manual_seed(0)
    w = torch.randint(-127, 128, (8, 16, 3, 3), generator=g).to(torch.int8)
    c = IntConv2d("c", w, torch.ones(8), torch.zeros(8), (1, 1), (1, 1), (1, 1), 1, None)
    q = torch.randint(-127, 128, (2, 16, 9, 9), generator=g).float()
    from cadyq.quant.lowering import QAct

    out = ReferenceKernels().conv(QAct(q, torch.ones(2), torch.full((2,), 8.0), torch.zeros(2)), c)
    exact = torch.nn.functional.conv2d(q.double(), w.double(), padding=1)
    assert torch.equal(out.double(), exact)


def test_fp32_models_have_nothing_to_lower():
    with pytest.raises(ModelError, match="fp32"):
        lower(tiny("edsr"))


def test_bits_and_sr_shapes():
    m = prepared("carn", "cadyq", "full")
    sr, bits = lower(m)(photo_crops(3, 24))
    assert sr.shape == (3, 3, 48, 48) and bits.shape == (3, ModelInfo.from_model(m).n_layers)


@pytest.mark.slow
@pytest.mark.parametrize("name", BACKBONES)
def test_integer_reference_full_size(name):
    m = prepared(name, "cadyq", "full", size=48)
    tiles = photo_crops(16, 32)
    rep = compare(m, lower(m), tiles)
    print(f"\n{name} full size: {rep}")
    # random-weight 16-block nets are chaotic: one rounding flip early on moves a tile's later layers,
    # so the bar is lower than the trained models' 99.9 % (test_native: zoo models); none may be unexplained
    assert rep.agreement >= 0.99 and not rep.unexplained, str(rep)


@pytest.mark.parametrize("name", ["edsr", "srresnet", "carn"])
def test_int8_upsampler_is_the_fake_quant_of_its_convs(name):
    """lower(model, int8_upsampler=True): each upsampler conv becomes an INT8 conv (8-bit per-channel weights, 8-bit
    input clipped at the calibrated value), equal to the fake-quant model with those convs fake-quantized."""
    import copy

    from cadyq.calib import calibrate_upsampler
    from cadyq.quant import fake_quant
    from cadyq.quant.plans import float_tail_convs

    m = prepared(name, "cadyq", "full", scale=4 if name != "carn" else 2)
    paths = float_tail_convs(m)
    assert paths and all(type(m.get_submodule(p)) is torch.nn.Conv2d for p in paths)
    cal = calibrate_upsampler(m, [photo_crops(16, 24, seed=5)])
    assert set(cal.upsampler_clips) == set(paths) and all(v > 0 for v in cal.upsampler_clips.values())
    assert not hasattr(m, "upsampler_clips")  # the model itself is not changed
    ref = copy.deepcopy(cal)
    for p in paths:  # the same arithmetic in float: quantized weights, fake-quantized inputs
        conv = ref.get_submodule(p)
        w = conv.weight.detach()
        mx = w.abs().amax(dim=(1, 2, 3), keepdim=True) + 1e-8
        conv.weight.data = torch.round(w * 127 / mx) * (mx / 127)
        alpha = torch.tensor(cal.upsampler_clips[p])
        conv.register_forward_pre_hook(lambda mod, a, alpha=alpha: (fake_quant(a[0], alpha, 127.0),))
    program = lower(cal, int8_upsampler=True)
    assert sum(isinstance(x, IntConv2d) and x.name in paths for x in program.net.modules()) == len(paths)
    tiles = photo_crops(24, 24, seed=9)
    with torch.no_grad():
        sr, bits = program(tiles)
        sr_ref = ref(tiles)
        sr_plain, bits_plain = lower(cal)(tiles)
    assert torch.equal(bits, bits_plain)  # the selection does not see the upsampler
    assert (sr - sr_ref).abs().mean() < 1e-3 and (sr - sr_ref).abs().max() < 2.0
    assert (sr - sr_plain).abs().max() > 1e-3  # it really quantized something
    del cal.upsampler_clips
    with pytest.raises(ModelError, match="calibrate them first"):
        lower(cal, int8_upsampler=True)


@pytest.mark.parametrize("form", ["7bit", "full"])
def test_int8_upsampler_on_native_kernels_and_in_checkpoints(tmp_path, form):
    """Both forms of the native convolutions (the full-range one where the CPU accumulates u8 x s8 in 32 bits)."""
    from cadyq import checkpoint, hardware
    from cadyq.calib import calibrate_upsampler
    from cadyq.errors import BackendError
    from cadyq.runtime.native_backend import NativeBackend

    m = prepared("edsr", "cadyq", "full", scale=4)
    cal = calibrate_upsampler(m, [photo_crops(16, 24, seed=5)])
    checkpoint.save(cal, tmp_path / "m.safetensors")
    back = checkpoint.load(tmp_path / "m.safetensors")
    assert back.upsampler_clips == pytest.approx(cal.upsampler_clips)
    with hardware.forced(int8_range=form):
        be = NativeBackend(back, "cpu", workers=1, int8_upsampler=True)
    assert any("upsampler and tail INT8" in n for n in be.notes) and be.program.last_quant is not None
    assert be.kernels.form == form and all(conv.form == form for conv, _ in be.program.upsampler)
    if form == "full" and hardware.int8_range() != "full":
        return  # the program is built in this form on any CPU (above); only VNNI/AMX computes its full-range products
    tiles = photo_crops(6, 24, seed=11)
    sr, bits = be.run(tiles)
    with torch.no_grad():
        sr_ref, bits_ref = lower(back, int8_upsampler=True)(tiles)
    assert (bits == bits_ref).float().mean() >= 0.99
    mse = float(((sr.clamp(0, 255) - sr_ref.clamp(0, 255)) ** 2).mean())
    assert mse == 0 or 10 * torch.log10(torch.tensor(255.0 ** 2 / mse)) >= 50
    with pytest.raises(BackendError, match="calibrate them first"):
        NativeBackend(m, "cpu", workers=1, int8_upsampler=True)
