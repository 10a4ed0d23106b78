"""The integer program's kernels in Triton: the native backend on CUDA (and, slowly, on the CPU under
TRITON_INTERPRET=1, which is how CI checks them).

Activations are channels_last (NHWC memory). A quantized conv: `select_quantize` (integer statistics of the input on
the quantizer's top grid from the producing conv's epilogue when its output is the input here, else one reduction
pass; then one pass that selects and writes int8 on the top grid), then `conv2d_int8` (implicit GEMM, int32
accumulation, epilogue with the layer's input scale a_T / s_T, weight scale, bias and activation, and the statistics
of its own output on the next layer's top grid). Float layers stay in torch (fp16 channels_last under the native
backend's autocast on CUDA).
"""
from __future__ import annotations

import weakref

import torch

from ..quant.lowering import IntConv2d, IntQuantizer, Kernels, QAct
from .conv_int8 import conv2d_int8, pack_weight
from .quant_nhwc import select_quantize

STATS_GRID = "triton_stats_grid"  # conv.cache: the top grid of the quantizer that reads the conv's output


class TritonKernels(Kernels):
    name = "triton"

    def __init__(self, out_dtype=torch.float32):
        self.out_dtype = out_dtype
        self._outputs: dict[int, tuple] = {}  # id(conv output) -> (weakref to it, its conv, the statistics' grid, stats)
        self._quants: dict[int, tuple] = {}  # id(quantizer) -> (quantizer, top grid, its step t, tables on the device)

    def _constants(self, quant: IntQuantizer, device) -> tuple[tuple[float, float], float, torch.Tensor]:
        """((a_T, s_T), t = a_T / s_T, tables) of a quantizer, read once: no device sync per call (CUDA graphs)."""
        entry = self._quants.get(id(quant))
        if entry is None or entry[0] is not quant:
            grid = (float(quant.alpha[-1]), float(quant.levels[-1]))
            entry = (quant, grid, quant.grid, quant.tables().to(device))
            self._quants[id(quant)] = entry
        return entry[1:]

    def _stats_of(self, x: torch.Tensor, grid: tuple[float, float]):
        """The statistics of x on `grid` if the conv that wrote x computed them; else None, and that conv computes
        them from the next forward on (the program's structure is the same every time)."""
        entry = self._outputs.pop(id(x), None)
        if entry is None or entry[0]() is not x:
            return None
        _, conv, stats_grid, stats = entry
        if stats_grid == grid:
            return stats
        conv.cache[STATS_GRID] = grid
        return None

    def select_quantize(self, x, quant, ctx, dequant=False):
        x = x.contiguous(memory_format=torch.channels_last)
        grid, t, tables = self._constants(quant, x.device)
        if quant.mode == "full":
            k_in = None
            stats = self._stats_of(x, grid)
        else:
            const = quant.constant_k()
            k_in = (ctx.tile_logits.argmax(1) if const is None
                    else torch.full((x.shape[0],), const, dtype=torch.int32, device=x.device))
            stats = None
        dev = x.device
        q, scale, bits, k, deq = select_quantize(
            x, stats, ctx.grad, quant.weight, quant.bias, grid, t, tables, quant.bits.to(dev), k_in,
            dequant=dequant, deq_dtype=x.dtype if x.is_floating_point() else torch.float32)
        return QAct(q, scale, bits, k.long(), {"deq": deq, "t": t})

    def dequantize(self, qa):
        deq = qa.extra.get("deq")
        return deq if deq is not None else qa.q.float() * qa.scale.view(-1, 1, 1, 1)

    def conv(self, qa, conv: IntConv2d):
        if "triton_w" not in conv.cache:
            conv.cache["triton_w"] = pack_weight(conv.weight_q, conv.groups).to(qa.q.device)
        grid = conv.cache.get(STATS_GRID)
        y, stats = conv2d_int8(qa.q, conv.cache["triton_w"], conv.weight_scale, conv.bias, qa.extra["t"],
                               tuple(conv.weight_q.shape[2:]), conv.stride[0], conv.padding[0], conv.act, conv.slope,
                               out_dtype=self.out_dtype, stats_grid=grid)
        if len(self._outputs) > 256:  # outputs that fed float layers: drop the dead ones
            self._outputs = {k: v for k, v in self._outputs.items() if v[0]() is not None}
        self._outputs[id(y)] = (weakref.ref(y), conv, grid, stats)
        return y

    def fake_quant(self, x, alpha, s):
        return super().fake_quant(x, alpha.to(x.device), s).to(x.dtype)
