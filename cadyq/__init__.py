"""cadyq: Content-Aware Dynamic Quantization for super-resolution, from training to deployment."""
__version__ = "0.1.0"

from .errors import CadyqError  # noqa: E402
from .models import create_model, list_models  # noqa: E402
from .quant import quantize  # noqa: E402
from .checkpoint import load, save  # noqa: E402


def __getattr__(name):  # the runtime pulls in more; import it on first use
    if name == "Upscaler":
        from .runtime import Upscaler

        return Upscaler
    raise AttributeError(f"module 'cadyq' has no attribute {name!r}")


__all__ = ["create_model", "list_models", "quantize", "save", "load", "Upscaler", "CadyqError", "__version__"]
