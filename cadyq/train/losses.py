"""Losses, optimizer groups and schedules of CADyQ training, as the official code (`main.py:53-248`).

- L1 on [0, 255] pixels (mean).
- Bit loss: `w_bit * weighted_bits.sum()` (paper Eq. 7 without the OPs factor: each layer's selected
  bits over its expected bits, the expected value not back-propagated) or, for the ablation, the
  plain `w_bit * bits.sum()` (Eq. 6). Both summed over tiles and layers.
- Distillation: attention transfer between student and an 8-bit PAMS teacher (eval, no_grad) on
  the body feature (weight 1e3) and on every block's feature (weight 1e2 each).
- w_bit schedule: `w_bit + w_bit_step * (iteration // every)` (1e-4, +1e-6 per 1000 iterations).
- Adam (0.9, 0.999, eps 1e-8), groups network / clip values (alpha) / bit selectors, StepLR(0.5)."""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn as nn
import torch.nn.functional as F

from ..errors import ModelError
from ..quant import bit_terms, plan_for

BIT_LOSSES = ("weighted", "plain")


def l1_loss(sr: torch.Tensor, hr: torch.Tensor) -> torch.Tensor:
    return F.l1_loss(sr, hr)


def bit_loss(model: nn.Module, w_bit: float, kind: str = "weighted") -> torch.Tensor:
    """The bit loss of the last training forward of a CADyQ model: `w_bit * weighted_bits.sum()`
    ("weighted", the paper's L_wb) or `w_bit * bits.sum()` ("plain", the ablation)."""
    if kind not in BIT_LOSSES:
        raise ModelError(f"unknown bit loss {kind!r}; choose one of {', '.join(BIT_LOSSES)}")
    bits, weighted = bit_terms(model)
    return w_bit * (weighted if kind == "weighted" else bits).sum()


def at(x: torch.Tensor) -> torch.Tensor:
    """Spatial attention map: L2-normalised channel mean of x^2, [B, H*W]. The norm accumulates in float32
    without a float32 copy of x (a bf16 x.float().pow(2) costs several copies of the feature per map)."""
    return F.normalize((torch.linalg.vector_norm(x, 2, dim=1, dtype=torch.float32).square() / x.size(1))
                       .view(x.size(0), -1))


def at_loss(student: torch.Tensor, teacher: torch.Tensor) -> torch.Tensor:
    return (at(student) - at(teacher)).pow(2).mean()


class _FeaturesComplete(Exception):
    """Raised by a FeatureTap with stop_early once every feature is recorded (the rest is not needed)."""


class FeatureTap:
    """Collects named features of a model with forward hooks during each forward.

    A name "module:input" records the module's first input; "module" records its output. With
    `stop_early`, the forward is cut (FeatureTap.run) as soon as every feature is recorded: the
    distillation teacher need not run its upsampler."""

    def __init__(self, model: nn.Module, names: list[str], stop_early: bool = False):
        self.names = list(names)
        self.stop_early = stop_early
        self._running = False  # raise only inside run(): other forwards of the model are not cut
        self.features: dict[str, torch.Tensor] = {}
        self._handles = []
        for name in self.names:
            path, _, what = name.partition(":")
            module = model.get_submodule(path)
            if what == "input":
                self._handles.append(module.register_forward_pre_hook(self._pre(name)))
            elif what == "":
                self._handles.append(module.register_forward_hook(self._post(name)))
            else:
                raise ValueError(f"feature {name!r}: expected 'module' or 'module:input'")

    def _record(self, name, t):
        self.features[name] = t
        if self._running and self.stop_early and len(self.features) == len(self.names):
            raise _FeaturesComplete

    def _pre(self, name):
        def hook(module, args):
            self._record(name, args[0])
        return hook

    def _post(self, name):
        def hook(module, args, output):
            self._record(name, output)
        return hook

    def run(self, model: nn.Module, x: torch.Tensor) -> None:
        """model(x), stopped once the features are in (stop_early)."""
        self._running = True
        try:
            model(x)
        except _FeaturesComplete:
            pass
        finally:
            self._running = False

    def take(self) -> list[torch.Tensor]:
        """The features of the last forward in the order of `names`, then forget them."""
        missing = [n for n in self.names if n not in self.features]
        if missing:
            raise RuntimeError(f"features {missing} were not produced by the last forward")
        out = [self.features[n] for n in self.names]
        self.features = {}
        return out

    def remove(self) -> None:
        for h in self._handles:
            h.remove()
        self._handles = []


