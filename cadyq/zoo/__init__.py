"""Weights shipped with cadyq: `<name>.safetensors` beside this file, described in MODEL_CARD.md."""
from __future__ import annotations

from pathlib import Path

import torch.nn as nn

from ..errors import ModelError

ZOO_DIR = Path(__file__).parent
DEFAULT_MODEL = "edsr-cadyq-alloc-x4"  # full-size EDSR-baseline CADyQ x4 whose bits follow content (MODEL_CARD.md)
CPU_DEMO_MODELS = ("edsr-tiny-cadyq-x4-cpu", "edsr-tiny-cadyq-x2-cpu")  # trained on a CPU in minutes


def available() -> list[str]:
    return sorted(p.stem for p in ZOO_DIR.glob("*.safetensors"))


def default_name() -> str:
    """The model used when none is named: DEFAULT_MODEL, else the first shipped CPU demo model."""
    have = available()
    for name in (DEFAULT_MODEL, *CPU_DEMO_MODELS):
        if name in have:
            return name
    raise ModelError(f"no default weights are shipped (looked for {DEFAULT_MODEL}); pass --model")


def path_of(name: str) -> Path:
    path = ZOO_DIR / f"{name}.safetensors"
    if not path.is_file():
        have = ", ".join(available()) or "none"
        raise ModelError(f"no shipped weights named {name!r} (shipped: {have}); pass a checkpoint file instead")
    return path


def load_pretrained(name: str, scale: int | None = None) -> nn.Module:
    from ..checkpoint import load

    model = load(path_of(name))
    if scale is not None and model.config.scale != scale:
        raise ModelError(f"{name} is a x{model.config.scale} model, not x{scale}")
    return model
