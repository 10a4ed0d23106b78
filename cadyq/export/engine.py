"""TensorRT engines from cadyq ONNX graphs: full TensorRT (>= 10) when `tensorrt` imports, else TensorRT-RTX.

    info = build_engine("model.onnx", "model.engine", batch=(1, 16, 64), plugin=False)
    print(info)                       # builder, target, profile, precision, layers, time
    inspect_network("model.onnx", plugin=True).layer_types    # what the builder saw

- The graph's input ``lr`` [N,3,T,T] gets one optimisation profile over N = batch (min, opt, max).
- ``plugin=False``: the ``cadyq::CADyQSelect`` nodes are imported through their model-local
  function (standard layers: Reduce, MatMul, TopK, Gather, ...). ``plugin=True``: the IPluginV3
  ``CADyQSelect`` creator (cadyq.trt_plugins) is registered first, so the ONNX parser imports
  each node as one plugin layer (the nodes carry ``plugin_namespace``/``plugin_version``).
  Python plugins are not serialized into the engine: the process that runs it registers them again.
- Precision: TensorRT-RTX and TensorRT >= 11 are strongly typed only; their precision is the
  ONNX graph's (``cadyq export --dtype fp16``). TensorRT 10 also accepts an fp32 graph with
  ``fp16=True`` (weak typing, BuilderFlag.FP16).
- Target: full TensorRT builds for the GPU it runs on (its compute capability). TensorRT-RTX
  builds ahead of time without a GPU, by default for compute capability 8.0/8.6/8.9/12.0
  (``targets=["sm86", ...]`` narrows it; ``["current"]`` uses this machine's GPU).
- Cache: engines are named ``<backbone>-<method>-x<s>-<graph sha256[:16]>-<builder>-<version>-<target>
  -t<tile>-b<min>_<opt>_<max>-<precision>[-plugin].engine``; a cached engine whose sidecar and hash
  match is reused instead of rebuilt.
- Sidecar ``<engine>.json``: model metadata (ModelInfo dict), bits, scale, tile, batch profile,
  builder name/version, target, plugin, precision, the layer summary of the network, I/O, the
  engine's and the graph's sha256 (the runtime checks them before loading).

TensorRT-RTX 1.7.1 (pip wheel) with a Python plugin: its ONNX parser dlopen()s the unversioned
``libtensorrt_rtx.so`` when it imports a plugin node; the wheel ships only ``libtensorrt_rtx.so.1``,
the dlopen fails with std::runtime_error ("Unable to open library: libtensorrt_rtx.so ...") inside
a noexcept path, and the process aborts (std::terminate). Those builds therefore run in a child
process whose LD_LIBRARY_PATH holds a ``libtensorrt_rtx.so`` symlink to the wheel's library
(`rtx_library_shim`); a crash there becomes an EngineError with the child's output.
"""
from __future__ import annotations

import contextlib
import hashlib
import importlib.util
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from collections import Counter
from dataclasses import asdict, dataclass, field
from pathlib import Path

import onnx

from ..errors import EngineError
from . import op as cadyq_op
from .onnx_export import INPUT, META_EXPORT, META_INFO, META_MODEL, OUTPUTS
from .onnx_file import parse_onnx, read_onnx

__all__ = ["build_engine", "inspect_network", "EngineInfo", "NetworkSummary", "read_sidecar", "sidecar_path",
           "parse_batch", "builder_identity", "default_cache_dir", "engine_name", "sha256_file", "resolve_target",
           "rtx_library_shim",
           "RTX_DEFAULT_TARGETS", "RTX_RUNTIME_CCS", "SIDECAR_FORMAT", "DEFAULT_WORKSPACE_MB"]

SIDECAR_FORMAT = 1
DEFAULT_WORKSPACE_MB = None   # the builder's default (TensorRT: the GPU's memory; TensorRT-RTX: 64 GiB)
# CPU-only AOT default of TensorRT-RTX ("engines run on compute capability 8.0, 8.6, 8.9 and 12.0")
RTX_DEFAULT_TARGETS = ("8.0", "8.6", "8.9", "12.0")
# what the TensorRT-RTX 1.7.1 runtime reports it supports; 7.5 only when built for it explicitly
RTX_RUNTIME_CCS = ("7.5", "8.0", "8.6", "8.9", "12.0", "12.1")
_RTX_CC_NAMES = {"7.5": "SM75", "8.0": "SM80", "8.6": "SM86", "8.9": "SM89", "12.0": "SM120", "12.1": "SM121"}
_PLUGIN_LAYER_TYPES = ("PLUGIN", "PLUGIN_V2", "PLUGIN_V3")
_NOISE = ("already exists, the output tensors of this new instance will not be queryable",  # inlined function bodies
          "IPluginRegistry::getCreator")  # register() probing for an existing creator


# --- results -----------------------------------------------------------------------------------------------

