"""Fused Triton select+quantize kernel vs the numpy reference (CPU: Triton interpreter; CUDA: `gpu` tests)."""
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")  # must precede the first `import triton` (read at @triton.jit)
triton = pytest.importorskip("triton", reason="triton is not installed (pip install triton)")

from cadyq.errors import BackendError  # noqa: E402
from cadyq.export.op import reference  # noqa: E402
from cadyq.kernels import select_quant as sq  # noqa: E402
from conftest import select_tie_case, select_ties  # noqa: E402

needs_cpu_kernel = pytest.mark.skipif(
    not sq.INTERPRETED and not torch.cuda.is_available(),
    reason="triton was imported without TRITON_INTERPRET=1 before this module and there is no GPU")


def make_case(N, C, H, W, bits, seed, spread=True):
    rng = np.random.default_rng(seed)
    K = len(bits)
    x = (rng.standard_normal((N, C, H, W)) * rng.uniform(0.2, 2.0, (1, C, 1, 1))).astype(np.float32)
    Wsel = (0.1 * rng.standard_normal((K, C + 2))).astype(np.float32)
    angles = 2 * np.pi * np.arange(K) / K
    Wsel[:, :2] = np.stack([np.cos(angles), np.sin(angles)], 1)
    g = (4 * Wsel[np.arange(N) % K, :2] if spread else rng.standard_normal((N, 2))).astype(np.float32)
    b = np.zeros(K, np.float32)
    a = rng.uniform(0.3, 2.5, K).astype(np.float32)
    return x, g, Wsel, b, a


def run_kernel(device, x, g, W, b, a, bits, dtype=torch.float32):
    t = [torch.from_numpy(v).to(device) for v in (x, g, W, b, a)]
    t[0] = t[0].to(dtype)
    y, bits_out = sq.select_quant(*t, bits)
    return y.float().cpu().numpy(), bits_out.cpu().numpy()


def check(y, bits_out, x, g, W, b, a, bits):
    y_ref, bits_ref = reference(x, g, W, b, a, bits)
    np.testing.assert_array_equal(bits_out, bits_ref)           # same k for every tile
    np.testing.assert_array_max_ulp(y, y_ref, maxulp=1)
    assert np.mean(y == y_ref) > 0.999


DEVICE = "cuda" if torch.cuda.is_available() else "cpu"


@needs_cpu_kernel
@pytest.mark.parametrize("N,C,H,W,bits", [(3, 4, 5, 6, (4, 6, 8)), (2, 5, 9, 7, (2, 3)),
                                          (5, 3, 33, 40, (8, 4, 6, 5, 3)), (1, 7, 2, 1, (6,))])
def test_matches_reference(N, C, H, W, bits):
    case = make_case(N, C, H, W, bits, seed=N * C + H)
    y, bits_out = run_kernel(DEVICE, *case, bits)
    check(y, bits_out, *case, bits)
    if len(bits) > 1 and N >= len(bits):
        assert len(set(bits_out.tolist())) > 1                    # several bit-widths chosen


@needs_cpu_kernel
@pytest.mark.parametrize("bits", [(3, 2, 4), (4, 6, 8), (8, 5, 7)])
def test_ties_and_rounding_boundaries(bits):
    """Logit ties pick the first max; the exact ties of both roundings (onto the top grid, then onto the chosen
    candidate's levels) go as in the reference, in both forms."""
    x, g, Wsel, b, a = select_tie_case(bits, np.random.default_rng(2), N=3)
    assert min(select_ties(x, a, bits)) > 0
    y, bits_out = run_kernel(DEVICE, x, g, Wsel, b, a, bits)
    y_ref, _ = reference(x, g, Wsel, b, a, bits)
    np.testing.assert_array_equal(bits_out, np.full(3, bits[1], np.float32))   # first of the tied maxima
    np.testing.assert_array_equal(y, y_ref)
    q, scale, bits_int = sq.select_quant_int(*(torch.from_numpy(v).to(DEVICE) for v in (x, g, Wsel, b, a)), bits)
    q_ref, scale_ref, _ = reference(x, g, Wsel, b, a, bits, integer=True)
    np.testing.assert_array_equal(q.cpu().numpy().astype(np.float32), q_ref)
    np.testing.assert_array_equal(scale.cpu().numpy(), scale_ref)
    np.testing.assert_array_equal(bits_int.cpu().numpy(), bits_out)


@needs_cpu_kernel
def test_fp16_input():
    bits = (4, 8)
    x, g, W, b, a = make_case(4, 3, 6, 5, bits, seed=7)
    x16 = x.astype(np.float16)
    y, bits_out = run_kernel(DEVICE, x16.astype(np.float32), g, W, b, a, bits, dtype=torch.float16)
    y_ref, bits_ref = reference(x16.astype(np.float32), g, W, b, a, bits)
    np.testing.assert_array_equal(bits_out, bits_ref)
    np.testing.assert_array_equal(y, y_ref.astype(np.float16).astype(np.float32))


