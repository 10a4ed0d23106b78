from .accounting import LayerCost, ModelInfo, fqr
from .ops import fake_quant, quantize_weight, tile_gradient
from .plans import QuantPlan, Site, plan_for
from .quantizers import ActQuant, BitSelector, QConv2d
from .transform import (METHODS, MODES, QuantConfig, all_quantizers, bit_terms, dynamic_quantizers, observe,
                        clips_snapped, quant_config, quantize, selected_bits, snap_clips)

__all__ = [
    "quantize", "QuantConfig", "METHODS", "MODES", "selected_bits", "bit_terms", "observe", "quant_config",
    "dynamic_quantizers", "all_quantizers", "snap_clips", "clips_snapped", "ModelInfo", "LayerCost", "fqr",
    "fake_quant", "quantize_weight",
    "tile_gradient", "ActQuant", "BitSelector", "QConv2d", "QuantPlan", "Site", "plan_for",
]