@dataclass
class NetworkSummary:
    """The network the builder saw after parsing the ONNX graph."""

    n_layers: int
    layer_types: dict[str, int]                 # LayerType name -> count, most common first
    plugin_layers: list[str] = field(default_factory=list)   # names of plugin layers
    inputs: list[dict] = field(default_factory=list)         # {name, shape, dtype}
    outputs: list[dict] = field(default_factory=list)

    @property
    def n_plugin_layers(self) -> int:
        return len(self.plugin_layers)

    @property
    def has_plugin(self) -> bool:
        return bool(self.plugin_layers)

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> "NetworkSummary":
        return cls(int(d["n_layers"]), dict(d["layer_types"]), list(d.get("plugin_layers", [])),
                   list(d.get("inputs", [])), list(d.get("outputs", [])))

    def __str__(self) -> str:
        top = ", ".join(f"{k} {v}" for k, v in list(self.layer_types.items())[:8])
        more = len(self.layer_types) - 8
        return (f"{self.n_layers} layers ({self.n_plugin_layers} plugin): {top}"
                + (f", +{more} more types" if more > 0 else ""))


@dataclass
class EngineInfo:
    path: Path
    sidecar: Path
    builder: str                      # "tensorrt" | "tensorrt-rtx"
    builder_version: str
    target: str                       # tag, e.g. "sm90" or "sm80_86_89_120"
    target_ccs: tuple[str, ...]       # compute capabilities the engine runs on
    tile: int
    batch: tuple[int, int, int]
    plugin: bool                      # CADyQSelect imported as plugin layers
    precision: str                    # "fp32" | "fp16" | "fp16-flag"
    network: NetworkSummary
    model: dict                       # ModelInfo.to_dict()
    size_bytes: int
    build_time_s: float               # 0 when taken from the cache
    cached: bool
    engine_layers: list = field(default_factory=list)    # parse_layer_info: name, type, dtypes, ONNX nodes
    quantized_convs: dict = field(default_factory=dict)  # ONNX conv node -> "int8" | "float" | "missing"

    @property
    def precision_summary(self) -> dict:
        return precision_summary(self.engine_layers, self.quantized_convs)

    def to_dict(self) -> dict:
        d = asdict(self)
        d.update(path=str(self.path), sidecar=str(self.sidecar), batch=list(self.batch), target_ccs=list(self.target_ccs))
        return d

    def __str__(self) -> str:
        m = self.model
        how = "from the cache" if self.cached else f"built in {self.build_time_s:.1f} s"
        return (f"{self.path} ({self.size_bytes / 1e6:.1f} MB, {how})\n"
                f"  model    {m['backbone']} x{m['scale']} {m['method']} bits {tuple(m['bits'])}\n"
                f"  builder  {self.builder} {self.builder_version}, target {self.target} "
                f"(compute capability {', '.join(self.target_ccs)})\n"
                f"  profile  lr [N,3,{self.tile},{self.tile}], N = {':'.join(map(str, self.batch))} (min:opt:max); "
                f"precision {self.precision}; CADyQSelect {'plugin' if self.plugin else 'inlined (standard layers)'}\n"
                f"  network  {self.network}\n"
                + (f"  engine   {len(self.engine_layers)} layers; quantized convolutions: "
                   f"{self.precision_summary['int8_convs']} of {len(self.quantized_convs)} INT8\n" if self.quantized_convs else "")
                + f"  sidecar  {self.sidecar}")


# --- small helpers -----------------------------------------------------------------------------------------

def parse_batch(text) -> tuple[int, int, int]:
    """"1:16:64" -> (1, 16, 64); "16" -> (16, 16, 16); a 3-tuple passes through (validated)."""
    if isinstance(text, (tuple, list)):
        vals = [int(v) for v in text]
    else:
        try:
            vals = [int(v) for v in str(text).split(":")]
        except ValueError:
            vals = []
    if len(vals) == 1:
        vals = vals * 3
    if len(vals) != 3 or not (1 <= vals[0] <= vals[1] <= vals[2]):
        raise EngineError(f"batch profile {text!r} must be MIN:OPT:MAX with 1 <= MIN <= OPT <= MAX, e.g. 1:16:64")
    return vals[0], vals[1], vals[2]


def sidecar_path(engine_path) -> Path:
    p = Path(engine_path)
    return p.with_name(p.name + ".json")


def read_sidecar(engine_path) -> dict:
    """The JSON sidecar of an engine; EngineError when it is missing or unreadable."""
    sc = sidecar_path(engine_path)
    if not sc.is_file():
        raise EngineError(f"{sc}: the engine's sidecar is missing; it is written by `cadyq engine` next to the "
                          "engine; rebuild the engine with `cadyq engine MODEL.onnx -o ENGINE`")
    try:
        d = json.loads(sc.read_text())
    except (OSError, ValueError) as e:
        raise EngineError(f"{sc}: unreadable engine sidecar ({e}); rebuild the engine with `cadyq engine`") from e
    if not isinstance(d, dict) or d.get("format") is None:
        raise EngineError(f"{sc}: not a cadyq engine sidecar; rebuild the engine with `cadyq engine`")
    if int(d["format"]) > SIDECAR_FORMAT:
        raise EngineError(f"{sc}: written by a newer cadyq (sidecar format {d['format']}); upgrade cadyq")
    return d


