"""`cadyq serve`: a Triton Inference Server for a cadyq model.

    cadyq serve --model edsr-cadyq-x4 [--instances 1] [--max-batch 16] [--http-port 8000 --grpc-port 8001 --metrics-port 8002]
    cadyq upscale photo.jpg -o out.png --server localhost:8001[,host2:8001]
"""
from __future__ import annotations

import argparse
import signal
import sys
import tempfile
import threading
from pathlib import Path

from ..errors import BackendError, CadyqError
from ..methods import METHODS

HELP = {"serve": "serve a model on Triton Inference Server (tiles of concurrent requests batched together)"}


def add_repository_arguments(p) -> None:
    """How the Python-backend model runs in the server (shared by `serve` and `export --triton-repo`)."""
    g = p.add_argument_group("the served model")
    g.add_argument("--serve-backend", default="auto", metavar="BACKEND",
                   help="cadyq backend inside the server (default auto: native integer kernels where they run)")
    g.add_argument("--instances", type=int, default=1, help="model instances (processes) sharing the tiles (default 1)")
    g.add_argument("--max-batch", type=int, default=16, help="tiles per execution: the dynamic batcher's ceiling (default 16)")
    g.add_argument("--queue-delay-us", type=int, default=2000,
                   help="how long the dynamic batcher waits for more tiles, microseconds (default 2000)")
    g.add_argument("--threads", type=int, help="torch threads per instance (default: CPU cores / instances)")
    g.add_argument("--max-tile", type=int, default=512, help="largest LR tile side a request may send (default 512)")
    g.add_argument("--name", help="the model's name on the server (default: the model's file or zoo name)")


def serve_config(args, device: str = "cpu"):
    from .repository import ServeConfig

    for flag in ("instances", "max_batch", "max_tile"):
        if getattr(args, flag) < 1:
            raise CadyqError(f"--{flag.replace('_', '-')} must be at least 1")
    if args.queue_delay_us < 0:
        raise CadyqError("--queue-delay-us must be 0 or more")
    return ServeConfig(args.serve_backend, device, args.instances, args.max_batch, args.queue_delay_us, args.threads,
                       args.max_tile)


def load_for_serving(args):
    """The model to serve and its name on the server."""
    from .. import zoo
    from ..checkpoint import load_model
    from .repository import model_name

    model = load_model(args.model, backbone=args.backbone, scale=args.scale, method=args.method)
    return model, args.name or model_name(str(args.model) if args.model else zoo.default_name())


def add_serve_arguments(p: argparse.ArgumentParser) -> None:
    p.description = ("Serve a model on NVIDIA Triton Inference Server: requests carry LR tiles ([N,3,h,w] FP32 'lr'), "
                     "answers SR tiles ('sr') and the bits chosen ('bits'); the dynamic batcher puts the tiles of "
                     "concurrent requests into one batch. Clients: `cadyq upscale ... --server HOST:GRPC_PORT`, "
                     "cadyq.serve.TritonBackend, or any Triton client.")
    p.add_argument("--model", "-m", help="checkpoint or zoo name (default: the shipped default model)")
    p.add_argument("--backbone", help="backbone of a foreign checkpoint")
    p.add_argument("--scale", type=int, help="scale of a foreign checkpoint")
    p.add_argument("--method", choices=METHODS, help="method of a foreign checkpoint")
    p.add_argument("--device", default="cpu", help="where the model runs: cpu (default) or cuda[:N]")
    add_repository_arguments(p)
    s = p.add_argument_group("the server")
    s.add_argument("--host", default="0.0.0.0", help="address to listen on (default 0.0.0.0; 127.0.0.1: this machine only)")
    s.add_argument("--http-port", type=int, default=8000, help="HTTP/REST port: health /v2/health/ready (default 8000)")
    s.add_argument("--grpc-port", type=int, default=8001, help="gRPC port, what clients use (default 8001)")
    s.add_argument("--metrics-port", type=int, default=8002, help="Prometheus metrics port: /metrics (default 8002)")
    s.add_argument("--repo", help="write the model repository here and keep it (default: a temporary folder)")
    s.add_argument("--tritonserver", metavar="PATH", help="the tritonserver binary (default: the one bundled with "
                                                          "nvidia-pytriton, else tritonserver on PATH)")
    s.add_argument("--exit-timeout", type=int, default=30,
                   help="seconds SIGTERM lets requests in flight finish (default 30)")
    s.add_argument("--log", help="the server's log file (default: a temporary file, named when it fails)")


def run_serve(args) -> int:
    from .repository import write_python_model
    from .server import ServerOptions, TritonServer

    model, name = load_for_serving(args)
    cfg = serve_config(args, args.device)
    options = ServerOptions(args.host, args.http_port, args.grpc_port, args.metrics_port, args.exit_timeout,
                            tritonserver=args.tritonserver)
    tmp = None
    if args.repo:
        repo = Path(args.repo)
        if (repo / name).exists():
            raise CadyqError(f"{repo / name} exists: pass another --repo (or remove it)")
    else:
        tmp = tempfile.TemporaryDirectory(prefix="cadyq-repo-")
        repo = Path(tmp.name)
    try:
        write_python_model(repo, name, model, cfg)
        server = TritonServer(repo, options, args.log)
        stop = threading.Event()
        for sig in (signal.SIGTERM, signal.SIGINT):
            signal.signal(sig, lambda *_: stop.set())
        print(f"starting Triton Inference Server for {name} (x{model.config.scale}) ...", file=sys.stderr)
        server.start()
        host = "127.0.0.1" if args.host in ("0.0.0.0", "") else args.host
        print(f"serving {name}: gRPC {host}:{args.grpc_port} (cadyq upscale IMG -o OUT --server {host}:{args.grpc_port}), "
              f"HTTP {host}:{args.http_port} (/v2/health/ready), metrics {host}:{args.metrics_port}/metrics; "
              f"log {server.log_path}; Ctrl-C or SIGTERM stops", file=sys.stderr, flush=True)
        while not stop.wait(0.5):
            if server.process.poll() is not None:
                raise BackendError(f"the Triton server stopped (exit {server.process.returncode}): {server.failure()}")
        print("stopping: requests in flight finish first ...", file=sys.stderr, flush=True)
        code = server.stop()
        print(f"stopped (tritonserver exit {code})", file=sys.stderr)
        return 0
    finally:
        if tmp is not None:
            tmp.cleanup()
