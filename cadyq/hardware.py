"""What the machine computes natively (a fast path on one CPU is an emulated, slow one on another)."""
from __future__ import annotations

import torch


def cpu_has_bf16() -> bool:
    """oneDNN computes bf16 natively here (AVX512-BF16 or AMX); elsewhere it is emulated, many times slower
    than fp32."""
    try:
        return bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
    except (AttributeError, RuntimeError):
        return False
