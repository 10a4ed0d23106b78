from . import carn, edsr, idn, srresnet  # noqa: F401  (registers the backbones)
from .registry import canonical_name, create_model, list_models, register_model

__all__ = ["create_model", "list_models", "register_model", "canonical_name"]
