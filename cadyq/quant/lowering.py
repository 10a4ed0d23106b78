"""`lower(model)`: the one integer lowering of a quantized model, and the torch integer reference.

For tile n and quantized conv j with chosen candidate k (bits b_k, clip a_k, s_k = 2^(b_k-1) - 1) and the top
candidate T (the most bits: 8):

    v_n = round(clamp(x_n, -a_T, a_T) / a_T * s_T)     the input on the top grid: the 8-bit tensor a conv writes
    k_n from the statistics of v_n                     (CADyQ's selector; Granular-DQ's tile choice; fixed for PAMS)
    q_n = requantize(v_n, k_n)                         k's levels, expressed on the top grid (ops.on_top_grid)
    y_n = conv_int32(q_n, w_int8) * (t * w_scale) + bias,   t = a_T / s_T,   then the fused activation

which equals the fake-quant model's conv(quantizer(x_n), quantize_weight(w)) + bias up to float rounding. Every
bit-width is int8 values on one grid per layer, so one INT8 convolution with one input scale serves a whole batch
of tiles whatever each tile chose, and a producing convolution can write the 8-bit tensor before the choice.
The lowering is a module swap on a copy of the model (the backbone's
forward code runs unchanged): every quantized conv of the plan becomes an `IntConv2d` (int8 weights,
weight scale, bias, with the plan's BatchNorm and activation folded in), every activation quantizer
an `IntQuantizer` (selector weights, clip values, bit candidates), the fixed output quantizers an
`IntFakeQuant`; head, upsampler and tail stay float. What the program computes is delegated to a
`Kernels` object: `ReferenceKernels` here (plain torch, any device, the integer reference), the
oneDNN/C kernels of `cadyq.kernels.cpu` (native CPU backend), the Triton kernels (CUDA), and the
symbolic kernels of the ONNX exporter (the INT8 graph form). Every integer executor consumes this
one program.

Where the quantized tensor is also used outside its conv (EDSR quantizes the block input, and the
skip carries the quantized tensor), the quantizer runs in a hook of the block: the block receives
the dequantized tensor and the conv takes the integers and scale directly (`_Context.handoff`).
"""
from __future__ import annotations

import abc
import copy
from dataclasses import dataclass, field

import torch
import torch.nn as nn
import torch.nn.functional as F

from ..errors import ModelError
from .accounting import ModelInfo
from .gdq import tile_entropy
from .ops import fake_quant, levels, tile_gradient
from .plans import plan_for
from .quantizers import ActQuant, BitSelector, QConv2d
from .transform import quant_config

SELECT_MODES = ("full", "tile", "layer", "fixed")


@dataclass
class QAct:
    """A quantized activation: integer values, the per-tile scale t = a_k/s_k [N], the bits [N] and
    the candidate index k [N]. `q` is what the kernels make of it (float integers for the reference,
    uint8 with a zero point for oneDNN, int8 for the graph form); `extra` holds kernel details."""

    q: object
    scale: torch.Tensor
    bits: torch.Tensor
    k: torch.Tensor
    extra: dict = field(default_factory=dict)


