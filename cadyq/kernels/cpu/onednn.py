"""CPU integer kernels: oneDNN INT8 convolutions over batches of tiles, and cadyq's C kernels for the 8-bit
activations between them (statistics, selection, re-quantization tables, the residual stream: quant.c).

An activation between quantized convolutions is uint8, u = v + 128 with v an integer on its quantizer's top grid
(`cadyq.quant.lowering`): the producing convolution writes it with its scale, bias and ReLU fused (oneDNN's
epilogue and output quantization), a C pass reads its statistics, chooses each tile's candidate and re-quantizes it
in place through a 256-entry table. Every tile of a layer then has the same input scale, so one convolution call
serves a whole batch whatever the tiles chose.

Two forms of the convolution, as `cadyq.hardware.int8_range()` says:
- "full" (VNNI, AMX): oneDNN's u8 x s8 -> s32 convolution with input zero point 128;
- "7bit" (AVX2 without VNNI, whose vpmaddubsw adds pairs of u8 x s8 products in int16 and saturates above 7-bit
  inputs): a float32 convolution of the same integers, exact (|sums| < 2^24 for 8-bit inputs and weights up to
  1040 taps), with the epilogue and the output quantization in torch, op for op as the reference.
4- and 6-bit tiles are int8 values here: neither AVX2, VNNI nor AMX has 4-bit arithmetic.
"""
from __future__ import annotations

import ctypes

import torch
import torch.nn.functional as F

from ...errors import BackendError
from ...hardware import int8_range
from ...quant.lowering import IntConv2d, IntQuantizer, Kernels, QAct
from ...quant.ops import fake_quant
from . import build

CL = torch.channels_last
ZP = 128  # u = v + 128


def available() -> str | None:
    """None when oneDNN INT8 convolutions run here, else why not (one line)."""
    if not torch.backends.mkldnn.is_available():
        return "this torch build has no oneDNN (mkldnn); the native CPU backend needs it"
    if not hasattr(torch.ops.onednn, "qconv2d_pointwise") or not hasattr(torch.ops.onednn, "qconv_prepack"):
        return f"torch {torch.__version__} has no torch.ops.onednn.qconv2d_pointwise; install torch >= 2.4"
    if build.library() is None:
        return f"cadyq's C kernels are unavailable ({build.why_unavailable()})"
    return None


def library():
    """The C kernels, or BackendError saying why they cannot be built or loaded here."""
    lib = build.library()
    if lib is None:
        raise BackendError(f"native backend: cadyq's C kernels are unavailable ({build.why_unavailable()})")
    return lib


class Int8Conv:
    """One integer convolution over a batch: uint8 input on a grid of step `t_in`, int8 weights with their scale,
    the bias and the activation fused; out = (a, s): uint8 output v + 128, v = round(clamp(y, -a, a) / a * s), the
    consuming quantizer's top grid; out = None: float32 output."""

    def __init__(self, conv: IntConv2d, t_in: float, out: tuple[float, float] | None = None, form: str | None = None):
        self.form = form or int8_range()
        self.stride, self.padding, self.dilation, self.groups = (list(conv.stride), list(conv.padding),
                                                                  list(conv.dilation), conv.groups)
        self.act, self.slope, self.t_in, self.out = conv.act, conv.slope, float(t_in), out
        if conv.act == "leaky" and out is not None:
            raise BackendError("oneDNN's quantized convolution fuses no LeakyReLU before an 8-bit output")
        self.w_scale = conv.weight_scale.float().contiguous()
        self.bias = conv.bias.float().contiguous()
        if self.form == "full":
            self.w_zp = torch.zeros(conv.out_channels, dtype=torch.int64)
            self.packed = torch.ops.onednn.qconv_prepack(conv.weight_q, self.w_scale, self.t_in, ZP, self.stride,
                                                         self.padding, self.dilation, self.groups, None)
        self.weight = conv.weight_q.float().contiguous(memory_format=CL)
        self.scale = (self.t_in * self.w_scale).view(1, -1, 1, 1)  # t * w_scale, as the reference multiplies

    def float_output(self, u: torch.Tensor) -> torch.Tensor:
        """The float output before the output quantization, in the reference's order of operations ("7bit" form)."""
        acc = F.conv2d(u.float() - ZP, self.weight, None, self.stride, self.padding, self.dilation, self.groups)
        y = acc * self.scale + self.bias.view(1, -1, 1, 1)
        return y.relu_() if self.act == "relu" else F.leaky_relu_(y, self.slope) if self.act == "leaky" else y

    def __call__(self, u: torch.Tensor, accum: torch.Tensor | None = None) -> torch.Tensor:
        """accum (float output only): a float32 or bfloat16 tensor of the output's shape that the output is added
        into, in place (oneDNN's sum post-op), and returned."""
        if accum is not None:
            if self.out is not None or self.act != "none":
                raise BackendError("internal: a convolution accumulates into a float tensor only with a float output")
            if self.form == "full":
                return torch.ops.onednn.qconv2d_pointwise.binary(
                    u, self.t_in, ZP, self.packed, self.w_scale, self.w_zp, accum, self.bias, self.stride, self.padding,
                    self.dilation, self.groups, 1.0, 0, accum.dtype, 1.0, 0, "sum", 1.0, "none", [], "")
            return accum.add_(self.float_output(u))
        if self.form == "full":
            a, s = self.out or (1.0, 1.0)
            y = torch.ops.onednn.qconv2d_pointwise(
                u, self.t_in, ZP, self.packed, self.w_scale, self.w_zp, self.bias, self.stride, self.padding,
                self.dilation, self.groups, a / s if self.out else 1.0, ZP if self.out else 0,
                torch.uint8 if self.out else torch.float32, "relu" if self.act == "relu" else "none", [], "")
            return F.leaky_relu_(y, self.slope) if self.act == "leaky" else y
        y = self.float_output(u)
        if self.out is None:
            return y
        a, s = self.out
        return (torch.round(torch.maximum(torch.minimum(y, torch.tensor(a)), torch.tensor(-a)) / a * s) + ZP).to(torch.uint8)


