"""One registry for backbones: `create_model(name, scale=4)`, timm-style."""
from __future__ import annotations

from typing import Callable

import torch.nn as nn

from ..errors import ModelError

_BUILDERS: dict[str, Callable[..., nn.Module]] = {}
_ALIASES = {"edsr-baseline": "edsr", "edsr_baseline": "edsr"}


def register_model(fn: Callable[..., nn.Module]) -> Callable[..., nn.Module]:
    _BUILDERS[fn.__name__] = fn
    return fn


def list_models(pretrained: bool = False) -> list[str]:
    """The backbones `create_model` builds; with pretrained=True, the shipped weights `cadyq.load` takes by name."""
    if pretrained:
        from ..zoo import available

        return available()
    return sorted(_BUILDERS)


def canonical_name(name: str) -> str:
    key = _ALIASES.get(name.lower(), name.lower())
    if key not in _BUILDERS:
        raise ModelError(f"unknown backbone {name!r}; choose one of {', '.join(list_models())}")
    return key


def create_model(name: str, scale: int | None = None, pretrained: bool = False, **kwargs) -> nn.Module:
    """Build a full-precision backbone (x4 unless `scale` says otherwise) with random weights, for training.
    `pretrained=True` loads the shipped zoo weights of that name (see `cadyq.zoo`), which may be quantized
    models; a `scale` given must match them."""
    if pretrained:
        from ..zoo import load_pretrained

        return load_pretrained(name, scale=scale)
    from .training import mark_untrained

    model = _BUILDERS[canonical_name(name)](scale=4 if scale is None else scale, **kwargs)
    mark_untrained(model)  # random weights until trained or loaded: `cadyq info` and the Upscaler say so
    return model
