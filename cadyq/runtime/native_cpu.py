"""EDSR's integer program on the CPU with 8-bit activations, batches of tiles per call.

    lr --head (float)--> h --C: quantize, select--> a_0 (u8)
    block i:  a_i --conv1 INT8 + ReLU--> u8 --C: select, table--> u8 --conv2 INT8--> y_i (u8, its 8-bit quantizer)
              C: r = y_i + a_i, onto the next block's grid, select, table --> a_{i+1} (u8)      (last block: r float)
    r --last body conv--> + h --> upsampler and tail --> + mean (in the tail's bias) --> sr
          (with calibrated clips: the last body conv, the upsampler and the tail INT8 with u8 outputs, u8 pixel
          shuffles, the tail reading its input's sub-pixel phases; without them, float as in the papers)

Every quantized convolution is one oneDNN call over the whole batch (one input scale per layer: the lowering's
arithmetic, `cadyq.quant.lowering`) writing u8 with its scale, bias and ReLU fused; the selection, the re-quantization
tables and the residual stream are single passes over 8-bit data in C (`cadyq.kernels.cpu`); Python runs once per
layer and batch. The float layers (head, last body conv, and the upsampler where it is not INT8) run channels_last in
bf16 where the CPU computes in it. Other backbones run the lowered module graph on the same kernels
(`OneDNNKernels`), with float activations.
"""
from __future__ import annotations

import contextlib
from dataclasses import dataclass

import torch
import torch.nn as nn

from .. import interrupt
from ..kernels.cpu import onednn as K
from ..quant.gdq import tile_entropy
from ..quant.lowering import IntConv2d, IntegerProgram, IntFakeQuant, IntQuantizer
from ..quant.ops import levels
from .nhwc import NHWCPixelShuffle, ijc_order

CL = torch.channels_last


def unsupported(program: IntegerProgram) -> str | None:
    """None when `EDSRProgram` runs this lowered model, else why not."""
    net = program.net
    if program.config.name != "edsr":
        return f"{program.config.name}: the 8-bit program is EDSR's"
    if program.config.res_scale != 1:
        return "residual scaling other than 1"
    for block in list(net.body)[:-1]:
        conv1, conv2 = block.body[0], block.body[2]
        if not (isinstance(conv1, IntConv2d) and isinstance(conv2, IntConv2d) and conv1.act == "relu"
                and isinstance(getattr(block, "input_quant", None), IntQuantizer)
                and isinstance(getattr(block, "body_output_quant", None), IntFakeQuant)):
            return "a residual block the 8-bit program does not know"
    return None


@dataclass
class _Block:
    quant_in: K.Selection  # the block input's quantizer (its output is also the skip)
    conv1: K.Int8Conv  # u8 out on quant_mid's grid, ReLU fused
    quant_mid: K.Selection
    conv2: K.Int8Conv  # u8 out on the block's fixed 8-bit output quantizer
    a_out: float  # that quantizer's clip


