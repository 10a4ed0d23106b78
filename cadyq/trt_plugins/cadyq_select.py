"""IPluginV3 `CADyQSelect` (IPluginV3OneCore/Build/Runtime + IPluginCreatorV3One).

Written against the Python bindings of both full TensorRT (`tensorrt`) and TensorRT-RTX
(`tensorrt_rtx_bindings`): the classes are built per bindings module by `plugin_classes(trt)`.
Build-time methods need neither a GPU nor Triton (TensorRT-RTX builds engines on a CPU-only
machine); `enqueue` launches the fused Triton kernel (cadyq.kernels.select_quant) on TensorRT's
stream, on the raw device pointers, with no allocation and no synchronisation. It is CUDA-graph safe
once Triton has compiled the kernel for the shapes: run one inference, or `warmup(bits, shape)`,
before capturing.

I/O: inputs x [N,C,H,W] (float32 or float16), g [N,2], W [K,C+2], b [K], a [K] (float32).
Version "1" (fake-quant form): outputs y (type of x, shape of x), bits [N] float32.
Version "2" (integer form): outputs q (the integers on the top candidate's grid, shape of x, type of x: the
graph's QuantizeLinear(1)/DequantizeLinear(1) pair makes them the INT8 input of the convolution),
scale [N] = a_T/s_T (the same for every tile), bits [N] float32. Field: `bits` (int32[K]). Both versions are
registered. What they compute is the op's spec (cadyq/export/op.py).
"""
from __future__ import annotations

import functools

import numpy as np

from cadyq.errors import EngineError
from cadyq.export.op import INT_VERSION, OP_TYPE, PLUGIN_NAMESPACE, PLUGIN_VERSION

NUM_INPUTS = 5
VERSIONS = {PLUGIN_VERSION: 2, str(INT_VERSION): 3}  # plugin version -> number of outputs
_ALIVE: dict[tuple[int, str], object] = {}  # registry id, namespace -> creator (the registry does not own Python objects)


class DevPtr:
    """A raw device pointer Triton can launch on (it only needs .data_ptr() and .dtype)."""
    __slots__ = ("ptr", "dtype")

    def __init__(self, ptr: int, dtype):
        self.ptr, self.dtype = int(ptr), dtype

    def data_ptr(self) -> int:
        return self.ptr


def enqueue_select(bits: tuple[int, ...], half: bool, dims, inputs, outputs, stream: int) -> None:
    """Launch select+quantize on raw pointers (x, g, W, b, a) -> (y, bits_out), or with three outputs
    (q, scale, bits_out) the integer form, on CUDA stream `stream`."""
    import torch

    from cadyq.kernels.select_quant import launch, launch_int

    N, C, H, W = (int(d) for d in dims)
    if N == 0:
        return
    xt, f32 = (torch.float16 if half else torch.float32), torch.float32
    x, g, w, b, a = (DevPtr(p, xt if i == 0 else f32) for i, p in enumerate(inputs))
    with torch.cuda.stream(torch.cuda.ExternalStream(int(stream))):
        if len(outputs) == 2:
            launch(x, g, w, b, a, C, H * W, DevPtr(outputs[0], xt), DevPtr(outputs[1], f32), bits, N)
        else:
            launch_int(x, g, w, b, a, C, H * W, DevPtr(outputs[0], xt), DevPtr(outputs[1], f32),
                       DevPtr(outputs[2], f32), bits, N)


def warmup(bits, shape, half: bool = False) -> None:
    """Compile (and run once) the kernel for `bits` and x of `shape` [N,C,H,W] on the current device."""
    import torch

    N, C, H, W = shape
    dt = torch.float16 if half else torch.float32
    t = [torch.zeros(s, device="cuda", dtype=dt if i in (0, 5) else torch.float32) for i, s in
         enumerate([(1, C, H, W), (1, 2), (len(bits), C + 2), (len(bits),), (len(bits),), (1, C, H, W), (1,)])]
    t[4].fill_(1.0)                                                  # a > 0
    enqueue_select(tuple(bits), half, (1, C, H, W), [v.data_ptr() for v in t[:5]], [v.data_ptr() for v in t[5:]],
                   torch.cuda.current_stream().cuda_stream)
    torch.cuda.synchronize()


