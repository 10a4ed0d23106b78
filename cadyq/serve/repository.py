"""Triton model repositories for cadyq models: each model takes batches of LR tiles and returns SR tiles
and the bits chosen, so a client cuts and stitches (`cadyq.serve.client`) and the server's dynamic batcher puts
the tiles of concurrent requests into one batch.

    <repo>/<name>/config.pbtxt, 1/model.py, 1/model.safetensors   Python backend: cadyq's own runtime (the
        integer program on the native backend where it runs), any tile size
    <repo>/<name>-onnx/config.pbtxt, 1/model.onnx                 ONNX Runtime backend: the ONNX export
    <repo>/<name>-trt/config.pbtxt, 1/model.plan                  TensorRT backend: an engine built by full TensorRT

Every config carries `cadyq_info` (the ModelInfo JSON: scale, bit candidates, layer costs) as a parameter, so a
client learns how to stitch and account the bits from the server alone. Tensors: input `lr` FP32 [3, h, w] in
0..255 per tile; outputs `sr` [3, h*s, w*s] (UINT8 from the Python model: rounded as a local run rounds 8-bit
images, a quarter of the bytes; FP32 from ONNX/TensorRT) and `bits` FP32 [L].
"""
from __future__ import annotations

import json
import os
import shutil
from dataclasses import dataclass
from pathlib import Path

import torch.nn as nn

from ..errors import CadyqError, OutputError
from ..quant import ModelInfo

MODEL_PY = '''\
"""Triton Python-backend model for cadyq (written by cadyq.serve.repository; the code is cadyq.serve.triton_model)."""
from cadyq.serve.triton_model import TritonPythonModel  # noqa: F401
'''


@dataclass
class ServeConfig:
    """How the Python-backend model runs: cadyq backend and device, instances, batching."""

    backend: str = "auto"  # a cadyq backend name (auto: native integer kernels where they run)
    device: str = "cpu"
    instances: int = 1  # model instances (processes); tiles are split among them
    max_batch: int = 16  # tiles per execution, the dynamic batcher's ceiling
    queue_delay_us: int = 2000  # how long the batcher waits for more tiles
    threads: int | None = None  # torch threads per instance (default: the server's CPU cores / instances)
    max_tile: int = 512  # the largest LR tile side a request may send


def _parameters(params: dict) -> str:
    # a JSON string literal is a valid protobuf text-format string
    return "".join(f'parameters {{ key: "{k}" value {{ string_value: {json.dumps(str(v))} }} }}\n'
                   for k, v in params.items())


def _tensor(name: str, dtype: str, dims) -> str:
    return f'{{ name: "{name}" data_type: {dtype} dims: [ {", ".join(str(d) for d in dims)} ] }}'


def python_model_config(name: str, info: ModelInfo, cfg: ServeConfig) -> str:
    kind = "KIND_GPU" if cfg.device.startswith("cuda") else "KIND_CPU"
    params = {"cadyq_info": json.dumps(info.to_dict()), "cadyq_backend": cfg.backend, "cadyq_device": cfg.device,
              "cadyq_threads": cfg.threads or 0, "cadyq_max_tile": cfg.max_tile}
    return (f'name: "{name}"\nbackend: "python"\nmax_batch_size: {cfg.max_batch}\n'
            f'input [ {_tensor("lr", "TYPE_FP32", (3, -1, -1))} ]\n'
            f'output [ {_tensor("sr", "TYPE_UINT8", (3, -1, -1))}, {_tensor("bits", "TYPE_FP32", (-1,))} ]\n'
            f'dynamic_batching {{ max_queue_delay_microseconds: {cfg.queue_delay_us} }}\n'
            f'instance_group [ {{ kind: {kind} count: {cfg.instances} }} ]\n' + _parameters(params))


def _fixed_model_config(name: str, platform: str, info: ModelInfo, tile: int, max_batch: int, instances: int,
                        kind: str) -> str:
    s = info.scale
    return (f'name: "{name}"\nplatform: "{platform}"\nmax_batch_size: {max_batch}\n'
            f'input [ {_tensor("lr", "TYPE_FP32", (3, tile, tile))} ]\n'
            f'output [ {_tensor("sr", "TYPE_FP32", (3, tile * s, tile * s))}, '
            f'{_tensor("bits", "TYPE_FP32", (info.n_layers,))} ]\n'
            f'dynamic_batching {{ }}\ninstance_group [ {{ kind: {kind} count: {instances} }} ]\n'
            + _parameters({"cadyq_info": json.dumps(info.to_dict())}))


