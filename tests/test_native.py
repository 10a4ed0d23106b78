"""The native CPU backend: oneDNN INT8 convolutions and the C kernels against the torch integer
reference and the fake-quant model (bits per decision, SR), the C kernels against torch op for op."""
import numpy as np
import pytest
import torch
import torch.nn.functional as F
from conftest import boundary_tile_batch, photo_crops, randomize_selectors, tiny

from cadyq import quantize
from cadyq.errors import BackendError
from cadyq.kernels.cpu import OneDNNKernels, available, mode
from cadyq.kernels.cpu import build
from cadyq.quant import ModelInfo, fake_quant, observe
from cadyq.quant.lowering import IntConv2d, IntQuantizer, QAct, ReferenceKernels, _Context, lower
from cadyq.quant.parity import compare

pytestmark = [pytest.mark.usefixtures("one_torch_thread"),
              pytest.mark.skipif(available() is not None, reason=f"{available()}")]
BACKBONES = ("edsr", "srresnet", "carn", "idn")


def per_tile(program, tiles):
    outs = [program(tiles[i:i + 1]) for i in range(tiles.shape[0])]
    return torch.cat([o[0] for o in outs]), torch.cat([o[1] for o in outs])


def kernel_sets():
    sets = [("7bit", True, "float"), ("7bit", True, "halves"), ("7bit", False, "float")]
    if mode() == "full":  # CPUs with VNNI/AMX: the single full-range convolution
        sets.append(("full", True, "float"))
    return sets


