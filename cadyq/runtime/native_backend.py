"""The native backend: the model's integer program (`cadyq.quant.lowering`) on integer kernels.

CPU: EDSR runs `native_cpu.EDSRProgram` (8-bit activations, oneDNN INT8 convolutions over batches of tiles, C passes
for selection and the residual stream); other backbones run the lowered module graph on the same kernels. A batch is
cut into groups of `hardware.int8_tiles_per_call()` tiles; with T torch threads, T workers each run their groups
single-threaded (no convolution waits on a thread barrier, and the C passes keep every core busy). The float layers
run channels_last in `float_precision`: "auto" is bf16 where the CPU computes in it (AVX512-BF16/AMX), else fp32.
The upsampler and tail run as INT8 convolutions where the model carries calibrated clip values and the CPU has
VNNI or AMX (`int8_upsampler="auto"`).
"""
from __future__ import annotations

import contextlib
from concurrent.futures import ThreadPoolExecutor

import torch
import torch.nn as nn

from .. import hardware, interrupt
from ..errors import BackendError, ModelError
from ..quant import quant_config
from ..quant.lowering import lower
from ..quant.plans import float_tail_convs
from .backend import Backend, load_module, register_backend, resolve_device
from .nhwc import nhwc_pixel_shuffles

FLOAT_PRECISIONS = ("auto", "fp32", "bf16")
UPSAMPLER_OPTIONS = ("auto", True, False)


def int8_upsampler_choice(module: nn.Module) -> tuple[bool, str]:
    """(on, why) for int8_upsampler="auto": on where the model carries calibrated clips and the CPU has VNNI/AMX."""
    clips = getattr(module, "upsampler_clips", None) or {}
    paths = float_tail_convs(module)
    if not paths or any(p not in clips for p in paths):
        return False, "upsampler float: no calibrated clip values in the model (`cadyq calibrate --upsampler`)"
    if hardware.int8_range() != "full":
        return False, "upsampler float: this CPU has no VNNI or AMX, INT8 is no faster than float here"
    return True, "upsampler and tail INT8 (calibrated clips; VNNI/AMX)"


class NativeBackend(Backend):
    name = "native"

    def __init__(self, model, device="auto", float_precision: str = "auto", workers: int | None = None,
                 int8_upsampler="auto"):
        if float_precision not in FLOAT_PRECISIONS:
            raise BackendError(f"unknown float precision {float_precision!r}; choose one of {', '.join(FLOAT_PRECISIONS)}")
        if int8_upsampler not in UPSAMPLER_OPTIONS:
            raise BackendError(f"int8_upsampler is auto, True or False, not {int8_upsampler!r}")
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
        if float_precision == "auto":
            float_precision = "bf16" if hardware.cpu_has_bf16() else "fp32"
        self.float_precision = float_precision
        up_note = "upsampler float (asked for)" if int8_upsampler is False else "upsampler and tail INT8 (asked for)"
        if int8_upsampler == "auto":
            int8_upsampler, up_note = int8_upsampler_choice(module)
        self.int8_upsampler = bool(int8_upsampler)
        self.kernels = OneDNNKernels()
        self.tiles_per_call = hardware.int8_tiles_per_call()
        self.workers = max(1, workers or torch.get_num_threads())
        module = module.cpu().eval()
        self.program = self._program(module)
        # the lowered module graph keeps per-forward state: one copy per worker (the fused program keeps none)
        self.programs = [self.program] + [self.program if self.fused else self._program(module)
                                          for _ in range(self.workers - 1)]
        self.info = self.program.info
        self._pool: ThreadPoolExecutor | None = None
        form = ("oneDNN u8 x s8 -> s32, full 8-bit range (VNNI/AMX)" if self.kernels.form == "full"
                else "float32 convolutions of the integers (AVX2 without VNNI: u8 x s8 pairs saturate)")
        self.notes = [f"integer convolutions: {form}, {self.tiles_per_call} tiles per call; "
                      f"{'8-bit activations between layers' if self.fused else 'float activations between layers'}; "
                      f"4- and 6-bit tiles run as int8 values (no 4-bit arithmetic on this CPU); float layers "
                      f"{float_precision}; {up_note}"] + self.kernels.notes
        self.warnings = list(self.kernels.notes)  # what a user should hear about: the C kernels' fallback

    def _program(self, module):
        from .native_cpu import EDSRProgram, unsupported

        try:
            lowered = lower(module, int8_upsampler=self.int8_upsampler).use(self.kernels)
        except ModelError as e:
            raise BackendError(f"native backend: {e}") from e
        nhwc_pixel_shuffles(lowered.net)
        for m in lowered.net.modules():  # float layers in NHWC; the integer convs keep their own layout
            if isinstance(m, (nn.Conv2d, nn.ConvTranspose2d)):
                m.to(memory_format=torch.channels_last)
        self.fused = unsupported(lowered) is None
        if self.fused:
            return EDSRProgram(lowered, self.float_precision, self.kernels.form)
        return lowered

    def _groups(self, program, x, groups, sr, bits):
        for i, j in groups:
            interrupt.check()  # Ctrl-C and SIGTERM stop the workers between groups (and between layers)
            with torch.inference_mode():  # (sr may be an inference tensor: the caller's mode is not this thread's)
                view = sr[i:j]
                with self._float():
                    s, b = program(x[i:j], out=view) if self.fused else program(x[i:j])
                if s is not view:  # (the fused program writes its SR into the view itself)
                    view.copy_(s)
                bits[i:j] = b

    def _float(self):
        """The lowered module graph's float layers in bf16 (the fused program says so itself)."""
        if self.fused or self.float_precision != "bf16":
            return contextlib.nullcontext()
        return torch.autocast("cpu", dtype=torch.bfloat16)

    def run(self, tiles):
        n = tiles.shape[0]
        x = tiles.float().cpu().contiguous(memory_format=torch.channels_last)
        s, (h, w) = self.info.scale, x.shape[2:]
        sr = torch.empty((n, 3, h * s, w * s))
        bits = torch.empty((n, self.info.n_layers))
        per = self.tiles_per_call
        groups = [(i, min(n, i + per)) for i in range(0, n, per)]
        workers = min(self.workers, len(groups))
        if workers == 1:  # one group (or one worker): every thread on it
            self._groups(self.program, x, groups, sr, bits)
            return sr.to(tiles.device), bits.to(tiles.device)
        threads = torch.get_num_threads()
        torch.set_num_threads(1)
        try:  # worker w takes groups w, w + W, ...: single-threaded, with a program of its own
            if self._pool is None:  # kept: the workers' threads (and oneDNN's per-thread state) live across batches
                self._pool = ThreadPoolExecutor(self.workers, thread_name_prefix="cadyq-native")
            jobs = [self._pool.submit(self._groups, self.programs[w], x, groups[w::workers], sr, bits)
                    for w in range(workers)]
            for job in jobs:
                job.result()
        finally:
            torch.set_num_threads(threads)
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
