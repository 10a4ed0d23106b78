"""ONNX export, graph checks and TensorRT engines (cadyq export | check | engine).

    cadyq export --model M -o model.onnx [--tile 96] [--form int8|fakequant] [--dtype fp32|fp16] [--opset 17]
    cadyq check model.onnx [--against CKPT] [--tiles 16] [--image PATH]
    cadyq engine model.onnx -o model.engine [--batch 1:16:64] [--plugin] [--fp16] [--workspace MB] [--cache-dir DIR]
    cadyq engine --make --backbone edsr --scale 4 --method cadyq [--model CKPT] --tile 96 --batch 1:16:64 --out-dir build
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from ..errors import CadyqError, EngineError
from ..outputs import check_output_file

from ..methods import METHODS
HELP = {"export": "export a checkpoint to ONNX (CADyQSelect op, INT8 weights)",
        "check": "check an ONNX graph or engine; compare ONNX Runtime with torch",
        "engine": "build a TensorRT / TensorRT-RTX engine (cached, with a JSON sidecar)"}


def _warn(msg: str) -> None:
    sys.stdout.flush()
    print(f"warning: {msg}", file=sys.stderr)


def _foreign_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--backbone", help="backbone of a foreign checkpoint when its keys cannot tell")
    p.add_argument("--scale", type=int, help="scale of a foreign checkpoint when its keys cannot tell")
    p.add_argument("--method", choices=METHODS, help="method of a foreign checkpoint")


def _load_model(name, backbone=None, scale=None, method=None):
    from ..checkpoint import load_model

    return load_model(name, backbone=backbone, scale=scale, method=method)


def _mb(path: Path) -> str:
    return f"{path.stat().st_size / 1e6:.1f} MB"


def _describe_onnx(path: Path) -> list[str]:
    from . import op
    from .onnx_file import load_onnx

    proto = load_onnx(path)

    def shape(vi):
        return f"{vi.name}[{','.join(d.dim_param or str(d.dim_value) for d in vi.type.tensor_type.shape.dim)}]"

    n_sel = sum(1 for n in proto.graph.node if n.domain == op.DOMAIN and n.op_type == op.OP_TYPE)
    meta = {p.key: p.value for p in proto.metadata_props}
    exp = json.loads(meta.get("cadyq.export", "{}"))
    info = json.loads(meta.get("cadyq", "{}"))
    opset = next((o.version for o in proto.opset_import if o.domain in ("", "ai.onnx")), None)
    return [f"wrote {path} ({_mb(path)})",
            f"  model    {info.get('backbone')} x{info.get('scale')} {info.get('method')} bits {tuple(info.get('bits', ()))}",
            f"  inputs   {', '.join(shape(v) for v in proto.graph.input)}",
            f"  outputs  {', '.join(shape(v) for v in proto.graph.output)}",
            f"  graph    {len(proto.graph.node)} nodes, {n_sel} CADyQSelect nodes "
            f"(model-local function{'' if proto.functions else ' MISSING'}), opset {opset}, {exp.get('dtype', 'fp32')}",
            f"  form     {exp.get('form', 'fakequant')}" + _FORM_NOTES.get(exp.get("form"), "")]


_FORM_NOTES = {
    "int8": ": int8 values on each layer's 8-bit grid and its scale feed INT8 convolutions (4- and 6-bit tiles are "
            "int8 values; for TensorRT; for ONNX Runtime export --form ort)",
    "ort": ": the integers times their scale feed float convolutions with fused bias and activation "
           "(ONNX Runtime)",
}


# ---- export ---------------------------------------------------------------------------------------------

def add_export_arguments(p: argparse.ArgumentParser) -> None:
    p.description = "Export a checkpoint to ONNX: input lr [N,3,T,T], outputs sr and bits, CADyQSelect nodes."
    p.add_argument("--model", "-m", help="checkpoint (.safetensors, or a foreign .pt/.pth) or a zoo name "
                                         "(default: the shipped default model)")
    p.add_argument("-o", "--output", help="the .onnx file to write")
    p.add_argument("--tile", type=int, default=96, help="LR tile size of the graph input (default 96)")
    p.add_argument("--dtype", choices=("fp32", "fp16"), default="fp32", help="compute dtype of the graph (default fp32)")
    p.add_argument("--form", choices=("int8", "ort", "fakequant"), default=None,
                   help="int8 (default for fp32 graphs): CADyQSelect gives int8 values and their scale that feed "
                        "INT8 convolutions (TensorRT); ort: the same integers times their scale feed float "
                        "convolutions with fused bias and activation (ONNX Runtime, faster there); fakequant: float "
                        "convolutions of fake-quantized values (the default with --dtype fp16)")
    p.add_argument("--opset", type=int, default=17, help="ONNX opset (default 17)")
    p.add_argument("--static-batch", action="store_true", help="batch fixed to 1 instead of dynamic")
    p.add_argument("--format", choices=("onnx", "aoti"), default=None,
                   help="onnx (default), or aoti: an AOTInductor package (.pt2, the default for -o *.pt2) for the C++ "
                        "library and cadyq-upscale, with a dynamic batch and tile size")
    p.add_argument("--device", default="cpu", help="aoti: the device the package is compiled for (cpu, cuda)")
    r = p.add_argument_group("tile-routed graphs (gdq, cadyq --mode tile): -o names a folder")
    r.add_argument("--routed", action="store_true", help="a router graph and one static INT8 graph per bit-width "
                                                        "(QLinearConv in ONNX Runtime, INT8 engines without a plugin)")
    r.add_argument("--calib", metavar="DIR", help="photos whose LR tiles set the static graphs' conv output scales "
                                                  "(required with --routed)")
    r.add_argument("--calib-tiles", type=int, default=64, help="calibration tiles at most (default 64)")
    t = p.add_argument_group("a Triton Inference Server model repository (instead of -o)")
    t.add_argument("--triton-repo", metavar="DIR", help="write NAME/ (Python backend: cadyq's runtime, any tile size), "
                                                       "NAME-onnx/ (ONNX Runtime backend: the ONNX export at --tile) and, "
                                                       "with --plan, NAME-trt/ (TensorRT backend), each with config.pbtxt")
    t.add_argument("--plan", metavar="ENGINE", help="a TensorRT engine built by full TensorRT (`cadyq engine`) to add")
    from ..serve.cli import add_repository_arguments

    add_repository_arguments(p)
    _foreign_args(p)


def run_export(args) -> int:
    from .onnx_export import export_onnx

    model = _load_model(args.model, args.backbone, args.scale, args.method)
    if args.triton_repo:
        return _export_triton_repo(args, model)
    if not args.output:
        raise CadyqError("name the file to write with -o (or a model repository with --triton-repo DIR)")
    if (args.format or ("aoti" if Path(args.output).suffix == ".pt2" else "onnx")) == "aoti":
        from .aoti import run_export_aoti

        return run_export_aoti(args, model)
    if args.routed:
        return _export_routed(args, model)
    if args.calib:
        raise CadyqError("--calib goes with --routed (the per-tile graphs need no calibration)")
    form = args.form or ("fakequant" if args.dtype == "fp16" else "int8")
    path = export_onnx(model, args.output, tile=args.tile, dtype=args.dtype, opset=args.opset,
                       dynamic_batch=not args.static_batch, form=form)
    print("\n".join(_describe_onnx(Path(path))))
    return 0


def _export_triton_repo(args, model) -> int:
    from .. import zoo
    from ..serve.cli import serve_config
    from ..serve.repository import model_name, plan_config, write_onnx_model, write_plan_model, write_python_model

    if args.output or args.routed or args.format == "aoti":
        raise CadyqError("--triton-repo writes a model repository: leave out -o, --routed and --format")
    cfg = serve_config(args)
    if args.plan:
        plan_config(args.plan)  # refused before anything is written
    name = args.name or model_name(str(args.model) if args.model else zoo.default_name())
    repo = Path(args.triton_repo)
    folders = [write_python_model(repo, name, model, cfg, overwrite=args.overwrite),
               write_onnx_model(repo, f"{name}-onnx", model, tile=args.tile, max_batch=args.max_batch,
                                instances=args.instances, overwrite=args.overwrite)]
    if args.plan:
        folders.append(write_plan_model(repo, f"{name}-trt", args.plan, overwrite=args.overwrite))
    for f in folders:
        print(f"{f}/  ({', '.join(sorted(p.name for p in (f / '1').iterdir()))}, config.pbtxt)")
    print(f"serve with: tritonserver --model-repository {repo}  (the Python model needs cadyq installed in the "
          f"server's Python; `cadyq serve` runs the bundled server)")
    return 0


def _export_routed(args, model) -> int:
    import torch

    from ..calib import photo_tiles
    from .routed import export_routed, routing_candidates

    if not args.calib:
        raise CadyqError("--routed needs --calib DIR: photos whose LR tiles calibrate the static graphs' output scales")
    if args.form or args.dtype != "fp32" or args.static_batch:
        raise CadyqError("--routed writes fp32 static INT8 graphs with a dynamic batch: leave out --form, --dtype "
                         "and --static-batch")
    routing_candidates(model)  # a clear error for a model whose bits differ between layers, before any work
    out = Path(args.output)
    if out.suffix == ".onnx" or (out.exists() and not out.is_dir()):
        raise CadyqError(f"-o {out}: --routed writes a folder of graphs; name a folder")
    _refuse_existing_manifest(out / "routed.json", args.overwrite)
    batches, _ = photo_tiles(args.calib, model.config.scale, args.tile, max_tiles=max(args.calib_tiles, 1))
    calib = torch.cat(list(batches))
    manifest = export_routed(model, out, tile=args.tile, calib=calib, opset=args.opset)
    m = json.loads(manifest.read_text())
    print(f"wrote {manifest}: router {m['router']}, static INT8 graphs for bits "
          f"{', '.join(m['graphs'])} ({m['calibration_tiles']} calibration tiles from {args.calib})")
    return 0


def _refuse_existing_manifest(manifest: Path, overwrite: bool) -> None:
    """A folder of graphs or engines is refused, like any output file, where its manifest exists."""
    from ..errors import OutputError

    if manifest.exists() and not overwrite:
        raise OutputError(f"{manifest.parent}: holds a routed export already ({manifest.name}); pass --overwrite to "
                          "replace it, or choose another -o")


# ---- check ----------------------------------------------------------------------------------------------

def add_check_arguments(p: argparse.ArgumentParser) -> None:
    p.description = ("Check an exported graph (ONNX checker, shapes, CADyQSelect, metadata); with --against, compare "
                     "ONNX Runtime with torch on real photo tiles (exit 1 on a mismatch).")
    p.add_argument("path", metavar="MODEL.onnx", help="an exported graph (or an .engine: its sidecar is checked)")
    p.add_argument("--against", metavar="CKPT", help="also run the graph in ONNX Runtime and this checkpoint (or zoo "
                                                     "name) in torch on real photo tiles, and compare")
    p.add_argument("--tiles", type=int, default=16, help="number of photo tiles for --against (default 16)")
    p.add_argument("--image", help="photo to cut the tiles from (default: scikit-image's astronaut)")
    p.add_argument("--json", help="write the report as JSON")
    _foreign_args(p)


def photo_tiles(image, n: int, tile: int):
    """n tiles of tile x tile from a photo, spread over it on a grid, float32 [n,3,t,t] in [0,255]."""
    import numpy as np
    import torch

    if image is None:
        from skimage import data

        rgb = data.astronaut()
    else:
        from ..data.io import read_image

        rgb = read_image(image).rgb
    rgb = rgb.astype(np.float32) / (257.0 if rgb.dtype == np.uint16 else 1.0)
    h, w = rgb.shape[:2]
    if h < tile or w < tile:
        raise CadyqError(f"the image is {w}x{h}, smaller than the graph's {tile}x{tile} tiles; pick a larger image")
    if n < 1:
        raise CadyqError("--tiles must be at least 1")
    cols = int(np.ceil(np.sqrt(n * w / h)))
    rows = int(np.ceil(n / cols))
    ys = np.linspace(0, h - tile, rows).round().astype(int)
    xs = np.linspace(0, w - tile, cols).round().astype(int)
    pos = [(y, x) for y in ys for x in xs][:n]
    t = torch.from_numpy(np.ascontiguousarray(rgb)).permute(2, 0, 1)
    return torch.stack([t[:, y:y + tile, x:x + tile] for y, x in pos]).contiguous()


def _check_engine(path: Path, args) -> int:
    from ..export.engine import read_sidecar, sha256_file
    from ..runtime.tensorrt_backend import check_sidecar

    sc = read_sidecar(path)
    info = check_sidecar(sc, path)
    ok = sha256_file(path) == sc["engine_sha256"]
    net = sc.get("network", {})
    print(f"{path}: {'OK' if ok else 'FAILED: the engine file does not match its sidecar (corrupt or replaced)'}\n"
          f"  model    {info.backbone} x{info.scale} {info.method} bits {info.bits}\n"
          f"  builder  {sc['builder']['name']} {sc['builder']['version']}, target {sc['target']['tag']}\n"
          f"  profile  tile {sc['tile']}, batch {':'.join(map(str, sc['batch']))}, {sc['precision']}, "
          f"plugin {'yes' if sc['plugin'] else 'no'}; {net.get('n_layers')} layers")
    if args.json:
        _write_json(args.json, {"path": str(path), "ok": ok, "sidecar": sc})
    return 0 if ok else 1


def run_check(args) -> int:
    from .check import check_graph, compare

    path = Path(args.path)
    if path.suffix in (".engine", ".plan"):
        return _check_engine(path, args)
    rep = check_graph(path)
    print(rep)
    out = {"graph": {k: v for k, v in vars(rep).items()}}
    rc = 0 if rep.ok else 1
    if args.against:
        if not rep.ok:
            _warn("the graph check failed; comparing anyway")
        model = _load_model(args.against, args.backbone, args.scale, args.method)
        tile = _graph_tile(path)
        tiles = photo_tiles(args.image, args.tiles, tile)
        report = compare(path, model, tiles)
        print(report)
        out["compare"] = report.to_dict()
        rc = rc or (0 if report.passed else 1)
    if args.json:
        _write_json(args.json, out)
    return rc


def _graph_tile(path: Path) -> int:
    from .onnx_file import load_onnx

    proto = load_onnx(path)
    dims = proto.graph.input[0].type.tensor_type.shape.dim
    if len(dims) != 4 or not dims[2].dim_value:
        raise CadyqError(f"{path}: the input is not [N,3,T,T] with a fixed tile; re-export with `cadyq export --tile`")
    return int(dims[2].dim_value)


def _write_json(path, obj) -> None:
    from ..checkpoint import atomic_write

    atomic_write(path, lambda tmp: Path(tmp).write_text(json.dumps(obj, indent=2, default=str)))


# ---- engine ---------------------------------------------------------------------------------------------

def add_engine_arguments(p: argparse.ArgumentParser) -> None:
    from .engine import DEFAULT_WORKSPACE_MB

    p.description = ("Build a TensorRT engine (full TensorRT when installed, else TensorRT-RTX, which builds without "
                     "a GPU) from an exported graph, or export and build in one go with --make.")
    p.add_argument("onnx", nargs="?", metavar="MODEL.onnx", help="the exported graph (not with --make)")
    p.add_argument("-o", "--output", help="engine file (default: MODEL.engine next to the graph)")
    p.add_argument("--batch", default="1:16:64", help="tiles per run, MIN:OPT:MAX of the profile (default 1:16:64)")
    p.add_argument("--plugin", action="store_true",
                   help="import CADyQSelect as the registered plugin (default: its standard-op function body)")
    p.add_argument("--fp16", action="store_true", help="fp16 engine (--make exports an fp16 graph; TensorRT 10 "
                                                       "also takes an fp32 graph with this flag)")
    p.add_argument("--workspace", type=int, default=DEFAULT_WORKSPACE_MB, metavar="MB",
                   help="builder workspace limit in MB (default: the builder's; TensorRT-RTX counts the activation "
                        "memory of the largest batch against it)")
    p.add_argument("--cache-dir", help="engine cache: reuse an engine built before for the same graph, builder, "
                                       "target and shapes")
    p.add_argument("--rebuild", action="store_true", help="build even when the cache has the engine")
    p.add_argument("--target", help="TensorRT-RTX compute capabilities, comma-separated (e.g. sm86,sm89; "
                                    "'current' = this GPU; default 8.0,8.6,8.9,12.0)")
    p.add_argument("--json", help="write the engine's description as JSON")
    g = p.add_argument_group("--make: export a model and build its engine in one go (the `make engine` target)")
    g.add_argument("--make", action="store_true", help="export --model (or the shipped weights of "
                                                       "--backbone/--scale/--method) to --out-dir, then build")
    g.add_argument("--model", "-m", help="checkpoint or zoo name (default: shipped <backbone>-<method>-x<scale> "
                                         "weights, else a freshly initialised model)")
    g.add_argument("--backbone", help="backbone (default edsr; also the hint for foreign checkpoints)")
    g.add_argument("--scale", type=int, help="scale (default 4)")
    g.add_argument("--method", choices=METHODS, help="quantization method (default cadyq)")
    g.add_argument("--tile", type=int, default=96, help="LR tile size (default 96)")
    g.add_argument("--dtype", choices=("fp32", "fp16"), help="graph dtype (default fp32, fp16 with --fp16)")
    g.add_argument("--opset", type=int, default=17, help="ONNX opset (default 17)")
    g.add_argument("--out-dir", default="build", help="folder for the .onnx and the .engine (default build)")


def _targets(args):
    return [t.strip() for t in args.target.split(",") if t.strip()] if args.target else None


def _make_model(args):
    """The model `--make` exports, and its name tag."""
    from .. import zoo
    from ..models import canonical_name, create_model
    from ..quant import quant_config, quantize

    backbone, scale, method = args.backbone or "edsr", args.scale or 4, args.method or "cadyq"
    if args.model:
        model = _load_model(args.model, args.backbone, args.scale, args.method)
        got = (model.config.name, model.config.scale, quant_config(model).method)
        asked = (canonical_name(args.backbone) if args.backbone else got[0], args.scale or got[1], args.method or got[2])
        if got != asked:
            raise CadyqError(f"--model {args.model} is a {got[0]} x{got[1]} {got[2]} model, but --backbone/--scale/--method "
                             f"ask for {asked[0]} x{asked[1]} {asked[2]}; pass matching values or leave them out")
        return model, f"{got[0]}-{got[2]}-x{got[1]}"
    backbone = canonical_name(backbone)
    name = f"{backbone}-{method}-x{scale}"
    if name in zoo.available():
        return zoo.load_pretrained(name), name
    _warn(f"no shipped weights {name!r} (shipped: {', '.join(zoo.available()) or 'none'}): building from a freshly "
          f"initialised {backbone} x{scale} {method} model, whose outputs are meaningless; pass --model CKPT "
          "for real weights")
    return quantize(create_model(backbone, scale=scale), method).eval(), name


def run_engine(args) -> int:
    from .engine import build_engine

    if args.make:
        if args.onnx:
            raise CadyqError("--make exports the graph itself; give either MODEL.onnx or --make, not both")
        from .onnx_export import export_onnx

        model, tag = _make_model(args)
        dtype = args.dtype or ("fp16" if args.fp16 else "fp32")
        form = "fakequant" if dtype == "fp16" else "int8"  # fp32 graphs: INT8 convolutions
        out = Path(args.out_dir)
        b = "_".join(str(v) for v in _batch(args.batch))
        engine_path = Path(args.output) if args.output else out / f"{tag}-t{args.tile}-b{b}-{dtype}{'-plugin' if args.plugin else ''}.engine"
        onnx_path = out / f"{tag}-t{args.tile}-{dtype}.onnx"
        for path, what in ((onnx_path, "the exported graph"), (engine_path, "the engine")):
            check_output_file(path, overwrite=args.overwrite, option=what)
        onnx_path = export_onnx(model, onnx_path, tile=args.tile, dtype=dtype, opset=args.opset, form=form)
        print("\n".join(_describe_onnx(Path(onnx_path))))
    else:
        if not args.onnx:
            raise CadyqError("give the exported graph (`cadyq engine MODEL.onnx -o MODEL.engine`) or --make")
        for flag in ("model", "backbone", "scale", "method", "dtype"):
            if getattr(args, flag):
                raise CadyqError(f"--{flag} goes with --make; to build from a checkpoint use `cadyq engine --make --model CKPT`")
        onnx_path = Path(args.onnx)
        from ..runtime.backend import is_routed

        if is_routed(onnx_path):
            return _engine_routed(args, onnx_path)
        engine_path = Path(args.output) if args.output else onnx_path.with_suffix(".engine")
    if engine_path.suffix not in (".engine", ".plan"):
        raise EngineError(f"{engine_path}: name the engine file *.engine (or *.plan) so backends recognise it")
    check_output_file(engine_path, inputs=[str(onnx_path)], overwrite=args.overwrite, option="the engine")
    info = build_engine(onnx_path, engine_path, batch=args.batch, plugin=args.plugin, fp16=args.fp16,
                        workspace_mb=args.workspace, cache_dir=args.cache_dir, targets=_targets(args),
                        rebuild=args.rebuild)
    if args.plugin and not info.plugin:
        _warn(f"{onnx_path} has no CADyQSelect nodes ({info.model['method']} model): --plugin has nothing to replace")
    print(f"wrote {info}")
    if args.json:
        _write_json(args.json, info.to_dict())
    return 0


def _engine_routed(args, src: Path) -> int:
    from .engine import build_routed

    if args.plugin:
        raise CadyqError("routed graphs have static scales and no CADyQSelect nodes: leave out --plugin")
    if args.output and Path(args.output).suffix in (".engine", ".plan"):
        raise CadyqError("a routed export builds one engine per bit-width: -o names a folder (default: beside the graphs)")
    folder = Path(args.output) if args.output else (src if src.is_dir() else src.parent)
    _refuse_existing_manifest(folder / "routed-engines.json", args.overwrite)
    path, infos = build_routed(src, args.output, batch=_batch(args.batch), fp16=args.fp16, workspace_mb=args.workspace,
                               cache_dir=args.cache_dir, targets=_targets(args), rebuild=args.rebuild)
    for b, info in sorted(infos.items()):
        print(f"  {b}-bit: {info}")
    print(f"wrote {path}")
    if args.json:
        _write_json(args.json, {str(b): i.to_dict() for b, i in infos.items()})
    return 0


def _batch(text):
    from .engine import parse_batch

    return parse_batch(text)