def sha256_file(path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def default_cache_dir() -> Path:
    """$CADYQ_CACHE_DIR, else $XDG_CACHE_HOME/cadyq/engines, else ~/.cache/cadyq/engines."""
    if os.environ.get("CADYQ_CACHE_DIR"):
        return Path(os.environ["CADYQ_CACHE_DIR"])
    base = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache")
    return base / "cadyq" / "engines"


def _trt(module_name: str | None = None):
    from ..trt_plugins import trt_module

    return trt_module(module_name)


def _is_rtx(trt) -> bool:
    from ..trt_plugins import is_rtx

    return is_rtx(trt)


def builder_identity(trt) -> tuple[str, str]:
    """("tensorrt" | "tensorrt-rtx", version) of a bindings module."""
    return ("tensorrt-rtx" if _is_rtx(trt) else "tensorrt"), str(getattr(trt, "__version__", "unknown"))


def _major(version: str) -> int:
    try:
        return int(version.split(".")[0])
    except ValueError:
        return 0


def _cc_key(cc: str) -> str:
    major, minor = cc.split(".")
    return f"{major}{minor}"


def _norm_cc(text: str) -> str:
    t = str(text).strip().lower().removeprefix("sm_").removeprefix("sm")
    if "." in t:
        return t
    if t.isdigit() and len(t) in (2, 3):
        return f"{t[:-1]}.{t[-1]}"
    raise EngineError(f"unknown compute capability {text!r}; use e.g. sm86, 8.6 or current")


def _current_cc() -> str | None:
    try:
        import torch

        if torch.cuda.is_available():
            major, minor = torch.cuda.get_device_capability()
            return f"{major}.{minor}"
    except Exception:  # noqa: BLE001 - a broken CUDA setup is "no GPU" here
        return None
    return None


def resolve_target(trt, targets=None) -> tuple[str, tuple[str, ...], list]:
    """(tag, compute capabilities, settings) for a build. settings: the TRT-RTX ComputeCapability values to set."""
    if not _is_rtx(trt):
        if targets:
            raise EngineError("--target is a TensorRT-RTX setting; full TensorRT builds for the GPU it runs on")
        cc = _current_cc()
        if cc is None:
            raise EngineError("full TensorRT builds engines on the GPU they are for, and torch sees no CUDA GPU here; "
                              "build on the target GPU, or install TensorRT-RTX, which builds without a GPU")
        return f"sm{_cc_key(cc)}", (cc,), []
    if not targets:
        return "sm" + "_".join(_cc_key(c) for c in RTX_DEFAULT_TARGETS), RTX_DEFAULT_TARGETS, []
    ccs, settings = [], []
    for t in targets:
        if str(t).lower() == "current":
            if len(targets) != 1:
                raise EngineError("target 'current' must be the only target")
            cc = _current_cc()
            if cc is None:
                raise EngineError("target 'current' needs a CUDA GPU here; omit --target for the CPU-only AOT default "
                                  f"(compute capability {', '.join(RTX_DEFAULT_TARGETS)})")
            return f"sm{_cc_key(cc)}", (cc,), [trt.ComputeCapability.CURRENT]
        cc = _norm_cc(t)
        if cc not in _RTX_CC_NAMES:
            raise EngineError(f"TensorRT-RTX cannot target compute capability {cc}; it supports "
                              f"{', '.join(_RTX_CC_NAMES)} (not 9.0: H100/H200 need full TensorRT)")
        if cc not in ccs:
            ccs.append(cc)
            settings.append(getattr(trt.ComputeCapability, _RTX_CC_NAMES[cc]))
    return "sm" + "_".join(_cc_key(c) for c in ccs), tuple(ccs), settings


# --- the ONNX graph ----------------------------------------------------------------------------------------

@dataclass
class _Graph:
    path: Path
    data: bytes
    sha256: str
    info: dict
    model_meta: dict | None
    export: dict
    tile: int
    dynamic_batch: bool
    n_select: int
    dtype: str

    @property
    def tag(self) -> str:
        return f"{self.info['backbone']}-{self.info['method']}-x{self.info['scale']}"


def _load_graph(onnx_path) -> _Graph:
    path = Path(onnx_path)
    data = read_onnx(path, EngineError, f"; export one with `cadyq export --model CKPT -o {path.name}`")
    proto = parse_onnx(data, path, EngineError)
    meta = {p.key: p.value for p in proto.metadata_props}
    if META_INFO not in meta:
        raise EngineError(f"{path}: no cadyq metadata (not exported by cadyq); export it with `cadyq export`")
    try:
        info = json.loads(meta[META_INFO])
        from ..quant import ModelInfo

        ModelInfo.from_dict(info)
    except Exception as e:  # noqa: BLE001
        raise EngineError(f"{path}: unreadable cadyq metadata ({e}); re-export with `cadyq export`") from e
    export = json.loads(meta.get(META_EXPORT, "{}"))
    model_meta = json.loads(meta[META_MODEL]) if META_MODEL in meta else None
    ins = [i for i in proto.graph.input if i.name not in {t.name for t in proto.graph.initializer}]
    outs = [o.name for o in proto.graph.output]
    if [i.name for i in ins] != [INPUT] or outs[:2] != list(OUTPUTS):
        raise EngineError(f"{path}: expected input {INPUT!r} and outputs {list(OUTPUTS)}, got "
                          f"{[i.name for i in ins]} -> {outs}; re-export with `cadyq export`")
    dims = ins[0].type.tensor_type.shape.dim
    if len(dims) != 4 or not dims[2].dim_value or dims[2].dim_value != dims[3].dim_value:
        raise EngineError(f"{path}: input {INPUT!r} must be [N,3,T,T] with a fixed tile T; re-export with --tile")
    n_select = sum(1 for n in proto.graph.node if n.domain == cadyq_op.DOMAIN and n.op_type == cadyq_op.OP_TYPE)
    return _Graph(path, data, hashlib.sha256(data).hexdigest(), info, model_meta, export, int(dims[2].dim_value),
                  not dims[0].dim_value, n_select, str(export.get("dtype", "fp32")))


def _inlined(data: bytes) -> bytes:
    """The graph with its model-local functions inlined (standard ops only)."""
    from onnx import inliner

    return inliner.inline_local_functions(onnx.load_from_string(data)).SerializeToString()


def engine_name(graph_tag: str, graph_sha: str, builder: str, version: str, target: str, tile: int,
                batch: tuple[int, int, int], precision: str, plugin: bool) -> str:
    return (f"{graph_tag}-{graph_sha[:16]}-{builder}-{version}-{target}-t{tile}-b{batch[0]}_{batch[1]}_{batch[2]}"
            f"-{precision}{'-plugin' if plugin else ''}.engine")


# --- parse and build (this process, or a child for TensorRT-RTX + plugin) ----------------------------------

def _make_logger(trt):
    class _Logger(trt.ILogger):
        """Keeps warnings and errors for the error messages (drops the known noise), and the engine's
        layer information (the verbose message with one `Name: ..., LayerType: ...` line per layer)."""

        def __init__(self):
            trt.ILogger.__init__(self)
            self.messages: list[str] = []
            self.layer_info: str | None = None

        def log(self, severity, msg):
            if "LayerType:" in msg:
                self.layer_info = msg
            elif severity <= trt.ILogger.Severity.WARNING and not any(n in msg for n in _NOISE):
                self.messages.append(f"[{severity.name}] {msg}")

    return _Logger()


def parse_layer_info(text: str | None) -> list[dict]:
    """The engine layers from the builder's layer information (ProfilingVerbosity.DETAILED): name, type,
    input / constant (weight) / output data types, and the ONNX nodes each layer implements."""
    import re

    layers = []
    for line in (text or "").splitlines():
        m = re.match(r"\s*Name: (.*?), LayerType: (\w+), (.*)", line)
        if not m:
            continue
        rest = m.group(3)
        ins, _, rest2 = rest.partition("Constants:")
        consts, _, outs = rest2.partition("Outputs:")
        outs, _, meta = outs.partition("Metadata:")
        types = lambda part: re.findall(r"Datatype: (\w+)", part)  # noqa: E731
        layers.append({"name": m.group(1), "type": m.group(2), "inputs": types(ins), "weights": types(consts),
                       "outputs": types(outs), "onnx": re.findall(r"\[ONNX Layer: (.*?)\]", meta)})
    return layers


def precision_summary(layers: list[dict], qconvs: dict) -> dict:
    """Engine layers by type, and the quantized convolutions by precision."""
    types = Counter(lay["type"] for lay in layers)
    conv = Counter(qconvs.values())
    return {"engine_layers": len(layers), "layer_types": dict(types.most_common()), "quantized_convs": len(qconvs),
            "int8_convs": conv.get("int8", 0), "float_quantized_convs": conv.get("float", 0) + conv.get("missing", 0)}


def quantized_conv_nodes(data: bytes) -> list[str]:
    """Names of the graph's Conv nodes that take DequantizeLinear of int8 on both the input and the weight:
    the quantized convolutions of the int8 graph form."""
    proto = onnx.load_from_string(data)
    producer = {o: n for n in proto.graph.node for o in n.output}
    names = []
    for n in proto.graph.node:
        if n.op_type != "Conv" or len(n.input) < 2:
            continue
        x, w = producer.get(n.input[0]), producer.get(n.input[1])
        if x is not None and w is not None and x.op_type == w.op_type == "DequantizeLinear":
            names.append(n.name)
    return names


def conv_precisions(layers: list[dict], conv_nodes: list[str]) -> dict[str, str]:
    """ONNX conv node -> "int8" when the engine runs it as a convolution layer with Int8 input and Int8
    weights, "float" when as a float one, "missing" when no engine layer names it."""
    out = {}
    for node in conv_nodes:
        layer = next((lay for lay in layers if node in lay["onnx"] and lay["type"] in ("correlation", "convolution",
                                                                                      "CaskConvolution", "Convolution")),
                     None)
        if layer is None:
            out[node] = "missing"
        else:
            out[node] = "int8" if layer["inputs"][:1] == ["Int8"] and layer["weights"][:1] == ["Int8"] else "float"
    return out


def _summary(trt, network) -> NetworkSummary:
    layers = [network.get_layer(i) for i in range(network.num_layers)]
    types = Counter(layer.type.name for layer in layers)
    plugins = [layer.name for layer in layers if layer.type.name in _PLUGIN_LAYER_TYPES]

    def io(t):
        return {"name": t.name, "shape": [int(d) for d in t.shape], "dtype": t.dtype.name}

    return NetworkSummary(len(layers), dict(types.most_common()), plugins,
                          [io(network.get_input(i)) for i in range(network.num_inputs)],
                          [io(network.get_output(i)) for i in range(network.num_outputs)])


def _creator_registered(trt) -> bool:
    return any(c.name == cadyq_op.OP_TYPE and c.plugin_namespace == cadyq_op.PLUGIN_NAMESPACE
               for c in trt.get_plugin_registry().all_creators)


def _run(trt, job: dict) -> dict:
    """Parse job["onnx"] and, when job["plan"] is set, build and write the plan there. In this process."""
    name, version = builder_identity(trt)
    rtx, major = _is_rtx(trt), _major(version)
    logger = _make_logger(trt)
    data = Path(job["onnx"]).read_bytes()
    if job["plugin"]:
        from ..trt_plugins import register

        register(trt=trt, force=rtx)          # on TensorRT-RTX only after the library shim (module docstring)
    elif _creator_registered(trt):
        data = _inlined(data)                 # a registered creator would win over the function body
    weak_fp16 = job.get("precision") == "fp16-flag"
    builder = trt.Builder(logger)
    flags = 0
    strongly = getattr(trt.NetworkDefinitionCreationFlag, "STRONGLY_TYPED", None)
    if strongly is not None and not weak_fp16 and not (not rtx and major >= 11):
        flags |= 1 << int(strongly)
    network = builder.create_network(flags)
    parser = trt.OnnxParser(network, logger)
    if not parser.parse(data, str(job["onnx"])):
        errs = []
        for i in range(parser.num_errors):
            e = parser.get_error(i)
            errs.append(f"node {e.node_name() or e.node()} ({e.node_operator() or '?'}): {e.desc()}")
        raise EngineError(f"{name} {version} could not parse {job['onnx']}: " + "; ".join(errs or logger.messages[-5:]))
    summary = _summary(trt, network)
    result = {"summary": summary.to_dict(), "builder": name, "version": version, "build_time_s": 0.0,
              "messages": logger.messages[-50:]}
    if job.get("plan") is None:
        return result
    config = builder.create_builder_config()
    if hasattr(trt, "ProfilingVerbosity"):  # the engine layer information (precision of each layer) in the log
        config.profiling_verbosity = trt.ProfilingVerbosity.DETAILED
    if job.get("workspace_mb"):
        config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, int(job["workspace_mb"]) << 20)
    if weak_fp16:
        _fp16_convs_only(trt, network, config)
    if rtx and job.get("targets"):
        settings = resolve_target(trt, job["targets"])[2]
        config.num_compute_capabilities = len(settings)
        for i, cc in enumerate(settings):
            config.set_compute_capability(cc, i)
    profile = builder.create_optimization_profile()
    t = int(job["tile"])
    lo, opt, hi = job["batch"]
    profile.set_shape(INPUT, (lo, 3, t, t), (opt, 3, t, t), (hi, 3, t, t))
    config.add_optimization_profile(profile)
    t0 = time.perf_counter()
    plan = builder.build_serialized_network(network, config)
    result["build_time_s"] = time.perf_counter() - t0
    if plan is None:
        errs = [m for m in logger.messages if m.startswith(("[ERROR]", "[INTERNAL_ERROR]"))] or logger.messages[-5:]
        hint = ""
        if job.get("workspace_mb") and any("OutOfMemory" in m for m in errs):
            hint = (f" (the workspace limit is {job['workspace_mb']} MB, and {name} counts the activation memory of the "
                    f"largest batch, {hi} tiles of {t}x{t}, against it: raise --workspace, or lower the max batch)")
        raise EngineError(f"{name} {version} could not build an engine from {job['onnx']}: " + " | ".join(errs[-8:]) + hint)
    Path(job["plan"]).write_bytes(memoryview(plan))
    result["messages"] = logger.messages[-50:]
    result["engine_layers"] = parse_layer_info(logger.layer_info)
    result["quantized_convs"] = conv_precisions(result["engine_layers"], quantized_conv_nodes(data))
    return result


