"""Integer kernels for the CPU: oneDNN INT8 convolutions (torch.ops.onednn) and cadyq's C kernels.

One tile at a time (N = 1): the per-tile scale t = a_k/s_k is the convolution's input scale, so
oneDNN applies it, the weight scale, the bias and a ReLU in its epilogue; nothing else touches the
output. The input is uint8 with a zero point (oneDNN's u8 x s8 -> s32 convolution):

- "full" range (CPUs with VNNI or AMX, which accumulate u8 x s8 products in 32 bits): u = q + 128.
- "7bit" (AVX2 without VNNI): vpmaddubsw adds pairs of u8 x s8 products in int16 and saturates for
  u8 above 127, so every input must stay within 0..127. 4- and 6-bit tiles (|q| <= 31) take
  u = q + 64. 8-bit tiles (|q| <= 127) do not fit: `eight_bit="float"` (the default: faster here)
  runs them as a float32 convolution of q*t with the dequantized int8 weights (the fake-quant
  arithmetic); `eight_bit="halves"` keeps them integer, split into two 7-bit halves
  q = hi + lo with hi = clamp(q, -64, 63), two convolutions, the second accumulating into the first
  (oneDNN's sum post-op): exact, but two INT8 convolutions cost more than one float32 one on AVX2.

Which one is used is `cadyq.hardware.int8_range()` (a convolution of known integers, run once).
Statistics, selection and quantization of a tile are one C call (two passes over the tile, which
is in cache); LeakyReLU/PReLU, which oneDNN's quantized convolution does not fuse, are one in-place
pass. 4- and 6-bit tiles are int8 values here: neither AVX2, VNNI nor AMX has 4-bit arithmetic.
"""
from __future__ import annotations

import ctypes

import torch
import torch.nn.functional as F

from ...errors import BackendError
from ...hardware import int8_range
from ...quant.lowering import IntConv2d, IntQuantizer, Kernels, QAct, ReferenceKernels
from . import build

_CL = torch.channels_last


def available() -> str | None:
    """None when oneDNN INT8 convolutions run here, else why not (one line)."""
    if not torch.backends.mkldnn.is_available():
        return "this torch build has no oneDNN (mkldnn); the native CPU backend needs it"
    if not hasattr(torch.ops.onednn, "qconv2d_pointwise") or not hasattr(torch.ops.onednn, "qconv_prepack"):
        return f"torch {torch.__version__} has no torch.ops.onednn.qconv2d_pointwise; install torch >= 2.4"
    return None


def _prepack(w_int8, w_scale, zp, stride, padding, dilation, groups):
    return torch.ops.onednn.qconv_prepack(w_int8, w_scale, 1.0, int(zp), list(stride), list(padding),
                                          list(dilation), int(groups), None)


def _conv(u8, t, zp, packed, w_scale, w_zp, bias, c: IntConv2d, attr: str):
    return torch.ops.onednn.qconv2d_pointwise(u8, float(t), int(zp), packed, w_scale, w_zp, bias, list(c.stride),
                                              list(c.padding), list(c.dilation), c.groups, 1.0, 0, torch.float32,
                                              attr, [], "")


