"""The native backend on CUDA: the integer program on Triton kernels (`cadyq.kernels.triton_kernels`).

Quantized convs are INT8 implicit GEMMs (int32 accumulation on the tensor cores) with the layer's input scale
(one for every tile: the integers lie on the top candidate's grid whatever each tile chose), weight scale, bias and
activation in their epilogue, which also accumulates the next layer's channel statistics (exact integer sums on
that layer's top grid); selection and quantization of the next layer is one light pass. Float layers (head, last
body conv, upsampler, tail) run fp16 channels_last under autocast (`float_precision="fp32"` for
exactness); the selection's inputs (tile gradient, entropy, selector) stay fp32.

Whole batches run at a few fixed sizes (`batch_sizes`): a batch is cut into chunks of the largest size
and the last chunk is padded up to the smallest size that holds it, so each size is captured once in a
CUDA graph (after a warm-up that lets Triton autotune) and replayed: one launch per batch instead of a
few hundred. Padded tiles are zeros and are dropped from the results; every op is per tile, so they
change nothing else.

`device="cpu"` with TRITON_INTERPRET=1 runs the same kernels in Triton's interpreter (slowly, without
graphs): how CI checks this path without a GPU.
"""
from __future__ import annotations

import contextlib
import os

import torch
import torch.nn as nn

from ..errors import BackendError
from ..quant.lowering import lower
from .backend import Backend
from .nhwc import nhwc_pixel_shuffles

BATCH_SIZES = (1, 4, 16, 64)
FLOAT_PRECISIONS = ("auto", "fp32", "fp16")


def triton_available(device: torch.device) -> str | None:
    """None when the Triton kernels can run on `device`, else why not (one line)."""
    try:
        import triton  # noqa: F401
    except ImportError:
        return "the native backend's CUDA kernels need Triton (pip install triton)"
    if device.type == "cpu" and os.environ.get("TRITON_INTERPRET") != "1":
        return "the Triton kernels run on CUDA (or on the CPU only under TRITON_INTERPRET=1)"
    return None


def pick_batch(n: int, sizes: tuple[int, ...]) -> int:
    """The smallest fixed size that holds n tiles (n <= max(sizes))."""
    return next(b for b in sorted(sizes) if b >= n)


def chunks(n: int, sizes: tuple[int, ...]) -> list[tuple[int, int, int]]:
    """(start, stop, padded size) covering n tiles with the fixed sizes: full chunks of the largest, then
    the rest padded up to the smallest size that holds it."""
    top = max(sizes)
    out = []
    for start in range(0, n, top):
        stop = min(n, start + top)
        out.append((start, stop, pick_batch(stop - start, sizes)))
    return out


class _Graph:
    """One CUDA graph of the program at a fixed input shape, with its static input and outputs."""

    def __init__(self, forward, shape, device, warmup: int = 2):
        self.x = torch.zeros(shape, device=device).contiguous(memory_format=torch.channels_last)
        side = torch.cuda.Stream(device)
        side.wait_stream(torch.cuda.current_stream(device))
        with torch.cuda.stream(side):
            for _ in range(warmup):  # Triton autotunes and compiles here, outside the capture
                forward(self.x)
        torch.cuda.current_stream(device).wait_stream(side)
        self.graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(self.graph):
            self.sr, self.bits = forward(self.x)

    def __call__(self, x):
        self.x.copy_(x)
        self.graph.replay()
        return self.sr, self.bits


def _lower(module, int8_upsampler: bool):
    from ..errors import ModelError

    try:
        return lower(module, int8_upsampler=int8_upsampler)
    except ModelError as e:
        raise BackendError(f"native backend: {e}") from e


class NativeCUDABackend(Backend):
    name = "native"

    def __init__(self, module: nn.Module, device: torch.device, float_precision: str = "auto",
                 batch_sizes: tuple[int, ...] = BATCH_SIZES, cuda_graphs: bool = True, int8_upsampler: bool = False):
        if float_precision not in FLOAT_PRECISIONS:
            raise BackendError(f"unknown float precision {float_precision!r} on CUDA; choose one of "
                               f"{', '.join(FLOAT_PRECISIONS)}")
        why = triton_available(device)
        if why:
            raise BackendError(f"native backend: {why}")
        if not batch_sizes or min(batch_sizes) < 1:
            raise BackendError("batch_sizes must be positive")
        from ..kernels.triton_kernels import TritonKernels

        self.device = device
        if float_precision == "auto":
            float_precision = "fp16" if device.type == "cuda" else "fp32"
        if float_precision == "fp16" and device.type != "cuda":
            raise BackendError("fp16 float layers are for CUDA; on the CPU use float_precision fp32")
        self.float_precision = float_precision
        self.amp = torch.float16 if float_precision == "fp16" else None
        self.kernels = TritonKernels(out_dtype=torch.float16 if self.amp is not None else torch.float32)
        program = _lower(module.cpu().eval(), int8_upsampler).use(self.kernels)
        nhwc_pixel_shuffles(program.net)
        self.program = program.to(device)
        for m in self.program.net.modules():
            if isinstance(m, (nn.Conv2d, nn.ConvTranspose2d)):
                m.to(memory_format=torch.channels_last)
        self.info = self.program.info
        self.batch_sizes = tuple(sorted(set(int(b) for b in batch_sizes)))
        self.use_graphs = cuda_graphs and device.type == "cuda"
        self._graphs: dict[tuple, _Graph] = {}
        self.graph_error: str | None = None
        self.notes = [f"integer convolutions: Triton INT8 implicit GEMM (int8 x int8 -> int32) with the layer's input "
                      f"scale in the epilogue; 4- and 6-bit tiles run as int8 values on the 8-bit grid; float layers "
                      f"{self.float_precision}; "
                      f"batches of {'/'.join(map(str, self.batch_sizes))} tiles"
                      + (" in CUDA graphs" if self.use_graphs else "")]

    def _autocast(self):
        if self.amp is None:
            return contextlib.nullcontext()
        return torch.autocast("cuda", dtype=self.amp)

    def _forward(self, x):
        with torch.inference_mode(), self._autocast():
            sr, bits = self.program(x)
        return sr.float(), bits.float()

    def _run_fixed(self, x):
        if self.use_graphs and self.graph_error is None:
            key = tuple(x.shape)
            try:
                if key not in self._graphs:
                    self._graphs[key] = _Graph(self._forward, key, self.device)
                return self._graphs[key](x)
            except RuntimeError as e:  # a capture that fails (an op that syncs): run eagerly from now on
                self.graph_error = str(e).splitlines()[0]
                self.notes.append(f"CUDA graphs off: {self.graph_error}")
                torch.cuda.synchronize(self.device)
        return self._forward(x)

    def run(self, tiles):
        x = tiles.to(self.device, torch.float32).contiguous(memory_format=torch.channels_last)
        n, _, h, w = x.shape
        s = self.info.scale
        sr = torch.empty((n, 3, h * s, w * s), device=self.device)
        bits = torch.empty((n, self.info.n_layers), device=self.device)
        for start, stop, size in chunks(n, self.batch_sizes):
            chunk = x[start:stop]
            if size > chunk.shape[0]:
                chunk = torch.cat([chunk, chunk.new_zeros((size - chunk.shape[0], *chunk.shape[1:]))])
            out_sr, out_bits = self._run_fixed(chunk.contiguous(memory_format=torch.channels_last))
            sr[start:stop] = out_sr[:stop - start]
            bits[start:stop] = out_bits[:stop - start]
        return sr, bits