def _fp16_convs_only(trt, network, config) -> None:
    """TensorRT 10 weak typing (fp32 graph, --fp16): FP16 for the convolutions, float32 kept for every other
    float layer, as `cadyq export --dtype fp16` does: the CADyQSelect statistics (fp16 sums of squares over a
    tile overflow), logits and fake quantization (rounding boundaries need more than fp16's 11 bits)."""
    config.set_flag(trt.BuilderFlag.FP16)
    prefer = getattr(trt.BuilderFlag, "PREFER_PRECISION_CONSTRAINTS", None)
    if prefer is None:
        return
    config.set_flag(prefer)
    floats = (trt.DataType.FLOAT, trt.DataType.HALF)
    for i in range(network.num_layers):
        layer = network.get_layer(i)
        if layer.type.name in ("CONVOLUTION", "DECONVOLUTION", "CONSTANT") or layer.num_outputs == 0:
            continue
        outs = [layer.get_output(j) for j in range(layer.num_outputs)]
        if all(o.dtype in floats for o in outs):
            layer.precision = trt.DataType.FLOAT
            for j in range(layer.num_outputs):
                layer.set_output_type(j, trt.DataType.FLOAT)


def rtx_library_shim(trt, folder) -> Path | None:
    """Put a `libtensorrt_rtx.so` symlink to the wheel's `libtensorrt_rtx.so.1` in `folder` (None if not found)."""
    spec = importlib.util.find_spec("tensorrt_rtx_libs")
    dirs = [Path(p) for p in (spec.submodule_search_locations or [])] if spec else []
    dirs.append(Path(trt.__file__).parent)
    for d in dirs:
        if (d / "libtensorrt_rtx.so").exists():
            return None                           # already resolvable next to the parser (its RPATH is $ORIGIN)
        libs = sorted(d.glob("libtensorrt_rtx.so.*"))
        if libs:
            link = Path(folder) / "libtensorrt_rtx.so"
            link.symlink_to(libs[0])
            return link
    return None