class IntQuantizer(nn.Module):
    """An activation quantizer in integer form. mode "full": k = argmax(W [g, sigma] + b) (CADyQ);
    "tile": the model-level tile logits; "layer": argmax of a constant bias; "fixed": one candidate."""

    def __init__(self, mode: str, bits, alpha, weight=None, bias=None):
        super().__init__()
        if mode not in SELECT_MODES:
            raise ModelError(f"unknown selection mode {mode!r}")
        self.mode = mode
        bits = torch.as_tensor(bits, dtype=torch.float32).reshape(-1)
        self.register_buffer("bits", bits)
        self.register_buffer("levels", 2.0 ** (bits - 1) - 1)
        self.register_buffer("alpha", torch.as_tensor(alpha, dtype=torch.float32).reshape(-1).clone())
        self.register_buffer("weight", None if weight is None else weight.detach().float().clone())
        self.register_buffer("bias", None if bias is None else bias.detach().float().clone().reshape(-1))
        if self.alpha.numel() != bits.numel():
            raise ModelError(f"{bits.numel()} bit candidates but {self.alpha.numel()} clip values")
        self.last_bits: torch.Tensor | None = None

    @property
    def n_candidates(self) -> int:
        return int(self.bits.numel())

    @property
    def grid(self) -> float:
        """The step of the top candidate's grid, a_T / s_T: the one input scale of the conv this quantizer feeds."""
        return float(self.alpha[-1] / self.levels[-1])

    def top_integers(self, x: torch.Tensor) -> torch.Tensor:
        """x rounded to the top candidate's grid, as integers (float tensor): round(clamp(x, -a_T, a_T) / a_T * s_T)."""
        a, s = self.alpha[-1], self.levels[-1]
        return torch.round(torch.maximum(torch.minimum(x, a), -a) / a * s)

    def requantize(self, v: torch.Tensor, k: torch.Tensor) -> torch.Tensor:
        """Integers v on the top grid -> the chosen candidate's levels, on the top grid again (ops.on_top_grid):
        k is the candidate per tile [N] (v [N, ...]) or one for all (a 0-d tensor)."""
        a_t, s_t = self.alpha[-1], self.levels[-1]
        shape = (-1,) + (1,) * (v.dim() - 1) if k.dim() else ()
        a, s = self.alpha[k].view(shape), self.levels[k].view(shape)
        x = v / s_t * a_t
        y = torch.round(torch.maximum(torch.minimum(x, a), -a) / a * s) / s * a
        return torch.round(torch.maximum(torch.minimum(y, a_t), -a_t) / a_t * s_t)

    def tables(self) -> torch.Tensor:
        """[K, 256] uint8: u = v + 128 -> requantize(v, k) + 128 for every 8-bit v, per candidate k (the native
        kernels' re-quantization, built from the reference arithmetic itself)."""
        if self.levels[-1] > 127:
            raise ModelError(f"{int(self.bits[-1])}-bit activations do not fit int8; the integer form takes <= 8 bits")
        v = torch.arange(-128, 128, dtype=torch.float32)
        return torch.stack([self.requantize(v, torch.tensor(k)) + 128 for k in range(self.n_candidates)]).to(torch.uint8)

    def constant_k(self) -> int | None:
        """The candidate when it does not depend on the tile (modes layer and fixed), else None."""
        if self.mode == "fixed":
            return 0
        if self.mode == "layer":  # computed once: no device sync per call (CUDA graphs)
            if getattr(self, "_layer_k", None) is None:
                self._layer_k = int(self.bias.argmax())
            return self._layer_k
        return None

    def choose(self, sigma: torch.Tensor | None, grad: torch.Tensor, tile_logits: torch.Tensor | None) -> torch.Tensor:
        """k [N] (first maximum on ties) from the per-channel std [N,C] of the input (mode full)."""
        n = grad.shape[0]
        const = self.constant_k()
        if const is not None:
            return torch.full((n,), const, dtype=torch.long, device=grad.device)
        if self.mode == "tile":
            return tile_logits.argmax(1)
        return F.linear(torch.cat([grad, sigma], 1), self.weight, self.bias).argmax(1)

    def extra_repr(self) -> str:
        return f"mode={self.mode}, bits={[int(b) for b in self.bits.tolist()]}"


class IntConv2d(nn.Module):
    """A quantized conv in integer form: y = conv_int32(q, weight_q) * (t * weight_scale) + bias, then `act`
    ("none", "relu", or "leaky" with `slope`). `quant` quantizes its input, or is None when the
    input arrives quantized from a hook upstream (the handoff)."""

    def __init__(self, name: str, weight_q, weight_scale, bias, stride, padding, dilation, groups,
                 quant: IntQuantizer | None, act: str = "none", slope: float = 0.0, context: "_Context | None" = None):
        super().__init__()
        self.name = name
        self.register_buffer("weight_q", weight_q)
        self.register_buffer("weight_scale", weight_scale)
        self.register_buffer("bias", bias)
        self.stride, self.padding, self.dilation, self.groups = tuple(stride), tuple(padding), tuple(dilation), groups
        self.quant = quant
        self.act, self.slope = act, float(slope)
        self.context = context
        self.cache: dict = {}  # kernel-owned per-conv data (packed weights)

    @property
    def in_channels(self) -> int:
        return self.weight_q.shape[1] * self.groups

    @property
    def out_channels(self) -> int:
        return self.weight_q.shape[0]

    def forward(self, x):
        ctx = self.context
        if self.quant is not None:
            qa = ctx.kernels.select_quantize(x, self.quant, ctx)
            self.quant.last_bits = qa.bits
        else:
            entry = ctx.handoff.pop(self.name, None)
            if entry is None or entry[0] is not x:
                raise ModelError(f"internal: {self.name} did not receive the tensor its input quantizer made")
            qa = entry[1]
        return ctx.kernels.conv(qa, self)

    def extra_repr(self) -> str:
        return (f"{self.name}: {self.in_channels}->{self.out_channels}, k={tuple(self.weight_q.shape[2:])}, "
                f"groups={self.groups}, act={self.act}")


