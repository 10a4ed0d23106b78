"""The INT8 graph form: the integer program (cadyq.quant.lowering) traced with symbolic kernels.

Per quantized conv the graph holds

    q [int8]  = QuantizeLinear(CADyQSelect-2(x, g, W, b, a), 1, 0)   (fixed/tile/layer selection: standard ops
                                                                      before the QuantizeLinear)
    y         = Conv(DequantizeLinear(q, 1), DequantizeLinear(w_int8, w_scale, axis 0))   (no bias)
    y         = Mul(y, scale [N,1,1,1]);  y = Add(y, bias [1,C,1,1]);  then Relu / LeakyRelu if folded

so TensorRT builds the convolution as an INT8 layer with the input scale in a following kernel. q holds integers on
the top candidate's grid (`cadyq.quant.ops.on_top_grid`), whatever each tile chose, so the scale a_T / s_T is the
same for every tile (the op gives it per tile). 4- and 6-bit tiles are int8 values with fewer levels.
Where the quantized tensor is also used in float (EDSR's skip), it is DequantizeLinear(q, 1) * scale.

The ONNX Runtime form (`ScaledKernels`, `cadyq export --form ort`) holds the same integers, scales and
bits, and moves the scale before the convolution:

    q         = CADyQSelect-2(x, g, W, b, a)          (float integers; no QuantizeLinear)
    y         = Conv(q * scale [N,1,1,1], w_int8 * w_scale (float), bias)   then Relu

ONNX Runtime's CPU provider runs no integer convolution faster than its float one on most CPUs and
folds the int8 form's DequantizeLinear into a float Conv anyway, whose scale, bias and activation then
come after it as separate passes; in this form it fuses bias and activation into the Conv, keeps its
blocked layout across them, and needs no Quantize/DequantizeLinear pass per layer
(`benchmarks/integer_cpu.md`). TensorRT needs the int8 form's Q/DQ convolutions.
"""
from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

from ..quant.lowering import (IntConv2d, IntegerProgram, IntQuantizer, Kernels, QAct, ReferenceKernels, _Context,
                              _epilogue, lower)
from . import op as cadyq_op

TILE_GRADIENT = "tile_gradient"
INT_CONV_TAP = ":int"  # tap key suffix of an integer conv's output (after its folded BatchNorm and activation)


def _const(g, value):
    return g.op("Constant", value_t=value)


def _unsqueeze_nchw(g, t):
    return g.op("Unsqueeze", t, _const(g, torch.tensor([1, 2, 3], dtype=torch.int64)))


def _to_int8(g, qf, like):
    """QuantizeLinear(qf, 1, 0): float integers as int8 (the TensorRT INT8 input)."""
    q = g.op("QuantizeLinear", qf, _const(g, torch.tensor(1.0)), _const(g, torch.tensor(0, dtype=torch.int8)))
    q.setType(like.type().with_dtype(torch.int8))
    return q


class _SelectInt(torch.autograd.Function):
    """CADyQSelect v2: (x, g, W, b, a) -> (q, scale [N], bits [N]); q int8, or the float integers if not `int8`.
    Eager, the lowering's reference computes it (the graph node is the op, cadyq/export/op.py)."""

    @staticmethod
    def forward(ctx, x, grad, w, b, a, bits, int8):
        context = _Context(ReferenceKernels())
        context.grad = grad
        qa = context.kernels.select_quantize(x, IntQuantizer("full", bits, a, w, b), context)
        return qa.q.to(torch.int8) if int8 else qa.q, qa.scale.contiguous(), qa.bits

    @staticmethod
    def symbolic(g, x, grad, w, b, a, bits, int8):
        qf, scale, bo = g.op(f"{cadyq_op.DOMAIN}::{cadyq_op.OP_TYPE}", x, grad, w, b, a, bits_i=list(bits), outputs=3)
        qf.setType(x.type())
        q = _to_int8(g, qf, x) if int8 else qf
        sizes = x.type().sizes()
        vec = x.type().with_dtype(torch.float32).with_sizes([sizes[0] if sizes else None])
        scale.setType(vec)
        bo.setType(vec)
        return q, scale, bo