def _run_child(trt, job: dict) -> dict:
    """Run `_run` in a child process (TensorRT-RTX + Python plugin: see the module docstring)."""
    with tempfile.TemporaryDirectory(prefix="cadyq-trt-") as tmp:
        shim = rtx_library_shim(trt, tmp)
        env = dict(os.environ)
        pkg_root = str(Path(__file__).resolve().parents[2])      # cadyq importable in the child, installed or not
        env["PYTHONPATH"] = os.pathsep.join(p for p in (pkg_root, env.get("PYTHONPATH")) if p)
        if shim is not None:
            env["LD_LIBRARY_PATH"] = os.pathsep.join(p for p in (str(shim.parent), env.get("LD_LIBRARY_PATH")) if p)
        job_path, out_path = Path(tmp) / "job.json", Path(tmp) / "result.json"
        job_path.write_text(json.dumps({**job, "module": trt.__name__, "result": str(out_path)}))
        proc = subprocess.run([sys.executable, "-m", "cadyq.export.engine", "--child", str(job_path)],
                              env=env, capture_output=True, text=True)
        res = json.loads(out_path.read_text()) if out_path.is_file() else None
    if res is not None and res.get("error"):
        raise EngineError(res["error"])
    if proc.returncode != 0 or res is None:
        tail = (proc.stderr or proc.stdout or "").strip().splitlines()[-12:]
        how = f"was killed by signal {-proc.returncode}" if proc.returncode < 0 else f"exited with {proc.returncode}"
        hint = ""
        if proc.returncode == -6 and job["plugin"] and _is_rtx(trt):
            hint = (" [TensorRT-RTX's ONNX parser aborts when it cannot dlopen the unversioned libtensorrt_rtx.so while "
                    "importing a plugin node; put a libtensorrt_rtx.so symlink to the wheel's libtensorrt_rtx.so.1 on "
                    "LD_LIBRARY_PATH, or build without --plugin]")
        raise EngineError(f"the {builder_identity(trt)[0]} build process for {job['onnx']} {how} "
                          f"(plugin={job['plugin']}): " + " | ".join(tail) + hint)
    return res


