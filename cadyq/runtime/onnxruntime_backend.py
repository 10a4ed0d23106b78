"""The onnxruntime backend: runs a graph exported by `cadyq.export.export_onnx`.

CUDAExecutionProvider when the device is CUDA and onnxruntime-gpu provides it (input and outputs
bound to torch's device memory, no host copies); otherwise the CPU provider (tensors on a CUDA
device are then copied to the host and back). The model description (`ModelInfo`) comes from the
graph's `cadyq` metadata; a graph without it is not a cadyq export and is refused.
"""
from __future__ import annotations

import json
import tempfile
from pathlib import Path

import numpy as np
import onnx
import torch
import torch.nn as nn

from ..errors import BackendError
from ..export.onnx_file import load_onnx
from ..quant import ModelInfo
from ..sizes import size_text
from .backend import Backend, register_backend, resolve_device

_INPUT, _OUTPUTS, _META = "lr", ("sr", "bits"), "cadyq"
_NP = {onnx.TensorProto.FLOAT: np.float32, onnx.TensorProto.FLOAT16: np.float16}
_TORCH = {np.float32: torch.float32, np.float16: torch.float16}


def _import_ort():
    try:
        import onnxruntime as ort
    except ImportError as e:
        raise BackendError("onnxruntime is not installed; pip install onnxruntime (or onnxruntime-gpu for CUDA)") from e
    return ort