class EDSRProgram:
    """program(lr [N,3,h,w] float, channels_last[, out]) -> (sr [N,3,sh,sw] float32, bits [N,L]); `out`: a contiguous
    float32 buffer the SR may be written into. `calls` (when a list) records each quantized convolution as (name,
    tiles, output dtype)."""

    def __init__(self, program: IntegerProgram, float_precision: str = "fp32", form: str | None = None):
        why = unsupported(program)
        if why:
            raise ValueError(why)
        net = program.net
        self.net, self.info = net, program.info
        self.bf16 = float_precision == "bf16"
        self.dynamic = program.dynamic  # the dynamic quantizers in the order of the bits [N, L]
        self.calls: list | None = None
        self.taps: dict | None = None  # {layer: [float inputs]} while parity tests watch (cadyq.quant.parity)
        blocks = list(net.body)[:-1]
        self.blocks = []
        for block in blocks:
            qin, qmid = K.Selection.of(block.input_quant), K.Selection.of(block.body[2].quant)
            fq = block.body_output_quant
            a_out, s_out = float(fq.alpha), float(levels(fq.bits))
            self.blocks.append(_Block(qin, K.Int8Conv(block.body[0], qin.t, (qmid.a, qmid.s), form), qmid,
                                      K.Int8Conv(block.body[2], qmid.t, (a_out, s_out), form), a_out))
        last = net.body[-1]  # the body's last conv: INT8 where the lowering made it so (with the upsampler), else float
        self.last_quant = K.Selection.of(last.quant) if isinstance(last, IntConv2d) else None
        self.last_conv = K.Int8Conv(last, self.last_quant.t, None, form) if self.last_quant else last
        (self.head,) = net.head
        width = max(q.n_candidates for q in self.dynamic)
        self.bits_table = torch.stack([nn.functional.pad(q.bits, (0, width - q.n_candidates)) for q in self.dynamic])
        self.upsampler = self._int8_upsampler(net, form)

    def _int8_upsampler(self, net, form):
        """[(Int8Conv, r)] of the upsampler and tail where the lowering made them integer (calibrated clips), else None."""
        up, tail = net.tail[0], net.tail[1]
        mods = list(up) + [tail]
        if not isinstance(tail, IntConv2d):
            return None
        convs = [m for m in mods if isinstance(m, IntConv2d)]
        shuffles = [m.upscale_factor for m in mods if isinstance(m, nn.PixelShuffle)]
        quants = [c.quant for c in convs]
        self.up_quant = K.Selection.of(quants[0])  # the upsampler input's fixed 8-bit quantizer
        chain = []
        for i, (conv, r) in enumerate(zip(convs, shuffles + [1])):
            if r > 1:  # output channels in (i, j, c) order: the u8 pixel shuffle is a copy of whole C-channel runs
                conv = _reordered(conv, ijc_order(conv.out_channels // (r * r), r))
            else:  # the tail: the mean shift folded into its bias; it reads the last upsampler conv's output unshuffled
                conv = _phase_conv(conv, shuffles[-1], net.add_mean.shift.reshape(-1))
            out = (float(quants[i + 1].alpha[0]), 127.0) if i + 1 < len(convs) else None
            chain.append((K.Int8Conv(conv, float(quants[i].alpha[0]) / 127.0, out, form), r))
        chain[-2] = (chain[-2][0], 1)  # its shuffle moves to the tail's small float output
        chain[-1] = (chain[-1][0], shuffles[-1])
        return chain

    def _record(self, name: str, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        if self.calls is not None:
            self.calls.append((name, x.shape[0], y.dtype))
        return y

    def _float(self):
        return torch.autocast("cpu", dtype=torch.bfloat16) if self.bf16 else contextlib.nullcontext()

    @torch.inference_mode()
    def __call__(self, lr: torch.Tensor, out: torch.Tensor | None = None):
        net, n = self.net, lr.shape[0]
        lr = lr.float().contiguous(memory_format=CL)
        grad = K.tile_gradient(lr)
        with self._float():  # the head conv without the lowering's hooks (they need its per-forward context)
            h = self.head._conv_forward(net.sub_mean(lr), self.head.weight, self.head.bias).contiguous(memory_format=CL)
        group = K.Group(grad, self._tile_logits(h, grad, lr))
        b0 = self.blocks[0]
        self._tap(0, lambda: h)
        a, k = K.quantize_select(h, b0.quant_in, group)
        ks = []
        for i, b in enumerate(self.blocks):
            interrupt.check()
            c1 = self._record(f"body.{i}.body.0", a, b.conv1(a))
            self._tap(2 * i + 1, lambda: (c1.float() - 128) / b.quant_mid.s * b.quant_mid.a)  # as oneDNN rounded it
            k_mid = K.select_u8(c1, b.quant_mid, group)
            y = self._record(f"body.{i}.body.2", c1, b.conv2(c1))
            ks += [k, k_mid]
            if i + 1 < len(self.blocks):
                self._tap(2 * i + 2, lambda: _residual(y, b.a_out, a, b.quant_in.a))
                a, k = K.residual_select(y, b.a_out, a, b.quant_in.a, self.blocks[i + 1].quant_in, group)
            elif self.last_quant is not None:  # its output added into the head's (the global skip) by oneDNN
                a, _ = K.residual_select(y, b.a_out, a, b.quant_in.a, self.last_quant, group)
                x = self._record("body.last", a, self.last_conv(a, accum=h))
            else:
                r = K.residual_float(y, b.a_out, a, b.quant_in.a, torch.bfloat16 if self.bf16 else torch.float32)
                with self._float():
                    x = self.last_conv(r) + h
        if self.upsampler is None:
            with self._float():
                sr = net.add_mean(net.tail(x))
        else:
            sr = self._run_upsampler(K.quantize_select(x, self.up_quant, group)[0], out)
        return sr.float(), self._bits(torch.stack(ks, 1).long())

    def _bits(self, k: torch.Tensor) -> torch.Tensor:
        """[N, L] bit-widths from the candidates chosen [N, L] (in the order of `dynamic`)."""
        return torch.gather(self.bits_table.expand(k.shape[0], -1, -1), 2, k.unsqueeze(2)).squeeze(2)

    def _tap(self, layer: int, value):
        if self.taps is not None:
            self.taps[layer].append(value().float())

    def _run_upsampler(self, u, out):
        *ups, (tail, r) = self.upsampler
        for i, (conv, r_i) in enumerate(ups):
            y = self._record(f"upsampler.{i}", u, conv(u))
            u = NHWCPixelShuffle(r_i)(y).contiguous(memory_format=CL) if r_i > 1 else y
        y = self._record(f"upsampler.{len(ups)}", u, tail(u))  # [N, r*r*3, h, w] channels last: (i, j, c) order
        n, _, h, w = y.shape
        sub = y.permute(0, 2, 3, 1).view(n, h, w, r, r, 3).permute(0, 5, 1, 3, 2, 4)  # [N, 3, h, r, w, r]: the shuffle
        if out is None:
            return sub.reshape(n, 3, h * r, w * r)
        out.view(n, 3, h, r, w, r).copy_(sub)  # one copy, into the caller's NCHW buffer
        return out

    def _tile_logits(self, h, grad, lr):
        net = self.net
        if hasattr(net, "gdq"):
            k = net.gdq.decide(h.float(), tile_entropy(lr))[1]
            return nn.functional.one_hot(k, len(net.gdq.bits)).float()
        if hasattr(net, "tile_selector"):
            return net.tile_selector(grad)
        return None


def _residual(y, a_y, skip, a_skip):
    """The residual sum the C kernels compute, in torch (parity taps)."""
    return (y.float() - 128).clamp_min(-127) / 127.0 * a_y + (skip.float() - 128) / 127.0 * a_skip


def _phase_conv(conv: IntConv2d, r: int, extra_bias: torch.Tensor) -> IntConv2d:
    """A 3x3 conv over the pixel shuffle (r) of a tensor, as a 3x3 conv over the tensor itself: input channels in
    (a, b, c) order (a, b the sub-pixel row and column), output channels in (i, j, o) order (its output's pixel
    shuffle is the original conv's output). The same products and sums: the same integers out, without shuffling the
    large input (x4: 9.4 MB of uint8 per tile into its 3-channel output)."""
    w = conv.weight_q
    o, c = w.shape[:2]
    out = torch.zeros(r * r * o, r * r * c, 3, 3, dtype=w.dtype)
    for i in range(r):
        for j in range(r):
            for dy in (-1, 0, 1):
                for dx in (-1, 0, 1):
                    a, ky = (i + dy) % r, (i + dy) // r + 1
                    b, kx = (j + dx) % r, (j + dx) // r + 1
                    rows = slice((i * r + j) * o, (i * r + j + 1) * o)
                    cols = slice((a * r + b) * c, (a * r + b + 1) * c)
                    out[rows, cols, ky, kx] = w[:, :, dy + 1, dx + 1]
    rep = lambda t: t.repeat(r * r)  # noqa: E731 - per output channel, for each sub-pixel position
    return IntConv2d(conv.name, out, rep(conv.weight_scale).contiguous(), rep(conv.bias + extra_bias), (1, 1), (1, 1),
                     (1, 1), 1, None, conv.act, conv.slope)


def _reordered(conv: IntConv2d, order: torch.Tensor, extra_bias: torch.Tensor | None = None) -> IntConv2d:
    """A copy of `conv` with its output channels in `order` (and `extra_bias` added to its bias)."""
    bias = conv.bias[order] + (extra_bias if extra_bias is not None else 0)
    return IntConv2d(conv.name, conv.weight_q[order].contiguous(), conv.weight_scale[order].contiguous(), bias,
                     conv.stride, conv.padding, conv.dilation, conv.groups, None, conv.act, conv.slope)
