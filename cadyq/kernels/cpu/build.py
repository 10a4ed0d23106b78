"""cadyq's C kernels (quant.c), loaded with ctypes: compiled for this CPU on first use, else prebuilt.

The library is built with the system C compiler ($CC, else cc) for this machine (-march=native) into
$CADYQ_CACHE_DIR/kernels, else ~/.cache/cadyq/kernels, under a name that hashes the source, the flags,
the compiler and the CPU, so another CPU or compiler builds its own. Without a compiler (or the source),
the portable library compiled into the wheel (`_cadyq_cpu*.so`, setup.py) is loaded instead; without
either, `library()` returns None and says why (`why_unavailable()`); the kernels then fall back to torch.
`origin()` says which one runs.
"""
from __future__ import annotations

import ctypes
import functools
import hashlib
import os
import platform
import shutil
import subprocess
import tempfile
from pathlib import Path

SOURCE = Path(__file__).with_name("quant.c")
FLAGS = ("-O3", "-march=native", "-ffp-contract=off", "-fno-math-errno", "-fopenmp-simd", "-fPIC", "-shared",
         "-std=c11")
_why: list[str] = []


def cache_dir() -> Path:
    if os.environ.get("CADYQ_CACHE_DIR"):
        return Path(os.environ["CADYQ_CACHE_DIR"]) / "kernels"
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "cadyq" / "kernels"


def _cpu_id() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith(("flags", "Features")):
                return line
    except OSError:
        pass
    return platform.processor() or platform.machine()


def _compiler() -> str | None:
    cc = os.environ.get("CC") or "cc"
    return shutil.which(cc)


def _prebuilt() -> Path | None:
    found = sorted(Path(__file__).parent.glob("_cadyq_cpu*.so"))
    return found[0] if found else None


def _native_build() -> Path | None:
    """The library compiled for this CPU (built now if needed), or None with the reason in _why."""
    if not SOURCE.is_file():
        _why.append(f"cadyq's C kernel source is not installed ({SOURCE})")
        return None
    cc = _compiler()
    if cc is None:
        _why.append("no C compiler (cc or $CC) to build cadyq's CPU kernels")
        return None
    try:
        version = subprocess.run([cc, "--version"], capture_output=True, text=True, timeout=30).stdout
    except (OSError, subprocess.SubprocessError) as e:
        _why.append(f"the C compiler {cc} does not run ({e})")
        return None
    src = SOURCE.read_bytes()
    key = hashlib.sha256(b"|".join([src, " ".join(FLAGS).encode(), version.encode(), _cpu_id().encode()])).hexdigest()
    lib = cache_dir() / f"cadyq_cpu_{key[:20]}.so"
    if not lib.is_file():
        lib.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=".cadyq_cpu_", suffix=".so", dir=lib.parent)
        os.close(fd)
        proc = subprocess.run([cc, *FLAGS, str(SOURCE), "-o", tmp, "-lm"], capture_output=True, text=True)
        if proc.returncode != 0:
            os.unlink(tmp)
            _why.append(f"{cc} could not build {SOURCE.name}: {(proc.stderr or proc.stdout).strip()[-300:]}")
            return None
        os.replace(tmp, lib)
    return lib


@functools.lru_cache(maxsize=1)
def _load() -> tuple[ctypes.CDLL | None, str | None]:
    lib, origin = _native_build(), "compiled for this CPU"
    if lib is None and _prebuilt() is not None:
        lib, origin = _prebuilt(), f"prebuilt portable library ({_why[-1]})"
    if lib is None:
        return None, None
    dll = ctypes.CDLL(str(lib))
    p, i, f, long = ctypes.c_void_p, ctypes.c_int, ctypes.c_float, ctypes.c_long
    sel = [p, p, p, i, p, f, p, p, p]  # g, w, b, k_count, k_in, t, luts, identity, k_out
    dll.cadyq_select_u8.argtypes = [p, long, long, i, *sel]
    dll.cadyq_select_u8.restype = i
    dll.cadyq_quantize_select.argtypes = [p, i, p, long, long, i, f, f, *sel]
    dll.cadyq_quantize_select.restype = i
    dll.cadyq_residual_select.argtypes = [p, f, p, f, p, long, long, i, f, f, *sel]
    dll.cadyq_residual_select.restype = i
    dll.cadyq_residual_float.argtypes = [p, f, p, f, long, p, i]
    dll.cadyq_residual_float.restype = None
    dll.cadyq_tile_gradient.argtypes = [p, long, long, long, p]
    dll.cadyq_tile_gradient.restype = i
    dll.cadyq_quant_backward.argtypes = [p, p, p, long, long, long, i, i, p, p, p, p, p]
    dll.cadyq_quant_backward.restype = i
    dll.cadyq_channel_std.argtypes = [p, long, long, long, i, i, i, p]
    dll.cadyq_channel_std.restype = i
    dll.cadyq_quant_forward.argtypes = [p, p, long, long, long, i, p, p]
    dll.cadyq_quant_forward.restype = None
    return dll, origin


def library() -> ctypes.CDLL | None:
    """The loaded kernel library (built for this CPU if it can be, else the prebuilt one); None when neither is here."""
    return _load()[0]


library.cache_clear = _load.cache_clear  # (tests)


def origin() -> str | None:
    """Which library `library()` loaded: compiled for this CPU, or the prebuilt one and why."""
    return _load()[1]


def why_unavailable() -> str | None:
    library()
    return _why[-1] if _why else None