class Selection:
    """What the C kernels need of a dynamic quantizer: its top grid (a_T, s_T), its re-quantization tables, which
    of them are the identity (the top candidate: no pass), and the selector's weights (mode "full")."""

    def __init__(self, quant: IntQuantizer):
        self.quant = quant
        self.a, self.s, self.t = float(quant.alpha[-1]), float(quant.levels[-1]), quant.grid
        self.tables = quant.tables().contiguous()
        # v = -128 (u = 0) never reaches a quantizer: the C passes round into [-s_T, s_T], and the convolutions that
        # write a quantizer's input end in a ReLU; so a table equal to the identity on 1..255 needs no pass
        ident = torch.arange(1, 256, dtype=torch.uint8)
        self.identity = torch.tensor([int(torch.equal(t[1:], ident)) for t in self.tables], dtype=torch.int32)
        self.full = quant.mode == "full"
        self.w = quant.weight.float().contiguous() if self.full else None
        self.b = quant.bias.float().contiguous() if self.full else None

    @staticmethod
    def of(quant: IntQuantizer) -> "Selection":
        sel = getattr(quant, "_cpu_selection", None)
        if sel is None:
            sel = quant._cpu_selection = Selection(quant)
        return sel

    def args(self, group: "Group"):
        """The trailing arguments of the C selection kernels, and the k [N] (int32) they fill."""
        k_in, k_out = None, torch.empty(group.n, dtype=torch.int32)
        const = self.quant.constant_k()
        if const is not None:
            k_in = group.constant(const)
        elif self.quant.mode == "tile":
            k_in = group.k_tile
        p = _ptr
        return (p(group.grad if self.full else None), p(self.w), p(self.b), self.quant.n_candidates, p(k_in),
                ctypes.c_float(self.t), p(self.tables), p(self.identity), p(k_out)), k_out


class Group:
    """What every quantizer of a group of tiles reads besides its input, prepared once: the tiles' gradient (CADyQ's
    selector) and the model-level tile choice (tile mode: Granular-DQ, CADyQ's tile selector)."""

    def __init__(self, grad: torch.Tensor, tile_logits: torch.Tensor | None = None):
        self.n = grad.shape[0]
        self.grad = grad.float().contiguous()
        self.k_tile = None if tile_logits is None else tile_logits.argmax(1).to(torch.int32)
        self._const: dict[int, torch.Tensor] = {}

    def constant(self, k: int) -> torch.Tensor:
        if k not in self._const:
            self._const[k] = torch.full((self.n,), k, dtype=torch.int32)
        return self._const[k]


def _ptr(t: torch.Tensor | None):
    return None if t is None else t.data_ptr()


def _nhwc(x: torch.Tensor) -> tuple[int, int, int]:
    n, c, h, w = x.shape
    if not x.is_contiguous(memory_format=CL):
        raise BackendError("internal: the C kernels take channels_last tensors")
    return n, h * w, c


