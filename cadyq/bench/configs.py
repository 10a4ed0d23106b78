"""The rows of a benchmark: the model, built baselines (fp32, pams8, float peers) and other models."""
from __future__ import annotations

import dataclasses
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from collections.abc import Callable

import torch
from torch import nn

from .openvino_peer import OPENVINO_PEERS, openvino_peer
from .settings import BenchError

BUILT_BASELINES = ("fp32", "pams8", "fp16")
_FILE_SUFFIXES = (".onnx", ".engine", ".plan")


@dataclass
class Config:
    """One row of the benchmark: a backend and how it was made."""

    label: str
    backend: object  # cadyq.runtime.Backend
    source: str  # what the user named
    notes: list[str] = field(default_factory=list)
    module: nn.Module | None = None  # the torch model behind it, when there is one


# ---- baselines -------------------------------------------------------------------------------------
def build_baseline(model: nn.Module, method: str, calib_tiles: torch.Tensor | None = None) -> tuple[nn.Module, list[str]]:
    """The same backbone, scale and weights as `model`, quantized with `method` ("fp32" or "pams8").

    fp32: the plain backbone, every backbone tensor copied (`transfer_state`). pams8: 8-bit weights and
    activations; the clip value of each dynamic layer is that of its 8-bit candidate (else its
    largest), fixed quantizers keep theirs; a model without clip values (fp32) is calibrated with
    `observe` on `calib_tiles`. Returns (model in eval mode on the CPU, notes)."""
    from ..checkpoint import build, metadata, transfer_state
    from ..quant import observe, quant_config

    if method not in ("fp32", "pams8"):
        raise BenchError(f"cannot build a {method!r} baseline; built baselines are fp32 and pams8")
    if not hasattr(model, "config"):
        raise BenchError("fp32/pams8 baselines are built from a cadyq model (checkpoint or zoo name)")
    src_cfg = quant_config(model)
    meta = metadata(model)
    meta.update(method=method, mode="full", bits=[8] if method == "pams8" else list(meta["bits"]))
    dst = build(meta)
    own = dst.state_dict()
    state = {k: v.detach().cpu() for k, v in model.state_dict().items()}
    pick = src_cfg.bits.index(8) if 8 in src_cfg.bits else len(src_cfg.bits) - 1
    for k, v in list(state.items()):
        if k.endswith("alpha") and k in own and v.shape != own[k].shape and own[k].numel() == 1 and v.numel() > 1:
            state[k] = v.reshape(-1)[pick].reshape(1).clone()
    transfer_state(dst, state)
    notes = []
    missing = [k for k in own if k.endswith("alpha") and k not in state]
    if missing:
        if calib_tiles is None:
            raise BenchError(f"{method} baseline: {len(missing)} clip values are not in the model; tiles to calibrate are needed")
        with torch.no_grad(), observe(dst):
            dst(calib_tiles.cpu().float())
        notes.append(f"clip values calibrated on the {calib_tiles.shape[0]} benchmark tiles (the model has none)")
    elif method == "pams8" and src_cfg.method == "cadyq":
        notes.append(f"clip values of the {src_cfg.bits[pick]}-bit candidates")
    return dst.eval(), notes


def _autocast_backend(inner):
    """A torch backend run under torch.autocast(float16): the fp16 baseline (benchmarked on CUDA only).
    Its ModelInfo counts 16-bit weights and activations, so BitOPs are a quarter of the FLOPs."""
    from ..quant import LayerCost
    from ..runtime import Backend

    class AutocastBackend(Backend):
        name = "torch-fp16"

        def __init__(self):
            self.inner, self.device = inner, inner.device
            self.max_batch, self.tile_sizes = inner.max_batch, inner.tile_sizes
            info = inner.info
            layers = tuple(LayerCost(c.name, c.macs_per_pixel, 16, c.act_bits if c.act_bits is None else 16)
                           for c in info.layers)
            self.info = dataclasses.replace(info, method="fp16", bits=(16,), layers=layers)

        @torch.inference_mode()
        def run(self, tiles):
            with torch.autocast(self.device.type, dtype=torch.float16):
                sr = self.inner.model(tiles)
            return sr.float(), self.info.default_bits(tiles.shape[0]).to(tiles.device)

    return AutocastBackend()


def _simulation_note(method: str, backend: str) -> list[str]:
    if method in ("pams8", "cadyq") and backend in ("torch", "onnxruntime"):
        return [(f"{backend} runs {method} as fake quantization (float math plus quantize/dequantize): it simulates the "
                "bit-widths and is slower than fp32 by construction; speed-ups need INT8/INT4 kernels or engines")]
    return []


# ---- making the rows ------------------------------------------------------------------------------------
FLOAT_PEERS = {"fp32-cl": "fp32", "bf16-cl": "bf16", "fp16-cl": "fp16"}  # the fp32 backbone, channels_last