class OnnxRuntimeBackend(Backend):
    """OnnxRuntimeBackend(path, device="auto", threads=None, tile=96). `path` may also be an nn.Module from
    cadyq, which is exported first (`tile`, dynamic batch) to a temporary file."""

    name = "onnxruntime"

    def __init__(self, path, device: str | torch.device = "auto", threads: int | None = None, tile: int = 96):
        ort = _import_ort()
        self._tmp = None
        if isinstance(path, nn.Module):
            from ..export import export_onnx

            self._tmp = tempfile.TemporaryDirectory(prefix="cadyq-ort-")
            path = export_onnx(path, Path(self._tmp.name) / "model.onnx", tile=tile, form="ort")
        self.path = Path(path)
        self.device = resolve_device(device)
        proto = load_onnx(self.path, BackendError)
        meta = {p.key: p.value for p in proto.metadata_props}
        if _META not in meta:
            raise BackendError(f"{self.path}: not a cadyq export (no 'cadyq' metadata); export the model with "
                               "`cadyq export` or cadyq.export.export_onnx")
        try:
            self.info = ModelInfo.from_dict(json.loads(meta[_META]))
        except Exception as e:
            raise BackendError(f"{self.path}: the 'cadyq' metadata is unreadable ({e}); re-export the model") from e
        inputs = [i for i in proto.graph.input if i.name == _INPUT]
        outs = [o.name for o in proto.graph.output]
        if not inputs or "sr" not in outs:
            raise BackendError(f"{self.path}: expected input 'lr' and outputs 'sr', 'bits'; re-export the model")
        tt = inputs[0].type.tensor_type
        self._in_dtype = _NP.get(tt.elem_type)
        if self._in_dtype is None:
            raise BackendError(f"{self.path}: input 'lr' has element type {tt.elem_type}, expected float32 or float16")
        dims = [d.dim_value or None for d in tt.shape.dim]
        if len(dims) != 4:
            raise BackendError(f"{self.path}: input 'lr' must be 4-D [N,3,h,w]")
        self.max_batch = dims[0]
        self.tile_sizes = (dims[2], dims[3]) if dims[2] and dims[3] else None
        self._has_bits = "bits" in outs
        self.export = json.loads(meta.get("cadyq.export", "{}"))
        del proto

        so = ort.SessionOptions()
        so.log_severity_level = 3
        if threads:
            so.intra_op_num_threads = threads
        providers: list = ["CPUExecutionProvider"]
        if self.device.type == "cuda" and "CUDAExecutionProvider" in ort.get_available_providers():
            providers.insert(0, ("CUDAExecutionProvider", {"device_id": self.device.index or 0}))
        try:
            self.session = ort.InferenceSession(str(self.path), so, providers=providers)
        except Exception as e:
            raise BackendError(f"{self.path}: ONNX Runtime cannot load this graph ({e})") from e
        self.providers = tuple(self.session.get_providers())
        self._cuda = self.providers[0] == "CUDAExecutionProvider"
        self.warnings = [] if self._tmp is not None else self._speed_hints()

    def _speed_hints(self) -> list[str]:
        """What runs this model faster on this CPU, for a graph exported in a form meant for another runtime."""
        form = self.export.get("form", "fakequant")
        if self._cuda or self.info.method == "fp32" or form == "ort":
            return []
        return [f"{self.path.name} is the {form} form of the export, which ONNX Runtime's CPU provider runs as float "
                "convolutions with separate passes; `cadyq export --form ort` runs the same integers and bits faster "
                "here, and the checkpoint itself (--model CKPT, the native integer backend) faster still "
                "(benchmarks/integer_cpu.md)"]

    def _check(self, tiles: torch.Tensor) -> None:
        if tiles.dim() != 4 or tiles.shape[1] != 3:
            raise BackendError(f"tiles must be [N,3,h,w], got {tuple(tiles.shape)}")
        if self.tile_sizes is not None and tuple(tiles.shape[2:]) != self.tile_sizes:
            h, w = self.tile_sizes
            raise BackendError(f"{self.path.name} takes {size_text(h, w)} tiles, got {size_text(*tiles.shape[2:])}; "
                               f"pass --tile {h} or re-export with another tile size")
        if self.max_batch is not None and tiles.shape[0] > self.max_batch:
            raise BackendError(f"{self.path.name} takes batches of {self.max_batch}, got {tiles.shape[0]}")

    def run(self, tiles: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        self._check(tiles)
        n = tiles.shape[0]
        feed = tiles
        if self.max_batch is not None and n < self.max_batch:  # a static batch: pad with copies of the last tile
            feed = torch.cat([tiles, tiles[-1:].expand(self.max_batch - n, -1, -1, -1)])
        if self._cuda and tiles.is_cuda:
            sr, bits = self._run_cuda(feed)
        else:
            x = feed.detach().to("cpu", _TORCH[self._in_dtype]).contiguous().numpy()
            outs = self.session.run(list(_OUTPUTS) if self._has_bits else ["sr"], {_INPUT: x})
            sr = torch.from_numpy(np.asarray(outs[0], dtype=np.float32))
            bits = torch.from_numpy(np.asarray(outs[1], dtype=np.float32)) if self._has_bits else None
            sr = sr.to(self.device)
            bits = bits.to(self.device) if bits is not None else None
        if bits is None:
            bits = self.info.default_bits(feed.shape[0]).to(self.device)
        return sr[:n].float(), bits[:n].float()

    def _run_cuda(self, x: torch.Tensor):
        """IO binding on torch's CUDA memory (no host round trip)."""
        x = x.detach().to(_TORCH[self._in_dtype]).contiguous()
        n, _, h, w = x.shape
        s = self.info.scale
        sr = torch.empty((n, 3, h * s, w * s), dtype=torch.float32, device=x.device)
        bits = torch.empty((n, self.info.n_layers), dtype=torch.float32, device=x.device)
        binding = self.session.io_binding()
        idx = x.device.index or 0
        binding.bind_input(_INPUT, "cuda", idx, self._in_dtype, tuple(x.shape), x.data_ptr())
        binding.bind_output("sr", "cuda", idx, np.float32, tuple(sr.shape), sr.data_ptr())
        if self._has_bits:
            binding.bind_output("bits", "cuda", idx, np.float32, tuple(bits.shape), bits.data_ptr())
        torch.cuda.current_stream(x.device).synchronize()  # ORT runs on its own stream
        self.session.run_with_iobinding(binding)
        return sr, (bits if self._has_bits else None)


register_backend("onnxruntime", OnnxRuntimeBackend)