def select_u8(u: torch.Tensor, sel: Selection, group: Group) -> torch.Tensor:
    """In place on a uint8 batch a convolution wrote on sel's top grid; returns k [N]."""
    n, hw, c = _nhwc(u)
    args, k = sel.args(group)
    if library().cadyq_select_u8(u.data_ptr(), n, hw, c, *args) != 0:
        raise BackendError(f"{c} channels: the C kernels take at most 1024")
    return k


def quantize_select(x: torch.Tensor, sel: Selection, group: Group) -> tuple[torch.Tensor, torch.Tensor]:
    """A float batch (float32 or bfloat16, channels_last) onto sel's top grid, then chosen and re-quantized: (u, k)."""
    x = x.contiguous(memory_format=CL)
    if x.dtype not in (torch.float32, torch.bfloat16):
        x = x.float()
    n, hw, c = _nhwc(x)
    u = torch.empty(x.shape, dtype=torch.uint8, memory_format=CL)
    args, k = sel.args(group)
    if library().cadyq_quantize_select(x.data_ptr(), int(x.dtype == torch.bfloat16), u.data_ptr(), n, hw, c,
                                       ctypes.c_float(sel.a), ctypes.c_float(sel.s), *args) != 0:
        raise BackendError(f"{c} channels: the C kernels take at most 1024")
    return u, k


def residual_select(y: torch.Tensor, a_y: float, skip: torch.Tensor, a_skip: float, sel: Selection,
                    group: Group) -> tuple[torch.Tensor, torch.Tensor]:
    """EDSR's residual stream: y / 127 * a_y + skip / 127 * a_skip (two 8-bit batches), onto sel's grid, chosen and
    re-quantized: (u, k)."""
    n, hw, c = _nhwc(y)
    u = torch.empty(y.shape, dtype=torch.uint8, memory_format=CL)
    args, k = sel.args(group)
    if library().cadyq_residual_select(y.data_ptr(), ctypes.c_float(a_y), skip.data_ptr(), ctypes.c_float(a_skip),
                                       u.data_ptr(), n, hw, c, ctypes.c_float(sel.a), ctypes.c_float(sel.s), *args) != 0:
        raise BackendError(f"{c} channels: the C kernels take at most 1024")
    return u, k


def residual_float(y: torch.Tensor, a_y: float, skip: torch.Tensor, a_skip: float, dtype) -> torch.Tensor:
    """The same sum as float32 or bfloat16, for a float layer."""
    out = torch.empty(y.shape, dtype=dtype, memory_format=CL)
    library().cadyq_residual_float(y.data_ptr(), ctypes.c_float(a_y), skip.data_ptr(), ctypes.c_float(a_skip),
                                   y.numel(), out.data_ptr(), int(dtype == torch.bfloat16))
    return out


def tile_gradient(lr: torch.Tensor) -> torch.Tensor:
    """`cadyq.quant.ops.tile_gradient` of float32 channels_last tiles in one C pass: [N, 2], equal to float rounding."""
    lr = lr.float().contiguous(memory_format=CL)
    n, _, h, w = lr.shape
    out = torch.empty(n, 2)
    if library().cadyq_tile_gradient(lr.data_ptr(), n, h, w, out.data_ptr()) != 0:
        raise MemoryError("tile gradient")
    return out


class OneDNNKernels(Kernels):
    """The lowering's kernels on the CPU (`program.use(OneDNNKernels())`): every quantizer's statistics, choice and
    re-quantization in one C pass over the batch, every quantized convolution one INT8 call over the batch with a
    float32 output. The native backend runs EDSR through `cadyq.runtime.native_cpu` on the same kernels with 8-bit
    outputs; other backbones run this way."""

    name = "onednn"

    def __init__(self, form: str | None = None):
        why = available()
        if why:
            raise BackendError(why)
        self.form = form or int8_range()
        library()
        self.notes = [] if build.origin() == "compiled for this CPU" else [f"C kernels: the {build.origin()}"]

    def select_quantize(self, x, quant, ctx, dequant=False):
        sel = Selection.of(quant)
        u, k = quantize_select(x, sel, Group(ctx.grad, ctx.tile_logits))
        k = k.long()
        return QAct(u, torch.full((u.shape[0],), sel.t), quant.bits[k], k)

    def dequantize(self, qa):
        return (qa.q.float() - ZP) * qa.scale.view(-1, 1, 1, 1)

    def conv(self, qa, conv):
        t = float(qa.scale[0])
        key = ("int8", self.form, t)
        if key not in conv.cache:
            conv.cache[key] = Int8Conv(conv, t, None, self.form)
        return conv.cache[key](qa.q)

    def fake_quant(self, x, alpha, s):
        return fake_quant(x.float(), alpha, s)
