"""A backend that runs tiles on Triton Inference Servers: the Upscaler cuts and stitches here, as for a local
backend, and the tiles of each batch go out as concurrent gRPC requests spread over the servers.

    up = cadyq.Upscaler(TritonBackend(["10.0.0.5:8001", "10.0.0.6:8001"]))
    up.upscale("photo.jpg").image

The servers are `cadyq serve` (or a repository from `cadyq export --triton-repo`); what the model is (scale, bit
candidates, layer costs) comes from its config's `cadyq_info`, so bits, FQR and BitOPs are reported as locally.
A request that fails because a server is unreachable is sent to the next server; any other failure is a
BackendError naming the server and its message.
"""
from __future__ import annotations

import itertools
import json
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import torch

from ..errors import BackendError
from ..quant import ModelInfo
from ..runtime.backend import Backend

_UNREACHABLE = ("StatusCode.UNAVAILABLE", "failed to connect", "Connection refused", "Socket closed")


def _grpc():
    try:
        import tritonclient.grpc as grpcclient
    except ImportError as e:
        raise BackendError(f"the Triton client is not installed ({e}): pip install 'cadyq[serve]'") from e
    return grpcclient


def _short(e: Exception) -> str:
    msg = getattr(e, "message", None)
    text = msg() if callable(msg) else str(e)
    return " ".join(str(text).split())[:300]


class TritonBackend(Backend):
    """Tiles of each `run` go to the servers in requests of at most `request_tiles` tiles, all in flight at once."""

    name = "triton"

    def __init__(self, urls, model: str | None = None, request_tiles: int | None = None, timeout: float = 600.0):
        grpcclient = _grpc()
        self.urls = [u.strip().removeprefix("grpc://") for u in ([urls] if isinstance(urls, str) else urls) if u.strip()]
        if not self.urls:
            raise BackendError("no server URL given (host:port of a Triton server's gRPC endpoint, e.g. localhost:8001)")
        self.timeout = timeout
        self.clients = [grpcclient.InferenceServerClient(u) for u in self.urls]
        self.warnings: list[str] = []
        self._drop_unreachable()
        self.model = model or self._only_model()
        configs = [self._config(k) for k in range(len(self.urls))]
        infos = {c["parameters"]["cadyq_info"]["string_value"] for c in configs}
        if len(infos) > 1:
            raise BackendError(f"the servers {', '.join(self.urls)} serve different models under the name {self.model!r}")
        self.info = ModelInfo.from_dict(json.loads(infos.pop()))
        cfg = configs[0]
        self.server_batch = int(cfg.get("max_batch_size") or 1)
        self.request_tiles = max(1, min(request_tiles or self.server_batch, self.server_batch))
        dims = [int(d) for d in cfg["input"][0]["dims"]]
        self.tile_sizes = None if -1 in dims[1:] else (dims[1], dims[2])
        self.output_dtype = {o["name"]: o["data_type"] for o in cfg["output"]}["sr"]
        self.device = torch.device("cpu")
        self._next = itertools.count()
        self._pool = ThreadPoolExecutor(max_workers=8 * len(self.urls), thread_name_prefix="cadyq-triton")

    @property
    def where(self) -> str:
        return f"at {', '.join(self.urls)} (model {self.model}, x{self.info.scale} {self.info.method})"

    def _drop_unreachable(self) -> None:
        """Servers that do not answer are left out with a warning; none answering is an error."""
        live, why = [], []
        for url, c in zip(self.urls, self.clients):
            try:
                ok = c.is_server_ready(client_timeout=10)
            except Exception as e:
                ok, reason = False, _short(e)
            else:
                reason = "not ready"
            if ok:
                live.append((url, c))
            else:
                why.append(f"{url}: {reason}")
                c.close()
        if not live:
            raise BackendError(f"cannot reach a Triton server at {', '.join(self.urls)} ({'; '.join(why)}): is `cadyq "
                               "serve` running? --server takes the gRPC host:port (default port 8001)")
        self.warnings += [f"left out server {w}" for w in why]
        self.urls, self.clients = [u for u, _ in live], [c for _, c in live]

    def _only_model(self) -> str:
        try:  # the server can stop between the readiness check and this call
            index = self.clients[0].get_model_repository_index(as_json=True).get("models", [])
        except Exception as e:
            raise BackendError(f"server {self.urls[0]}: cannot list its models: {_short(e)}") from e
        ready = [m["name"] for m in index if m.get("state") == "READY"]
        if len(ready) != 1:
            raise BackendError(f"the server at {self.urls[0]} serves {len(ready)} ready models "
                               f"({', '.join(ready) or 'none'}); name one with --model")
        return ready[0]

    def _config(self, k: int) -> dict:
        try:
            cfg = self.clients[k].get_model_config(self.model, as_json=True)["config"]
        except Exception as e:
            raise BackendError(f"server {self.urls[k]}: model {self.model!r}: {_short(e)}") from e
        if "cadyq_info" not in cfg.get("parameters", {}):
            raise BackendError(f"server {self.urls[k]}: model {self.model!r} is not a cadyq model (its config has no "
                               "cadyq_info parameter)")
        return cfg

    def _infer(self, start: int, tiles: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        grpcclient = _grpc()
        inp = grpcclient.InferInput("lr", list(tiles.shape), "FP32")
        inp.set_data_from_numpy(tiles)
        outs = [grpcclient.InferRequestedOutput("sr"), grpcclient.InferRequestedOutput("bits")]
        errors = []
        for k in (start + j for j in range(len(self.clients))):  # the next server when one cannot be reached
            k %= len(self.clients)
            try:
                r = self.clients[k].infer(self.model, [inp], outputs=outs, client_timeout=self.timeout)
                return r.as_numpy("sr"), r.as_numpy("bits")
            except Exception as e:
                text = _short(e)
                if not any(m in str(e) or m in text for m in _UNREACHABLE):
                    raise BackendError(f"server {self.urls[k]}: {text}") from e
                errors.append(f"{self.urls[k]}: {text}")
        raise BackendError(f"no server could run the tiles ({'; '.join(errors)})")

    def run(self, tiles: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        arr = np.ascontiguousarray(tiles.detach().float().cpu().numpy())
        first = next(self._next)  # atomic: runs from several threads spread over the servers too
        chunks = range(0, len(arr), self.request_tiles)
        futures = [self._pool.submit(self._infer, first + j, arr[i:i + self.request_tiles]) for j, i in enumerate(chunks)]
        results = [f.result() for f in futures]
        sr = torch.from_numpy(np.concatenate([r[0] for r in results])).float()
        bits = torch.from_numpy(np.concatenate([r[1] for r in results])).float()
        return sr, bits

    def close(self) -> None:
        self._pool.shutdown(wait=False)
        for c in self.clients:
            c.close()
