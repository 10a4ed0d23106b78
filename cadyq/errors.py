"""Errors a user can cause. The CLI prints `str(err)` on one line and exits non-zero."""


class CadyqError(Exception):
    """Base class: the message says what went wrong and what to do."""


class ImageError(CadyqError):
    """An image file cannot be read, is too large, or cannot be written."""


class CheckpointError(CadyqError):
    """A checkpoint is missing, corrupt, or does not match the model."""


class ModelError(CadyqError):
    """An unknown backbone, scale or quantization method."""


class DataError(CadyqError):
    """A data folder has no usable images or an unknown layout."""


class BackendError(CadyqError):
    """A backend is unavailable or cannot run the given model."""


class EngineError(BackendError):
    """A TensorRT engine cannot be built, loaded or run here."""


class ExportError(CadyqError):
    """A model cannot be exported to ONNX."""


class TilingError(CadyqError, ValueError):
    """Invalid tile size, overlap or protocol."""
