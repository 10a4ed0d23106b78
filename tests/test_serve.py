"""Serving on Triton Inference Server: real servers on loopback ports (the one bundled with nvidia-pytriton,
installed by `make install`), the client against local runs, the model repository export, faults."""
import json
import os
import signal
import subprocess
import sys
import threading
import time

import numpy as np
import pytest
import torch

from cadyq.errors import BackendError

MODEL = "edsr-tiny-cadyq-x4-cpu"  # a shipped zoo model: small, quantized, bits vary



def _server():
    """The Triton server `make install` installs; without it these tests fail with the install hint."""
    from cadyq.serve import find_tritonserver

    return find_tritonserver()


def _start(repo, models=(), exit_timeout=10):
    from cadyq.serve import ServerOptions, TritonServer
    from cadyq.serve.server import free_ports

    _server()
    http, grpc, metrics = free_ports(3)
    return TritonServer(repo, ServerOptions("127.0.0.1", http, grpc, metrics, exit_timeout, models=tuple(models))).start()


@pytest.fixture(scope="module")
def model():
    from cadyq.zoo import load_pretrained

    return load_pretrained(MODEL)


@pytest.fixture(scope="module")
def image(photo):
    return np.ascontiguousarray(photo[40:190, 120:330])  # 150x210: 2x3 tiles of 96 px


@pytest.fixture(scope="module")
def servers(tmp_path_factory, model):
    """Server A: `cadyq serve`'s repository (native backend, batches of at most 8 tiles). Server B: the repository
    of `cadyq export --triton-repo`, its Python model only (the bundled server has no ONNX Runtime backend)."""
    from cadyq.cli import main
    from cadyq.serve import ServeConfig, write_python_model

    a_repo = tmp_path_factory.mktemp("repo_a")
    write_python_model(a_repo, MODEL, model, ServeConfig(backend="native", max_batch=8, threads=1))
    b_repo = tmp_path_factory.mktemp("repo_b") / "repo"
    assert main(["export", "-m", MODEL, "--triton-repo", str(b_repo), "--max-batch", "8", "--threads", "1"]) == 0
    a = _start(a_repo)
    try:
        b = _start(b_repo, models=[MODEL])
    except BaseException:
        a.stop()
        raise
    yield a, b
    a.stop()
    b.stop()


def _local(model, image):
    from cadyq.runtime import Upscaler

    return Upscaler(model, backend="native", batch=64).upscale(image)


def test_remote_upscale_matches_local_and_spreads_over_servers(servers, model, image):
    import tritonclient.grpc as grpcclient

    from cadyq.runtime import Upscaler
    from cadyq.serve import TritonBackend

    a, b = servers
    backend = TritonBackend([a.grpc_url, b.grpc_url], request_tiles=2)
    assert backend.model == MODEL and backend.info.scale == 4 and backend.tile_sizes is None
    remote = Upscaler(backend, batch=64).upscale(image)
    local = _local(model, image)
    assert remote.image.rgb.shape == (600, 840, 3)
    assert np.array_equal(remote.image.rgb, local.image.rgb)  # the server rounds as a local 8-bit run does
    assert torch.equal(remote.bit_map, local.bit_map)
    assert remote.fqr == local.fqr and remote.bitops == pytest.approx(local.bitops)
    assert len(set(remote.bit_map.flatten().tolist())) > 1  # bits differ between tiles and layers: not a constant
    counts = []
    for url in (a.grpc_url, b.grpc_url):
        stats = grpcclient.InferenceServerClient(url).get_inference_statistics(MODEL, as_json=True)
        counts.append(int(stats["model_stats"][0].get("inference_count", 0)))
    assert all(c > 0 for c in counts) and sum(counts) >= 6, counts  # 6 tiles, both servers took some
    backend.close()