def parse_bits(fields) -> tuple[int, ...]:
    """`bits` from a PluginFieldCollection (the ONNX parser passes INTS as INT32; other fields are ignored)."""
    for f in fields:
        if f.name == "bits":
            bits = tuple(int(v) for v in np.asarray(f.data).ravel())
            if not bits or any(v < 2 or v > 16 for v in bits) or len(set(bits)) != len(bits):
                raise EngineError(f"CADyQSelect: bit-widths must be distinct and in [2, 16], got {bits}")
            return bits
    raise EngineError("CADyQSelect: missing plugin field 'bits' (the ONNX node needs a bits=[...] attribute)")


@functools.cache
def plugin_classes(trt):
    """(CADyQSelectPlugin, CADyQSelectCreator) for bindings module `trt` (tensorrt or tensorrt_rtx_bindings)."""

    class CADyQSelectPlugin(trt.IPluginV3, trt.IPluginV3OneCore, trt.IPluginV3OneBuild, trt.IPluginV3OneRuntime):
        def __init__(self, bits=(), phase=None, namespace=PLUGIN_NAMESPACE, version=PLUGIN_VERSION):
            trt.IPluginV3.__init__(self)
            trt.IPluginV3OneCore.__init__(self)
            trt.IPluginV3OneBuild.__init__(self)
            trt.IPluginV3OneRuntime.__init__(self)
            self.plugin_name, self.plugin_namespace, self.plugin_version = OP_TYPE, namespace, version
            self.num_outputs = VERSIONS[version]
            self.timing_cache_id = ""
            self.bits, self.phase = tuple(bits), phase

        # core
        def get_capability_interface(self, type):
            return self

        def clone(self):  # all state: bits, phase, namespace, version
            return CADyQSelectPlugin(self.bits, self.phase, self.plugin_namespace, self.plugin_version)

        # build
        def get_output_data_types(self, input_types):
            return [input_types[0]] + [trt.DataType.FLOAT] * (self.num_outputs - 1)

        def get_output_shapes(self, inputs, shape_inputs, expr_builder):
            per_tile = trt.DimsExprs(1)
            per_tile[0] = inputs[0][0]
            return [trt.DimsExprs(inputs[0])] + [per_tile] * (self.num_outputs - 1)

        def supports_format_combination(self, pos, in_out, num_inputs):
            desc = in_out[pos].desc
            if desc.format != trt.TensorFormat.LINEAR:
                return False
            if pos == 0:                                  # x
                return desc.type in (trt.DataType.FLOAT, trt.DataType.HALF)
            if pos == num_inputs:                         # y / q: type of x
                return desc.type == in_out[0].desc.type
            return desc.type == trt.DataType.FLOAT        # g, W, b, a, scale, bits

        def configure_plugin(self, inp, out):
            if len(inp) != NUM_INPUTS or len(out) != self.num_outputs:
                raise EngineError(f"CADyQSelect v{self.plugin_version} takes 5 inputs (x, g, W, b, a) and "
                                  f"{self.num_outputs} outputs, got {len(inp)} and {len(out)}")
            x, w = tuple(inp[0].desc.dims), tuple(inp[2].desc.dims)
            if len(x) != 4 or len(w) != 2:
                raise EngineError(f"CADyQSelect: x must be [N,C,H,W] and W [K,C+2], got {x} and {w}")
            if w[0] >= 0 and w[0] != len(self.bits):
                raise EngineError(f"CADyQSelect: W has {w[0]} rows but bits has {len(self.bits)} values {self.bits}")
            if w[1] >= 0 and x[1] >= 0 and w[1] != x[1] + 2:
                raise EngineError(f"CADyQSelect: W must have C+2 = {x[1] + 2} columns, got {w[1]}")

        def get_workspace_size(self, inp, out):
            return 0

        def get_valid_tactics(self):
            return []

        # runtime
        def on_shape_change(self, inp, out):
            pass  # enqueue reads shapes and types from its descriptors

        def attach_to_context(self, context):
            return self.clone()

        def get_fields_to_serialize(self):
            self._bits_field = np.asarray(self.bits, dtype=np.int32)  # keep the buffer alive with the plugin
            return trt.PluginFieldCollection([trt.PluginField("bits", self._bits_field, trt.PluginFieldType.INT32)])

        def enqueue(self, input_desc, output_desc, inputs, outputs, workspace, stream):
            enqueue_select(self.bits, input_desc[0].type == trt.DataType.HALF, input_desc[0].dims,
                           inputs, outputs, stream)

    class CADyQSelectCreator(trt.IPluginCreatorV3One):
        def __init__(self, namespace=PLUGIN_NAMESPACE, version=PLUGIN_VERSION):
            trt.IPluginCreatorV3One.__init__(self)
            self.name, self.plugin_namespace, self.plugin_version = OP_TYPE, namespace, version
            self.field_names = trt.PluginFieldCollection(
                [trt.PluginField("bits", np.array([], dtype=np.int32), trt.PluginFieldType.INT32)])

        def create_plugin(self, name, fc, phase):
            return CADyQSelectPlugin(parse_bits(fc), phase, self.plugin_namespace, self.plugin_version)

    return CADyQSelectPlugin, CADyQSelectCreator