class OneDNNKernels(Kernels):
    """The native CPU kernels (see the module docstring). `library=False` uses torch for the
    elementwise work instead of the C kernels (the fallback when no C compiler is present)."""

    name = "onednn"

    def __init__(self, range_mode: str | None = None, library: bool = True, eight_bit: str = "float"):
        why = available()
        if why:
            raise BackendError(why)
        if eight_bit not in ("float", "halves"):
            raise BackendError(f"eight_bit must be 'float' or 'halves', not {eight_bit!r}")
        self.range = range_mode or int8_range()
        self.eight_bit = eight_bit
        self.lib = build.library() if library else None
        self.notes = []
        if library and self.lib is None:
            self.notes.append(f"C kernels unavailable ({build.why_unavailable()}); elementwise work runs in torch")
        elif library and build.origin() != "compiled for this CPU":
            self.notes.append(f"C kernels: the {build.origin()}")
        self._ref = ReferenceKernels()

    # --- the zero-point scheme per candidate -----------------------------------------------------------
    def _scheme(self, quant: IntQuantizer):
        key = "_onednn_scheme"
        cached = getattr(quant, key, None)
        if cached is None or cached[0] != (self.range, self.eight_bit):
            lv = quant.levels.tolist()
            if self.range == "full":
                zp, split = [128] * len(lv), [0] * len(lv)
            else:
                zp = [64] * len(lv)
                split = [0 if s <= 63 else (1 if self.eight_bit == "halves" else 2) for s in lv]
            if max(lv) > 127:
                raise BackendError(f"{max(lv) + 1:.0f}-level activations do not fit int8; the native backend takes <= 8 bits")
            cached = ((self.range, self.eight_bit), torch.tensor(zp, dtype=torch.int32), torch.tensor(split, dtype=torch.int32), zp, split)
            setattr(quant, key, cached)
        return cached

    def select_quantize(self, x, quant, ctx, dequant=False):
        if x.shape[0] != 1:
            raise BackendError("the oneDNN kernels run one tile at a time (N = 1)")
        x = x.float().contiguous(memory_format=_CL)
        _, zp_t, split_t, zp, split = self._scheme(quant)
        k_fixed = quant.constant_k()
        if quant.mode == "tile":
            k_fixed = int(ctx.tile_logits[0].argmax())
        if self.lib is None:
            return self._torch_select(x, quant, ctx, zp, split, dequant)
        n, c, h, w = x.shape
        q0 = torch.empty((1, c, h, w), dtype=torch.uint8, memory_format=_CL)
        q1 = torch.empty_like(q0) if 1 in split else None
        deq = torch.empty_like(x) if dequant or 2 in split else None
        g = ctx.grad[0].float().contiguous()
        full = quant.mode == "full"
        ptr = lambda t: None if t is None else t.data_ptr()  # noqa: E731
        k = self.lib.cadyq_select_quant(ptr(x), h * w, c, -1 if k_fixed is None else k_fixed, ptr(g),
                                        ptr(quant.weight) if full else None, ptr(quant.bias) if full else None,
                                        quant.n_candidates, ptr(quant.alpha), ptr(quant.levels), ptr(zp_t),
                                        ptr(split_t), ptr(q0), ptr(q1), ptr(deq))
        return self._qact(quant, k, q0, q1, zp[k], deq, split[k])

    def _qact(self, quant, k, q0, q1, zp, deq, split):
        kk = torch.tensor([k])
        q = (None, None) if split == 2 else (q0, q1 if split == 1 else None)
        return QAct(q, (quant.alpha[kk] / quant.levels[kk]), quant.bits[kk], kk,
                    {"zp": zp, "deq": deq, "float": split == 2})

    def _torch_select(self, x, quant, ctx, zp, split, dequant):
        qa = self._ref.select_quantize(x, quant, ctx)
        k = int(qa.k[0])
        q = qa.q
        q0 = q1 = None
        if split[k] == 1:
            hi = q.clamp(-64, 63)
            q0, q1 = (hi + 64).to(torch.uint8), (q - hi + 63).to(torch.uint8)
            q0, q1 = q0.contiguous(memory_format=_CL), q1.contiguous(memory_format=_CL)
        elif split[k] == 0:
            q0 = (q + zp[k]).to(torch.uint8).contiguous(memory_format=_CL)
        deq = self._ref.dequantize(qa).contiguous(memory_format=_CL) if dequant or split[k] == 2 else None
        return self._qact(quant, k, q0, q1, zp[k], deq, split[k])

    def dequantize(self, qa):
        deq = qa.extra.get("deq")
        if deq is not None:
            return deq
        q0, q1 = qa.q
        q = q0.float() - qa.extra["zp"] if q1 is None else q0.float() - 64 + q1.float() - 63
        return q * qa.scale.view(-1, 1, 1, 1)

    # --- the convolution ---------------------------------------------------------------------------------
    def _packed(self, conv: IntConv2d, zp: int):
        key = ("onednn", zp)
        if key not in conv.cache:
            if "w_zp" not in conv.cache:
                conv.cache["w_zp"] = torch.zeros(conv.out_channels, dtype=torch.int64)
                conv.cache["w_scale"] = conv.weight_scale.float().contiguous()
                conv.cache["bias"] = conv.bias.float().contiguous()
            conv.cache[key] = _prepack(conv.weight_q, conv.cache["w_scale"], zp, conv.stride, conv.padding,
                                       conv.dilation, conv.groups)
        return conv.cache[key]

    def conv(self, qa, conv):
        if qa.extra.get("float"):
            return self._float_conv(qa.extra["deq"], conv)
        q0, q1 = qa.q
        t = float(qa.scale[0])
        relu = conv.act == "relu"
        zp = qa.extra["zp"]
        packed = self._packed(conv, zp)
        ws, wzp, bias = conv.cache["w_scale"], conv.cache["w_zp"], conv.cache["bias"]
        if q1 is None:
            out = _conv(q0, t, zp, packed, ws, wzp, bias, conv, "relu" if relu else "none")
        else:  # two 7-bit halves: hi (zero point 64), then lo (63) summed into it
            hi = _conv(q0, t, 64, packed, ws, wzp, None, conv, "none")
            out = torch.ops.onednn.qconv2d_pointwise.binary(
                q1, t, 63, self._packed(conv, 63), ws, wzp, hi, bias, list(conv.stride), list(conv.padding),
                list(conv.dilation), conv.groups, 1.0, 0, torch.float32, 1.0, 0, "sum", 1.0,
                "relu" if relu else "none", [], "")
        if conv.act == "leaky":
            F.leaky_relu_(out, conv.slope)
        return out

    def _float_conv(self, x, conv: IntConv2d):
        if "w_float" not in conv.cache:
            w = conv.weight_q.float() * conv.weight_scale.view(-1, 1, 1, 1)
            conv.cache["w_float"] = w.contiguous(memory_format=_CL)
        out = F.conv2d(x, conv.cache["w_float"], conv.bias, conv.stride, conv.padding, conv.dilation, conv.groups)
        if conv.act == "relu":
            return out.relu_()
        if conv.act == "leaky":
            return F.leaky_relu_(out, conv.slope)
        return out

    def fake_quant(self, x, alpha, s):
        if self.lib is None or x.dtype != torch.float32:
            return super().fake_quant(x, alpha, s)
        x = x.contiguous(memory_format=_CL) if x.dim() == 4 else x.contiguous()
        out = torch.empty_like(x)
        self.lib.cadyq_fake_quant(x.data_ptr(), x.numel(), ctypes.c_float(float(alpha.reshape(-1)[0])),
                                  ctypes.c_float(float(s)), out.data_ptr())
        return out
