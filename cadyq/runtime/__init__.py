from .backend import BACKENDS, Backend, create_backend, register_backend
from .upscaler import UpscaleResult, Upscaler

__all__ = ["Upscaler", "UpscaleResult", "Backend", "create_backend", "register_backend", "BACKENDS"]