RTX_PARSER_ABORTS = ("TensorRT-RTX's ONNX parser (1.7.1) dlopens the unversioned libtensorrt_rtx.so when it imports "
                     "a plugin node; the PyPI wheel ships only libtensorrt_rtx.so.1, so the parser terminates the "
                     "process. cadyq.export.engine builds plugin engines in a child process whose LD_LIBRARY_PATH "
                     "holds a libtensorrt_rtx.so symlink (rtx_library_shim)")


def register(plugin_registry=None, trt=None, namespace: str = PLUGIN_NAMESPACE, force: bool = False):
    """Register the CADyQSelect creators (name CADyQSelect, versions "1" and "2", `namespace`); idempotent.
    Returns the version-1 creator.

    Refused on TensorRT-RTX unless `force` (see RTX_PARSER_ABORTS): a parse in a process that cannot resolve
    libtensorrt_rtx.so would terminate it. Without the plugin the parser inlines the model-local function.
    """
    from cadyq.trt_plugins import is_rtx, trt_module

    trt = trt or trt_module()
    if is_rtx(trt) and not force:
        raise EngineError(f"{RTX_PARSER_ABORTS}; use `cadyq engine --plugin` (which does that), build without the "
                          "plugin (the CADyQSelect function body is used), or use full TensorRT >= 10")
    registry = plugin_registry if plugin_registry is not None else trt.get_plugin_registry()
    key = (id(registry), namespace)
    if key in _ALIVE:
        return _ALIVE[key][0]
    for version in VERSIONS:
        if registry.get_creator(OP_TYPE, version, namespace) is not None:
            raise EngineError(f"another {namespace}::{OP_TYPE} v{version} plugin is already registered "
                              "(an AOT plugin from register_aot() uses namespace 'cadyq_aot')")
    creators = [plugin_classes(trt)[1](namespace, version) for version in VERSIONS]
    for c in creators:
        if not registry.register_creator(c, namespace):
            raise EngineError(f"TensorRT refused to register the {namespace}::{OP_TYPE} v{c.plugin_version} plugin creator")
    _ALIVE[key] = creators
    return creators[0]


def deregister(plugin_registry=None, trt=None, namespace: str = PLUGIN_NAMESPACE) -> bool:
    """Undo `register()`; False if it was not registered through this module."""
    from cadyq.trt_plugins import trt_module

    trt = trt or trt_module()
    registry = plugin_registry if plugin_registry is not None else trt.get_plugin_registry()
    creators = _ALIVE.pop((id(registry), namespace), None)
    return creators is not None and all([bool(registry.deregister_creator(c)) for c in creators])
