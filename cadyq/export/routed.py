"""Tile-routed graphs for models whose bits are the same in every layer (Granular-DQ, CADyQ's tile mode).

    export_routed(model, "out/", tile=96, calib=tiles)   ->  out/routed.json, out/router.onnx, out/b4.onnx, ...

A router graph gives each tile's bit-width; one static graph per candidate runs the tiles of that
bit-width. In the static graph of bit-width b every quantization scale is a build-time constant, so
ONNX Runtime fuses each quantized conv into QLinearConv (real INT8 on the CPU) and TensorRT builds
INT8 convolutions without a plugin. A dynamic quantizer is the model's (`cadyq.quant.ops.on_top_grid`): a
Q/DQ pair on the top candidate's grid T, then one on b's, then T's again (T's alone where b is the top):

    Q(z, a, s) = QuantizeLinear(Clip(z, -a, a), a / s)               (int8 on the grid of (a, s): |q| <= s)
    q = Q(DQ(Q(DQ(Q(x, a_T, s_T)), a_b, s_b)), a_T, s_T)              (b's levels on the top grid)
    y = Conv(DequantizeLinear(q), DequantizeLinear(w_int8, w_scale))                     (no bias)
    y = DequantizeLinear(QuantizeLinear(y, y_scale)) + bias          (8-bit, calibrated: QLinearConv's output)

(The bias is a float Add after the output pair: TensorRT takes no int32 DequantizeLinear, and both fuse
the Add into the convolution.)

The output requantization is the one arithmetic the model does not have: y_scale = max |y| / 127 over
the calibration tiles, so each conv output is kept to 8 bits of its range (the error is part of the
routed graphs' stated tolerance). `routed.json` names the files, the candidates and the model.
"""
from __future__ import annotations

import io
import json
import warnings
from pathlib import Path

import torch
import torch.nn as nn
import torch.nn.functional as F

from ..errors import ExportError
from ..quant import ModelInfo, quant_config
from ..quant.lowering import QAct, ReferenceKernels, lower
from .int_graph import SymbolicKernels, _const, bias_act, dq_conv

MANIFEST = "routed.json"
ROUTED_FORMAT = 1


class _QuantizeStatic(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, a: float, s: float):
        a_t = torch.tensor(a, dtype=x.dtype)
        return torch.round(torch.maximum(torch.minimum(x, a_t), -a_t) / a_t * s).to(torch.int8)

    @staticmethod
    def symbolic(g, x, a: float, s: float):
        c = g.op("Clip", x, _const(g, torch.tensor(-a)), _const(g, torch.tensor(a)))
        q = g.op("QuantizeLinear", c, _const(g, torch.tensor(a / s)), _const(g, torch.tensor(0, dtype=torch.int8)))
        q.setType(x.type().with_dtype(torch.int8))
        return q


class _DequantStatic(torch.autograd.Function):
    @staticmethod
    def forward(ctx, q, scale: float):
        return q.float() * scale

    @staticmethod
    def symbolic(g, q, scale: float):
        y = g.op("DequantizeLinear", q, _const(g, torch.tensor(scale)), _const(g, torch.tensor(0, dtype=torch.int8)))
        y.setType(q.type().with_dtype(torch.float32))
        return y


class _StaticConv(torch.autograd.Function):
    """DQ(q) -> Conv(DQ(w)) -> Q/DQ(y_scale) -> + bias -> act: QLinearConv for ONNX Runtime."""

    @staticmethod
    def forward(ctx, q, x_scale: float, w_q, w_scale, bias, y_scale: float, stride, padding, dilation, groups, act, slope):
        import torch.nn.functional as F

        w = w_q.float() - (128.0 if w_q.dtype == torch.uint8 else 0.0)
        acc = torch.round(F.conv2d(q.float(), w, None, stride, padding, dilation, groups))
        y = acc * (x_scale * w_scale).view(1, -1, 1, 1)
        y = torch.clamp(torch.round(y / y_scale), -128, 127) * y_scale + bias.view(1, -1, 1, 1)
        return torch.relu(y) if act == "relu" else (F.leaky_relu(y, slope) if act == "leaky" else y)

    @staticmethod
    def symbolic(g, q, x_scale: float, w_q, w_scale, bias, y_scale: float, stride, padding, dilation, groups, act, slope):
        out_c = w_q.type().sizes()[0]
        zero8 = _const(g, torch.tensor(0, dtype=torch.int8))
        xd = g.op("DequantizeLinear", q, _const(g, torch.tensor(x_scale)), zero8)
        if w_q.type().scalarType() == "Byte":  # uint8 weights w + 128 with zero point 128 (see StaticKernels)
            w_zp = _const(g, torch.full((out_c,), 128, dtype=torch.uint8))
        else:
            w_zp = _const(g, torch.zeros(out_c, dtype=torch.int8))
        y = dq_conv(g, xd, w_q, w_scale, w_zp, stride, padding, dilation, groups)
        ys = _const(g, torch.tensor(y_scale))
        y = g.op("DequantizeLinear", g.op("QuantizeLinear", y, ys, zero8), ys, zero8)
        return bias_act(g, y, bias, act, slope)


