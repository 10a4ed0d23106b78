"""CPU integer kernels: oneDNN INT8 convolutions with per-tile scales and cadyq's C kernels.

    from cadyq.kernels.cpu import OneDNNKernels, available
    program.use(OneDNNKernels())        # a program from cadyq.quant.lowering.lower(model)
"""
from .onednn import OneDNNKernels, available

__all__ = ["OneDNNKernels", "available"]