class IntFakeQuant(nn.Module):
    """A fixed-bit quantizer whose consumer is float (EDSR's residual quantizer): fake quantization."""

    def __init__(self, bits: int, alpha):
        super().__init__()
        self.bits = int(bits)
        self.register_buffer("alpha", torch.as_tensor(alpha, dtype=torch.float32).reshape(1).clone())
        self.context: _Context | None = None

    def forward(self, x):
        return self.context.kernels.fake_quant(x, self.alpha, float(levels(self.bits)))


class _Context:
    """What one forward of a program shares: the kernels, the tile gradient, the tile logits and
    the quantized activations handed from a hook to their conv. A plain object, not a module."""

    def __init__(self, kernels: "Kernels"):
        self.kernels = kernels
        self.grad: torch.Tensor | None = None
        self.tile_logits: torch.Tensor | None = None
        self.entropy: torch.Tensor | None = None  # Granular-DQ: the input tiles' entropy
        self.handoff: dict = {}


class Kernels(abc.ABC):
    """What an integer executor provides. `x` tensors are float [N,C,H,W] (any memory format)."""

    name = ""

    def tile_gradient(self, lr: torch.Tensor) -> torch.Tensor:
        return tile_gradient(lr.float())

    @abc.abstractmethod
    def select_quantize(self, x: torch.Tensor, quant: IntQuantizer, ctx: _Context, dequant: bool = False) -> QAct:
        """Choose k per tile and quantize x to integers; `dequant`: `dequantize` will be asked for too."""

    @abc.abstractmethod
    def dequantize(self, qa: QAct) -> torch.Tensor:
        """q * t, float (what the fake-quant model's quantizer returns)."""

    @abc.abstractmethod
    def conv(self, qa: QAct, conv: IntConv2d) -> torch.Tensor:
        """The integer convolution and its epilogue (scales, bias, activation), float out."""

    def fake_quant(self, x: torch.Tensor, alpha: torch.Tensor, s: float) -> torch.Tensor:
        return fake_quant(x.float(), alpha, s)


def _epilogue(y: torch.Tensor, conv: IntConv2d) -> torch.Tensor:
    if conv.act == "relu":
        return torch.relu(y)
    if conv.act == "leaky":
        return F.leaky_relu(y, conv.slope)
    return y


class ReferenceKernels(Kernels):
    """The integer reference in plain torch (any device): integers held in float32, the int32
    accumulation done by a float convolution of integers (exact: |sums| < 2^24 for 8-bit weights and
    inputs up to 1040 taps per output) and rounded to the integer it must be."""

    name = "reference"

    def select_quantize(self, x, quant, ctx, dequant=False):
        v = quant.top_integers(x.float())
        sigma = (v / quant.levels[-1] * quant.alpha[-1]).std(dim=(2, 3)) if quant.mode == "full" else None
        k = quant.choose(sigma, ctx.grad, ctx.tile_logits)
        t = (quant.alpha[-1] / quant.levels[-1]).expand(k.shape[0])
        return QAct(quant.requantize(v, k), t, quant.bits[k], k)

    def dequantize(self, qa):
        return qa.q * qa.scale.view(-1, 1, 1, 1)

    def conv(self, qa, conv):
        acc = torch.round(F.conv2d(qa.q, conv.weight_q.float(), None, conv.stride, conv.padding, conv.dilation,
                                   conv.groups))
        scale = qa.scale.view(-1, 1, 1, 1) * conv.weight_scale.view(1, -1, 1, 1)
        return _epilogue(acc * scale + conv.bias.view(1, -1, 1, 1), conv)


class IntegerProgram(nn.Module):
    """The lowered model: forward(lr [N,3,h,w] in [0,255]) -> (sr, bits [N,L]). `net` is the model with
    its quantized convs and quantizers swapped for their integer forms; `use(kernels)` picks who
    computes them (ReferenceKernels by default)."""

    def __init__(self, net: nn.Module, info: ModelInfo, dynamic: list[IntQuantizer], context: _Context,
                 convs: list[IntConv2d]):
        super().__init__()
        self.net = net
        self.info = info
        self.dynamic = dynamic  # not registered again: they live inside net
        self.convs = convs
        self._context = context
        self.config = net.config

    @property
    def kernels(self) -> Kernels:
        return self._context.kernels

    def use(self, kernels: Kernels) -> "IntegerProgram":
        self._context.kernels = kernels
        for c in self.convs:
            c.cache.clear()
        return self

    def forward(self, lr: torch.Tensor):
        ctx = self._context
        ctx.handoff.clear()
        # the selection's inputs in fp32 whatever the float layers' autocast: bits are decided in fp32
        with torch.autocast(lr.device.type, enabled=False):
            ctx.grad = ctx.kernels.tile_gradient(lr.float())
            ctx.tile_logits = self.net.tile_selector(ctx.grad) if hasattr(self.net, "tile_selector") else None
            if hasattr(self.net, "gdq"):  # the head hook turns GBC + E2B into one-hot tile logits
                ctx.entropy = tile_entropy(lr.float())
        sr = self.net(lr)
        if ctx.handoff:
            raise ModelError(f"internal: quantized activations never consumed: {sorted(ctx.handoff)}")
        if not self.dynamic:
            return sr, lr.new_full((lr.shape[0], self.info.n_layers), 32.0)
        return sr, torch.stack([q.last_bits.float() for q in self.dynamic], dim=1)


