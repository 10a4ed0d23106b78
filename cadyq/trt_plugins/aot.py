"""Ahead-of-time `CADyQSelect` for full TensorRT >= 10.9 (`tensorrt.plugin` QDP + `aot_impl`).

The engine embeds the PTX of the Triton kernel, so it runs without Python (trtexec, C++). Attributes
are not serialized for AOT plugins: the bit-widths are compiled into the PTX as constants. The QDP
is registered in namespace `cadyq_aot` (the IPluginV3 creator owns `cadyq`); select it with
`cadyq.export.op.add_functions(model, plugin_namespace=AOT_NAMESPACE)`.
TensorRT-RTX wheels have no `tensorrt.plugin`: there `register_aot` raises EngineError.
(No `from __future__ import annotations` here: `tensorrt.plugin` reads the annotations as types.)
"""
from typing import Optional, Tuple

import numpy as np
import numpy.typing as npt

from cadyq.errors import EngineError
from cadyq.export.op import OP_TYPE

AOT_NAMESPACE = "cadyq_aot"
EXTRA_ARGS = ("C", "HW")   # int32 scalars between the 5 input and 2 output pointers (select_quant.LAUNCH_PARAMS)
_REGISTERED = set()


def register_aot(cc: Optional[int] = None, namespace: str = AOT_NAMESPACE) -> str:
    """Register the AOT QDP `namespace::CADyQSelect` (PTX for compute capability `cc`, default: this GPU or 8.0)."""
    plugin_id = f"{namespace}::{OP_TYPE}"
    if plugin_id in _REGISTERED:
        return plugin_id
    try:
        import tensorrt as trt
        import tensorrt.plugin as trtp
    except ImportError as e:
        raise EngineError(f"AOT plugins need full TensorRT >= 10.9 with tensorrt.plugin ({e}); "
                          "use cadyq.trt_plugins.register() (IPluginV3) with TensorRT-RTX") from None
    from cadyq.kernels.select_quant import aot_compile

    if cc is None:
        import torch
        cc = (lambda m: 10 * m[0] + m[1])(torch.cuda.get_device_capability()) if torch.cuda.is_available() else 80

    @trtp.register(plugin_id)
    def _desc(x: trtp.TensorDesc, g: trtp.TensorDesc, W: trtp.TensorDesc, b: trtp.TensorDesc, a: trtp.TensorDesc,
              bits: npt.NDArray[np.int32]) -> Tuple[trtp.TensorDesc, trtp.TensorDesc]:
        return x.like(), trtp.from_shape_expr((x.shape_expr[0],), dtype=trt.float32)

    @trtp.aot_impl(plugin_id)
    def _aot(x: trtp.TensorDesc, g: trtp.TensorDesc, W: trtp.TensorDesc, b: trtp.TensorDesc, a: trtp.TensorDesc,
             bits: npt.NDArray[np.int32], outputs: Tuple[trtp.TensorDesc], tactic: int):
        C, HW = x.shape_expr[1], x.shape_expr[2] * x.shape_expr[3]
        static = C.is_constant and HW.is_constant
        name, ptx, num_warps, shared = aot_compile(
            tuple(int(v) for v in bits), "fp16" if x.dtype == trt.float16 else "fp32",
            C.constant_value if static else 64, HW.constant_value if static else 96 * 96, cc, static_hw=static)
        launch = trtp.KernelLaunchParams()
        launch.grid_x, launch.block_x, launch.shared_mem = x.shape_expr[0], num_warps * 32, shared
        extra = trtp.SymIntExprs(len(EXTRA_ARGS))    # kernel order: x g W b a | C HW | y bits
        extra[0], extra[1] = trtp.SymInt32(C), trtp.SymInt32(HW)
        return name, ptx, launch, extra

    _REGISTERED.add(plugin_id)
    return plugin_id
