"""The Triton kernels of the native CUDA backend: the INT8 implicit-GEMM convolution (int32 accumulation
exact), its epilogue and statistics, selection + quantization to int8, and a whole program against the
torch integer reference. CPU: the Triton interpreter on small shapes; CUDA: the `gpu` tests."""
import os

import pytest
import torch
import torch.nn.functional as F

if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")  # before the first `import triton`
pytest.importorskip("triton", reason="triton is not installed (pip install triton)")

from conftest import photo_crops, randomize_selectors, tiny  # noqa: E402

from cadyq import quantize  # noqa: E402
from cadyq.kernels import conv_int8 as ck  # noqa: E402
from cadyq.kernels.quant_nhwc import select_quantize, tile_stats  # noqa: E402
from cadyq.quant.lowering import IntQuantizer, ReferenceKernels, _Context, lower  # noqa: E402
from cadyq.quant.parity import compare  # noqa: E402

DEVICES = ["cuda"] if torch.cuda.is_available() else (["cpu"] if ck.INTERPRETED else [])
pytestmark = [pytest.mark.skipif(not DEVICES, reason="triton was imported without TRITON_INTERPRET=1 and no GPU"),
              pytest.mark.usefixtures("one_torch_thread")]
DEV = DEVICES[0] if DEVICES else "cpu"


def _cl(t):
    return t.to(DEV).contiguous(memory_format=torch.channels_last)


@pytest.mark.parametrize("n,c,o,h,w,k,groups", [(2, 16, 16, 9, 7, 3, 1), (1, 3, 16, 8, 8, 3, 1), (2, 16, 8, 5, 6, 1, 1),
                                                (1, 16, 16, 6, 6, 3, 4)])
