"""Start and stop a Triton Inference Server on a model repository.

The server binary is NVIDIA's: the one bundled in the `nvidia-pytriton` wheel (installed with
`pip install --no-deps nvidia-pytriton`: cadyq uses only its server, not its Python API, which pins numpy < 2),
or any `tritonserver` given by path or found on PATH (an NGC container's). The bundled server's Python backend
runs a stub process that embeds this interpreter's libpython; two facts make it load:
- the stub must load the libpython of *this* interpreter (its standard library must match): LD_LIBRARY_PATH
  gets this interpreter's LIBDIR first (without it, a pyenv 3.11.7 stdlib met Debian's 3.11.2 libpython and
  failed with "'_thread.RLock' object has no attribute '_recursion_count'");
- the stub's embedded Python finds this interpreter's packages (a virtual environment's too) by looking up
  `python3` on PATH, so PATH gets this interpreter's folder first;
- the stub's pybind11 numpy interop predates numpy 2 (arrays it builds come back empty), so cadyq's model
  exchanges tensors by DLPack, never through numpy.
"""
from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import sysconfig
import tempfile
import time
import urllib.request
from dataclasses import dataclass
from importlib.util import find_spec
from pathlib import Path

from ..errors import BackendError

STUB = "triton_python_backend_stub"
INSTALL_HINT = ("pip install --no-deps nvidia-pytriton (cadyq uses only the Triton server it bundles), or pass "
                "--tritonserver PATH")


@dataclass(frozen=True)
class TritonDist:
    """Where a Triton server's parts are: the binary, and for the bundled one its backends, libraries and stub."""

    binary: Path
    backends: Path | None = None  # None: the server's own default backend folder
    libs: Path | None = None
    stub: Path | None = None  # the Python backend stub for this interpreter's version


def find_tritonserver(binary: str | os.PathLike | None = None) -> TritonDist:
    """The server given by path, else the one bundled with nvidia-pytriton, else `tritonserver` on PATH."""
    if binary is not None:
        p = Path(binary)
        if not (p.is_file() and os.access(p, os.X_OK)):
            raise BackendError(f"--tritonserver {binary}: not an executable file")
        return TritonDist(p)
    spec = find_spec("pytriton")
    if spec is not None and spec.submodule_search_locations:
        root = Path(list(spec.submodule_search_locations)[0]) / "tritonserver"
        version = f"{sys.version_info[0]}.{sys.version_info[1]}"
        stub = root / "python_backend_stubs" / version / STUB
        if (root / "bin" / "tritonserver").is_file():
            if not stub.is_file():
                raise BackendError(f"the Triton server bundled with nvidia-pytriton has no Python backend stub for "
                                   f"Python {version}; run cadyq under Python 3.8-3.13 or pass --tritonserver PATH")
            return TritonDist(root / "bin" / "tritonserver", root / "backends", root.parent.parent / "nvidia_pytriton.libs",
                              stub)
    found = shutil.which("tritonserver")
    if found:
        return TritonDist(Path(found))
    raise BackendError(f"no Triton Inference Server found: {INSTALL_HINT}")


def libpython_dir() -> str:
    """The folder of this interpreter's shared libpython (the bundled stub embeds it)."""
    libdir, name = sysconfig.get_config_var("LIBDIR"), sysconfig.get_config_var("INSTSONAME")
    if not sysconfig.get_config_var("Py_ENABLE_SHARED") or not libdir or not name or \
            not (Path(libdir) / name).exists():
        raise BackendError(f"this Python ({sys.executable}) has no shared libpython, which the Triton Python backend "
                           "stub embeds: use a Python built with --enable-shared (Debian's python3, or pyenv with "
                           "PYTHON_CONFIGURE_OPTS=--enable-shared)")
    return libdir