def _float_peer_unavailable(precision: str, dev: torch.device) -> str | None:
    from ..hardware import cpu_has_bf16

    if precision == "fp16" and dev.type != "cuda":
        return "fp16 autocast is a CUDA peer; on the CPU the float peers are fp32-cl and bf16-cl"
    if precision == "bf16" and dev.type == "cpu" and not cpu_has_bf16():
        return ("this CPU has no bf16 arithmetic (no AVX512-BF16 or AMX): torch would emulate bf16 autocast, many "
                "times slower than fp32, so it is no peer here")
    return None


def expand_compare(compare, dev: torch.device, main_backend: str) -> list[str]:
    """`peers` -> the strongest peers of this device and the quantized paths: fp32 (NCHW), fp32-cl, bf16-cl
    (CPU) or fp16-cl (CUDA), fp32 through ONNX Runtime, OpenVINO fp32 and NNCF INT8 (CPU), the fake-quant
    torch model, and native."""
    out = []
    for item in compare:
        if item.strip() != "peers":
            out.append(item)
            continue
        out += ["fp32", "fp32-cl", "fp16-cl" if dev.type == "cuda" else "bf16-cl", "fp32@onnxruntime"]
        out += list(OPENVINO_PEERS) if dev.type == "cpu" else []
        out += [x for x in ("fakequant", "native") if not (x == "fakequant" and main_backend == "torch")
                and not (x == "native" and main_backend == "native")]
    return out
def _split_backend(item: str) -> tuple[str, str | None]:
    name, sep, backend = item.rpartition("@")
    if sep and name and backend and "/" not in backend:
        return name, backend
    return item, None


def _label(name: str, backend: str | None) -> str:
    """A row's label: what was named, with the backend when one was named (fp32 and fp32@onnxruntime are two rows)."""
    return f"{name}@{backend}" if backend else name


def _is_file_model(name) -> bool:
    return isinstance(name, (str, Path)) and Path(name).suffix in _FILE_SUFFIXES


def _load(name: str, foreign: dict):
    from ..checkpoint import load_model

    if _is_file_model(name):
        if not Path(name).is_file():
            raise BenchError(f"{name}: no such model file")
        return Path(name)
    return load_model(name, **foreign)


def _backend_for(model, backend: str, device: str, tile: int, tmpdir: str, threads: int | None):
    """A Backend for `model` (nn.Module or file path); modules are exported at `tile` for onnxruntime."""
    from ..runtime import create_backend
    from ..runtime.backend import guess_backend

    if backend == "auto" and isinstance(model, nn.Module):
        return create_backend("auto", model, device)  # records what it chose and why
    name = guess_backend(model) if backend == "auto" else backend
    if isinstance(model, nn.Module) and name == "onnxruntime":
        from ..export import export_onnx

        path = Path(tempfile.mkdtemp(prefix="onnx-", dir=tmpdir)) / "model.onnx"
        model = export_onnx(model, path, tile=tile, form="ort")
    if name == "onnxruntime" and threads:
        from ..runtime.onnxruntime_backend import OnnxRuntimeBackend

        return OnnxRuntimeBackend(model, device, threads=threads)
    return create_backend(name, model, device)


