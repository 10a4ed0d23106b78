"""Reading an ONNX file with an error that says what is wrong (one place for every caller)."""
from __future__ import annotations

from pathlib import Path

import onnx

from ..errors import CadyqError


def read_onnx(path: str | Path, error: type[CadyqError] = CadyqError, hint: str = "") -> bytes:
    path = Path(path)
    if not path.is_file():
        raise error(f"{path}: no such ONNX file{hint}")
    return path.read_bytes()


def parse_onnx(data: bytes, path: str | Path, error: type[CadyqError] = CadyqError) -> onnx.ModelProto:
    try:
        return onnx.load_from_string(data)
    except Exception as e:  # protobuf raises several types
        raise error(f"{path}: not a readable ONNX file ({e})") from e


def load_onnx(path: str | Path, error: type[CadyqError] = CadyqError, hint: str = "") -> onnx.ModelProto:
    return parse_onnx(read_onnx(path, error, hint), path, error)
