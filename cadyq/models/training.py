"""Whether a model's weights were ever trained: `create_model` remembers a digest of the convolution weights it
drew at random, so a model whose convolutions still hold them is known to be untrained, however it was
quantized, calibrated or saved since; checkpoints record the answer (`checkpoint.metadata`, "trained")."""
from __future__ import annotations

import hashlib

import torch.nn as nn

_ATTR = "_cadyq_initial_weights"  # digest of untrained conv weights; None: known trained; absent: unknown


def conv_digest(model: nn.Module) -> str:
    """A digest of every convolution weight (clip values, selectors and biases are left out: calibrating a
    random network does not train it)."""
    h = hashlib.blake2b(digest_size=16)
    for name, p in model.named_parameters():
        if p.dim() == 4:
            h.update(name.encode())
            h.update(p.detach().cpu().contiguous().numpy().tobytes())
    return h.hexdigest()


def mark_untrained(model: nn.Module) -> None:
    """The model's current weights are untrained ones (just initialised, or loaded from a file that says so)."""
    setattr(model, _ATTR, conv_digest(model))


def record_trained(model: nn.Module, trained: bool | None) -> None:
    """What a checkpoint says of the weights just loaded into `model`: True, False, or None (not recorded)."""
    if trained is False:
        mark_untrained(model)
    elif trained:
        setattr(model, _ATTR, None)
    elif hasattr(model, _ATTR):
        delattr(model, _ATTR)


def is_trained(model: nn.Module) -> bool | None:
    """False when the convolutions still hold the weights `create_model` drew (or that a checkpoint said were
    untrained), True when they changed since or a checkpoint said they were trained, None when nothing is known
    (a foreign checkpoint, or a cadyq file from before this was recorded)."""
    if not hasattr(model, _ATTR):
        return None
    initial = getattr(model, _ATTR)
    return True if initial is None else conv_digest(model) != initial


UNTRAINED_ADVICE = ("its output is meaningless; train it (`cadyq train`) or use shipped weights "
                    "(`cadyq models` lists them, e.g. cadyq.load(\"edsr-cadyq-alloc-x4\"))")
