"""TensorRT plugins around the cadyq Triton kernels, for full TensorRT (>= 10) and TensorRT-RTX.

    trt = trt_module()           # `tensorrt` if importable, else TensorRT-RTX (`tensorrt_rtx_bindings`)
    register()                   # IPluginV3 `CADyQSelect` v"1" in namespace "cadyq" (enqueue = Triton kernel)
    register_aot()               # TensorRT >= 10.9 only: `tensorrt.plugin` AOT plugin (PTX in the engine)

Python IPluginV3 plugins are not serialized into the engine: call `register()` in every process
that builds *or* deserializes an engine containing CADyQSelect. TensorRT-RTX 1.7.1 aborts when its
ONNX parser imports a Python plugin, so there `register()` refuses (EngineError) and the parser
inlines the CADyQSelect function body (standard layers) instead.
"""
from __future__ import annotations

import importlib

from cadyq.errors import EngineError

MODULE_NAMES = ("tensorrt", "tensorrt_rtx_bindings", "tensorrt_rtx")
INSTALL_ADVICE = ("install TensorRT-RTX (builds engines without a GPU): pip install tensorrt-rtx-cu13-bindings "
                  "tensorrt-rtx-cu13-libs; or full TensorRT >= 10 from NVIDIA's index: "
                  "pip install --extra-index-url https://pypi.nvidia.com tensorrt-cu13")


def trt_module(name: str | None = None):
    """The TensorRT Python module: `name` if given, else the first of tensorrt, tensorrt_rtx_bindings that imports."""
    errors = []
    for mod_name in (name,) if name else MODULE_NAMES:
        try:
            mod = importlib.import_module(mod_name)
        except (ImportError, OSError) as e:  # OSError: bindings present, shared libraries missing
            errors.append(f"{mod_name}: {e}")
            continue
        if hasattr(mod, "Builder") and hasattr(mod, "IPluginV3"):
            return mod
        errors.append(f"{mod_name}: no Builder/IPluginV3 (TensorRT < 10 or a stub package)")
    raise EngineError(f"no usable TensorRT Python module ({'; '.join(errors)}); {INSTALL_ADVICE}")


def is_rtx(trt) -> bool:
    """True for TensorRT-RTX bindings (strongly typed only, no `tensorrt.plugin`)."""
    return trt.__name__.split(".")[0] != "tensorrt"


from cadyq.trt_plugins.cadyq_select import deregister, plugin_classes, register, warmup  # noqa: E402
from cadyq.trt_plugins.aot import register_aot  # noqa: E402

__all__ = ["trt_module", "is_rtx", "register", "deregister", "plugin_classes", "register_aot", "warmup",
           "INSTALL_ADVICE"]