class _Int8(torch.autograd.Function):
    """Float integers as int8: QuantizeLinear(q, 1, 0)."""

    @staticmethod
    def forward(ctx, q):
        return q.to(torch.int8)

    @staticmethod
    def symbolic(g, q):
        return _to_int8(g, q, q)


class _Dequant(torch.autograd.Function):
    """q * scale (float), as DequantizeLinear(q, 1) * scale [N,1,1,1]."""

    @staticmethod
    def forward(ctx, q, scale):
        return q.float() * scale.view(-1, 1, 1, 1)

    @staticmethod
    def symbolic(g, q, scale):
        x = g.op("DequantizeLinear", q, _const(g, torch.tensor(1.0)), _const(g, torch.tensor(0, dtype=torch.int8)))
        y = g.op("Mul", x, _unsqueeze_nchw(g, scale))
        y.setType(q.type().with_dtype(torch.float32))
        return y


class _IntConv(torch.autograd.Function):
    """The INT8 convolution with its input scale: see the module docstring."""

    @staticmethod
    def forward(ctx, q, scale, w_q, w_scale, bias, stride, padding, dilation, groups, act, slope):
        acc = torch.round(F.conv2d(q.float(), w_q.float(), None, stride, padding, dilation, groups))
        y = acc * scale.view(-1, 1, 1, 1) * w_scale.view(1, -1, 1, 1) + bias.view(1, -1, 1, 1)
        return torch.relu(y) if act == "relu" else (F.leaky_relu(y, slope) if act == "leaky" else y)

    @staticmethod
    def symbolic(g, q, scale, w_q, w_scale, bias, stride, padding, dilation, groups, act, slope):
        xq = g.op("DequantizeLinear", q, _const(g, torch.tensor(1.0)), _const(g, torch.tensor(0, dtype=torch.int8)))
        out_c = w_q.type().sizes()[0]
        y = dq_conv(g, xq, w_q, w_scale, _const(g, torch.zeros(out_c, dtype=torch.int8)), stride, padding, dilation,
                    groups)
        return bias_act(g, g.op("Mul", y, _unsqueeze_nchw(g, scale)), bias, act, slope)


def dq_conv(g, x, w_q, w_scale, w_zero, stride, padding, dilation, groups):
    """Conv(x, DequantizeLinear(w_q) per output channel), no bias."""
    w = g.op("DequantizeLinear", w_q, w_scale, w_zero, axis_i=0)
    return g.op("Conv", x, w, strides_i=list(stride), pads_i=list(padding) * 2, dilations_i=list(dilation),
                group_i=int(groups), kernel_shape_i=list(w_q.type().sizes()[2:]))


def bias_act(g, y, bias, act, slope):
    """y + bias (per channel), then the layer's activation."""
    y = g.op("Add", y, g.op("Reshape", bias, _const(g, torch.tensor([1, -1, 1, 1], dtype=torch.int64))))
    if act == "relu":
        return g.op("Relu", y)
    if act == "leaky":
        return g.op("LeakyRelu", y, alpha_f=float(slope))
    return y


class SymbolicKernels(Kernels):
    """Kernels whose calls trace to the INT8 graph form; `emit(key, tensor)` taps a tensor (or is None)."""

    name = "onnx-int8"
    int8 = True  # q as int8 through QuantizeLinear (TensorRT's INT8 convolution input)

    def __init__(self, emit=None):
        self.emit = emit or (lambda key, t: t)

    def tile_gradient(self, lr):
        return self.emit(TILE_GRADIENT, super().tile_gradient(lr))

    def select_quantize(self, x, quant, ctx, dequant=False):
        key = getattr(quant, "key", None)
        x = x.float()
        if key:
            x = self.emit(key + ":in", x)
        if quant.mode == "full":
            q, scale, bits = _SelectInt.apply(x, ctx.grad, quant.weight, quant.bias, quant.alpha,
                                              tuple(int(b) for b in quant.bits.tolist()), self.int8)
            k = None
        else:  # standard ops, traced from the lowering's reference arithmetic
            n = x.shape[0]
            const = quant.constant_k()
            k = ctx.tile_logits.argmax(1) if const is None else torch.full((n,), const, dtype=torch.long)
            q = quant.top_integers(x)
            if const is None:
                q = quant.requantize(q, k)
            elif const != quant.n_candidates - 1:  # (the top candidate's requantization is the identity)
                q = quant.requantize(q, torch.tensor(const))
            q = _Int8.apply(q) if self.int8 else q
            scale, bits = (quant.alpha[-1] / quant.levels[-1]).expand(n), quant.bits[k]
        if key:
            bits = self.emit(key + ":bits", bits)
        return QAct(q, scale, bits, k)

    def dequantize(self, qa):
        return _Dequant.apply(qa.q, qa.scale)

    def conv(self, qa, conv: IntConv2d):
        y = _IntConv.apply(qa.q, qa.scale, conv.weight_q, conv.weight_scale, conv.bias, conv.stride, conv.padding,
                           conv.dilation, conv.groups, conv.act, conv.slope)
        return self.emit(conv.name + INT_CONV_TAP, y)


