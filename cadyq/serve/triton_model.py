"""The Triton Python-backend model: batches of LR tiles in, SR tiles and bits out, on a cadyq backend.

Runs inside Triton's Python stub (`triton_python_backend_utils` exists only there). Tensors cross by DLPack, not
numpy: the bundled stub's numpy interop predates numpy 2 (see cadyq.serve.server). Each execute() gets the
requests the dynamic batcher gathered; tiles of one shape run as one batch, and a request that cannot run gets
its own error while the others are answered.
"""
from __future__ import annotations

import json
from pathlib import Path

import torch
from torch.utils.dlpack import from_dlpack, to_dlpack

from ..hardware import usable_cores
from ..sizes import size_text


def _param(config: dict, key: str, default=None):
    p = config.get("parameters", {}).get(key)
    return default if p is None else p.get("string_value", default)


def check_tiles(lr: torch.Tensor, max_tile: int) -> str | None:
    """Why a request's `lr` tensor cannot run, or None."""
    if lr.dim() != 4 or lr.shape[1] != 3:
        return f"lr must be [N, 3, h, w], got {list(lr.shape)}"
    n, _, h, w = lr.shape
    if n < 1 or h < 1 or w < 1:
        return f"lr has no pixels: {list(lr.shape)}"
    if max(h, w) > max_tile:
        return f"tile {size_text(h, w)} is larger than this server's limit of {max_tile} px a side: cut the image into tiles"
    if not torch.isfinite(lr).all() or float(lr.min()) < 0 or float(lr.max()) > 255:
        return "lr values must be finite and within 0..255"
    return None


class TileRunner:
    """What the Triton model does, without Triton: run request tensors on a cadyq backend. Also used by tests."""

    def __init__(self, model, backend: str = "auto", device: str = "cpu", max_tile: int = 512):
        from ..runtime.backend import create_backend

        self.backend = create_backend(backend, model, device)
        self.max_tile = max_tile

    def run(self, batches: list[torch.Tensor]) -> list[tuple[torch.Tensor, torch.Tensor] | str]:
        """Each request's lr [n,3,h,w] -> (sr uint8 [n,3,hs,ws], bits float32 [n,L]) or the error message."""
        out: list = [check_tiles(lr, self.max_tile) for lr in batches]
        by_shape: dict[tuple, list[int]] = {}
        for k, lr in enumerate(batches):
            if out[k] is None:
                by_shape.setdefault(tuple(lr.shape[2:]), []).append(k)
        for ks in by_shape.values():  # at most max_batch_size tiles in all: the dynamic batcher's bound
            tiles = torch.cat([batches[k].float() for k in ks])
            try:
                sr, b = self.backend.run(tiles.to(self.backend.device))
                sr, b = sr.clamp(0, 255).round().to(torch.uint8).cpu(), b.float().cpu()
            except Exception as e:  # answered as this batch's error; the server keeps serving
                for k in ks:
                    out[k] = f"{type(e).__name__}: {e}"
                continue
            i = 0
            for k in ks:
                n = batches[k].shape[0]
                out[k] = (sr[i:i + n].contiguous(), b[i:i + n].contiguous())
                i += n
        return out


class TritonPythonModel:
    def initialize(self, args):
        config = json.loads(args["model_config"])
        threads = int(_param(config, "cadyq_threads", 0) or 0)
        if threads <= 0:  # the cores shared among the instances
            instances = sum(int(g.get("count", 1)) for g in config.get("instance_group", [])) or 1
            threads = max(1, usable_cores() // instances)
        torch.set_num_threads(threads)
        weights = Path(args["model_repository"]) / args["model_version"] / "model.safetensors"
        from ..checkpoint import load

        self.runner = TileRunner(load(weights), _param(config, "cadyq_backend", "auto"),
                                 _param(config, "cadyq_device", "cpu"), int(_param(config, "cadyq_max_tile", 512)))

    def execute(self, requests):
        import triton_python_backend_utils as pb_utils

        lrs = [from_dlpack(pb_utils.get_input_tensor_by_name(r, "lr").to_dlpack()) for r in requests]
        responses = []
        for result in self.runner.run(lrs):
            if isinstance(result, str):
                responses.append(pb_utils.InferenceResponse(error=pb_utils.TritonError(result)))
            else:
                sr, bits = result
                responses.append(pb_utils.InferenceResponse([pb_utils.Tensor.from_dlpack("sr", to_dlpack(sr)),
                                                             pb_utils.Tensor.from_dlpack("bits", to_dlpack(bits))]))
        return responses
