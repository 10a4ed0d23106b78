"""`quantize(model, method, bits)`: CADyQ as a transform of a plain backbone (torchao-style).

The backbone's code is untouched: convs listed by the backbone's plan become QConv2d (same keys),
and quantizers are attached as submodules (`input_quant` of the module whose input they quantize,
`<name>_output_quant` beside a module whose output they quantize) run by forward hooks."""
from __future__ import annotations

import contextlib
import functools
from dataclasses import dataclass

import torch
import torch.nn as nn

from ..errors import ModelError
from ..methods import DEFAULT_BITS, METHODS  # noqa: F401  (re-exported)
from .gdq import GranularDQ, tile_entropy
from .ops import levels, snap_to_top_grid, tile_gradient
from .plans import plan_for
from .quantizers import ActQuant, BitSelector, QConv2d, TileState

MODES = ("full", "fixed", "tile", "layer")


@dataclass(frozen=True)
class QuantConfig:
    method: str = "cadyq"
    bits: tuple[int, ...] = (4, 6, 8)  # candidates; "pams8" uses (8,), mode "fixed" uses bits[0]; gdq: 4 of them
    mode: str = "full"  # Table 2 ablations: fixed bit, tile-only, layer-only (gdq: always "tile")
    weight_bits: int = 8
    per_channel: bool = False
    fixed_bits: int = 8  # EDSR's residual quantizer, IDN's feature block

    def __post_init__(self):
        if self.method not in METHODS:
            raise ModelError(f"unknown method {self.method!r}; choose one of {', '.join(METHODS)}")
        if self.mode not in MODES:
            raise ModelError(f"unknown mode {self.mode!r}; choose one of {', '.join(MODES)}")
        if not self.bits or any(not (2 <= b <= 16) for b in self.bits) or len(set(self.bits)) != len(self.bits):
            raise ModelError(f"bit candidates must be distinct integers in 2..16, got {self.bits}")
        object.__setattr__(self, "bits", tuple(sorted(int(b) for b in self.bits)))
        if self.method == "gdq":
            if self.mode not in ("full", "tile"):
                raise ModelError(f"Granular-DQ picks one bit-width per tile: mode 'tile', not {self.mode!r}")
            object.__setattr__(self, "mode", "tile")
            if len(self.bits) != 4:
                raise ModelError(f"Granular-DQ takes 4 bit candidates (default 4,5,6,8), got {self.bits}")

    @property
    def dynamic(self) -> bool:
        return self.method in ("cadyq", "gdq") and self.mode != "fixed"

    @property
    def act_bits(self) -> tuple[int, ...]:
        """The bit-widths the quantized layers can take."""
        if self.method == "fp32":
            return (32,)
        if self.method == "pams8":
            return (8,)
        return self.bits if self.dynamic else self.bits[:1]


def _quantize_input(module, args):
    return (module.input_quant(args[0]),) + tuple(args[1:])


def _quantize_output(quantizer, module, args, output):
    return quantizer(output)


def _tile_state_hook(model, args):
    state: TileState = model._tile_state
    state.grad = tile_gradient(args[0])
    if hasattr(model, "tile_selector"):
        state.tile_logits = model.tile_selector(state.grad)
    if hasattr(model, "gdq"):
        state.entropy = tile_entropy(args[0])
        state.tile_probs = state.tile_choice = None
        if model.gdq.observing:
            model.gdq.observe_entropy(state.entropy)


def _gdq_head_hook(gdq, state: TileState, module, args, output):
    state.tile_probs, state.tile_choice = gdq.decide(output, state.entropy)


def _set(model: nn.Module, path: str, module: nn.Module) -> None:
    parent, _, name = path.rpartition(".")
    setattr(model.get_submodule(parent) if parent else model, name, module)


def _selector_init(linear: nn.Linear) -> nn.Linear:
    with torch.no_grad():
        linear.weight.fill_(1.0)
        linear.bias.zero_()
        linear.bias[-1] = 1.0
    return linear


def quantize(model: nn.Module, method: str = "cadyq", bits=None, *, mode: str = "full",
             weight_bits: int = 8, per_channel: bool = False) -> nn.Module:
    """Quantize `model` in place (and return it) with the given method; "fp32" leaves it as is.
    bits: the candidates (default 4,6,8 for cadyq; 4,5,6,8 for gdq, Granular-DQ)."""
    if getattr(model, "quant_config", None) is not None:
        raise ModelError("model is already quantized")
    if not hasattr(model, "config"):
        raise ModelError("quantize() needs a backbone from cadyq.create_model")
    bits = DEFAULT_BITS.get(method, (4, 6, 8)) if bits is None else bits
    cfg = QuantConfig(method, tuple(bits), mode, weight_bits, per_channel)
    model.quant_config = cfg
    if cfg.method == "fp32":
        return model
    plan = plan_for(model)
    for path in plan.weight_convs:
        _set(model, path, QConv2d.from_conv(model.get_submodule(path), weight_bits, per_channel))
    state = TileState()
    model._tile_state = state
    model.register_forward_pre_hook(_tile_state_hook)
    if cfg.method == "gdq":
        head = model.get_submodule(plan.head)
        model.gdq = GranularDQ(head.out_channels, cfg.bits)
        head.register_forward_hook(functools.partial(_gdq_head_hook, model.gdq, state))
    elif cfg.mode == "tile":
        model.tile_selector = _selector_init(nn.Linear(2, len(cfg.bits)))
    for site in plan.dynamic:
        conv = model.get_submodule(site.conv)
        if cfg.dynamic:
            q: nn.Module = BitSelector(conv.in_channels, cfg.bits, state, cfg.mode)
        else:
            q = ActQuant(cfg.act_bits[0])
        _attach_input(model.get_submodule(site.at), q)
    for site in plan.fixed_inputs:
        _attach_input(model.get_submodule(site.at), ActQuant(cfg.fixed_bits))
    for path in plan.fixed_outputs:
        _attach_output(model, path, ActQuant(cfg.fixed_bits))
    return model


