"""The native backend: the model's integer program (`cadyq.quant.lowering`) on integer kernels.

CPU: oneDNN INT8 convolutions with the per-tile scale in their epilogue, plus cadyq's C kernels for
statistics, selection and quantization (`cadyq.kernels.cpu`). Tiles run one at a time per worker, so
a tile's activations stay in cache between layers; with T torch threads there are T workers (one
program each), each running its share of the batch single-threaded: the C kernels and the Python
between the kernels then keep every core busy, and no convolution waits on a thread barrier. The float layers (head, upsampler, tail) run channels_last
in `float_precision`: "auto" is bf16 where the CPU computes in it (AVX512-BF16/AMX), else fp32.
"""
from __future__ import annotations

import contextlib
from concurrent.futures import ThreadPoolExecutor

import torch
import torch.nn as nn

from .. import interrupt
from ..errors import BackendError, ModelError
from ..quant import quant_config
from ..hardware import cpu_has_bf16
from ..quant.lowering import lower
from .backend import Backend, load_module, register_backend, resolve_device
from .nhwc import nhwc_pixel_shuffles

FLOAT_PRECISIONS = ("auto", "fp32", "bf16")


class NativeBackend(Backend):
    name = "native"

    def __init__(self, model, device="auto", float_precision: str = "auto", workers: int | None = None,
                 int8_upsampler: bool = False):
        if float_precision not in FLOAT_PRECISIONS:
            raise BackendError(f"unknown float precision {float_precision!r}; choose one of {', '.join(FLOAT_PRECISIONS)}")
        dev = resolve_device(device)
        if dev.type != "cpu":
            raise BackendError(f"NativeBackend is the CPU form; on {dev} use create_backend('native', ...) "
                               "(cadyq.runtime.native_cuda)")
        from ..kernels.cpu import OneDNNKernels, available

        why = available()
        if why:
            raise BackendError(f"native backend: {why}")
        module = load_module(model, self.name)
        if quant_config(module).method == "fp32":
            raise BackendError("the native backend runs quantized models (pams8, cadyq, gdq); this is an fp32 model: use "
                               "--backend torch, or quantize it (`cadyq calibrate` / `cadyq train --method pams8`)")
        from .memory import keep_large_allocations

        keep_large_allocations()
        self.device = dev
        self.kernels = OneDNNKernels()
        self.int8_upsampler = int8_upsampler
        module = module.cpu().eval()
        self.workers = max(1, workers or torch.get_num_threads())
        self.programs = [self._program(module) for _ in range(self.workers)]
        self.program = self.programs[0]
        self.info = self.program.info
        if float_precision == "auto":
            float_precision = "bf16" if cpu_has_bf16() else "fp32"
        self.float_precision = float_precision
        eight = ("8-bit tiles as float32 convs (u8 x s8 pairs saturate without VNNI)" if self.kernels.eight_bit == "float"
                 else "8-bit tiles as two 7-bit INT8 halves")
        self.notes = [("integer convolutions: oneDNN u8 x s8 -> s32, "
                       + ("full 8-bit input range (VNNI/AMX)" if self.kernels.range == "full"
                          else f"7-bit inputs (AVX2 without VNNI), {eight}")
                       + f"; 4- and 6-bit tiles run as int8 values (no 4-bit arithmetic on this CPU); float layers "
                       f"{float_precision}")] + self.kernels.notes
        if int8_upsampler:
            self.notes.append("upsampler convs INT8 (8-bit inputs at the calibrated clip values; not in the paper)")
        self.warnings = list(self.kernels.notes)  # what a user should hear about: the C kernels' fallback

    def _program(self, module):
        try:
            program = lower(module, int8_upsampler=self.int8_upsampler).use(self.kernels)
        except ModelError as e:
            raise BackendError(f"native backend: {e}") from e
        nhwc_pixel_shuffles(program.net)
        for m in program.net.modules():  # float layers in NHWC; the integer convs keep their own layout
            if isinstance(m, (nn.Conv2d, nn.ConvTranspose2d)):
                m.to(memory_format=torch.channels_last)
        return program

    def _autocast(self):
        if self.float_precision == "bf16":
            return torch.autocast("cpu", dtype=torch.bfloat16)
        return contextlib.nullcontext()

    def _shard(self, program, x, indices, sr, bits):
        with torch.inference_mode(), self._autocast():
            for i in indices:
                interrupt.check()  # Ctrl-C and SIGTERM stop the workers between tiles
                s, b = program(x[i:i + 1])
                sr[i] = s[0]
                bits[i] = b[0]

    def run(self, tiles):
        n = tiles.shape[0]
        x = tiles.float().cpu().contiguous(memory_format=torch.channels_last)
        s, (h, w) = self.info.scale, x.shape[2:]
        sr = torch.empty((n, 3, h * s, w * s))
        bits = torch.empty((n, self.info.n_layers))
        workers = min(self.workers, n)
        if workers == 1:
            self._shard(self.program, x, range(n), sr, bits)
            return sr.to(tiles.device), bits.to(tiles.device)
        # whole rounds of one tile per worker, single-threaded; the few tiles left over (fewer than the
        # workers) then run one at a time on every thread, instead of leaving workers idle for a round
        even = n - n % workers
        threads = torch.get_num_threads()
        torch.set_num_threads(1)
        try:
            with ThreadPoolExecutor(workers) as pool:
                jobs = [pool.submit(self._shard, p, x, range(j, even, workers), sr, bits)
                        for j, p in enumerate(self.programs[:workers])]
                for job in jobs:
                    job.result()
        finally:
            torch.set_num_threads(threads)
        if even < n:
            self._shard(self.program, x, range(even, n), sr, bits)
        return sr.to(tiles.device), bits.to(tiles.device)


def native_backend(model, device="auto", kernels: str = "auto", **options) -> Backend:
    """The native backend for `device`: oneDNN + C kernels on the CPU, Triton kernels on CUDA (or, with
    kernels="triton", on the CPU under TRITON_INTERPRET=1)."""
    dev = resolve_device(device)
    if kernels not in ("auto", "onednn", "triton"):
        raise BackendError(f"unknown native kernels {kernels!r}; choose auto, onednn or triton")
    if dev.type == "cuda" or kernels == "triton":
        if kernels == "onednn":
            raise BackendError("oneDNN kernels run on the CPU; on CUDA the native backend uses Triton")
        from .native_cuda import NativeCUDABackend

        module = load_module(model, "native")
        if quant_config(module).method == "fp32":
            raise BackendError("the native backend runs quantized models (pams8, cadyq, gdq); this is an fp32 model: "
                               "use --backend torch, or quantize it (`cadyq calibrate`)")
        return NativeCUDABackend(module, dev, **options)
    return NativeBackend(model, dev, **options)


register_backend("native", native_backend)