def test_cli_upscale_through_a_server_and_a_dead_one(servers, model, image, tmp_path, capsys):
    from PIL import Image as PILImage

    from cadyq.cli import main
    from cadyq.serve.server import free_ports

    a, _ = servers
    src = tmp_path / "photo.png"
    PILImage.fromarray(image).save(src)
    dead = f"127.0.0.1:{free_ports(1)[0]}"  # nothing listens: its requests go to the next server
    out = tmp_path / "out.png"
    assert main(["upscale", str(src), "-o", str(out), "--server", f"{a.grpc_url},{dead}", "--bitmap",
                 "--batch", "2", "--json", str(tmp_path / "r.json")]) == 0
    got = np.asarray(PILImage.open(out))
    assert np.array_equal(got, _local(model, image).image.rgb)
    assert (tmp_path / "out_bits.png").exists()
    assert json.loads((tmp_path / "r.json").read_text())["backend"] == "triton"
    # only a dead server: one line, nothing written
    out2 = tmp_path / "out2.png"
    assert main(["upscale", str(src), "-o", str(out2), "--server", dead]) == 2
    err = capsys.readouterr().err.strip().splitlines()[-1]
    assert err.startswith("cadyq: error: cannot reach a Triton server") and not out2.exists()
    assert main(["upscale", str(src), "-o", str(out2), "--server", a.grpc_url, "--backend", "torch"]) == 2
    assert "--backend torch is for local runs" in capsys.readouterr().err


def test_video_through_a_server_equals_a_local_run(servers, photo, tmp_path):
    pytest.importorskip("av")
    from test_video import make_clip, streams

    from cadyq.cli import main

    a, _ = servers
    clip = make_clip(tmp_path / "clip.mp4", photo, n=4, w=64, h=48, audio=False)
    assert main(["upscale", str(clip), "-o", str(tmp_path / "remote.mkv"), "--server", a.grpc_url, "--codec", "ffv1"]) == 0
    assert main(["upscale", str(clip), "-o", str(tmp_path / "local.mkv"), "-m", MODEL, "--backend", "native",
                 "--codec", "ffv1"]) == 0
    (_, size, _, remote), (_, _, _, local) = streams(tmp_path / "remote.mkv"), streams(tmp_path / "local.mkv")
    assert size == (256, 192) and len(remote) == 4
    assert all(np.array_equal(r, l) for r, l in zip(remote, local))  # ffv1: lossless, so equal frames stay equal


def _infer(url, array, datatype="FP32", timeout=None):
    import tritonclient.grpc as grpcclient

    c = grpcclient.InferenceServerClient(url)
    inp = grpcclient.InferInput("lr", list(array.shape), datatype)
    inp.set_data_from_numpy(array)
    r = c.infer(MODEL, [inp], client_timeout=timeout)
    return r.as_numpy("sr"), r.as_numpy("bits")


def test_malformed_oversized_and_abandoned_requests_leave_the_server_serving(servers, image):
    from tritonclient.utils import InferenceServerException

    a, _ = servers
    good = np.ascontiguousarray(image[None, :96, :96].transpose(0, 3, 1, 2).astype(np.float32))
    sr, bits = _infer(a.grpc_url, good)
    cases = {
        "dtype": (good.astype(np.int32), "INT32", "data-type"),
        "channels": (np.zeros((1, 4, 16, 16), np.float32), "FP32", "shape"),
        "values": (good * 2, "FP32", "within 0..255"),
        "tile too large": (np.zeros((1, 3, 600, 16), np.float32), "FP32", "larger than this server's limit"),
        "batch over max_batch_size": (np.repeat(good, 9, 0), "FP32", "batch-size"),
    }
    for what, (arr, dtype, says) in cases.items():
        with pytest.raises(InferenceServerException) as e:
            _infer(a.grpc_url, arr, dtype)
        assert says in str(e.value), (what, str(e.value))
        assert np.array_equal(_infer(a.grpc_url, good)[0], sr), what  # and the next request is answered
    # a client that gives up mid-request (deadline) and goes away: the server finishes the work and keeps serving
    with pytest.raises(InferenceServerException, match="Deadline"):
        _infer(a.grpc_url, np.repeat(good, 8, 0), timeout=0.01)
    assert np.array_equal(_infer(a.grpc_url, good)[0], sr) and a.ready()


