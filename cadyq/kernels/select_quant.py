"""Fused CADyQ bit selection + quantization (Triton), the kernels behind `cadyq::CADyQSelect`.

Per tile n (the op's spec, cadyq/export/op.py; T the top candidate, s_j = 2^(bits_j-1) - 1, fq the fake quantization):
             x_top = fq(x[n], a_T, s_T);  sigma = std_hw(x_top) (unbiased);  k = argmax(W @ [g[n], sigma] + b);
             q[n] = round(clamp(fq(x_top, a_k, s_k), -a_T, a_T) / a_T * s_T)     (k's levels on the top grid)
  version 1 (fake quant):   y[n] = q[n] / s_T * a_T                           (select_quant_kernel)
  version 2 (integer form): q[n] as int8 (or float), scale[n] = a_T / s_T      (select_quant_int_kernel)

Decomposition: one program per tile, one launch. The choice of k needs the statistics of every
channel of the tile before any element of y[n] can be written, so a tile is the smallest unit of
work that needs neither cross-program synchronisation nor a workspace for sigma (nothing to
allocate, CUDA-graph safe, TensorRT-plugin friendly). Inside the program:
  1. channel blocks of BLOCK_C channels: two passes over H*W of x_top, rounded from x on the fly (mean, then
     sum of squared deviations: the same order as torch.std); the second pass re-reads BLOCK_C*H*W*4 bytes
     (147 KB for C-block 4 at 96x96), which is still in L1/L2. The selector GEMV is accumulated
     block by block: logits += W[:, 2+c] @ sigma[c], so sigma never leaves registers;
  2. argmax (first max on ties), a_k, s_k (the bit-widths and the top candidate are compile-time constants);
  3. one streaming pass over the C*H*W elements of the tile: quantize and store.
HBM traffic is 2 reads + 1 write of x; with N >= 64 tiles (a 96x96 tile batch) the grid covers
most SMs of an H100. Divisions use div_rn and rounding is half-to-even built from floor, so y is
bit-exact against the numpy/ONNX reference (FMA contraction is disabled for the same reason).
"""
from __future__ import annotations

from collections.abc import Sequence

import torch
import triton
import triton.language as tl

from cadyq.errors import BackendError
from cadyq.export.op import top_candidate

from .rounding import fake_quant, quantize

MAX_K = 16


@triton.jit
def _select(x_n, g_ptr, w_ptr, b_ptr, a_ptr, n, C, HW, BITS: tl.constexpr, TOP: tl.constexpr, K_PAD: tl.constexpr,
            BLOCK_C: tl.constexpr, BLOCK_HW: tl.constexpr):
    """(a_k, s_k, bits_k) of tile n: statistics of x_top, selector GEMV and argmax (first max on ties)."""
    ks = tl.arange(0, K_PAD)
    k_ok = ks < len(BITS)
    w_rows = w_ptr + ks[:, None] * (C + 2)                         # W[k, :], row-major [K, C+2]
    a_t, s_t = tl.load(a_ptr + TOP), tl.full([], (1 << (BITS[TOP] - 1)) - 1, tl.float32)

    # logits = W[:, :2] @ g[n] + W[:, 2:] @ sigma[n] + b
    j2 = tl.arange(0, 2)
    dot = tl.sum(tl.load(w_rows + j2[None, :], mask=k_ok[:, None], other=0.0)
                 * tl.load(g_ptr + n * 2 + j2)[None, :], axis=1)
    for c0 in range(0, C, BLOCK_C):
        cs = c0 + tl.arange(0, BLOCK_C)
        rows = x_n + cs[:, None] * HW
        acc = tl.zeros([BLOCK_C, BLOCK_HW], dtype=tl.float32)
        for h0 in range(0, HW, BLOCK_HW):
            hw = h0 + tl.arange(0, BLOCK_HW)
            m = (cs[:, None] < C) & (hw[None, :] < HW)
            x = tl.load(rows + hw[None, :], mask=m, other=0.0).to(tl.float32)
            acc += tl.where(m, fake_quant(x, a_t, s_t), 0.0)
        mean = tl.sum(acc, axis=1) / HW
        acc = tl.zeros([BLOCK_C, BLOCK_HW], dtype=tl.float32)
        for h0 in range(0, HW, BLOCK_HW):
            hw = h0 + tl.arange(0, BLOCK_HW)
            m = (cs[:, None] < C) & (hw[None, :] < HW)
            x = tl.load(rows + hw[None, :], mask=m, other=0.0).to(tl.float32)
            d = tl.where(m, fake_quant(x, a_t, s_t) - mean[:, None], 0.0)
            acc += d * d
        sigma = tl.sqrt_rn(tl.sum(acc, axis=1) / (HW - 1))
        w_sigma = tl.load(w_rows + 2 + cs[None, :], mask=k_ok[:, None] & (cs[None, :] < C), other=0.0)
        dot += tl.sum(w_sigma * sigma[None, :], axis=1)
    logits = tl.where(k_ok, dot + tl.load(b_ptr + ks, mask=k_ok, other=0.0), float("-inf"))
    k = tl.argmax(logits, axis=0, tie_break_left=True)

    a = tl.load(a_ptr + k)
    bits = tl.zeros([], dtype=tl.float32)
    s = tl.zeros([], dtype=tl.float32)
    for i in tl.static_range(len(BITS)):
        bits = tl.where(k == i, BITS[i], bits)
        s = tl.where(k == i, (1 << (BITS[i] - 1)) - 1, s)
    return a, s, bits, a_t, s_t


