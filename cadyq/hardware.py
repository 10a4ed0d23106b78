"""What the machine computes natively (a fast path on one CPU is an emulated, slow one on another)."""
from __future__ import annotations

import os

import torch


def usable_cores() -> int:
    """The cores this process may run on (its affinity mask: a container's or taskset's share, not the host's)."""
    try:
        return len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        return os.cpu_count() or 1


def cpu_has_bf16() -> bool:
    """oneDNN computes bf16 natively here (AVX512-BF16 or AMX); elsewhere it is emulated, many times slower
    than fp32."""
    try:
        return bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
    except (AttributeError, RuntimeError):
        return False