def _child_main(job_path: str) -> int:
    job = json.loads(Path(job_path).read_text())
    out = Path(job["result"])
    try:
        trt = _trt(job["module"])
        out.write_text(json.dumps(_run(trt, job)))
    except EngineError as e:
        out.write_text(json.dumps({"error": str(e)}))
        return 1
    return 0


def _execute(trt, job: dict) -> dict:
    if job["plugin"] and _is_rtx(trt):
        return _run_child(trt, job)
    return _run(trt, job)


# --- public API --------------------------------------------------------------------------------------------

def inspect_network(onnx_path, plugin: bool = False, *, module: str | None = None) -> NetworkSummary:
    """Parse `onnx_path` as the builder would (CADyQSelect plugin registered when `plugin`), build nothing;
    returns the layer types the builder saw (plugin layers present or absent)."""
    graph = _load_graph(onnx_path)
    trt = _trt(module)
    res = _execute(trt, {"onnx": str(graph.path), "plugin": bool(plugin), "plan": None})
    return NetworkSummary.from_dict(res["summary"])


def _precision(graph: _Graph, fp16: bool, trt) -> str:
    name, version = builder_identity(trt)
    if graph.dtype == "fp16":
        return "fp16"
    if not fp16:
        return "fp32"
    if name == "tensorrt" and _major(version) < 11:
        return "fp16-flag"
    raise EngineError(f"{name} {version} builds strongly typed networks only: the precision is the ONNX graph's, "
                      f"and {graph.path} is fp32. Export an fp16 graph (`cadyq export --dtype fp16 ...`) and build "
                      "that, or drop --fp16")