@needs_cpu_kernel
def test_writes_into_given_buffers_and_checks_inputs():
    bits = (4, 6, 8)
    x, g, W, b, a = (torch.from_numpy(v).to(DEVICE) for v in make_case(3, 4, 5, 5, bits, seed=3))
    y = torch.full_like(x, float("nan"))
    bits_out = torch.full((3,), -1.0, device=DEVICE)
    ptrs = (y.data_ptr(), bits_out.data_ptr())
    assert sq.select_quant_(x, g, W, b, a, bits, y, bits_out) is None
    assert (y.data_ptr(), bits_out.data_ptr()) == ptrs
    assert not torch.isnan(y).any() and set(bits_out.tolist()) <= {4.0, 6.0, 8.0}
    with pytest.raises(BackendError, match="W must be"):
        sq.select_quant_(x, g, W[:2], b, a, bits, y, bits_out)
    with pytest.raises(BackendError, match="bit-widths"):
        sq.select_quant_(x, g, W, b, a, (1, 6, 8), y, bits_out)
    with pytest.raises(BackendError, match="contiguous"):
        sq.select_quant_(x.transpose(2, 3), g, W, b, a, bits, y, bits_out)


AOT_CHILD = """
import json, re, sys
from cadyq.kernels import select_quant as sq
name, ptx, num_warps, shared = sq.aot_compile((4, 6, 8), "fp32", C=64, HW=96 * 96, cc=80)
_, ptx16, _, _ = sq.aot_compile((4, 8), "fp16", C=64, HW=96 * 96, cc=90, static_hw=True)
json.dump(dict(params=sq.ptx_params(ptx, name), num_warps=num_warps, sm80=".target sm_80" in ptx,
               fma="fma.rn.f32" in ptx, div_rn="div.rn.f32" in ptx,
               vec16=bool(re.search(r"ld\\.global\\.v[24]", ptx16))), sys.stdout)
"""


def test_aot_ptx_parameters_match_launch():
    """The PTX entry takes exactly LAUNCH_PARAMS (pointers, 2 x int32, pointers): no hidden Triton scratch args.

    Compiled in a child process: the Triton interpreter leaves triton.language patched after a run
    (device-function calls such as tl.argmax), which breaks real compilation in the same process.
    """
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    env["PYTHONPATH"] = os.pathsep.join([str(Path(__file__).resolve().parents[1]), env.get("PYTHONPATH", "")])
    proc = subprocess.run([sys.executable, "-c", AOT_CHILD], capture_output=True, text=True, env=env, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    r = json.loads(proc.stdout)
    kinds = [p.split()[1] for p in r["params"]]
    assert len(r["params"]) == len(sq.LAUNCH_PARAMS) == 9
    assert kinds == [".u64"] * 5 + [".u32"] * 2 + [".u64"] * 2
    assert r["num_warps"] == 8 and r["sm80"]
    assert not r["fma"] and r["div_rn"]                               # no FMA contraction, IEEE division
    assert r["vec16"]                                                 # HW % 16 hint vectorizes


def test_strip_unused_params_refuses_referenced_scratch():
    ptx = (".visible .entry k(\n\t.param .u64 k_param_0,\n\t.param .u64 k_param_1\n)\n{\n"
           "\tld.param.u64 %rd1, [k_param_0];\n}\n")
    stripped = sq.strip_unused_params(ptx, "k", 1)
    assert sq.ptx_params(stripped, "k") == [".param .u64 k_param_0"]
    with pytest.raises(BackendError, match="hidden parameter"):
        sq.strip_unused_params(ptx.replace("[k_param_0]", "[k_param_1]"), "k", 1)


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
@pytest.mark.parametrize("N,C,H,W,bits", [(64, 64, 96, 96, (4, 6, 8)), (7, 3, 50, 37, (2, 4, 8)),
                                          (16, 64, 96, 96, (8, 6, 4, 5))])
def test_cuda_matches_reference(N, C, H, W, bits):
    case = make_case(N, C, H, W, bits, seed=N + C)
    y, bits_out = run_kernel("cuda", *case, bits)
    check(y, bits_out, *case, bits)
    y16, bits16 = run_kernel("cuda", case[0].astype(np.float16).astype(np.float32), *case[1:], bits, dtype=torch.float16)
    y_ref16, bits_ref16 = reference(case[0].astype(np.float16).astype(np.float32), *case[1:], bits)
    np.testing.assert_array_equal(bits16, bits_ref16)
    np.testing.assert_array_max_ulp(y16.astype(np.float16), y_ref16.astype(np.float16), maxulp=1)


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_graph_capture_replay():
    bits = (4, 6, 8)
    x, g, W, b, a = (torch.from_numpy(v).cuda() for v in make_case(8, 16, 24, 24, bits, seed=5))
    y, bits_out = torch.empty_like(x), torch.empty(8, device="cuda")
    sq.select_quant_(x, g, W, b, a, bits, y, bits_out)               # warm-up compiles outside capture
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        sq.select_quant_(x, g, W, b, a, bits, y, bits_out)
    x.mul_(3.0)
    graph.replay()
    torch.cuda.synchronize()
    check(y.cpu().numpy(), bits_out.cpu().numpy(), *(t.cpu().numpy() for t in (x, g, W, b, a)), bits)
