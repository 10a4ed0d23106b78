"""Training: losses, recipes, the trainer (fp32 -> pams8 -> cadyq) and DDP helpers."""
from .losses import (BIT_LOSSES, BitWeightSchedule, Distiller, FeatureTap, at, at_loss, bit_loss, distill_features,
                     l1_loss, make_optimizer, param_groups)
from .recipes import RECIPES, Recipe, recipe_for

__all__ = [
    "l1_loss", "bit_loss", "at", "at_loss", "FeatureTap", "Distiller", "distill_features", "BitWeightSchedule",
    "param_groups", "make_optimizer", "BIT_LOSSES", "Recipe", "RECIPES", "recipe_for",
    "TrainConfig", "Trainer", "TrainResult",
]


def __getattr__(name):  # the trainer pulls in data, metrics and the runtime: import it on first use
    if name in ("TrainConfig", "Trainer", "TrainResult"):
        from . import trainer

        return getattr(trainer, name)
    raise AttributeError(f"module 'cadyq.train' has no attribute {name!r}")