def _sidecar_ok(engine: Path, expect: dict) -> bool:
    try:
        sc = read_sidecar(engine)
    except EngineError:
        return False
    keys = ("onnx_sha256", "builder", "target", "tile", "batch", "plugin", "precision")
    return (engine.is_file() and all(sc.get(k) == expect.get(k) for k in keys)
            and sc.get("engine_sha256") == sha256_file(engine))


def build_engine(onnx_path, out_path=None, batch=(1, 16, 64), plugin: bool = False, fp16: bool = False,
                 workspace_mb: int | None = DEFAULT_WORKSPACE_MB, cache_dir=None, *, targets=None, rebuild: bool = False,
                 module: str | None = None) -> EngineInfo:
    """Build (or take from the cache) a TensorRT engine for a cadyq ONNX graph; write it and its sidecar.

    out_path: the engine file; None: the cache's file (`cache_dir`, default `default_cache_dir()`).
    With both, the engine is built into (or found in) the cache and copied to out_path.
    batch: (min, opt, max) tiles per run, or "MIN:OPT:MAX". targets: TensorRT-RTX compute capabilities
    (e.g. ["sm86"]); default: its CPU-only AOT set. Raises EngineError with what to do."""
    from ..checkpoint import atomic_write

    graph = _load_graph(onnx_path)
    batch = parse_batch(batch)
    if not graph.dynamic_batch and batch != (1, 1, 1):
        raise EngineError(f"{graph.path} has a fixed batch of 1 (exported with dynamic_batch=False); use --batch 1:1:1 "
                          "or re-export with a dynamic batch")
    if workspace_mb is not None and workspace_mb < 1:
        raise EngineError("--workspace must be at least 1 MB")
    trt = _trt(module)
    name, version = builder_identity(trt)
    target, ccs, _ = resolve_target(trt, targets)
    precision = _precision(graph, fp16, trt)
    use_plugin = bool(plugin) and graph.n_select > 0
    fname = engine_name(graph.tag, graph.sha256, name, version, target, graph.tile, batch, precision, use_plugin)
    if cache_dir is None and out_path is None:
        cache_dir = default_cache_dir()
    built_path = Path(cache_dir) / fname if cache_dir is not None else Path(out_path)
    expect = {"onnx_sha256": graph.sha256, "builder": {"name": name, "version": version},
              "target": {"tag": target, "ccs": list(ccs)}, "tile": graph.tile, "batch": list(batch),
              "plugin": use_plugin, "precision": precision}
    cached = cache_dir is not None and not rebuild and _sidecar_ok(built_path, expect)
    if cached:
        sc = read_sidecar(built_path)
        network, build_time = NetworkSummary.from_dict(sc["network"]), 0.0
        engine_layers, qconvs = sc.get("engine_layers", []), sc.get("quantized_convs", {})
    else:
        with _build_dir(built_path) as tmp:
            plan = Path(tmp) / "plan"
            job = {"onnx": str(graph.path), "plugin": use_plugin, "plan": str(plan), "batch": list(batch),
                   "tile": graph.tile, "workspace_mb": workspace_mb, "precision": precision,
                   "targets": list(targets) if targets else None}
            res = _execute(trt, job)
            if use_plugin and len(res["summary"]["plugin_layers"]) != graph.n_select:
                raise EngineError(f"{name} {version} imported {len(res['summary']['plugin_layers'])} of "
                                  f"{graph.n_select} CADyQSelect nodes as plugin layers")
            atomic_write(built_path, lambda t: shutil.copyfile(plan, t))
        network, build_time = NetworkSummary.from_dict(res["summary"]), float(res["build_time_s"])
        engine_layers, qconvs = res.get("engine_layers", []), res.get("quantized_convs", {})
        sc = {
            "format": SIDECAR_FORMAT, "engine": built_path.name, "engine_sha256": sha256_file(built_path),
            "engine_bytes": built_path.stat().st_size, **expect,
            "model": graph.info, "bits": list(graph.info["bits"]), "scale": int(graph.info["scale"]),
            "n_layers": sum(c["act_bits"] is None for c in graph.info["layers"]),
            "checkpoint": graph.model_meta, "export": graph.export,
            "input": {"name": INPUT, "shape": ["N", 3, graph.tile, graph.tile], "dtype": "float32"},
            "outputs": [{"name": OUTPUTS[0], "shape": ["N", 3, graph.tile * int(graph.info["scale"]),
                                                      graph.tile * int(graph.info["scale"])], "dtype": "float32"},
                        {"name": OUTPUTS[1], "shape": ["N", sum(c["act_bits"] is None for c in graph.info["layers"])],
                         "dtype": "float32"}],
            "plugin_namespace": cadyq_op.PLUGIN_NAMESPACE if use_plugin else None,
            "plugin_version": ((str(cadyq_op.INT_VERSION) if graph.export.get("form") == "int8" else cadyq_op.PLUGIN_VERSION)
                               if use_plugin else None),
            "network": network.to_dict(), "workspace_mb": workspace_mb,
            "precisions": precision_summary(engine_layers, qconvs), "quantized_convs": qconvs,
            "engine_layers": engine_layers,
            "onnx": str(graph.path.resolve()), "build_time_s": round(build_time, 3),
            "cadyq_version": _cadyq_version(), "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        }
        _write_sidecar(built_path, sc)
    final = built_path
    if out_path is not None and Path(out_path).resolve() != built_path.resolve():
        final = Path(out_path)
        atomic_write(final, lambda t: shutil.copyfile(built_path, t))
        _write_sidecar(final, {**sc, "engine": final.name})
    info = EngineInfo(final, sidecar_path(final), name, version, target, tuple(ccs), graph.tile, batch, use_plugin,
                      precision, network, graph.info, final.stat().st_size, build_time, cached, engine_layers, qconvs)
    return info


@contextlib.contextmanager
def _build_dir(built_path: Path):
    """A temporary folder beside the engine to build into; OutputError when that folder cannot be made."""
    from ..errors import OutputError
    from ..outputs import ensure_folder, reason

    ensure_folder(built_path.parent)
    try:
        tmp = tempfile.TemporaryDirectory(prefix=".cadyq-engine-", dir=built_path.parent)
    except OSError as e:
        raise OutputError(f"{built_path}: cannot write in {built_path.parent} ({reason(e)})") from e
    with tmp as path:
        yield path


def build_routed(manifest, out_dir=None, batch=(1, 16, 64), **kw) -> tuple[Path, dict[int, EngineInfo]]:
    """One engine per bit-width of a tile-routed export (cadyq.export.routed), built and cached together, and
    `routed-engines.json` beside them (the router stays an ONNX graph, run by ONNX Runtime). Returns (its path,
    {bits: EngineInfo})."""
    from ..checkpoint import atomic_write
    from .routed import read_manifest

    m = read_manifest(manifest)
    src = Path(m["_dir"])
    out = Path(out_dir) if out_dir else src
    out.mkdir(parents=True, exist_ok=True)
    infos = {}
    for b, f in m.get("graphs_tensorrt", m["graphs"]).items():  # the symmetric int8 weights TensorRT takes
        infos[int(b)] = build_engine(src / f, out / (Path(f).stem.removesuffix("-trt") + ".engine"), batch=batch, **kw)
    if out.resolve() != src.resolve():
        shutil.copyfile(src / m["router"], out / m["router"])
    em = {k: v for k, v in m.items() if k != "_dir"}
    em["graphs"] = {str(b): i.path.name for b, i in infos.items()}
    em["engines"] = {str(b): {"int8_convs": i.precision_summary["int8_convs"],
                              "quantized_convs": i.precision_summary["quantized_convs"]} for b, i in infos.items()}
    path = out / "routed-engines.json"
    atomic_write(path, lambda tmp: Path(tmp).write_text(json.dumps(em, indent=2)))
    return path, infos


def _write_sidecar(engine: Path, sc: dict) -> None:
    from ..checkpoint import atomic_write

    atomic_write(sidecar_path(engine), lambda t: Path(t).write_text(json.dumps(sc, indent=2)))


def _cadyq_version() -> str:
    from .. import __version__

    return __version__


if __name__ == "__main__":
    if len(sys.argv) == 3 and sys.argv[1] == "--child":
        sys.exit(_child_main(sys.argv[2]))
    sys.exit("usage: python -m cadyq.export.engine --child JOB.json (internal; use `cadyq engine`)")