class ScaledKernels(SymbolicKernels):
    """The ONNX Runtime form (module docstring): the scale before a float convolution with a fused epilogue."""

    name = "onnx-ort"
    int8 = False

    def dequantize(self, qa):  # q * scale, once per activation (the conv and EDSR's skip share it)
        if "xs" not in qa.extra:
            qa.extra["xs"] = qa.q * qa.scale.view(-1, 1, 1, 1)
        return qa.extra["xs"]

    def conv(self, qa, conv: IntConv2d):
        # plain ops: the exporter folds the weights into one float initializer. A DequantizeLinear weight would be
        # folded by ONNX Runtime only after its layout transformer has passed the conv by (unblocked, 1.4x slower).
        w = conv.weight_q.float() * conv.weight_scale.view(-1, 1, 1, 1)
        y = F.conv2d(self.dequantize(qa), w, conv.bias, conv.stride, conv.padding, conv.dilation, conv.groups)
        return self.emit(conv.name + INT_CONV_TAP, _epilogue(y, conv))


class ExportedProgram(nn.Module):
    """program(lr) -> (sr, bits) with taps: tile gradient, every dynamic/fixed quantizer's input and
    bits, the fixed output quantizers' input and output, every float conv's input and output, keyed as
    `attach_taps` keys the fake-quant model (so `cadyq check` compares them), and every integer conv's
    output as `<conv>:int` (checked locally against the model's conv + folded epilogue)."""

    def __init__(self, program: IntegerProgram, tap, kernels=SymbolicKernels):
        super().__init__()
        self.program = program
        self.order: list[str] = []
        self._calls: dict[str, int] = {}

        def emit(key, t):
            self.order.append(key)
            return tap(key, t)

        self._emit = emit
        program.use(kernels(emit))
        for name, mod in program.net.named_modules():
            if isinstance(mod, (nn.Conv2d, nn.ConvTranspose2d)):
                mod.register_forward_pre_hook(self._pre(name))
                mod.register_forward_hook(self._post(name))
            if type(mod).__name__ == "IntFakeQuant":
                mod.register_forward_pre_hook(self._pre(name))
                mod.register_forward_hook(self._post(name))

    def _key(self, name):
        c = self._calls.get(name, 0)
        return name if c == 0 else f"{name}#{c}"

    def _pre(self, name):
        def hook(mod, args):
            return (self._emit(self._key(name) + ":in", args[0]),) + tuple(args[1:])
        return hook

    def _post(self, name):
        def hook(mod, args, out):
            key = self._key(name)
            self._calls[name] = self._calls.get(name, 0) + 1
            return self._emit(key, out)
        return hook

    def forward(self, lr):
        self.order.clear()
        self._calls.clear()
        sr, bits = self.program(lr)
        return sr.float(), bits.float()


def prepare(model: nn.Module, tap, kernels=SymbolicKernels) -> ExportedProgram:
    """The traceable integer program of `model` (a copy; the model is not changed); `kernels`: SymbolicKernels (the
    int8 form) or ScaledKernels (the ONNX Runtime form)."""
    return ExportedProgram(lower(model), tap, kernels)
