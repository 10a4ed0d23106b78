"""A fixed check of a zoo model on one small held-out photo crop: what zoo_ship.py records in each file's
metadata (`crop_check`) and tests/test_zoo.py reproduces.

check_crop.png: pixels (x 384, y 544) to (576, 736) of the 768x1024 centre crop of
"life_by_Aitzol_Berasategi" (lomiri-wallpapers-16.04, Aitzol Berasategi, CC-BY-4.0), a validation photo of
cadyq.data.photos: never trained on. The whole LR crop is one tile; float layers and the selection in fp32.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
import torch.nn as nn

CROP = Path(__file__).parent / "check_crop.png"


@torch.no_grad()
def crop_psnr(model: nn.Module) -> dict:
    """{"psnr", "bicubic_psnr", "fqr"} of `model` (x2/x4) on check_crop.png: Y channel, shave = scale."""
    from ..data.io import read_image
    from ..data.resize import bicubic_downscale
    from ..metrics import psnr
    from ..quant import quant_config, selected_bits
    from ..train.trainer import bicubic_upscale

    s = model.config.scale
    hr = read_image(CROP).rgb
    lr = bicubic_downscale(np.ascontiguousarray(hr), s)
    x = torch.from_numpy(lr).permute(2, 0, 1)[None].float()
    model = model.float().eval()
    sr = model(x).clamp(0, 255).round()[0].permute(1, 2, 0).to(torch.uint8).numpy()
    fqr = 32.0 if quant_config(model).method == "fp32" else float(selected_bits(model).float().mean())
    return {"psnr": round(psnr(sr, hr, s), 4), "bicubic_psnr": round(psnr(bicubic_upscale(lr, s), hr, s), 4),
            "fqr": round(fqr, 4)}
