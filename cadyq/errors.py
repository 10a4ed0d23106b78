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


class OutputError(CadyqError):
    """An output cannot be written, or writing it would replace an input or an existing file."""


class OptionError(CadyqError, ValueError):
    """A command-line option has a value that cannot work (a device that is not one, say)."""


class ContentWarning(UserWarning):
    """Part of an input is not used as it is (frames after the first, bits below the top 8)."""


class UntrainedModelWarning(UserWarning):
    """A model runs with the random weights `create_model` gave it: its output is meaningless."""


class ImageWriteError(ImageError, OutputError):
    """An image file cannot be written."""
