"""ONNX export of cadyq models, the CADyQSelect op, and graph checks (torch vs ONNX Runtime)."""
from .onnx_export import DTYPES, export_model_proto, export_onnx, weight_dequant_error

__all__ = ["export_onnx", "export_model_proto", "weight_dequant_error", "DTYPES", "check_graph", "compare",
           "Report", "GraphReport"]


def __getattr__(name):  # check.py pulls in onnxruntime; import it on first use
    if name in ("check_graph", "compare", "Report", "GraphReport", "check"):
        from . import check

        return check if name == "check" else getattr(check, name)
    raise AttributeError(f"module 'cadyq.export' has no attribute {name!r}")
