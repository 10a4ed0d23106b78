"""OpenVINO as a benchmark peer: the fp32 model at OpenVINO's default precision, and a static INT8 model
from NNCF post-training quantization of the same weights (`pip install "cadyq[peers]"`).

These are what a CPU user would deploy instead of cadyq, so `cadyq bench --compare peers` times them
beside the integer paths. The compiled model's runtime graph says what really ran (each convolution's
runtime precision), and the row's notes carry it.
"""
from __future__ import annotations

import collections
import dataclasses

import numpy as np
import torch
import torch.nn as nn

from ..hardware import cpu_has_bf16
from ..quant import ModelInfo
from ..runtime import Backend

OPENVINO_PEERS = {"openvino": "fp32", "openvino-int8": "int8"}


def unavailable() -> str | None:
    """None when OpenVINO (and NNCF, for the INT8 peer) import here, else why not."""
    try:
        import openvino  # noqa: F401
    except ImportError:
        return 'OpenVINO is not installed (pip install "cadyq[peers]")'
    return None


def _nncf_unavailable() -> str | None:
    try:
        import nncf  # noqa: F401
    except ImportError:
        return 'NNCF is not installed (pip install "cadyq[peers]")'
    return None


class OpenVINOBackend(Backend):
    """An fp32 backbone compiled by OpenVINO for the CPU (batch dimension dynamic), optionally quantized
    to INT8 by NNCF on `calib_tiles` first."""

    name = "openvino"

    def __init__(self, fp32: nn.Module, tile: int, precision: str = "fp32", calib_tiles: torch.Tensor | None = None,
                 threads: int | None = None):
        import openvino as ov

        self.device = torch.device("cpu")
        self.info = ModelInfo.from_model(fp32)
        if precision == "int8":  # counted as the 8-bit model it is (BitOPs), and not as a float peer
            layers = tuple(dataclasses.replace(c, weight_bits=8, act_bits=None if c.act_bits is None else 8)
                           for c in self.info.layers)
            self.info = dataclasses.replace(self.info, method="int8-ptq", bits=(8,), layers=layers)
        fp32 = fp32.cpu().eval()
        example = torch.zeros(1, 3, tile, tile)
        with torch.no_grad():
            model = ov.convert_model(fp32, example_input=example, input=[ov.PartialShape([-1, 3, tile, tile])])
        self.notes = []
        if precision == "int8":
            import nncf

            if calib_tiles is None:
                raise ValueError("the INT8 peer needs calibration tiles")
            data = [t[None].float().numpy() for t in calib_tiles]
            model = nncf.quantize(model, nncf.Dataset(data), subset_size=len(data))
            self.notes.append(f"NNCF post-training quantization (default preset) on {len(data)} tiles of the "
                              "benchmark image")
        # bf16 where the CPU computes in it (OpenVINO's own default on AMX), as cadyq.hardware decides for every path
        config = {"PERFORMANCE_HINT": "LATENCY", "INFERENCE_PRECISION_HINT": "bf16" if cpu_has_bf16() else "f32"}
        if threads:
            config["INFERENCE_NUM_THREADS"] = int(threads)
        self.compiled = ov.Core().compile_model(model, "CPU", config)
        self.request = self.compiled.create_infer_request()
        self.precision = precision
        self.notes.append(f"OpenVINO {ov.__version__}: " + self.runtime_summary())

    def runtime_summary(self) -> str:
        """How many convolutions ran in which precision, from the compiled model's runtime graph."""
        counts: collections.Counter = collections.Counter()
        for op in self.compiled.get_runtime_model().get_ops():
            rt = op.get_rt_info()
            if "layerType" in rt and rt["layerType"].astype(str) == "Convolution":
                counts[rt["runtimePrecision"].astype(str) if "runtimePrecision" in rt else "?"] += 1
        return "convolutions by runtime precision: " + ", ".join(f"{n} {p}" for p, n in sorted(counts.items()))

    def run(self, tiles):
        x = np.ascontiguousarray(tiles.detach().float().cpu().numpy())
        sr = self.request.infer({0: x})[0]
        return torch.from_numpy(np.array(sr, copy=True)), self.info.default_bits(tiles.shape[0])


def openvino_peer(fp32: nn.Module, kind: str, tile: int, calib_tiles: torch.Tensor | None,
                  threads: int | None) -> tuple[OpenVINOBackend | None, str | None]:
    """(backend, None), or (None, why it cannot run here) for the peer `kind` ("openvino", "openvino-int8")."""
    why = unavailable() or (_nncf_unavailable() if kind == "openvino-int8" else None)
    if why:
        return None, why
    return OpenVINOBackend(fp32, tile, OPENVINO_PEERS[kind], calib_tiles, threads), None
