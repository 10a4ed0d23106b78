"""The TensorRT backend: runs an engine built by `cadyq engine` (full TensorRT or TensorRT-RTX) on a CUDA GPU.

Before anything is loaded, the engine and its sidecar (`<engine>.json`) are checked, each failure an
EngineError that says what to do: the sidecar exists and describes a cadyq model whose metadata is
consistent (and equals `expect` when given); the engine file's sha256 is the sidecar's (a truncated,
corrupt or swapped file is caught here); the builder that made it (name and version) is the one
installed; there is a CUDA GPU; its compute capability is one the engine was built for (TensorRT-RTX:
8.0/8.6/8.9/12.x, never 9.0 such as the H100; full TensorRT: the GPU it was built on). Then the
engine is deserialized (CADyQSelect plugin registered first when the engine uses it), its I/O checked
against the sidecar, and `run` executes tile batches within the profile with torch CUDA tensors:
set_input_shape, set_tensor_address, execute_async_v3 on torch's current stream.
"""
from __future__ import annotations

from pathlib import Path

import torch
import torch.nn as nn

from ..errors import BackendError, EngineError
from ..quant import ModelInfo
from .backend import Backend, register_backend, resolve_device

INPUT, OUTPUTS = "lr", ("sr", "bits")
RTX_HINT = ("TensorRT-RTX engines run on compute capability 8.0, 8.6, 8.9 and 12.x GPUs only (RTX and Ampere-class; "
            "not 9.0 such as H100/H200)")


def _fix(what: str) -> str:
    return f"{what}; rebuild it with `cadyq engine MODEL.onnx -o ENGINE` (or run the .onnx with --backend onnxruntime)"


def check_sidecar(sc: dict, path: Path, expect=None) -> ModelInfo:
    """The ModelInfo of a sidecar after consistency checks (and equality with `expect`, a ModelInfo or dict)."""
    try:
        info = ModelInfo.from_dict(sc["model"])
        tile, batch = int(sc["tile"]), [int(v) for v in sc["batch"]]
        outs = {o["name"]: o["shape"] for o in sc["outputs"]}
        str(sc["builder"]["name"]), str(sc["builder"]["version"]), list(sc["target"]["ccs"])  # present
        str(sc["engine_sha256"])
    except (KeyError, TypeError, ValueError) as e:
        raise EngineError(_fix(f"{path}: its sidecar lacks or garbles {e}")) from e
    problems = []
    if len(batch) != 3 or not 1 <= batch[0] <= batch[1] <= batch[2]:
        problems.append(f"batch profile {batch}")
    if tuple(sc.get("bits", info.bits)) != tuple(info.bits):
        problems.append(f"bits {sc.get('bits')} vs model bits {list(info.bits)}")
    if int(sc.get("scale", info.scale)) != info.scale:
        problems.append(f"scale {sc.get('scale')} vs model scale {info.scale}")
    if outs.get(OUTPUTS[0], [None, 3, -1, -1])[2:] != [tile * info.scale] * 2:
        problems.append(f"sr shape {outs.get(OUTPUTS[0])} vs tile {tile} x{info.scale}")
    if outs.get(OUTPUTS[1], [None, -1])[1:] != [info.n_layers]:
        problems.append(f"bits shape {outs.get(OUTPUTS[1])} vs {info.n_layers} dynamic layers")
    if problems:
        raise EngineError(_fix(f"{path}: its sidecar does not describe one consistent model ({'; '.join(problems)})"))
    if expect is not None:
        want = expect if isinstance(expect, ModelInfo) else ModelInfo.from_dict(expect)
        if want != info:
            raise EngineError(f"{path} is an engine for {info.backbone} x{info.scale} {info.method} bits {info.bits} "
                              f"({info.n_layers} dynamic layers), not the expected {want.backbone} x{want.scale} "
                              f"{want.method} bits {want.bits} ({want.n_layers}); build the engine from that model's ONNX")
    return info


def _cc_of(device: torch.device) -> str:
    major, minor = torch.cuda.get_device_capability(device)
    return f"{major}.{minor}"