def make_configs(model, compare=(), backend: str = "auto", device: str = "auto", tile: int = 96,
                 calib_tiles: torch.Tensor | Callable[[int], torch.Tensor] | None = None, tmpdir: str | None = None, threads: int | None = None,
                 foreign: dict | None = None) -> tuple[list[Config], list[dict]]:
    """The rows: `model` first, then one per `compare` item. Returns (configs, skipped) where skipped
    lists the baselines that cannot run here, with the reason. `model` is what --model names, or an
    nn.Module from cadyq; `calib_tiles` (tiles, or a function of the scale giving them) calibrates a
    pams8 baseline built from a model without clip values."""
    from ..runtime.backend import choose_backend, guess_backend, resolve_device

    foreign = foreign or {}
    tmpdir = tmpdir or tempfile.mkdtemp(prefix="cadyq-bench-")
    dev = resolve_device(device)
    main = model if isinstance(model, nn.Module) else _load(str(model), foreign)
    main_backend = choose_backend(main, dev).name if backend == "auto" else backend
    if isinstance(model, nn.Module):
        from ..quant import quant_config

        model = label = f"{getattr(model.config, 'name', 'model')} x{model.config.scale} {quant_config(model).method}"
    else:
        label = Path(str(model)).name if _is_file_model(model) else str(model)
    first = Config(label, _backend_for(main, backend if backend == "auto" else main_backend, str(dev), tile, tmpdir,
                                      threads), str(model),
                   module=main if isinstance(main, nn.Module) else None)
    first.notes += _simulation_note(first.backend.info.method, first.backend.name) + list(getattr(first.backend, "notes", []))
    configs, skipped = [first], []
    for raw in expand_compare(compare, dev, first.backend.name):
        item, chosen = _split_backend(raw.strip())
        if not item:
            raise BenchError(f"empty item in --compare {','.join(compare)!r}")
        if item in FLOAT_PEERS:
            if first.module is None:
                raise BenchError(f"the {item} baseline is built from a checkpoint model; --model is a file "
                                 f"({Path(str(model)).suffix}); pass the checkpoint instead")
            precision = FLOAT_PEERS[item]
            why = _float_peer_unavailable(precision, dev)
            if why:
                skipped.append({"label": item, "reason": why})
                continue
            fp32, _ = build_baseline(first.module, "fp32")
            from ..runtime import create_backend

            be = create_backend("torch", fp32, str(dev), precision=precision, channels_last=True)
            configs.append(Config(item, be, item, ["fp32 backbone, same weights, channels_last"
                                                   + (f", torch.autocast({precision})" if precision != "fp32" else "")], fp32))
            continue
        if item in OPENVINO_PEERS:
            if first.module is None:
                raise BenchError(f"the {item} peer is built from a checkpoint model; --model is a file; pass the checkpoint")
            if dev.type != "cpu":
                skipped.append({"label": item, "reason": f"OpenVINO is a CPU peer here, not a {dev.type} one"})
                continue
            fp32, _ = build_baseline(first.module, "fp32")
            calib = calib_tiles(first.backend.info.scale) if callable(calib_tiles) else calib_tiles
            be, why = openvino_peer(fp32, item, tile, calib, threads)
            if why:
                skipped.append({"label": item, "reason": why})
                continue
            configs.append(Config(item, be, item, ["fp32 backbone, same weights"] + be.notes, fp32))
            continue
        if item in ("fakequant", "native", "native-int8up", "native-floatup"):
            if first.module is None:
                raise BenchError(f"the {item} row runs the checkpoint of --model; --model is a file; pass the checkpoint")
            if item in ("native-int8up", "native-floatup"):
                from ..errors import BackendError
                from ..runtime import create_backend

                try:
                    be = create_backend("native", first.module, str(dev), int8_upsampler=item == "native-int8up")
                except BackendError as e:  # e.g. no upsampler clip values: the row is skipped, with the reason
                    skipped.append({"label": item, "reason": str(e)})
                    continue
            else:
                be = _backend_for(first.module, "torch" if item == "fakequant" else "native", str(dev), tile, tmpdir,
                                  threads)
            c = Config(item, be, item, module=first.module)
            c.notes += _simulation_note(be.info.method, be.name) + list(getattr(be, "notes", []))
            configs.append(c)
            continue
        if item == "fp16":
            if dev.type != "cuda":
                skipped.append({"label": "fp16", "reason": f"fp16 (torch autocast) is supported on CUDA only, not on {dev.type}"})
                continue
            if first.module is None:
                raise BenchError("the fp16 baseline is built from a checkpoint model; --model is a file "
                                 f"({Path(str(model)).suffix}); pass the checkpoint instead")
            fp32, notes = build_baseline(first.module, "fp32")
            inner = _backend_for(fp32, "torch", str(dev), tile, tmpdir, threads)
            configs.append(Config("fp16", _autocast_backend(inner), "fp16",
                                  ["fp32 backbone, same weights, torch.autocast(float16)"], fp32))
            continue
        if item in ("fp32", "pams8"):
            if first.module is None:
                raise BenchError(f"the {item} baseline is built from the weights of a checkpoint model; --model "
                                 f"{model} is a {Path(str(model)).suffix} file: pass the checkpoint (with --backend "
                                 "onnxruntime to run it exported) or compare with checkpoint/.onnx paths")
            calib = calib_tiles(first.backend.info.scale) if callable(calib_tiles) else calib_tiles
            m, notes = build_baseline(first.module, item, calib)
            row_backend = chosen or (main_backend if main_backend in ("torch", "onnxruntime") else "torch")
            be = _backend_for(m, row_backend, str(dev), tile, tmpdir, threads)
            notes = notes + _simulation_note(item, row_backend) + list(getattr(be, "notes", []))
            configs.append(Config(_label(item, chosen), be, item, notes, m))
            continue
        m = _load(item, foreign)
        if chosen:
            row_backend = chosen
        elif isinstance(m, nn.Module):
            row_backend = main_backend if main_backend in ("torch", "onnxruntime") else "torch"
        else:
            row_backend = guess_backend(m)
        lab = _label(Path(item).name if _is_file_model(item) else item, chosen)
        c = Config(lab, _backend_for(m, row_backend, str(dev), tile, tmpdir, threads), item,
                   module=m if isinstance(m, nn.Module) else None)
        c.notes += _simulation_note(c.backend.info.method, c.backend.name)
        configs.append(c)
    labels = [c.label for c in configs]
    twice = sorted({lab for lab in labels if labels.count(lab) > 1})
    if twice:
        raise BenchError(f"{', '.join(twice)} would be two rows of the same name: compare each configuration once, "
                         "or name its backend (e.g. fp32@onnxruntime)")
    scales = {c.label: c.backend.info.scale for c in configs}
    if len(set(scales.values())) > 1:
        raise BenchError(f"configurations of different scales cannot be compared on one image: {scales}")
    return configs, skipped
