"""Tile-routed execution (Granular-DQ, CADyQ's tile mode): each batch's tiles grouped by bit-width.

The router graph (ONNX Runtime) gives every tile its bit-width; the tiles of bit-width b run, once, through
the static INT8 graph of b (ONNX Runtime: QLinearConv), and the results are put back in order. Made by
`cadyq export --routed` (cadyq.export.routed); the model is its folder or its routed.json.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from ..errors import BackendError, CadyqError
from ..quant import ModelInfo
from .backend import Backend, create_backend, is_routed, register_backend, resolve_device  # noqa: F401  (is_routed: re-exported)


class RoutedBackend(Backend):
    name = "routed"

    def __init__(self, model, device="auto", inner: str = "auto"):
        from ..export.routed import read_manifest

        try:
            import onnxruntime as ort
        except ImportError as e:
            raise BackendError("routed graphs run in ONNX Runtime: pip install onnxruntime") from e
        try:
            m = read_manifest(model)
        except CadyqError as e:
            raise BackendError(str(e)) from e
        root = Path(m["_dir"])
        self.device = resolve_device(device)
        self.info = ModelInfo.from_dict(m["info"])
        self.tile_sizes = (int(m["tile"]), int(m["tile"]))
        self.bits = tuple(int(b) for b in m["bits"])
        missing = [f for f in [m["router"], *m["graphs"].values()] if not (root / f).is_file()]
        if missing:
            raise BackendError(f"{root}: missing {', '.join(missing)}; export the routed graphs again")
        so = ort.SessionOptions()
        so.log_severity_level = 3
        self.router = ort.InferenceSession(str(root / m["router"]), so, providers=["CPUExecutionProvider"])
        self.graphs = {int(b): create_backend(inner, root / f, str(self.device)) for b, f in m["graphs"].items()}
        inner = next(iter(self.graphs.values())).name
        self.calls = {b: 0 for b in self.graphs}  # tiles run through each graph (tests, reports)
        self.notes = [f"tile-routed: {len(self.graphs)} static INT8 graphs ({inner}), one per bit-width "
                      f"{', '.join(map(str, sorted(self.graphs)))}; 4- and 5-/6-bit tiles run as int8 values"]

    def route(self, tiles: torch.Tensor) -> torch.Tensor:
        """The bit-width of each tile [N] (float)."""
        x = tiles.detach().to("cpu", torch.float32).contiguous().numpy()
        return torch.from_numpy(np.asarray(self.router.run(["bits"], {"lr": x})[0], dtype=np.float32))

    def run(self, tiles):
        n = tiles.shape[0]
        chosen = self.route(tiles)
        s, (h, w) = self.info.scale, tiles.shape[2:]
        sr = torch.empty((n, 3, h * s, w * s), dtype=torch.float32, device=tiles.device)
        for b in sorted({int(v) for v in chosen.tolist()}):
            if b not in self.graphs:
                raise BackendError(f"the router chose {b} bits, which no graph of this export runs")
            idx = (chosen == b).nonzero().flatten()
            out, _ = self.graphs[b].run(tiles[idx.to(tiles.device)])
            sr[idx.to(tiles.device)] = out.to(sr.device)
            self.calls[b] += int(idx.numel())
        bits = chosen.view(-1, 1).expand(n, self.info.n_layers).contiguous()
        return sr, bits.to(tiles.device)


register_backend("routed", RoutedBackend)
