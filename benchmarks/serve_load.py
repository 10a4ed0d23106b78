"""Load test of `cadyq serve`: concurrent clients upscale real photos through one Triton server on this machine;
tiles per second against the local native backend on the same images in the same run, per-image latency
percentiles, every output compared with the local run, and faults sent while the load runs.

Photos: crops of the MATE nature wallpapers (Debian's mate-backgrounds), --size LR pixels, a different crop per
request. Local baseline: one Upscaler (native backend) streaming all images (`upscale_many`, batches full).
Server: the same model on the native backend, 1 instance with every core, dynamic batching up to --max-batch
tiles. Clients: --clients threads in this process, each with its own TritonBackend, one image after another
(their tiling, stitching and gRPC encoding share the machine with the server: that cost is part of the figure).
Faults during the load: a malformed tensor (4 channels), wrong dtype, a batch over max_batch_size, a tile over
the size limit, and a client that gives up after 50 ms; each must get an error and change no other output.

    python benchmarks/serve_load.py [--model edsr-cadyq-x4] [--clients 8] [--images 16] [--size 192 256]
"""
import argparse
import json
import os
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np
import torch

from cadyq.bench.report import machine_info
from cadyq.checkpoint import load_model
from cadyq.data.io import read_image
from cadyq.runtime import Upscaler
from cadyq.serve import ServeConfig, ServerOptions, TritonBackend, TritonServer, write_python_model
from cadyq.serve.server import free_ports

PHOTOS = Path("/usr/share/backgrounds/mate/nature")


def crops(n: int, h: int, w: int) -> list[np.ndarray]:
    photos = [read_image(p).rgb for p in sorted(PHOTOS.glob("*.jpg"))]
    rng = np.random.default_rng(0)
    out = []
    for i in range(n):
        ph = photos[i % len(photos)]
        y, x = rng.integers(0, ph.shape[0] - h), rng.integers(0, ph.shape[1] - w)
        out.append(np.ascontiguousarray(ph[y:y + h, x:x + w]))
    return out


def faults(url: str, model: str, good: np.ndarray, max_batch: int, max_tile: int) -> dict:
    import tritonclient.grpc as grpcclient

    c = grpcclient.InferenceServerClient(url)

    def send(arr, dtype="FP32", timeout=None):
        inp = grpcclient.InferInput("lr", list(arr.shape), dtype)
        inp.set_data_from_numpy(arr)
        try:
            c.infer(model, [inp], client_timeout=timeout)
            return "answered (should have failed)"
        except Exception as e:
            return " ".join(str(e).split())[:160]

    return {"4 channels": send(np.zeros((1, 4, 32, 32), np.float32)),
            "int32 tensor": send(good.astype(np.int32), "INT32"),
            f"batch of {max_batch + 1}": send(np.repeat(good, max_batch + 1, 0)),
            f"tile {max_tile + 8} px": send(np.zeros((1, 3, max_tile + 8, 16), np.float32)),
            "gives up after 50 ms": send(np.repeat(good, max_batch, 0), timeout=0.05)}


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--model", default="edsr-cadyq-x4")
    p.add_argument("--clients", type=int, default=8)
    p.add_argument("--images", type=int, default=16, help="images in all, shared among the clients")
    p.add_argument("--size", type=int, nargs=2, default=[192, 256], metavar=("H", "W"))
    p.add_argument("--max-batch", type=int, default=16)
    p.add_argument("--request-tiles", type=int, default=4, help="tiles per request from a client")
    p.add_argument("--json", default="benchmarks/serve_load.json")
    a = p.parse_args()

    model = load_model(a.model)
    images = crops(a.images, *a.size)
    local_up = Upscaler(model, backend="native", batch=a.max_batch)
    local_up.upscale(images[0])  # warm-up (kernel build, first-call costs)
    t = time.perf_counter()
    local = list(local_up.upscale_many(images))
    local_s = time.perf_counter() - t
    n_tiles = sum(r.grid.n_tiles for r in local)

    with tempfile.TemporaryDirectory() as repo:
        name = "m"
        write_python_model(repo, name, model, ServeConfig(backend="native", max_batch=a.max_batch))
        http, grpc, metrics = free_ports(3)
        server = TritonServer(repo, ServerOptions("127.0.0.1", http, grpc, metrics)).start()
        try:
            url = server.grpc_url
            Upscaler(TritonBackend(url, name), batch=64).upscale(images[0])  # warm-up
            latencies, outputs, errors = [None] * len(images), [None] * len(images), []
            jobs = iter(range(len(images)))
            lock = threading.Lock()

            def client():
                up = Upscaler(TritonBackend(url, name, request_tiles=a.request_tiles), batch=64)
                while True:
                    with lock:
                        i = next(jobs, None)
                    if i is None:
                        return
                    t0 = time.perf_counter()
                    try:
                        r = up.upscale(images[i])
                    except Exception as e:
                        errors.append(f"image {i}: {e}")
                        continue
                    latencies[i], outputs[i] = time.perf_counter() - t0, r

            threads = [threading.Thread(target=client) for _ in range(a.clients)]
            good = np.ascontiguousarray(images[0][None, :96, :96].transpose(0, 3, 1, 2).astype(np.float32))
            t = time.perf_counter()
            for th in threads:
                th.start()
            time.sleep(1.0)
            fault_results = faults(url, name, good, a.max_batch, 512)  # while the load runs
            for th in threads:
                th.join()
            served_s = time.perf_counter() - t
            alive = server.ready()
        finally:
            code = server.stop()

    differing = [i for i, (r, l) in enumerate(zip(outputs, local))
                 if r is None or not np.array_equal(r.image.rgb, l.image.rgb) or not torch.equal(r.bit_map, l.bit_map)]
    lat = np.array([x for x in latencies if x is not None])
    result = {
        "machine": machine_info("cpu"), "model": a.model, "clients": a.clients, "images": len(images),
        "lr_size": a.size, "tiles": n_tiles, "max_batch": a.max_batch, "request_tiles": a.request_tiles,
        "local_native_s": round(local_s, 3), "local_tiles_per_s": round(n_tiles / local_s, 3),
        "served_s": round(served_s, 3), "served_tiles_per_s": round(n_tiles / served_s, 3),
        "served_vs_local": round(local_s / served_s, 3),
        "latency_s": {q: round(float(np.percentile(lat, int(q[1:]))), 3) for q in ("p50", "p90", "p99")} if len(lat) else {},
        "lost_or_differing": len(differing) + len(errors), "errors": errors, "faults": fault_results,
        "server_ready_after": alive, "server_exit_code": code,
    }
    Path(a.json).write_text(json.dumps(result, indent=1))
    print(json.dumps({k: v for k, v in result.items() if k != "machine"}, indent=1))


if __name__ == "__main__":
    sys.exit(main())
