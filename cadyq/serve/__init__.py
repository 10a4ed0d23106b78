"""Serving on NVIDIA Triton Inference Server: model repositories, the server launcher and the tile client."""
from .client import TritonBackend
from .repository import ServeConfig, read_config, write_onnx_model, write_plan_model, write_python_model
from .server import ServerOptions, TritonServer, find_tritonserver

__all__ = ["TritonBackend", "TritonServer", "ServerOptions", "ServeConfig", "find_tritonserver", "read_config",
           "write_python_model", "write_onnx_model", "write_plan_model"]