def test_export_repository_configs_parse_as_triton_model_configs(tmp_path, model):
    import onnx

    from cadyq.cli import main
    from cadyq.quant import ModelInfo
    from cadyq.serve import read_config

    repo = tmp_path / "repo"
    assert main(["export", "-m", MODEL, "--triton-repo", str(repo), "--tile", "48", "--max-batch", "4"]) == 0
    py, ox = read_config(repo / MODEL / "config.pbtxt"), read_config(repo / f"{MODEL}-onnx" / "config.pbtxt")
    info = ModelInfo.from_model(model)
    for cfg in (py, ox):
        assert cfg.max_batch_size == 4 and cfg.dynamic_batching is not None
        assert ModelInfo.from_dict(json.loads(cfg.parameters["cadyq_info"].string_value)) == info
        assert [i.name for i in cfg.input] == ["lr"] and [o.name for o in cfg.output] == ["sr", "bits"]
    assert py.backend == "python" and list(py.input[0].dims) == [3, -1, -1]
    assert ox.platform == "onnxruntime_onnx"
    graph = onnx.load(repo / f"{MODEL}-onnx" / "1" / "model.onnx").graph
    dims = {v.name: [d.dim_value for d in v.type.tensor_type.shape.dim[1:]] for v in list(graph.input) + list(graph.output)}
    assert dims == {"lr": list(ox.input[0].dims), "sr": list(ox.output[0].dims), "bits": list(ox.output[1].dims)}
    assert dims["sr"] == [3, 192, 192] and dims["bits"] == [info.n_layers]
    # an existing repository model is not replaced without --overwrite
    assert main(["export", "-m", MODEL, "--triton-repo", str(repo)]) == 2
    # a plan: its config from the engine's sidecar; one built by TensorRT-RTX is refused (Triton runs full TensorRT)
    from cadyq.export.engine import SIDECAR_FORMAT

    plan = tmp_path / "m.engine"
    plan.write_bytes(b"plan")
    side = {"format": SIDECAR_FORMAT, "builder": "tensorrt", "plugin": False, "model": info.to_dict(), "tile": 96,
            "batch": [1, 16, 32]}
    (tmp_path / "m.engine.json").write_text(json.dumps(side))
    assert main(["export", "-m", MODEL, "--triton-repo", str(repo), "--overwrite", "--plan", str(plan)]) == 0
    trt = read_config(repo / f"{MODEL}-trt" / "config.pbtxt")
    assert trt.platform == "tensorrt_plan" and trt.max_batch_size == 32 and list(trt.output[0].dims) == [3, 384, 384]
    (tmp_path / "m.engine.json").write_text(json.dumps({**side, "builder": "tensorrt-rtx"}))
    before = (repo / MODEL / "config.pbtxt").stat().st_mtime_ns
    assert main(["export", "-m", MODEL, "--triton-repo", str(repo), "--overwrite", "--plan", str(plan)]) == 2
    assert (repo / MODEL / "config.pbtxt").stat().st_mtime_ns == before  # refused before anything was written


def test_server_start_failures_are_one_line(tmp_path, model):
    import socket

    from cadyq.cli import main
    from cadyq.serve import ServeConfig, ServerOptions, TritonServer, write_python_model
    from cadyq.serve.server import free_ports

    _server()
    http, grpc, metrics = free_ports(3)
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", grpc))
        busy.listen()
        with pytest.raises(BackendError, match=f"port {grpc} on 127.0.0.1 is in use.*--grpc-port"):
            TritonServer(tmp_path, ServerOptions("127.0.0.1", http, grpc, metrics)).start()
    assert main(["serve", "-m", MODEL, "--tritonserver", str(tmp_path / "nope")]) == 2
    # a model that cannot load: the server stops and the error names the model's failure
    write_python_model(tmp_path / "repo", "broken", model, ServeConfig(backend="no-such-backend"))
    with pytest.raises(BackendError, match="broken.*unknown backend 'no-such-backend'"):
        _start(tmp_path / "repo")


def _inference_count(client) -> int:
    stats = client.get_inference_statistics(MODEL, as_json=True)["model_stats"]
    return int(stats[0].get("inference_count", 0)) if stats else 0


def _metric(port: int, name: str) -> float:
    """A Triton metric of MODEL from the server's Prometheus endpoint."""
    import urllib.request

    text = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5).read().decode()
    return sum(float(line.rsplit(" ", 1)[1]) for line in text.splitlines()
               if line.startswith(name + "{") and f'model="{MODEL}"' in line)


def test_a_server_that_stops_after_answering_ready_is_a_one_line_backend_error(monkeypatch):
    """The race the SIGTERM test below hits under load: ready at the first call, gone at the next."""
    import tritonclient.grpc as grpcclient
    from tritonclient.utils import InferenceServerException

    from cadyq.serve import TritonBackend

    class StoppingServer:
        def __init__(self, url):
            pass

        def is_server_ready(self, client_timeout=None):
            return True

        def get_model_repository_index(self, as_json=False):
            raise InferenceServerException("[StatusCode.UNAVAILABLE] Server not ready")

        def close(self):
            pass

    monkeypatch.setattr(grpcclient, "InferenceServerClient", StoppingServer)
    with pytest.raises(BackendError, match="127.0.0.1:1: cannot list its models: .*Server not ready") as e:
        TritonBackend("127.0.0.1:1")
    assert "\n" not in str(e.value)