def distill_features(model: nn.Module) -> list[str]:
    """The body feature followed by every block's feature (plan_for(model))."""
    plan = plan_for(model)
    return [plan.feature, *plan.block_features]


class Distiller:
    """Attention-transfer distillation from a frozen teacher (official `--loss_kd --loss_kdf`).

    `teacher_features(lr)` runs the teacher (eval, no_grad) and keeps its features; the student's
    features are tapped during its own forward; `loss()` then gives
    `w_feat * at_loss(body) + w_block * sum_i at_loss(block_i)`."""

    def __init__(self, student: nn.Module, teacher: nn.Module, w_feat: float = 1e3, w_block: float = 1e2):
        s_names, t_names = distill_features(student), distill_features(teacher)
        if len(s_names) != len(t_names):
            raise ModelError(f"the teacher has {len(t_names) - 1} blocks but the student {len(s_names) - 1}; "
                             f"distillation needs the same architecture (pass a matching --teacher)")
        self.teacher = teacher.eval()
        for p in self.teacher.parameters():
            p.requires_grad_(False)
        self.w_feat, self.w_block = w_feat, w_block
        self.s_tap, self.t_tap = FeatureTap(student, s_names), FeatureTap(teacher, t_names, stop_early=True)
        self._t: list[torch.Tensor] | None = None

    @torch.no_grad()
    def teacher_features(self, lr: torch.Tensor) -> None:
        self.teacher.eval()
        self.t_tap.run(self.teacher, lr)
        self._t = [f.detach() for f in self.t_tap.take()]

    def loss(self) -> torch.Tensor:
        s = self.s_tap.take()
        if self._t is None:
            raise RuntimeError("call teacher_features(lr) before loss()")
        t, self._t = self._t, None
        body = self.w_feat * at_loss(s[0], t[0])
        blocks = sum((at_loss(a, b) for a, b in zip(s[1:], t[1:])), body.new_zeros(()))
        return body + self.w_block * blocks

    def remove(self) -> None:
        self.s_tap.remove()
        self.t_tap.remove()


@dataclass(frozen=True)
class BitWeightSchedule:
    """w_bit(iteration) = start + step * (iteration // every): the paper's 1e-4, +1e-6 per 1K iters."""

    start: float = 1e-4
    step: float = 1e-6
    every: int = 1000

    def __call__(self, iteration: int) -> float:
        return self.start + self.step * (iteration // max(self.every, 1))


def param_groups(model: nn.Module) -> dict[str, list[nn.Parameter]]:
    """Split trainable parameters into "net", "alpha" (clip values) and "selector" (bit selectors)."""
    groups: dict[str, list[nn.Parameter]] = {"net": [], "alpha": [], "selector": []}
    for name, p in model.named_parameters():
        if not p.requires_grad:
            continue
        if name.endswith("alpha"):
            groups["alpha"].append(p)
        elif ".input_quant.net." in f".{name}" or name.startswith(("tile_selector.", "gdq.gbc.")):
            groups["selector"].append(p)
        else:
            groups["net"].append(p)
    return groups


def make_optimizer(model: nn.Module, lr: float = 1e-4, alpha_lr: float = 1e-2, selector_lr: float = 1e-4,
                   step_size: int = 150_000, gamma: float = 0.5, betas=(0.9, 0.999), eps: float = 1e-8
                   ) -> tuple[torch.optim.Adam, torch.optim.lr_scheduler.StepLR]:
    """Adam with the three groups (empty ones left out) and one StepLR that halves every group every
    `step_size` iterations (the scheduler is stepped once per iteration)."""
    lrs = {"net": lr, "alpha": alpha_lr, "selector": selector_lr}
    groups = [{"params": ps, "lr": lrs[k], "name": k} for k, ps in param_groups(model).items() if ps]
    opt = torch.optim.Adam(groups, betas=betas, eps=eps)
    return opt, torch.optim.lr_scheduler.StepLR(opt, step_size=step_size, gamma=gamma)