class TensorRTBackend(Backend):
    name = "tensorrt"

    def __init__(self, path, device="auto", *, expect=None):
        from ..export.engine import builder_identity, read_sidecar, sha256_file
        from ..trt_plugins import trt_module

        if isinstance(path, nn.Module):
            raise BackendError("the tensorrt backend runs engine files; export and build one: "
                               "`cadyq engine --make --model CKPT --out-dir build`")
        path = Path(path)
        if path.suffix == ".onnx":
            raise EngineError(f"{path} is an ONNX graph; build an engine from it first (`cadyq engine {path} -o "
                              f"{path.with_suffix('.engine').name}`) or run it with --backend onnxruntime")
        if not path.is_file():
            raise EngineError(f"{path}: no such engine file; build one with `cadyq engine MODEL.onnx -o {path}`")
        sc = read_sidecar(path)
        self.path, self.sidecar = path, sc
        self.info = check_sidecar(sc, path, expect)
        size, sha = path.stat().st_size, sha256_file(path)
        if sha != sc["engine_sha256"]:
            raise EngineError(_fix(f"{path} does not match its sidecar (sha256 {sha[:12]}, {size} bytes; the sidecar "
                                   f"says {sc['engine_sha256'][:12]}, {sc.get('engine_bytes')} bytes): the engine file "
                                   "is corrupt, truncated or was replaced"))
        self.rtx = sc["builder"]["name"] == "tensorrt-rtx"
        self.tile = int(sc["tile"])
        self.min_batch, _, self.max_batch = (int(v) for v in sc["batch"])
        self.tile_sizes = (self.tile, self.tile)
        self.device = self._gpu(device, sc, path)    # before the bindings: "this GPU cannot run it" says more
        trt = trt_module()
        have, want = builder_identity(trt), (sc["builder"]["name"], str(sc["builder"]["version"]))
        if have != want:
            raise EngineError(f"{path} was built by {want[0]} {want[1]}, but this machine has {have[0]} {have[1]}; engines "
                              "only load in the builder and version that made them: rebuild it here with "
                              f"`cadyq engine {sc.get('onnx', 'MODEL.onnx')} -o {path}`")
        self.trt = trt
        self._load(path, sc)

    # -- checks ------------------------------------------------------------------------------------------------
    def _gpu(self, device, sc, path) -> torch.device:
        if not torch.cuda.is_available():
            raise EngineError(f"{path}: TensorRT engines run on an NVIDIA GPU and torch sees no CUDA GPU here; run the "
                              "model with --backend torch or onnxruntime (CPU), or use this engine on a machine with a "
                              f"GPU of compute capability {', '.join(sc['target']['ccs'])}")
        dev = resolve_device(device)
        if dev.type != "cuda":
            raise EngineError(f"the tensorrt backend runs on CUDA devices, not {dev}; pass --device cuda (or cuda:N)")
        if dev.index is None:
            dev = torch.device("cuda", torch.cuda.current_device())
        cc, ccs = _cc_of(dev), list(sc["target"]["ccs"])
        if cc not in ccs:
            name = torch.cuda.get_device_name(dev)
            if self.rtx:
                raise EngineError(f"{path}: {RTX_HINT}; this GPU ({name}) is {cc} and the engine targets {', '.join(ccs)}. "
                                  + ("Use full TensorRT on this GPU, or the torch/native backends"
                                     if cc not in ("7.5", "8.0", "8.6", "8.9", "12.0", "12.1") else
                                     f"Rebuild it for this GPU: `cadyq engine ... --target sm{cc.replace('.', '')}`"))
            raise EngineError(f"{path} was built by full TensorRT for compute capability {', '.join(ccs)}; this GPU "
                              f"({name}) is {cc}: rebuild the engine on this GPU with `cadyq engine`")
        return dev

    def _load(self, path: Path, sc: dict) -> None:
        trt = self.trt
        from ..export.engine import _make_logger

        self._logger = _make_logger(trt)
        if sc.get("plugin"):
            from ..trt_plugins import register

            register(trt=trt, force=self.rtx)  # Python plugins are not serialized into the engine
        data = path.read_bytes()
        with torch.cuda.device(self.device):
            self._runtime = trt.Runtime(self._logger)
            if self.rtx and hasattr(self._runtime, "get_engine_validity"):
                validity, diag = self._runtime.get_engine_validity(data)
                if validity.name == "INVALID":
                    raise EngineError(_fix(f"{path}: TensorRT-RTX says the engine is invalid on this machine "
                                           f"(diagnostics {diag:#x}: {self._diagnostics(diag)})"))
            self.engine = self._runtime.deserialize_cuda_engine(data)
            if self.engine is None:
                raise EngineError(_fix(f"{path}: {sc['builder']['name']} could not deserialize the engine ("
                                       + " | ".join(self._logger.messages[-4:]) + ")"))
            self._check_io(path)
            self.context = self.engine.create_execution_context()
        if self.context is None:
            raise EngineError(f"{path}: could not create an execution context (out of GPU memory?)")

    def _diagnostics(self, diag: int) -> str:
        names = [d.name for d in self.trt.EngineInvalidityDiagnostics.__members__.values() if diag & int(d)]
        return ", ".join(names) or "none given"

    def _check_io(self, path: Path) -> None:
        eng = self.engine
        names = [eng.get_tensor_name(i) for i in range(eng.num_io_tensors)]
        if sorted(names) != sorted((INPUT,) + OUTPUTS):
            raise EngineError(_fix(f"{path}: engine tensors {names}, expected {INPUT} -> {', '.join(OUTPUTS)}"))
        s, t = self.info.scale, self.tile
        lo, _, hi = (tuple(d) for d in eng.get_tensor_profile_shape(INPUT, 0))
        sr, bits = tuple(eng.get_tensor_shape(OUTPUTS[0])), tuple(eng.get_tensor_shape(OUTPUTS[1]))
        if (lo[0], hi[0], tuple(lo[1:])) != (self.min_batch, self.max_batch, (3, t, t)) or sr[1:] != (3, t * s, t * s) \
                or bits[1:] != (self.info.n_layers,):
            raise EngineError(_fix(f"{path}: the engine (profile {lo}..{hi}, sr {sr}, bits {bits}) does not match its "
                                   f"sidecar (tile {t}, x{s}, batch {self.min_batch}..{self.max_batch}, "
                                   f"{self.info.n_layers} dynamic layers)"))
        self._dtypes = {n: _torch_dtype(self.trt, eng.get_tensor_dtype(n)) for n in names}

    # -- inference ---------------------------------------------------------------------------------------------
    @torch.inference_mode()
    def run(self, tiles: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        if tiles.dim() != 4 or tuple(tiles.shape[1:]) != (3, self.tile, self.tile):
            raise BackendError(f"this engine takes tiles [N,3,{self.tile},{self.tile}], got {tuple(tiles.shape)}")
        x = tiles.to(self.device, torch.float32).contiguous()
        n, s, t, L = x.shape[0], self.info.scale, self.tile, self.info.n_layers
        sr = torch.empty(n, 3, t * s, t * s, device=self.device)
        bits = torch.empty(n, L, device=self.device)
        stream = torch.cuda.current_stream(self.device)
        for i in range(0, n, self.max_batch):
            xb = x[i:i + self.max_batch]
            m = xb.shape[0]
            if m < self.min_batch:  # the profile's minimum: pad with copies of the last tile
                xb = torch.cat([xb, xb[-1:].expand(self.min_batch - m, -1, -1, -1)])
            xb = xb.to(self._dtypes[INPUT]).contiguous()
            k = xb.shape[0]
            out_sr = torch.empty(k, 3, t * s, t * s, device=self.device, dtype=self._dtypes[OUTPUTS[0]])
            out_bits = torch.empty(k, L, device=self.device, dtype=self._dtypes[OUTPUTS[1]])
            ctx = self.context
            if not ctx.set_input_shape(INPUT, tuple(xb.shape)):
                raise EngineError(f"the engine rejected input shape {tuple(xb.shape)} (profile "
                                  f"{self.min_batch}..{self.max_batch} x 3 x {t} x {t})")
            for name, ten in ((INPUT, xb), (OUTPUTS[0], out_sr), (OUTPUTS[1], out_bits)):
                ctx.set_tensor_address(name, ten.data_ptr())
            if not ctx.execute_async_v3(stream.cuda_stream):
                raise EngineError("TensorRT failed to run the engine: " + " | ".join(self._logger.messages[-4:]))
            sr[i:i + m] = out_sr[:m]
            bits[i:i + m] = out_bits[:m]
        return sr, bits


def _torch_dtype(trt, dt) -> torch.dtype:
    table = {"FLOAT": torch.float32, "HALF": torch.float16, "BF16": torch.bfloat16, "INT32": torch.int32,
             "INT64": torch.int64, "INT8": torch.int8, "BOOL": torch.bool, "UINT8": torch.uint8}
    if dt.name not in table:
        raise EngineError(f"engine I/O type {dt.name} is not supported by the tensorrt backend")
    return table[dt.name]


def _factory(model, device) -> TensorRTBackend:
    return TensorRTBackend(model, device)


register_backend("tensorrt", _factory)
