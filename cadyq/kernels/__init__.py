"""Triton kernels (CUDA; on the CPU through the Triton interpreter, TRITON_INTERPRET=1).

Submodules import triton and torch on first use, so `import cadyq.kernels` works without them.
    select_quant(x, g, W, b, a, bits) -> (y, bits_out)       # fused CADyQ bit selection + fake quant
    select_quant_(x, g, W, b, a, bits, y, bits_out)           # same, into caller-owned buffers
"""
import importlib

_LAZY = {"select_quant": "select_quant", "select_quant_": "select_quant"}


def __getattr__(name):
    if name in _LAZY:
        return getattr(importlib.import_module(f"{__name__}.{_LAZY[name]}"), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


__all__ = list(_LAZY)