def _quantize_static(x, grids):
    """x through one Q/DQ pair per grid (a, s) in turn: int8 integers on the last grid."""
    q = _QuantizeStatic.apply(x, *grids[0])
    for (a_prev, s_prev), (a, s) in zip(grids, grids[1:]):
        q = _QuantizeStatic.apply(_DequantStatic.apply(q, a_prev / s_prev), a, s)
    return q


class StaticKernels(SymbolicKernels):
    """Kernels of a static graph: every quantizer's candidate a constant (`fixed_program`), constants for every scale.

    weights "u8": the int8 weights stored as uint8 w + 128 with zero point 128, for ONNX Runtime: its
    x86 QLinearConv with int8 weights adds pairs of u8 x s8 products in int16 on CPUs without VNNI and
    saturates (measured: errors of 37 output steps on full-range 8-bit inputs), the u8 x u8 kernel is
    exact. "s8": symmetric int8 (zero point 0), the only form TensorRT takes."""

    name = "onnx-static"

    def __init__(self, output_scales: dict[str, float], emit=None, weights: str = "u8"):
        super().__init__(emit)
        self.output_scales = output_scales
        self.weights = weights

    def select_quantize(self, x, quant, ctx, dequant=False):
        k = quant.constant_k()
        if k is None:
            raise ExportError("internal: a static graph has quantizers with a constant candidate only")
        top = (float(quant.alpha[-1]), float(quant.levels[-1]))
        grids = [top] if k == quant.n_candidates - 1 else [top, (float(quant.alpha[k]), float(quant.levels[k])), top]
        key = getattr(quant, "key", None)
        x = x.float()
        if key:
            x = self.emit(key + ":in", x)
        n = x.shape[0]
        bits = x.new_full((n,), float(quant.bits[k]))
        # a tensor also used in float (EDSR's skip) gets its own Q/DQ pairs: ONNX Runtime fuses a conv into
        # QLinearConv only when its QuantizeLinear feeds nothing else
        extra = {"skip_q": _quantize_static(x, grids)} if dequant else {}
        return QAct(_quantize_static(x, grids), top[0] / top[1], bits, None, extra)

    def dequantize(self, qa):
        return _DequantStatic.apply(qa.extra.get("skip_q", qa.q), qa.scale)

    def conv(self, qa, conv):
        y_scale = self.output_scales.get(conv.name)
        if y_scale is None:
            raise ExportError(f"internal: no calibrated output scale for {conv.name}")
        w = (conv.weight_q.to(torch.int16) + 128).to(torch.uint8) if self.weights == "u8" else conv.weight_q
        return _StaticConv.apply(qa.q, qa.scale, w, conv.weight_scale, conv.bias, y_scale, conv.stride,
                                 conv.padding, conv.dilation, conv.groups, conv.act, conv.slope)


def routing_candidates(model: nn.Module) -> tuple[int, ...]:
    cfg = quant_config(model)
    if cfg.method not in ("gdq", "cadyq") or (cfg.method == "cadyq" and cfg.mode != "tile"):
        raise ExportError(f"tile-routed graphs need bits that are the same in every layer (gdq, or cadyq in mode "
                          f"'tile'); this is {cfg.method} mode {cfg.mode}: export it with `cadyq export` instead")
    return cfg.bits


def fixed_program(model: nn.Module, k: int):
    """The integer program of `model` with every dynamic quantizer's choice fixed to candidate index k: a layer-mode
    choice (a one-hot bias), so the quantizer keeps its candidates and computes what the model's does for k."""
    program = lower(model)
    for q in program.dynamic:
        q.mode, q.weight, q._layer_k = "layer", None, None
        q.bias = F.one_hot(torch.tensor(k), q.n_candidates).float()
    return program  # the tile decision still runs, unused: the exporter drops it (the router's job)