@triton.jit
def _on_top_grid(x, a, s, a_t, s_t):
    """The integers on the top grid of candidate (a, s)'s levels of x: quantize(fq(fq(x, a_T, s_T), a, s), a_T, s_T)."""
    return quantize(fake_quant(fake_quant(x, a_t, s_t), a, s), a_t, s_t)


@triton.jit
def select_quant_kernel(x_ptr, g_ptr, w_ptr, b_ptr, a_ptr, C, HW, y_ptr, bits_ptr,
                        BITS: tl.constexpr, TOP: tl.constexpr, K_PAD: tl.constexpr,
                        BLOCK_C: tl.constexpr, BLOCK_HW: tl.constexpr, BLOCK: tl.constexpr):
    """CADyQSelect-1: y = q / s_T * a_T. Argument order = TensorRT AOT convention: input pointers, int32 scalars,
    output pointers."""
    n = tl.program_id(0).to(tl.int64)
    x_n, y_n = x_ptr + n * C * HW, y_ptr + n * C * HW
    a, s, bits, a_t, s_t = _select(x_n, g_ptr, w_ptr, b_ptr, a_ptr, n, C, HW, BITS, TOP, K_PAD, BLOCK_C, BLOCK_HW)
    for i0 in range(0, C * HW, BLOCK):
        offs = i0 + tl.arange(0, BLOCK)
        m = offs < C * HW
        q = _on_top_grid(tl.load(x_n + offs, mask=m, other=0.0).to(tl.float32), a, s, a_t, s_t)
        tl.store(y_n + offs, (tl.math.div_rn(q, s_t) * a_t).to(y_ptr.dtype.element_ty), mask=m)
    tl.store(bits_ptr + n, bits)


@triton.jit
def select_quant_int_kernel(x_ptr, g_ptr, w_ptr, b_ptr, a_ptr, C, HW, q_ptr, scale_ptr, bits_ptr,
                            BITS: tl.constexpr, TOP: tl.constexpr, K_PAD: tl.constexpr,
                            BLOCK_C: tl.constexpr, BLOCK_HW: tl.constexpr, BLOCK: tl.constexpr):
    """CADyQSelect-2 (the integer form): q in q's type (int8, or the float type of x), scale[n] = a_T / s_T, bits[n]."""
    n = tl.program_id(0).to(tl.int64)
    x_n, q_n = x_ptr + n * C * HW, q_ptr + n * C * HW
    a, s, bits, a_t, s_t = _select(x_n, g_ptr, w_ptr, b_ptr, a_ptr, n, C, HW, BITS, TOP, K_PAD, BLOCK_C, BLOCK_HW)
    for i0 in range(0, C * HW, BLOCK):
        offs = i0 + tl.arange(0, BLOCK)
        m = offs < C * HW
        q = _on_top_grid(tl.load(x_n + offs, mask=m, other=0.0).to(tl.float32), a, s, a_t, s_t)
        tl.store(q_n + offs, q.to(q_ptr.dtype.element_ty), mask=m)
    tl.store(scale_ptr + n, tl.math.div_rn(a_t, s_t))
    tl.store(bits_ptr + n, bits)


INTERPRETED = not isinstance(select_quant_kernel, triton.runtime.JITFunction)  # TRITON_INTERPRET=1 at import


