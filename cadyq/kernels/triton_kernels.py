"""The integer program's kernels in Triton: the native backend on CUDA (and, slowly, on the CPU under
TRITON_INTERPRET=1, which is how CI checks them).

Activations are channels_last (NHWC memory). A quantized conv: `select_quantize` (statistics from the
producing conv's epilogue when its output is the input here, else one reduction pass; then one pass
that selects and writes int8), then `conv2d_int8` (implicit GEMM, int32 accumulation, epilogue with the
per-tile scale, weight scale, bias and activation, and the statistics of its own output for the next
layer). Float layers stay in torch (fp16 channels_last under the native backend's autocast on CUDA).
"""
from __future__ import annotations

import weakref

import torch

from ..quant.lowering import IntConv2d, Kernels, QAct
from .conv_int8 import conv2d_int8, pack_weight
from .quant_nhwc import select_quantize


class TritonKernels(Kernels):
    name = "triton"

    def __init__(self, out_dtype=torch.float32):
        self.out_dtype = out_dtype
        self._stats: dict[int, tuple[weakref.ref, torch.Tensor]] = {}  # conv output -> its tile statistics

    def _stats_of(self, x: torch.Tensor):
        entry = self._stats.pop(id(x), None)
        if entry is not None and entry[0]() is x:
            return entry[1]
        return None

    def select_quantize(self, x, quant, ctx, dequant=False):
        x = x.contiguous(memory_format=torch.channels_last)
        if quant.mode == "full":
            k_in = None
            stats = self._stats_of(x)
        else:
            const = quant.constant_k()
            k_in = (ctx.tile_logits.argmax(1) if const is None
                    else torch.full((x.shape[0],), const, dtype=torch.int32, device=x.device))
            stats = None
        dev = x.device
        q, scale, bits, k, deq = select_quantize(
            x, stats, ctx.grad, quant.weight, quant.bias, quant.alpha.to(dev), quant.levels.to(dev),
            quant.bits.to(dev), k_in, dequant=dequant, deq_dtype=x.dtype if x.is_floating_point() else torch.float32)
        return QAct(q, scale, bits, k.long(), {"deq": deq})

    def dequantize(self, qa):
        deq = qa.extra.get("deq")
        return deq if deq is not None else qa.q.float() * qa.scale.view(-1, 1, 1, 1)

    def conv(self, qa, conv: IntConv2d):
        if "triton_w" not in conv.cache:
            conv.cache["triton_w"] = pack_weight(conv.weight_q, conv.groups).to(qa.q.device)
        y, stats = conv2d_int8(qa.q, conv.cache["triton_w"], conv.weight_scale, conv.bias, qa.scale,
                               tuple(conv.weight_q.shape[2:]), conv.stride[0], conv.padding[0], conv.act, conv.slope,
                               out_dtype=self.out_dtype, stats=True)
        if len(self._stats) > 256:  # outputs that fed float layers: drop the dead ones
            self._stats = {k: v for k, v in self._stats.items() if v[0]() is not None}
        self._stats[id(y)] = (weakref.ref(y), stats)
        return y

    def fake_quant(self, x, alpha, s):
        return super().fake_quant(x, alpha.to(x.device), s).to(x.dtype)
