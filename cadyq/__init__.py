"""cadyq: Content-Aware Dynamic Quantization for super-resolution, from training to deployment."""
__version__ = "0.1.0"

import importlib

from .errors import CadyqError  # noqa: E402

# Imported on first use: they pull in torch, and the `cadyq` command must answer Ctrl-C while that loads.
_LAZY = {"create_model": "models", "list_models": "models", "quantize": "quant", "load": "checkpoint",
         "save": "checkpoint", "Upscaler": "runtime"}


def __getattr__(name):
    if name in _LAZY:
        return getattr(importlib.import_module(f".{_LAZY[name]}", __name__), name)
    try:  # `cadyq.models` etc. without an import of its own, as when this file imported them eagerly
        return importlib.import_module(f".{name}", __name__)
    except ModuleNotFoundError as e:
        if e.name != f"{__name__}.{name}":
            raise
    raise AttributeError(f"module 'cadyq' has no attribute {name!r}")


__all__ = ["create_model", "list_models", "quantize", "save", "load", "Upscaler", "CadyqError", "__version__"]