def test_int32_accumulation_is_exact(n, c, o, h, w, k, groups):
    g = torch.Generator().manual_seed(k + c)
    q = torch.randint(-127, 128, (n, c, h, w), generator=g).to(torch.int8)
    q[..., 0, 0] = 127  # the extremes
    q[..., -1, -1] = -127
    wt = torch.randint(-127, 128, (o, c // groups, k, k), generator=g).to(torch.int8)
    ones, zeros = torch.ones(o, device=DEV), torch.zeros(o, device=DEV)
    y, _ = ck.conv2d_int8(_cl(q), ck.pack_weight(wt, groups).to(DEV), ones, zeros, 1.0, (k, k), 1, k // 2)
    exact = F.conv2d(q.double(), wt.double(), None, 1, k // 2, 1, groups)
    assert torch.equal(y.double().cpu(), exact)


def test_epilogue_and_statistics():
    g = torch.Generator().manual_seed(3)
    n, c, o, h, w = 2, 16, 16, 7, 7
    q = torch.randint(-31, 32, (n, c, h, w), generator=g).to(torch.int8)
    wt = torch.randint(-127, 128, (o, c, 3, 3), generator=g).to(torch.int8)
    ws, b, t = torch.rand(o, generator=g) * 0.01, torch.randn(o, generator=g), 0.75
    res = torch.randn(n, o, h, w, generator=g)
    acc = F.conv2d(q.double(), wt.double(), padding=1)
    base = acc * (t * ws.double().view(1, -1, 1, 1)) + b.double().view(1, -1, 1, 1)
    grid = IntQuantizer("fixed", [8], [2.0])  # the next layer's top grid: the statistics are of its integers
    for act, slope in (("relu", 0.0), ("leaky", 0.05)):
        y, st = ck.conv2d_int8(_cl(q), ck.pack_weight(wt).to(DEV), ws.to(DEV), b.to(DEV), t, (3, 3), 1, 1,
                               act, slope, out_fq=(1.5, 127.0), residual=_cl(res), stats_grid=(2.0, 127.0))
        ref = torch.relu(base) if act == "relu" else F.leaky_relu(base, slope)
        ref = (torch.round(ref.clamp(-1.5, 1.5) / 1.5 * 127) / 127 * 1.5).float() + res
        torch.testing.assert_close(y.cpu(), ref, rtol=1e-5, atol=2e-2)  # 1.5/127 steps at rounding boundaries
        assert float(((y.cpu() - ref).abs() > 1e-3).float().mean()) < 0.01
        v = grid.top_integers(y.cpu()).long()  # of y as written: exact integer sums
        assert st.dtype == torch.int64 and (v.abs() == 127).any()
        assert torch.equal(st[:, 0].cpu(), v.sum((2, 3))) and torch.equal(st[:, 1].cpu(), (v * v).sum((2, 3)))
        assert torch.equal(tile_stats(_cl(y), 2.0, 127.0).cpu(), st.cpu())


def test_select_quantize_matches_the_reference():
    g = torch.Generator().manual_seed(5)
    x = torch.randn(3, 16, 8, 8, generator=g) * 2
    w = torch.randn(3, 18, generator=g) * 0.3
    angles = torch.arange(3) * (2 * torch.pi / 3)
    w[:, :2] = torch.stack([angles.cos(), angles.sin()], 1)
    grad = 4 * w[:, :2]  # tile n leans to candidate n
    quant = IntQuantizer("full", [4, 6, 8], [1.0, 2.0, 3.0], w, torch.zeros(3))
    ctx = _Context(ReferenceKernels())
    ctx.grad = grad
    ref = ReferenceKernels().select_quantize(x, quant, ctx)
    assert len(set(ref.k.tolist())) > 1
    grid, t, tables = (float(quant.alpha[-1]), float(quant.levels[-1])), quant.grid, quant.tables().to(DEV)
    for stats in (None, tile_stats(_cl(x), *grid)):
        q, scale, bits, k, deq = select_quantize(_cl(x), stats, grad.to(DEV), quant.weight.to(DEV), quant.bias.to(DEV),
                                                 grid, t, tables, quant.bits.to(DEV), dequant=True)
        assert torch.equal(k.long().cpu(), ref.k) and torch.equal(q.float().cpu(), ref.q)
        assert torch.equal(scale.cpu(), ref.scale) and torch.equal(bits.cpu(), ref.bits)
        torch.testing.assert_close(deq.cpu(), ref.q * ref.scale.view(-1, 1, 1, 1))
    k_in = torch.tensor([2, 0, 1])
    q, _, bits, k, _ = select_quantize(_cl(x), None, None, None, None, grid, t, tables, quant.bits.to(DEV),
                                       k_in=k_in.to(DEV))
    assert bits.cpu().tolist() == [8.0, 4.0, 6.0]
    assert torch.equal(q.float().cpu(), quant.requantize(quant.top_integers(x), k_in))


@pytest.mark.parametrize("name", ["edsr", "idn"])
def test_whole_program_against_the_reference(name):
    from cadyq.kernels.triton_kernels import STATS_GRID, TritonKernels

    m = quantize(tiny(name), "cadyq").eval()
    randomize_selectors(m, photo_crops(16, 12, seed=7))
    tiles = photo_crops(6, 12)
    program = lower(m)
    ref_sr, ref_bits = program(tiles)
    program.to(DEV).use(TritonKernels())
    rep = compare(m.to(DEV), program, tiles.to(DEV))
    assert rep.agreement >= 0.999 and not rep.unexplained and rep.psnr_db >= 50, str(rep)
    sr, bits = program(tiles.to(DEV))  # now with the statistics from the producing convs' epilogues
    assert any(STATS_GRID in c.cache for c in program.convs)
    assert torch.equal(bits.cpu(), ref_bits) and float((sr.cpu() - ref_sr).abs().max()) < 0.05


def test_native_backend_on_triton_kernels_pads_batches_to_fixed_sizes():
    """`create_backend("native", ..., kernels="triton")`: the CUDA backend's code path (lowering, Triton
    kernels, NHWC float layers, fixed batch sizes with the last chunk padded); on the CPU through the
    interpreter (no CUDA graphs there)."""
    from cadyq.runtime import create_backend
    from cadyq.runtime.native_cuda import NativeCUDABackend

    m = quantize(tiny("edsr"), "cadyq").eval()
    randomize_selectors(m, photo_crops(16, 12, seed=7))
    tiles = photo_crops(3, 12, seed=3)
    with torch.no_grad():
        ref_sr, ref_bits = lower(m)(tiles)
    b = create_backend("native", m, DEV, kernels="triton", float_precision="fp32", batch_sizes=(2,))
    assert isinstance(b, NativeCUDABackend) and b.info.n_layers == ref_bits.shape[1]
    sr, bits = b.run(tiles.to(DEV))  # chunks of 2 and 1 (padded to 2)
    assert sr.shape == ref_sr.shape and torch.equal(bits.cpu(), ref_bits)
    assert float((sr.cpu() - ref_sr).abs().max()) < 0.05


def test_fixed_batch_chunks():
    from cadyq.runtime.native_cuda import chunks

    assert chunks(66, (1, 4, 16, 64)) == [(0, 64, 64), (64, 66, 4)]
    assert chunks(16, (1, 4, 16, 64)) == [(0, 16, 16)]
    assert chunks(1, (4, 16)) == [(0, 1, 4)]
    assert chunks(130, (64,)) == [(0, 64, 64), (64, 128, 64), (128, 130, 64)]