def _attach_input(module: nn.Module, q: nn.Module) -> None:
    module.input_quant = q
    module.register_forward_pre_hook(_quantize_input)


def _attach_output(model: nn.Module, path: str, q: nn.Module) -> None:
    """The quantizer is owned by the parent as `<name>_output_quant`, not by the module itself: a
    Sequential would run a child quantizer as one more layer."""
    parent, _, name = path.rpartition(".")
    setattr(model.get_submodule(parent) if parent else model, f"{name}_output_quant", q)
    model.get_submodule(path).register_forward_hook(functools.partial(_quantize_output, q))


def quant_config(model: nn.Module) -> QuantConfig:
    return getattr(model, "quant_config", None) or QuantConfig("fp32")


def dynamic_quantizers(model: nn.Module) -> list[nn.Module]:
    """The quantizers of the L dynamic layers, in layer order (empty for fp32)."""
    if quant_config(model).method == "fp32":
        return []
    return [model.get_submodule(s.at).input_quant for s in plan_for(model).dynamic]


def all_quantizers(model: nn.Module) -> list[nn.Module]:
    return [m for m in model.modules() if isinstance(m, (ActQuant, BitSelector))]


def selected_bits(model: nn.Module) -> torch.Tensor:
    """Bits chosen per tile and layer in the last forward: [N, L] float (32 for fp32 models)."""
    qs = dynamic_quantizers(model)
    if not qs:
        raise ModelError("selected_bits() needs a quantized model; fp32 models have no bit choices")
    if any(q.last_bits is None for q in qs):
        raise ModelError("selected_bits() is read after a forward pass")
    return torch.stack([q.last_bits for q in qs], dim=1)


def bit_terms(model: nn.Module) -> tuple[torch.Tensor, torch.Tensor]:
    """(sum of bits, sum of weighted bits) per tile over the dynamic layers of the last training
    forward; both carry the soft (probability) gradient. The bit losses are built from these."""
    qs = [q for q in dynamic_quantizers(model) if isinstance(q, BitSelector)]
    if not qs or any(q.last_weighted is None for q in qs):
        raise ModelError("bit_terms() needs a CADyQ model after a forward in training mode")
    return sum(q.last_bits_ste for q in qs), sum(q.last_weighted for q in qs)


@contextlib.contextmanager
def observe(model: nn.Module):
    """Within this block forwards pass activations unquantized and set every clip value alpha to
    the running mean of the observed per-sample max |x| (PAMS warm start). Run it under no_grad."""
    qs = all_quantizers(model)
    gdq = getattr(model, "gdq", None)
    for q in qs:
        q.observing = True
        if isinstance(q, ActQuant):
            q.n_observed.zero_()
        else:
            q._n_obs = 0
    if gdq is not None:  # the E2B thresholds: quantiles of the observed tiles' entropy
        gdq.observing = True
    try:
        yield model
    finally:
        for q in qs:
            q.observing = False
        if gdq is not None:
            gdq.observing = False
            gdq.finish_observing()


def _snapped(q: nn.Module) -> tuple[torch.Tensor, torch.Tensor] | None:
    """(clips, the same snapped) of a quantizer with more than one candidate, else None."""
    a = q.alpha.detach().flatten()
    if a.numel() < 2:
        return None
    s = torch.tensor([float(levels(int(b))) for b in q.bits])
    return a, snap_to_top_grid(a.float(), s).to(a.dtype)


@torch.no_grad()
def snap_clips(model: nn.Module) -> int:
    """In place: every dynamic quantizer's lower clip values onto odd multiples of its 8-bit step
    (`ops.snap_to_top_grid`), so the one 8-bit grid of inference computes the papers' quantizer of each candidate
    exactly. A transform of a trained model, chosen per model on the decision set (`benchmarks/zoo_snap.py`); returns
    how many clip values moved."""
    moved = 0
    for q in dynamic_quantizers(model):
        pair = _snapped(q)
        if pair is not None:
            moved += int((pair[1] != pair[0]).sum())
            q.alpha.copy_(pair[1].view_as(q.alpha))
    return moved


def clips_snapped(model: nn.Module) -> bool | None:
    """Whether every lower clip value of the model's dynamic quantizers lies on an odd multiple of its layer's 8-bit
    step (`snap_clips`); None where no quantizer has more than one candidate."""
    pairs = [p for p in map(_snapped, dynamic_quantizers(model)) if p is not None]
    return all(torch.allclose(new, a, rtol=1e-5, atol=0) for a, new in pairs) if pairs else None
