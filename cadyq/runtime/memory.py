"""Process memory settings that make large CPU tensors cheap to allocate.

glibc serves allocations above its mmap threshold (at most 32 MiB by default) with a fresh mmap and
returns them with munmap, so every such tensor is page-faulted in again: an x4 upsampler's output
(96-px tile: 37.7 MB) costs more to fault in than to compute. `keep_large_allocations()` raises the
threshold, so freed blocks are reused. It changes the whole process (every library's allocations)
and is a no-op where the C library is not glibc; the CLI, `cadyq bench` and the native backend call it.
"""
from __future__ import annotations

import ctypes
import ctypes.util
import functools

_M_TRIM_THRESHOLD, _M_MMAP_THRESHOLD = -1, -3


@functools.lru_cache(maxsize=1)
def keep_large_allocations(limit_bytes: int = 1 << 30) -> bool:
    """Serve allocations up to `limit_bytes` from the heap and keep freed memory; True when applied."""
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        mallopt = libc.mallopt
    except (OSError, AttributeError):
        return False
    mallopt.argtypes, mallopt.restype = [ctypes.c_int, ctypes.c_int], ctypes.c_int
    return bool(mallopt(_M_MMAP_THRESHOLD, int(limit_bytes))) and bool(mallopt(_M_TRIM_THRESHOLD, 2 * int(limit_bytes)))