@torch.no_grad()
def output_scales(program, calib: torch.Tensor) -> dict[str, float]:
    """max |conv output before bias and activation| / 127 per quantized conv, over the calibration tiles."""
    ref = ReferenceKernels()
    peaks: dict[str, float] = {}

    class _Peaks(ReferenceKernels):
        def conv(self, qa, conv):
            act, conv.act = conv.act, "none"
            try:
                y = ref.conv(qa, conv)
            finally:
                conv.act = act
            peaks[conv.name] = max(peaks.get(conv.name, 0.0), float((y - conv.bias.view(1, -1, 1, 1)).abs().max()))
            from ..quant.lowering import _epilogue

            return _epilogue(y, conv)

    program.use(_Peaks())
    for i in range(0, calib.shape[0], 16):
        program(calib[i:i + 16].float())
    program.use(ref)
    return {k: max(v, 1e-6) / 127.0 for k, v in peaks.items()}


def _router_module(model: nn.Module):
    program = lower(model)

    class Router(nn.Module):
        def __init__(self):
            super().__init__()
            self.program = program

        def forward(self, lr):
            return self.program(lr)[1][:, 0]  # the bit-width of the tile (the same in every layer)
    return Router()


def export_routed(model, out_dir, tile: int = 96, calib: torch.Tensor | None = None, opset: int = 17) -> Path:
    """Write the router, one static graph per candidate and routed.json into `out_dir`; returns the manifest."""
    from ..checkpoint import atomic_write, metadata as ckpt_metadata
    from .onnx_export import export_model_proto

    if not isinstance(model, nn.Module):
        from ..checkpoint import load

        model = load(model)
    model = model.cpu().eval()
    bits = routing_candidates(model)
    if calib is None or calib.shape[0] == 0:
        raise ExportError("routed graphs need calibration tiles for their conv output scales (--calib DIR)")
    if tuple(calib.shape[-2:]) != (tile, tile):
        raise ExportError(f"calibration tiles are {tuple(calib.shape[-2:])}, the graphs take {tile}x{tile}")
    import onnx

    out = Path(out_dir)
    files, files_trt = {}, {}
    for k, b in enumerate(bits):
        program = fixed_program(model, k)
        scales = output_scales(program, calib)
        for weights, names, suffix in (("u8", files, ""), ("s8", files_trt, "-trt")):
            proto = export_model_proto(model, tile, opset=opset, form="static", static=(program, scales, weights))
            path = out / f"b{b}{suffix}.onnx"
            atomic_write(path, lambda tmp, p=proto: onnx.save_model(p, tmp))
            names[str(b)] = path.name
    router = _router_module(model)
    buf = io.BytesIO()
    dummy = torch.rand(2, 3, tile, tile, generator=torch.Generator().manual_seed(0)) * 255
    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        router.program.use(SymbolicKernels())
        torch.onnx.export(router, (dummy,), buf, dynamo=False, opset_version=opset, input_names=["lr"],
                          output_names=["bits"], dynamic_axes={"lr": {0: "N"}, "bits": {0: "N"}},
                          do_constant_folding=True)
    rproto = onnx.load_from_string(buf.getvalue())
    from . import op as cadyq_op

    cadyq_op.add_functions(rproto)
    onnx.checker.check_model(rproto)
    atomic_write(out / "router.onnx", lambda tmp: onnx.save_model(rproto, tmp))
    info = ModelInfo.from_model(model)
    manifest = {"format": ROUTED_FORMAT, "kind": "cadyq-routed", "tile": tile, "bits": list(bits),
                "router": "router.onnx", "graphs": files, "graphs_tensorrt": files_trt, "info": info.to_dict(),
                "model": ckpt_metadata(model),
                "calibration_tiles": int(calib.shape[0]),
                "note": "static INT8 graphs, one per bit-width; conv outputs requantized to 8 bits (QLinearConv)"}
    atomic_write(out / MANIFEST, lambda tmp: Path(tmp).write_text(json.dumps(manifest, indent=2)))
    return out / MANIFEST


def read_manifest(path) -> dict:
    path = Path(path)
    if path.is_dir():
        path = path / MANIFEST if (path / MANIFEST).is_file() or not (path / "routed-engines.json").is_file() \
            else path / "routed-engines.json"
    try:
        m = json.loads(path.read_text())
    except (OSError, ValueError) as e:
        raise ExportError(f"{path}: not a readable routed-graph manifest ({e}); export one with "
                          "`cadyq export --routed`") from e
    if not isinstance(m, dict) or m.get("kind") != "cadyq-routed":
        raise ExportError(f"{path}: not a cadyq routed-graph manifest")
    m["_dir"] = str(path.parent)
    return m


__all__ = ["export_routed", "read_manifest", "fixed_program", "output_scales", "StaticKernels", "MANIFEST",
           "routing_candidates"]