def _fresh_folder(path: Path, overwrite: bool) -> None:
    if path.exists():
        if not overwrite:
            raise OutputError(f"{path} exists; pass --overwrite to replace it")
        shutil.rmtree(path)
    (path / "1").mkdir(parents=True)


def write_python_model(repo: str | os.PathLike, name: str, model: nn.Module, cfg: ServeConfig | None = None,
                       overwrite: bool = False) -> Path:
    """<repo>/<name>: the model's weights, config.pbtxt and a model.py that runs it with cadyq (installed in the
    server's Python: `cadyq serve` runs the server with this interpreter's)."""
    from ..checkpoint import save

    cfg = cfg or ServeConfig()
    folder = Path(repo) / name
    _fresh_folder(folder, overwrite)
    save(model, folder / "1" / "model.safetensors")
    (folder / "1" / "model.py").write_text(MODEL_PY)
    (folder / "config.pbtxt").write_text(python_model_config(name, ModelInfo.from_model(model), cfg))
    return folder


def write_onnx_model(repo: str | os.PathLike, name: str, model: nn.Module, tile: int = 96, max_batch: int = 16,
                     instances: int = 1, overwrite: bool = False) -> Path:
    """<repo>/<name>: the ONNX export (form "ort", the integer form for ONNX Runtime; CADyQSelect as a model-local
    function, so a stock ONNX Runtime backend runs it with no plugin) and its config."""
    from ..export.onnx_export import export_onnx

    folder = Path(repo) / name
    _fresh_folder(folder, overwrite)
    export_onnx(model, folder / "1" / "model.onnx", tile=tile, form="ort")
    (folder / "config.pbtxt").write_text(
        _fixed_model_config(name, "onnxruntime_onnx", ModelInfo.from_model(model), tile, max_batch, instances, "KIND_CPU"))
    return folder


def plan_config(plan: str | os.PathLike) -> tuple[ModelInfo, int, int]:
    """(model info, tile, maximum batch) of a TensorRT engine that Triton's TensorRT backend can load, from its
    sidecar. Only engines built by full TensorRT load there (of the same TensorRT version); TensorRT-RTX engines and
    engines with cadyq's Python plugin layers do not."""
    from ..export.engine import read_sidecar

    side = read_sidecar(plan)
    if side.get("builder") != "tensorrt":
        raise CadyqError(f"{plan}: built by {side.get('builder')}; Triton's TensorRT backend loads engines of full "
                         "TensorRT only (build the plan with `cadyq engine` where `tensorrt` is installed)")
    if side.get("plugin"):
        raise CadyqError(f"{plan}: an engine with cadyq's Python plugin layers; Triton cannot load those: build it "
                         "without --plugin")
    return ModelInfo.from_dict(side["model"]), int(side["tile"]), int(side["batch"][2])


def write_plan_model(repo: str | os.PathLike, name: str, plan: str | os.PathLike, overwrite: bool = False) -> Path:
    """<repo>/<name>: a TensorRT engine (`cadyq engine`) and its config (see `plan_config`)."""
    info, tile, max_batch = plan_config(plan)
    folder = Path(repo) / name
    _fresh_folder(folder, overwrite)
    shutil.copy2(plan, folder / "1" / "model.plan")
    (folder / "config.pbtxt").write_text(_fixed_model_config(name, "tensorrt_plan", info, tile, max_batch, 1, "KIND_GPU"))
    return folder


def model_name(name: str) -> str:
    """A Triton model name from a zoo name or a checkpoint path: its stem, characters Triton and URLs like."""
    stem = Path(name).name
    for suffix in (".safetensors", ".pth.tar", ".pth", ".pt"):
        if stem.endswith(suffix):
            stem = stem[: -len(suffix)]
    clean = "".join(c if c.isalnum() or c in "-_." else "-" for c in stem).strip("-.")
    return clean or "cadyq"


def read_config(path: str | os.PathLike):
    """A config.pbtxt parsed with Triton's own ModelConfig protobuf (tritonclient ships it)."""
    from google.protobuf import text_format
    from tritonclient.grpc import model_config_pb2

    return text_format.Parse(Path(path).read_text(), model_config_pb2.ModelConfig())