def launch_config(C: int, HW: int) -> dict:
    """Block sizes for a [C, H*W] tile: ~4096 elements per block, 8 warps."""
    block_hw = min(1024, triton.next_power_of_2(HW))
    block_c = min(triton.next_power_of_2(C), max(1, 4096 // block_hw))
    return dict(BLOCK_C=block_c, BLOCK_HW=block_hw, BLOCK=4096, num_warps=8)


def check_bits(bits: Sequence[int]) -> tuple[int, ...]:
    bits = tuple(int(v) for v in bits)
    if not 1 <= len(bits) <= MAX_K or any(v < 2 or v > 16 for v in bits) or len(set(bits)) != len(bits):
        raise BackendError(f"select_quant needs 1..{MAX_K} distinct bit-widths in [2, 16]; got {bits}")
    return bits


def select_quant_(x: torch.Tensor, g: torch.Tensor, W: torch.Tensor, b: torch.Tensor, a: torch.Tensor,
                  bits: Sequence[int], y: torch.Tensor, bits_out: torch.Tensor) -> None:
    """Write y [N,C,H,W] (dtype of x) and bits_out [N] float32 in place: one launch on the current
    stream, no allocation. x contiguous NCHW float32/float16; g [N,2], W [K,C+2], b [K], a [K]
    float32; `bits` the K bit-widths (compile-time constants of the kernel)."""
    bits = check_bits(bits)
    N, C, H, Wd = x.shape
    K = len(bits)
    expect = {"g": (g, (N, 2)), "W": (W, (K, C + 2)), "b": (b, (K,)), "a": (a, (K,)),
              "y": (y, (N, C, H, Wd)), "bits_out": (bits_out, (N,))}
    for name, (t, shape) in expect.items():
        if tuple(t.shape) != shape or not t.is_contiguous():
            raise BackendError(f"select_quant: {name} must be contiguous with shape {shape}, got {tuple(t.shape)}")
    if not x.is_contiguous() or x.dtype not in (torch.float32, torch.float16) or H * Wd < 2:
        raise BackendError("select_quant: x must be contiguous float32/float16 NCHW with H*W >= 2")
    if x.device.type == "cpu" and not INTERPRETED:
        raise BackendError("select_quant on CPU tensors needs the Triton interpreter: set TRITON_INTERPRET=1 before importing triton")
    if N == 0:
        return
    launch(x, g, W, b, a, C, H * Wd, y, bits_out, bits, N)


def launch(x, g, W, b, a, C: int, HW: int, y, bits_out, bits: tuple[int, ...], N: int) -> None:
    """The bare launch (no checks): tensors or any objects with .data_ptr() and .dtype."""
    select_quant_kernel[(N,)](x, g, W, b, a, C, HW, y, bits_out, BITS=bits, TOP=top_candidate(bits),
                              K_PAD=max(2, triton.next_power_of_2(len(bits))),
                              enable_fp_fusion=False, **launch_config(C, HW))


def launch_int(x, g, W, b, a, C: int, HW: int, q, scale, bits_out, bits: tuple[int, ...], N: int) -> None:
    """The bare launch of the integer form (no checks)."""
    select_quant_int_kernel[(N,)](x, g, W, b, a, C, HW, q, scale, bits_out, BITS=bits, TOP=top_candidate(bits),
                                  K_PAD=max(2, triton.next_power_of_2(len(bits))),
                                  enable_fp_fusion=False, **launch_config(C, HW))


def select_quant_int(x: torch.Tensor, g: torch.Tensor, W: torch.Tensor, b: torch.Tensor, a: torch.Tensor,
                     bits: Sequence[int], out_dtype: torch.dtype = torch.int8):
    """The integer form: returns (q [N,C,H,W] of `out_dtype` (int8 or a float type), scale [N], bits [N])."""
    bits = check_bits(bits)
    N, C, H, Wd = x.shape
    if not x.is_contiguous() or x.dtype not in (torch.float32, torch.float16) or H * Wd < 2:
        raise BackendError("select_quant_int: x must be contiguous float32/float16 NCHW with H*W >= 2")
    if x.device.type == "cpu" and not INTERPRETED:
        raise BackendError("select_quant_int on CPU tensors needs the Triton interpreter: set TRITON_INTERPRET=1")
    q = torch.empty(x.shape, dtype=out_dtype, device=x.device)
    scale = torch.empty(N, dtype=torch.float32, device=x.device)
    bits_out = torch.empty(N, dtype=torch.float32, device=x.device)
    if N:
        launch_int(x, g.contiguous(), W.contiguous(), b.contiguous(), a.contiguous(), C, H * Wd, q, scale, bits_out,
                   bits, N)
    return q, scale, bits_out


def select_quant(x: torch.Tensor, g: torch.Tensor, W: torch.Tensor, b: torch.Tensor, a: torch.Tensor,
                 bits: Sequence[int]) -> tuple[torch.Tensor, torch.Tensor]:
    """Allocating convenience wrapper: returns (y, bits_out)."""
    y = torch.empty_like(x, memory_format=torch.contiguous_format)
    bits_out = torch.empty(x.shape[0], dtype=torch.float32, device=x.device)
    select_quant_(x, g, W, b, a, bits, y, bits_out)
    return y, bits_out


# --- ahead-of-time compilation (PTX for TensorRT AOT plugins; runs on a machine without a GPU) ---

LAUNCH_PARAMS = ("x_ptr", "g_ptr", "w_ptr", "b_ptr", "a_ptr", "C", "HW", "y_ptr", "bits_ptr")


def _ptx_entry_params(ptx: str, name: str) -> tuple[int, int, list[str]]:
    start = ptx.index("(", ptx.index(f".entry {name}(")) + 1
    end = ptx.index(")", start)
    return start, end, [p.strip() for p in ptx[start:end].split(",") if p.strip()]


def ptx_params(ptx: str, name: str) -> list[str]:
    """The `.param` declarations of kernel `name`'s `.entry`, in order (e.g. '.param .u32 k_param_5')."""
    return _ptx_entry_params(ptx, name)[2]


def strip_unused_params(ptx: str, name: str, keep: int) -> str:
    """Drop `.entry` parameters after the first `keep` (Triton >= 3.3 appends global/profile scratch
    pointers that launchers such as TensorRT's AOT plugin runner do not pass) if the body never reads them."""
    start, end, params = _ptx_entry_params(ptx, name)
    for i in range(keep, len(params)):
        if f"[{name}_param_{i}]" in ptx[end:]:
            raise BackendError(f"kernel {name} reads hidden parameter {i} (Triton scratch memory); it cannot run "
                               "from a launcher that passes only the Python-level arguments")
    return ptx[:start] + "\n\t" + ",\n\t".join(params[:keep]) + "\n" + ptx[end:]


def aot_compile(bits: Sequence[int], dtype: str = "fp32", C: int = 64, HW: int = 96 * 96, cc: int = 80,
                static_hw: bool = False):
    """Compile the kernel to PTX for compute capability `cc` without a GPU.

    Returns (name, ptx, num_warps, shared_bytes): launch with grid (N,), block (num_warps*32,) and the
    parameters LAUNCH_PARAMS (5 input pointers, C and H*W as int32, 2 output pointers; hidden
    Triton scratch parameters stripped). `C`/`HW` only pick block sizes and the PTX is correct for any
    shape, unless `static_hw` says HW is the only H*W it will see: then HW % 16 == 0 becomes a
    divisibility hint (vectorized loads and stores). Call it in a process that has not run interpreted
    (TRITON_INTERPRET=1) kernels: the interpreter leaves triton.language patched after device-function
    calls (tl.argmax), which breaks compilation.
    """
    from triton.backends.compiler import GPUTarget

    bits = check_bits(bits)
    if dtype not in ("fp32", "fp16"):
        raise BackendError(f"aot_compile: dtype must be 'fp32' or 'fp16', got {dtype!r}")
    cfg = launch_config(C, HW)
    num_warps = cfg.pop("num_warps")
    fn = select_quant_kernel if not INTERPRETED else triton.runtime.JITFunction(select_quant_kernel.fn)
    types = dict(zip(LAUNCH_PARAMS, (f"*{dtype}", "*fp32", "*fp32", "*fp32", "*fp32", "i32", "i32", f"*{dtype}", "*fp32")))
    consts = dict(BITS=bits, TOP=top_candidate(bits), K_PAD=max(2, triton.next_power_of_2(len(bits))), **cfg)
    aligned = [i for i, (p, t) in enumerate(types.items()) if t[0] == "*" or (p == "HW" and static_hw and HW % 16 == 0)]
    src = triton.compiler.ASTSource(fn=fn, signature={**types, **{k: "constexpr" for k in consts}}, constexprs=consts,
                                    attrs={(i,): [["tt.divisibility", 16]] for i in aligned})
    kernel = triton.compile(src, target=GPUTarget("cuda", cc, 32), options=dict(num_warps=num_warps, enable_fp_fusion=False))
    name = kernel.metadata.name
    ptx = strip_unused_params(kernel.asm["ptx"], name, len(LAUNCH_PARAMS))
    return name, ptx, num_warps, kernel.metadata.shared