# --- the lowering ---------------------------------------------------------------------------------------

def _int_quantizer(q: nn.Module) -> IntQuantizer:
    if isinstance(q, ActQuant):
        return IntQuantizer("fixed", [q.bits], q.alpha.detach())
    if isinstance(q, BitSelector):
        if q.mode == "full":
            return IntQuantizer("full", q.bits, q.alpha.detach(), q.net.weight, q.net.bias)
        if q.mode == "layer":
            return IntQuantizer("layer", q.bits, q.alpha.detach(), bias=q.net.bias)
        return IntQuantizer("tile", q.bits, q.alpha.detach())
    raise ModelError(f"cannot lower a {type(q).__name__} quantizer")


def integer_weights(conv: QConv2d) -> tuple[torch.Tensor, torch.Tensor]:
    """(int8 weights, float weight scale [O]) with weight = q * scale, as `quantize_weight` rounds it."""
    if conv.weight_bits > 8:
        raise ModelError(f"{conv.weight_bits}-bit weights do not fit int8; the integer form needs weight_bits <= 8")
    w = conv.weight.detach().float()
    s = levels(conv.weight_bits)
    if conv.per_channel:
        m = w.abs().amax(dim=tuple(range(1, w.dim())), keepdim=True) + 1e-8
    else:
        m = w.abs().max() + 1e-8
    q = torch.round(w * s / m).to(torch.int8)
    scale = (m / s).reshape(-1).expand(w.shape[0]).clone()
    return q, scale


def _activation(mod: nn.Module | None) -> tuple[str, float]:
    if mod is None or isinstance(mod, nn.Identity):
        return "none", 0.0
    if isinstance(mod, nn.ReLU):
        return "relu", 0.0
    if isinstance(mod, nn.LeakyReLU):
        return "leaky", float(mod.negative_slope)
    if isinstance(mod, nn.PReLU) and mod.weight.numel() == 1:
        return "leaky", float(mod.weight.detach())
    raise ModelError(f"cannot fold a {type(mod).__name__} into an integer conv")


def _set(root: nn.Module, path: str, module: nn.Module) -> None:
    parent, _, name = path.rpartition(".")
    setattr(root.get_submodule(parent) if parent else root, name, module)