def test_cadyq_serve_stops_on_sigterm_with_requests_in_flight(tmp_path, photo):
    """SIGTERM: the requests in flight are answered (Triton's graceful shutdown), later ones fail cleanly, and a
    client run that fails writes nothing."""
    import tritonclient.grpc as grpcclient

    from cadyq.runtime import Upscaler
    from cadyq.serve import TritonBackend
    from cadyq.serve.server import free_ports

    _server()
    http, grpc, metrics = free_ports(3)
    proc = subprocess.Popen([sys.executable, "-m", "cadyq", "serve", "-m", MODEL, "--host", "127.0.0.1",
                             "--http-port", str(http), "--grpc-port", str(grpc), "--metrics-port", str(metrics),
                             "--serve-backend", "native", "--max-batch", "3", "--threads", "1", "--exit-timeout", "20"],
                            stderr=subprocess.PIPE, text=True)
    try:
        line = ""
        while "serving" not in line:
            line = proc.stderr.readline()
            assert line or proc.poll() is None, "cadyq serve exited before serving"
        url = f"127.0.0.1:{grpc}"
        big = np.ascontiguousarray(photo[:300, :400])  # 4x5 = 20 tiles
        expected = Upscaler(TritonBackend(url), batch=64).upscale(big).image.rgb
        stats = grpcclient.InferenceServerClient(url)
        done_before = _inference_count(stats)
        ok_before = _metric(metrics, "nv_inference_request_success")
        results, errors = [], []

        def client():
            try:  # 7 requests of at most 3 tiles, all sent at once (the client keeps 8 in flight)
                results.append(Upscaler(TritonBackend(url, request_tiles=3), batch=64).upscale(big).image.rgb)
            except BackendError as e:
                errors.append(str(e))

        threads = [threading.Thread(target=client) for _ in range(4)]
        for t in threads:
            t.start()
        while True:  # every request of the 4 runs (4 x 7) has reached the server: queued, done, or the one executing
            done = _metric(metrics, "nv_inference_request_success") - ok_before
            pending = _metric(metrics, "nv_inference_pending_request_count")
            if _inference_count(stats) > done_before and pending + done >= 27:
                break
            time.sleep(0.01)
        proc.send_signal(signal.SIGTERM)
        in_flight = 28 - done  # requests not finished when SIGTERM was sent
        late = threading.Thread(target=client)  # sent while the server stops: answered or refused in one line
        late.start()
        for t in threads + [late]:
            t.join(60)
        assert proc.wait(60) == 0
        rest = proc.stderr.read()
        assert "stopped (tritonserver exit 0)" in rest
        assert all(np.array_equal(r, expected) for r in results)
        print("in flight at SIGTERM", in_flight, "answered", len(results), "failed", errors)
        assert in_flight > 0 and len(results) >= 4 and len(results) + len(errors) == 5
        assert all("\n" not in e for e in errors)
    finally:
        if proc.poll() is None:
            proc.kill()


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM])
def test_cli_client_stops_at_once_while_the_server_works(servers, photo, tmp_path, sig):
    """`cadyq upscale --server` stopped while its requests are in flight: within the deadline of test_signals, one
    line, exit 130/143, nothing written."""
    from PIL import Image as PILImage

    a, _ = servers
    PILImage.fromarray(photo).resize((2048, 1536)).save(tmp_path / "big.png")
    proc = subprocess.Popen([sys.executable, "-m", "cadyq", "upscale", "big.png", "-o", "out.png", "--server",
                             a.grpc_url], cwd=tmp_path, stderr=subprocess.PIPE, text=True)  # python -m: the entry point
    line = proc.stderr.readline()
    assert line.startswith("backend: triton"), line + proc.stderr.read()
    time.sleep(1.5)
    assert proc.poll() is None, "the run ended before the signal: use a larger image"
    proc.send_signal(sig)
    sent = time.monotonic()
    rest = proc.stderr.read()
    proc.wait(30)
    took = time.monotonic() - sent
    print(f"\n{signal.Signals(sig).name}: exit {proc.returncode} {took:.2f} s after the signal")
    assert proc.returncode == {signal.SIGINT: 130, signal.SIGTERM: 143}[sig], rest
    assert rest.strip().splitlines()[-1] in ("cadyq: interrupted", "cadyq: stopped by SIGTERM") and "Traceback" not in rest
    assert took < 2.0
    assert sorted(p.name for p in tmp_path.iterdir()) == ["big.png"]
