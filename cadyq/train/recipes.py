"""The paper's training recipes (CADyQ `train_*.sh`, all x4, search space 4/6/8) as plain data.

| backbone | iterations | lr / halving | selector lr / halving |
|---|---|---|---|
| edsr, srresnet, idn | 300K | 1e-4 / 150K | 1e-4 / 150K |
| carn | 600K | 1e-4 / 400K | 1e-3 / 400K |

One official epoch is 1000 iterations of batch 16 with 48-px LR patches; the clip values (alpha)
always use lr 1e-2. The same schedule is used for the fp32 and pams8 stages (the official repository
starts from released weights and has no recipe of its own for them)."""
from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Recipe:
    iters: int = 300_000
    batch: int = 16
    patch: int = 48
    lr: float = 1e-4
    alpha_lr: float = 1e-2
    selector_lr: float = 1e-4
    decay: int = 150_000  # StepLR step (iterations) for every group
    gamma: float = 0.5
    w_bit: float = 1e-4
    w_bit_step: float = 1e-6
    w_bit_every: int = 1000
    w_feat: float = 1e3  # attention transfer on the body feature
    w_block: float = 1e2  # ... and on each block's feature
    observe_batches: int = 10  # PAMS warm start of the clip values (pams8 from fp32)


RECIPES = {
    "edsr": Recipe(),
    "srresnet": Recipe(),
    "idn": Recipe(),
    "carn": Recipe(iters=600_000, selector_lr=1e-3, decay=400_000),
}


def recipe_for(backbone: str) -> Recipe:
    from ..models import canonical_name

    return RECIPES[canonical_name(backbone)]