@pytest.mark.parametrize("range_mode,library,eight_bit", kernel_sets())
@pytest.mark.parametrize("method", ("pams8", "cadyq"))
@pytest.mark.parametrize("name", BACKBONES)
def test_onednn_program_matches(name, method, range_mode, library, eight_bit):
    torch.manual_seed(0)
    m = quantize(tiny(name), method).eval()
    randomize_selectors(m, photo_crops(16, 24, seed=7))
    tiles = photo_crops(max(32, -(-600 // ModelInfo.from_model(m).n_layers)), 24)
    program = lower(m)
    ref_sr, ref_bits = program(tiles)
    program.use(OneDNNKernels(range_mode, library=library, eight_bit=eight_bit))
    rep = compare(m, program, tiles, run=per_tile)
    print(f"\n{name} {method} {range_mode}/{eight_bit}{'' if library else ' (torch elementwise)'}: {rep}")
    assert rep.agreement >= 0.999 and not rep.unexplained, str(rep)
    assert rep.sr_mean <= 1e-3 and rep.sr_max <= 2.0, str(rep)
    sr, bits = per_tile(program, tiles)
    assert (bits == ref_bits).float().mean() >= 0.999
    assert (sr - ref_sr).abs().max() <= 2.0


def _conv(w, act="none"):
    c = w.shape[0]
    return IntConv2d("c", w, torch.rand(c) * 0.01 + 1e-3, torch.randn(c), (1, 1), (1, 1), (1, 1), 1, None, act)


@pytest.mark.parametrize("bits", (4, 6, 8))
@pytest.mark.parametrize("eight_bit", ("float", "halves"))
def test_onednn_conv_accumulates_exactly(bits, eight_bit):
    """The int32 accumulation equals the exact integer convolution (7-bit range, the halves of 8-bit q)."""
    g = torch.Generator().manual_seed(bits)
    s = 2 ** (bits - 1) - 1
    w = torch.randint(-127, 128, (32, 64, 3, 3), generator=g).to(torch.int8)
    x = torch.randint(-s, s + 1, (1, 64, 10, 10), generator=g).float()
    x[0, :, 0, 0], x[0, :, 0, 1] = s, -s  # the extremes
    conv = _conv(w, "relu")
    conv.weight_scale.fill_(1.0)
    conv.bias.zero_()
    q = IntQuantizer("fixed", [bits], [float(s)])  # alpha = s: q = x
    k = OneDNNKernels("7bit", eight_bit=eight_bit)
    ctx = _Context(k)
    ctx.grad = torch.zeros(1, 2)
    qa = k.select_quantize(x.contiguous(memory_format=torch.channels_last), q, ctx)
    out = k.conv(qa, conv)
    exact = torch.relu(F.conv2d(x.double(), w.double(), padding=1))
    if bits == 8 and eight_bit == "float":
        torch.testing.assert_close(out.double(), exact, rtol=1e-6, atol=1e-3)
    else:
        assert torch.equal(out.double(), exact)


@pytest.mark.skipif(build.library() is None, reason=f"no C kernels: {build.why_unavailable()}")
def test_c_select_quant_rounds_as_torch_on_boundaries():
    rng = np.random.default_rng(0)
    k = OneDNNKernels("7bit")
    ref = ReferenceKernels()
    for bits, alpha in ((4, 1.7), (6, 2.3), (8, 3.1)):
        s = 2 ** (bits - 1) - 1
        x = torch.from_numpy(boundary_tile_batch(rng, (1, 16, 12, 12), alpha, s)).contiguous(memory_format=torch.channels_last)
        q = IntQuantizer("fixed", [bits], [alpha])
        ctx = _Context(k)
        ctx.grad = torch.zeros(1, 2)
        a = k.select_quantize(x, q, ctx, dequant=True)
        b = ref.select_quantize(x, q, ctx)
        torch.testing.assert_close(k.dequantize(a), ref.dequantize(b), rtol=0, atol=0)
        assert torch.equal(k.dequantize(a).div(b.scale).round(), b.q)


@pytest.mark.skipif(build.library() is None, reason=f"no C kernels: {build.why_unavailable()}")
def test_c_selection_matches_torch_std_and_first_max_on_ties():
    g = torch.Generator().manual_seed(1)
    x = (torch.randn(1, 24, 16, 16, generator=g) * 3 + 5).contiguous(memory_format=torch.channels_last)
    grad = torch.rand(1, 2, generator=g) * 10
    w = torch.randn(3, 26, generator=g)
    sigma = x.std(dim=(2, 3))
    logits = F.linear(torch.cat([grad, sigma], 1), w, torch.zeros(3))
    k = OneDNNKernels("7bit")
    ctx = _Context(k)
    ctx.grad = grad
    for target in range(3):  # a bias that makes `target` win by a margin
        b = -logits[0] + torch.tensor([0.0, 0.0, 0.0]).index_fill(0, torch.tensor([target]), 1.0)
        q = IntQuantizer("full", [4, 6, 8], [1.0, 2.0, 3.0], w, b)
        assert int(k.select_quantize(x, q, ctx).k[0]) == target
    tie = IntQuantizer("full", [4, 6, 8], [1.0, 2.0, 3.0], torch.zeros(3, 26), torch.tensor([0.5, 0.5, 0.5]))
    assert int(k.select_quantize(x, tie, ctx).k[0]) == 0  # torch.argmax: the first maximum


@pytest.mark.skipif(build.library() is None, reason=f"no C kernels: {build.why_unavailable()}")
def test_c_fake_quant_is_bitwise_torch():
    rng = np.random.default_rng(2)
    x = torch.from_numpy(boundary_tile_batch(rng, (2, 8, 10, 10), 2.5, 127)).contiguous(memory_format=torch.channels_last)
    a = torch.tensor([2.5])
    assert torch.equal(OneDNNKernels("7bit").fake_quant(x, a, 127.0), fake_quant(x, a, 127))


def test_tile_at_a_time():
    k = OneDNNKernels("7bit")
    ctx = _Context(k)
    ctx.grad = torch.zeros(2, 2)
    with pytest.raises(BackendError, match="one tile at a time"):
        k.select_quantize(torch.zeros(2, 4, 5, 5), IntQuantizer("fixed", [8], [1.0]), ctx)


def test_mode_is_decided_by_an_exact_probe():
    assert mode() in ("full", "7bit")