def port_free(host: str, port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind((host, port))
        except OSError:
            return False
    return True


def free_ports(n: int, host: str = "127.0.0.1") -> list[int]:
    """n ports free now (for tests and benchmarks)."""
    socks, ports = [], []
    for _ in range(n):
        s = socket.socket()
        s.bind((host, 0))
        socks.append(s)
        ports.append(s.getsockname()[1])
    for s in socks:
        s.close()
    return ports


@dataclass
class ServerOptions:
    host: str = "0.0.0.0"
    http_port: int = 8000
    grpc_port: int = 8001
    metrics_port: int = 8002
    exit_timeout: int = 30  # seconds SIGTERM waits for requests in flight
    log_verbose: int = 0
    tritonserver: str | None = None
    models: tuple[str, ...] = ()  # load only these (explicit model control); () = every model of the repository


class TritonServer:
    """A tritonserver process on `repository`. `start()` returns once every model is ready (or raises a
    one-line BackendError naming the model's error); `stop()` sends SIGTERM (requests in flight finish within
    exit_timeout) and waits. Also a context manager. The server's log goes to `log_path`."""

    def __init__(self, repository: str | os.PathLike, options: ServerOptions | None = None,
                 log_path: str | os.PathLike | None = None):
        self.repository = Path(repository)
        self.options = options or ServerOptions()
        self.dist = find_tritonserver(self.options.tritonserver)
        self.log_path = Path(log_path) if log_path else Path(tempfile.mkstemp(prefix="tritonserver-", suffix=".log")[1])
        self.process: subprocess.Popen | None = None
        self._workdir: tempfile.TemporaryDirectory | None = None

    @property
    def http_url(self) -> str:
        return f"{_client_host(self.options.host)}:{self.options.http_port}"

    @property
    def grpc_url(self) -> str:
        return f"{_client_host(self.options.host)}:{self.options.grpc_port}"

    def command(self) -> list[str]:
        o = self.options
        cmd = [str(self.dist.binary), f"--model-repository={self.repository}", f"--exit-timeout-secs={o.exit_timeout}",
               f"--http-address={o.host}", f"--grpc-address={o.host}", f"--metrics-address={o.host}",
               f"--http-port={o.http_port}", f"--grpc-port={o.grpc_port}", f"--metrics-port={o.metrics_port}",
               f"--log-verbose={o.log_verbose}",
               # the Python stub's shared memory: tiles of a batch go through it (a 16-tile x4 batch is 7 MB)
               "--backend-config=python,shm-default-byte-size=33554432",
               "--backend-config=python,shm-growth-byte-size=33554432"]
        if o.models:
            cmd += ["--model-control-mode=explicit"] + [f"--load-model={m}" for m in o.models]
        if self._workdir is not None:
            cmd.append(f"--backend-directory={Path(self._workdir.name) / 'backends'}")
        return cmd

    def environment(self) -> dict:
        env = dict(os.environ)
        if self.dist.stub is not None:
            libs = [libpython_dir()] + ([str(self.dist.libs)] if self.dist.libs else [])
            env["LD_LIBRARY_PATH"] = os.pathsep.join(libs + [p for p in env.get("LD_LIBRARY_PATH", "").split(os.pathsep) if p])
            env["PATH"] = os.pathsep.join([str(Path(sys.executable).parent), env.get("PATH", "")])
        return env

    def _prepare_backends(self) -> None:
        """The bundled Python backend with this interpreter's stub beside it, in a folder of our own (the stub
        is looked for next to libtriton_python.so; the wheel keeps one stub per Python version elsewhere)."""
        if self.dist.stub is None:
            return
        self._workdir = tempfile.TemporaryDirectory(prefix="cadyq-triton-")
        python = Path(self._workdir.name) / "backends" / "python"
        shutil.copytree(self.dist.backends / "python", python)
        shutil.copy2(self.dist.stub, python / STUB)

    def start(self, timeout: float = 120.0) -> "TritonServer":
        o = self.options
        for flag, port in (("--http-port", o.http_port), ("--grpc-port", o.grpc_port), ("--metrics-port", o.metrics_port)):
            if not port_free(o.host, port):
                raise BackendError(f"port {port} on {o.host} is in use (another server?): pass another {flag}")
        env = self.environment()  # raises first if the stub cannot load
        self._prepare_backends()
        log = open(self.log_path, "wb")
        try:
            self.process = subprocess.Popen(self.command(), stdout=log, stderr=subprocess.STDOUT, env=env,
                                            start_new_session=True)
        finally:
            log.close()
        self._wait_ready(timeout)
        return self

    def ready(self) -> bool:
        try:
            with urllib.request.urlopen(f"http://{self.http_url}/v2/health/ready", timeout=2) as r:
                return r.status == 200
        except OSError:
            return False

    def _wait_ready(self, timeout: float) -> None:
        end = time.monotonic() + timeout
        while time.monotonic() < end:
            if self.process.poll() is not None:
                self._cleanup()
                raise BackendError(f"the Triton server stopped while starting: {self.failure()} (log: {self.log_path})")
            if self.ready():
                return
            time.sleep(0.25)
        self.stop()
        raise BackendError(f"the Triton server was not ready after {timeout:.0f} s: {self.failure()} (log: {self.log_path})")

    def failure(self) -> str:
        """The most telling line of the server log: a model's load error, else the last error line."""
        try:
            lines = self.log_path.read_text(errors="replace").splitlines()
        except OSError:
            return "no log"
        picks = [ln for ln in lines if "failed to load" in ln] or \
                [ln for ln in lines if ln.startswith("E") or ln.startswith("error:")] or lines[-1:]
        return _strip_log_prefix(picks[0]) if picks else "no log"

    def stop(self, timeout: float | None = None) -> int | None:
        """SIGTERM, then wait (exit_timeout + 15 s by default), then SIGKILL. Returns the exit code."""
        p = self.process
        if p is not None and p.poll() is None:
            p.send_signal(signal.SIGTERM)
            try:
                p.wait(timeout if timeout is not None else self.options.exit_timeout + 15)
            except subprocess.TimeoutExpired:
                os.killpg(p.pid, signal.SIGKILL)
                p.wait()
        self._cleanup()
        return None if p is None else p.returncode

    def _cleanup(self) -> None:
        if self._workdir is not None:
            self._workdir.cleanup()
            self._workdir = None

    def __enter__(self):
        return self.start() if self.process is None else self

    def __exit__(self, *exc):
        self.stop()


def _client_host(host: str) -> str:
    return "127.0.0.1" if host in ("0.0.0.0", "") else host


def _strip_log_prefix(line: str) -> str:
    """`E1206 05:40:50.895881 10456 model_lifecycle.cc:642] "failed ..."` -> `failed ...`"""
    if "] " in line and line[:1] in "EWI" and line[1:5].isdigit():
        line = line.split("] ", 1)[1]
    return line.strip().strip('"')