def lower(model: nn.Module, kernels: Kernels | None = None, *, int8_upsampler: bool = False) -> IntegerProgram:
    """The integer program of a quantized model (pams8 or cadyq, any mode and backbone); the model
    itself is not changed. Raises ModelError for fp32 models (nothing to lower).

    int8_upsampler: also run the upsampler's convs as INT8 convolutions (not in the papers: a quantized layer
    of our own) with 8-bit per-channel weights and 8-bit inputs clipped at the model's calibrated
    `upsampler_clips` (`cadyq calibrate --upsampler`); they stay out of FQR and BitOPs, which count the
    paper's quantized layers."""
    cfg = quant_config(model)
    if cfg.method == "fp32":
        raise ModelError("an fp32 model has no quantized layers to lower; quantize it (pams8 or cadyq) first")
    info = ModelInfo.from_model(model)
    plan = plan_for(model)
    net = copy.deepcopy(model).eval()
    for m in net.modules():
        m._forward_pre_hooks.clear()
        m._forward_hooks.clear()
    if hasattr(net, "_tile_state"):
        del net._tile_state
    context = _Context(kernels or ReferenceKernels())
    fusions = {f.conv: f for f in plan.fusions}
    convs: dict[str, IntConv2d] = {}
    for path in plan.weight_convs:
        qc = net.get_submodule(path)
        if not isinstance(qc, QConv2d):
            raise ModelError(f"{path} is not a quantized conv")
        wq, ws = integer_weights(qc)
        bias = qc.bias.detach().float().clone() if qc.bias is not None else torch.zeros(qc.out_channels)
        act, slope = "none", 0.0
        fuse = fusions.get(path)
        if fuse is not None and fuse.bn:
            bn = net.get_submodule(fuse.bn)
            inv = bn.weight.detach() / torch.sqrt(bn.running_var + bn.eps)
            ws = ws * inv
            bias = (bias - bn.running_mean) * inv + bn.bias.detach()
            _set(net, fuse.bn, nn.Identity())
        if fuse is not None and fuse.act and not (cfg.method == "gdq" and path == plan.head):
            # (Granular-DQ's controller reads the head conv's output before its activation)
            act, slope = _activation(net.get_submodule(fuse.act))
            _set(net, fuse.act, nn.Identity())
        convs[path] = IntConv2d(path, wq, ws.float(), bias.float(), qc.stride, qc.padding, qc.dilation, qc.groups,
                                None, act, slope, context)
    dynamic = []
    for site, is_dynamic in [(s, True) for s in plan.dynamic] + [(s, False) for s in plan.fixed_inputs]:
        at = net.get_submodule(site.at)
        iq = _int_quantizer(at.input_quant)
        iq.key = f"{site.at}.input_quant"  # the fake-quant model's module path (taps, reports)
        del at.input_quant
        conv = convs[site.conv]
        if site.at == site.conv:
            conv.quant = iq
        else:
            at.input_quant = iq
            at.register_forward_pre_hook(_handoff_hook(iq, site.conv, context))
        if is_dynamic:
            dynamic.append(iq)
    if int8_upsampler:
        for path, iq in _int8_upsampler(model, net, context, convs):
            convs[path] = iq
    for path, conv in convs.items():
        _set(net, path, conv)
    for path in plan.fixed_outputs:
        parent, _, name = path.rpartition(".")
        owner = net.get_submodule(parent) if parent else net
        q: ActQuant = getattr(owner, f"{name}_output_quant")
        fq = IntFakeQuant(q.bits, q.alpha.detach())
        fq.context = context
        setattr(owner, f"{name}_output_quant", fq)
        net.get_submodule(path).register_forward_hook(lambda mod, args, out, fq=fq: fq(out))
    if hasattr(net, "gdq"):
        net.gdq.eval()
        net.get_submodule(plan.head).register_forward_hook(_gdq_hook(net.gdq, context))
    for m in net.modules():
        if isinstance(m, (BitSelector, ActQuant)):
            raise ModelError(f"internal: a {type(m).__name__} survived the lowering")
    return IntegerProgram(net, info, dynamic, context, list(convs.values()))


def _int8_upsampler(model: nn.Module, net: nn.Module, context: _Context, convs: dict):
    """(path, IntConv2d) for each upsampler conv: 8-bit per-channel weights, a fixed 8-bit input quantizer."""
    from .plans import float_tail_convs

    paths = float_tail_convs(model)
    clips = getattr(model, "upsampler_clips", None) or {}
    if not paths:
        raise ModelError(f"{model.config.name} has no upsampler convs the lowering can quantize")
    missing = [p for p in paths if p not in clips]
    if missing:
        raise ModelError(f"no INT8-upsampler clip values for {', '.join(missing)}: calibrate them first "
                         "(`cadyq calibrate --model M --data PHOTOS --upsampler -o M2`)")
    out = []
    for path in paths:
        conv = net.get_submodule(path)
        w = conv.weight.detach().float()
        m = w.abs().amax(dim=(1, 2, 3)) + 1e-8
        wq = torch.round(w * (levels(8) / m.view(-1, 1, 1, 1))).to(torch.int8)
        bias = conv.bias.detach().float().clone() if conv.bias is not None else torch.zeros(conv.out_channels)
        quant = IntQuantizer("fixed", [8], [clips[path]])
        quant.key = f"{path}:int8_upsampler"
        out.append((path, IntConv2d(path, wq, (m / levels(8)).float(), bias, conv.stride, conv.padding, conv.dilation,
                                    conv.groups, quant, "none", 0.0, context)))
    return out


def _gdq_hook(gdq, context: _Context):
    def hook(module, args, out):
        with torch.autocast(out.device.type, enabled=False):
            context.tile_logits = F.one_hot(gdq.decide(out.float(), context.entropy)[1], len(gdq.bits)).float()
    return hook


def _handoff_hook(quant: IntQuantizer, conv_path: str, context: _Context):
    def hook(module, args):
        qa = context.kernels.select_quantize(args[0], quant, context, dequant=True)
        quant.last_bits = qa.bits
        xd = context.kernels.dequantize(qa)
        context.handoff[conv_path] = (xd, qa)
        return (xd,) + tuple(args[1:])
    return hook
