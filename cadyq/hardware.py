"""What this machine computes natively: the one place that decides (a fast path on one CPU is an emulated, slow
or inexact one on another), and the one place tests override, so that every branch runs on any CPU:

    with hardware.forced(bf16=False, int8_range="7bit"):
        ...   # the code below sees an AVX2 CPU without VNNI or bf16

A process of its own takes the same answers from the environment: CADYQ_HARDWARE="bf16=0,int8_range=7bit".
"""
from __future__ import annotations

import contextlib
import functools
import os
from pathlib import Path

import torch

INT8_RANGES = ("full", "7bit")
_ANSWERS = {"bf16": bool, "int8_range": str, "amx": bool, "vnni": bool, "tiles_per_call": int}


def _from_environment() -> dict:
    answers = {}
    for item in filter(None, os.environ.get("CADYQ_HARDWARE", "").split(",")):
        key, _, value = item.partition("=")
        key, value = key.strip(), value.strip()
        if key not in _ANSWERS or (key == "int8_range" and value not in INT8_RANGES):
            raise ValueError(f"CADYQ_HARDWARE: cannot read {item!r}; e.g. bf16=0,int8_range=7bit,amx=0,vnni=1")
        answers[key] = (value if key == "int8_range" else int(value) if key == "tiles_per_call"
                        else value.lower() in ("1", "true", "yes"))
    return answers


_forced: dict = _from_environment()


def usable_cores() -> int:
    """The cores this process may run on (its affinity mask: a container's or taskset's share, not the host's)."""
    try:
        return len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        return os.cpu_count() or 1


@functools.lru_cache(maxsize=1)
def cpu_flags() -> frozenset[str]:
    """The CPU's feature flags (/proc/cpuinfo), empty where the system does not say."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith(("flags", "Features")):
                return frozenset(line.split(":", 1)[1].split())
    except OSError:
        pass
    return frozenset()


@functools.lru_cache(maxsize=1)
def _bf16() -> bool:
    try:
        return bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
    except (AttributeError, RuntimeError):
        return False


def cpu_has_bf16() -> bool:
    """oneDNN computes bf16 natively here (AVX512-BF16 or AMX); elsewhere it is emulated, many times slower
    than fp32."""
    return _forced.get("bf16", _bf16())


def int8_range() -> str:
    """"full" where oneDNN's u8 x s8 products accumulate in 32 bits (VNNI, AMX): inputs up to 255 are exact;
    "7bit" on AVX2 without VNNI, whose vpmaddubsw sums pairs of products in int16 and saturates above 7-bit inputs.
    Decided once by running a convolution of known integers (`_int8_probe`)."""
    return _forced.get("int8_range") or _int8_probe()


def has_amx() -> bool:
    """AMX tile instructions for INT8 (Sapphire Rapids and later Xeons)."""
    return _forced.get("amx", "amx_int8" in cpu_flags())


def has_vnni() -> bool:
    """32-bit accumulation of u8 x s8 dot products (AVX512-VNNI or AVX-VNNI)."""
    return _forced.get("vnni", bool({"avx512_vnni", "avx_vnni"} & cpu_flags()))


def int8_tiles_per_call() -> int:
    """Tiles per INT8 convolution call of the native CPU program (`benchmarks/integer_cpu.md`): a few tiles fill
    AMX's and VNNI's pipelines while their 8-bit activations stay in the caches; AVX2 runs float convolutions, whose
    larger activations want one tile at a time."""
    if "tiles_per_call" in _forced:
        return max(1, int(_forced["tiles_per_call"]))
    if int8_range() != "full":
        return 1
    return 4


@contextlib.contextmanager
def forced(**answers):
    """Answer as the given CPU would for the duration of the block (tests): bf16, int8_range, amx, vnni,
    tiles_per_call."""
    unknown = set(answers) - set(_ANSWERS)
    if unknown:
        raise TypeError(f"unknown hardware answers: {sorted(unknown)}")
    if answers.get("int8_range", "full") not in INT8_RANGES:
        raise ValueError(f"int8_range must be one of {INT8_RANGES}")
    old = dict(_forced)
    _forced.update(answers)
    try:
        yield
    finally:
        _forced.clear()
        _forced.update(old)


@functools.lru_cache(maxsize=1)
def _int8_probe() -> str:
    import torch.nn.functional as F

    if not torch.backends.mkldnn.is_available() or not hasattr(torch.ops.onednn, "qconv2d_pointwise"):
        return "7bit"  # no oneDNN INT8 here at all; the native backend says so itself
    gen = torch.Generator().manual_seed(0)
    q = torch.randint(-127, 128, (1, 64, 12, 12), generator=gen).float()
    w = torch.randint(-127, 128, (64, 64, 3, 3), generator=gen).float()
    exact = F.conv2d(q, w, padding=1)
    ones, zp0 = torch.ones(64), torch.zeros(64, dtype=torch.int64)
    packed = torch.ops.onednn.qconv_prepack(w.to(torch.int8), ones, 1.0, 128, [1, 1], [1, 1], [1, 1], 1, None)
    u8 = (q + 128).to(torch.uint8).contiguous(memory_format=torch.channels_last)
    out = torch.ops.onednn.qconv2d_pointwise(u8, 1.0, 128, packed, ones, zp0, None, [1, 1], [1, 1], [1, 1], 1, 1.0, 0,
                                             torch.float32, "none", [], "")
    return "full" if torch.equal(out.round(), exact) else "7bit"
