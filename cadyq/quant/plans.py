"""Where each backbone is quantized, as plain data (the paper's and the official code's choice).

A Site quantizes the input of module `at`, which feeds conv `conv`. Only body convs are dynamic;
head, tail, upsampler, the last body conv and 1x1 convs stay full precision."""
from __future__ import annotations

from dataclasses import dataclass

import torch.nn as nn


@dataclass(frozen=True)
class Site:
    at: str
    conv: str


@dataclass(frozen=True)
class Fuse:
    """What the integer lowering folds into quantized conv `conv`: a BatchNorm applied to its output
    and the activation after it (ReLU, LeakyReLU, one-slope PReLU); both modules become Identity."""
    conv: str
    bn: str | None = None
    act: str | None = None


@dataclass(frozen=True)
class QuantPlan:
    dynamic: tuple[Site, ...]  # one bit selector each, in layer order (the L of bits [N, L])
    fixed_inputs: tuple[Site, ...] = ()  # fixed-bit PAMS quantizers, not counted in FQR
    fixed_outputs: tuple[str, ...] = ()  # fixed-bit PAMS quantizers on module outputs
    feature: str = ""  # "module:input" or "module": the body feature (distillation)
    block_features: tuple[str, ...] = ()  # each block's feature (distillation)
    fusions: tuple[Fuse, ...] = ()  # epilogues of quantized convs (integer lowering)
    head: str = ""  # the conv whose output feeds Granular-DQ's controller
    upsampler: str = ""  # the module holding the float upsampler convs (the INT8-upsampler option of the lowering)
    tail: str = ""  # the output conv after the upsampler (INT8 with the upsampler where the plan names it)
    body_out: str = ""  # the body's last conv, float in the papers (INT8 with the upsampler where the plan names it)

    @property
    def weight_convs(self) -> tuple[str, ...]:
        return tuple(s.conv for s in self.dynamic + self.fixed_inputs)


def _edsr(model) -> QuantPlan:
    n = model.config.n_resblocks
    dyn = []
    for i in range(n):
        # the block input is quantized, so the skip carries the quantized tensor too (official)
        dyn += [Site(f"body.{i}", f"body.{i}.body.0"), Site(f"body.{i}.body.2", f"body.{i}.body.2")]
    return QuantPlan(
        dynamic=tuple(dyn),
        fixed_outputs=tuple(f"body.{i}.body" for i in range(n)),
        feature="tail:input",
        block_features=tuple(f"body.{i}.body.2" for i in range(n)),
        fusions=tuple(Fuse(f"body.{i}.body.0", act=f"body.{i}.body.1") for i in range(n)),
        head="head.0", upsampler="tail.0", tail="tail.1", body_out=f"body.{n}",
    )


def _srresnet(model) -> QuantPlan:
    # Deviation: the official code quantizes the skip (not conv1's input) with its first selector,
    # leaving conv1 on full-precision input; here the first selector feeds conv1.
    n = model.config.n_resblocks
    dyn = [Site(f"body.{i}.{c}", f"body.{i}.{c}") for i in range(n) for c in ("conv1", "conv2")]
    fuse = [Fuse(f"body.{i}.conv1", f"body.{i}.bn1", f"body.{i}.act") for i in range(n)]
    fuse += [Fuse(f"body.{i}.conv2", f"body.{i}.bn2") for i in range(n)]
    return QuantPlan(
        dynamic=tuple(dyn), feature="tail:input", block_features=tuple(f"body.{i}.conv2" for i in range(n)),
        fusions=tuple(fuse), head="head.0", upsampler="tail.0",
    )


def _carn(model) -> QuantPlan:
    blocks = [f"b{c}.b{r}" for c in (1, 2, 3) for r in (1, 2, 3)]
    dyn = [Site(f"{b}.body.{j}", f"{b}.body.{j}") for b in blocks for j in (0, 2)]
    return QuantPlan(
        dynamic=tuple(dyn), feature="upsample:input", block_features=tuple(f"{b}.body" for b in blocks),
        fusions=tuple(Fuse(f"{b}.body.0", act=f"{b}.body.1") for b in blocks), head="entry", upsampler="upsample",
    )


def _idn(model) -> QuantPlan:
    dyn, fuse = [], [Fuse("fblock.module.0", act="fblock.module.1"), Fuse("fblock.module.2", act="fblock.module.3")]
    for b in range(model.config.n_blocks):
        for part in ("top", "bottom"):
            e = f"dblocks.{b}.enhancement_{part}"
            dyn += [Site(f"{e}.{j}", f"{e}.{j}") for j in (0, 2, 4)]
            fuse += [Fuse(f"{e}.{j}", act=f"{e}.{j + 1}") for j in (0, 2, 4)]
    return QuantPlan(
        dynamic=tuple(dyn),
        fixed_inputs=(Site("fblock.module.0", "fblock.module.0"), Site("fblock.module.2", "fblock.module.2")),
        feature="deconv:input",
        block_features=tuple(f"dblocks.{b}.enhancement_bottom" for b in range(model.config.n_blocks)),
        fusions=tuple(fuse), head="fblock.module.0",
    )


PLANS = {"edsr": _edsr, "srresnet": _srresnet, "carn": _carn, "idn": _idn}


def plan_for(model: nn.Module) -> QuantPlan:
    return PLANS[model.config.name](model)


def float_tail_convs(model: nn.Module) -> tuple[str, ...]:
    """The float convs after the quantized body that the INT8-upsampler option of the lowering runs as INT8 convs:
    the upsampler's, and where the plan names them the body's last conv and the output conv (empty where the model
    has no upsampler the lowering can quantize, e.g. IDN's deconvolution)."""
    plan = plan_for(model)
    if not plan.upsampler:
        return ()
    up = tuple(f"{plan.upsampler}.{n}" for n, m in model.get_submodule(plan.upsampler).named_modules()
               if type(m) is nn.Conv2d)
    return ((plan.body_out,) if plan.body_out else ()) + up + ((plan.tail,) if plan.tail else ())
