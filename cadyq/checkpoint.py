"""Checkpoints: safetensors + JSON metadata, and import of the official CADyQ/PAMS and EDSR-PyTorch files."""
from __future__ import annotations

import dataclasses
import json
import re
import warnings
from pathlib import Path

import torch
import torch.nn as nn

from .errors import CheckpointError, ModelError
from .models import canonical_name, create_model
from .models.training import is_trained, record_trained
from .outputs import atomic_write  # noqa: F401  (the one atomic writer; kept here for its callers)
from .paths import not_a_file
from .quant import quant_config, quantize

FORMAT_VERSION = 1
_META_KEY = "cadyq"


def _version() -> str:
    from . import __version__

    return __version__


def metadata(model: nn.Module) -> dict:
    cfg = quant_config(model)
    arch = {k: v for k, v in dataclasses.asdict(model.config).items() if k not in ("name", "scale")}
    trained = is_trained(model)
    return {
        "format": FORMAT_VERSION, "version": _version(), "backbone": model.config.name, "scale": model.config.scale,
        "arch": arch, "method": cfg.method, "bits": list(cfg.bits), "mode": cfg.mode,
        "weight_bits": cfg.weight_bits, "per_channel": cfg.per_channel,
    } | ({"trained": trained} if trained is not None else {}) \
      | ({"upsampler_clips": dict(model.upsampler_clips)} if getattr(model, "upsampler_clips", None) else {})


def recorded_trained(meta: dict) -> bool | None:
    """What a checkpoint's metadata says of its weights: its "trained" field; files from before that field
    count as trained when they carry a training or calibration record ("extra": every cadyq writer of trained
    weights adds one), else nothing is known."""
    if "trained" in meta:
        return meta["trained"]
    return True if meta.get("extra") else None


def save(model: nn.Module, path: str | Path, extra_metadata: dict | None = None) -> None:
    from safetensors.torch import save_file

    meta = metadata(model) | ({"extra": extra_metadata} if extra_metadata else {})
    tensors = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    atomic_write(path, lambda tmp: save_file(tensors, tmp, metadata={_META_KEY: json.dumps(meta)}))


def _require_file(path: Path) -> None:
    why = not_a_file(path)
    if why == "no such file or folder":
        raise CheckpointError(f"{path}: no such checkpoint file; check the path, or pass a zoo name")
    if why is not None:
        raise CheckpointError(f"{path}: {why}; pass a checkpoint file (.safetensors, .pt, .pth)")


def _first_line(e: BaseException) -> str:
    text = str(e).strip()
    return text.splitlines()[0].rstrip(".") if text else type(e).__name__


def _safetensors_metadata(path: Path) -> dict | None:
    """The cadyq metadata of a safetensors file, checked; None for a safetensors file cadyq did not write."""
    from safetensors import safe_open

    _require_file(path)
    try:
        with safe_open(str(path), "pt") as f:
            meta = (f.metadata() or {}).get(_META_KEY)
    except Exception as e:  # safetensors raises its own error types for corrupt headers
        raise CheckpointError(f"{path}: not a readable safetensors file ({_first_line(e)}); the file is damaged "
                              "or not a safetensors file") from e
    return None if meta is None else parse_metadata(meta, path)


def read_metadata(path: str | Path) -> dict:
    path = Path(path)
    meta = _safetensors_metadata(path)
    if meta is None:
        raise CheckpointError(f"{path}: a safetensors file without cadyq metadata (not written by cadyq); "
                              "load it with cadyq.load / --model, which imports it from its tensor names")
    return meta


# field: (types, required); bool is refused where an int is meant
_META_FIELDS = {"format": (int, False), "version": (str, False), "backbone": (str, True), "scale": (int, True),
                "arch": (dict, False), "method": (str, False), "bits": (list, False), "mode": (str, False),
                "weight_bits": (int, False), "per_channel": (bool, False), "upsampler_clips": (dict, False),
                "trained": (bool, False)}


def parse_metadata(text: str, path: str | Path = "checkpoint") -> dict:
    """The cadyq metadata JSON of a checkpoint, with every field of the right type, or one CheckpointError."""
    def bad(detail: str) -> CheckpointError:
        return CheckpointError(f"{path}: its cadyq metadata is damaged ({detail}); the file was edited or written by "
                               "another program; re-save the model with cadyq.save")
    try:
        meta = json.loads(text)
    except (ValueError, TypeError) as e:
        raise bad(f"not JSON: {_first_line(e)}") from None
    if not isinstance(meta, dict):
        raise bad(f"a JSON {type(meta).__name__} instead of an object")
    for key, (kind, required) in _META_FIELDS.items():
        if key not in meta:
            if required:
                raise bad(f"no {key!r} field")
            continue
        value = meta[key]
        if not isinstance(value, kind) or (kind is int and isinstance(value, bool)):
            raise bad(f"{key!r} is {json.dumps(value)[:40]}, not a JSON {_JSON_NAMES[kind]}")
    if meta["scale"] < 1:
        raise bad(f"'scale' is {meta['scale']}")
    if "bits" in meta and not all(isinstance(b, int) and not isinstance(b, bool) and 1 <= b <= 32 for b in meta["bits"]):
        raise bad(f"'bits' is {json.dumps(meta['bits'])[:40]}, not a list of bit-widths")
    return meta


_JSON_NAMES = {int: "integer", str: "string", dict: "object", list: "list", bool: "true/false"}


def build(meta: dict) -> nn.Module:
    """An untrained model of the architecture and quantization that `meta` describes."""
    try:
        model = create_model(meta["backbone"], scale=int(meta["scale"]), **meta.get("arch", {}))
        return quantize(model, meta.get("method", "fp32"), tuple(meta.get("bits", (4, 6, 8))), mode=meta.get("mode", "full"),
                        weight_bits=int(meta.get("weight_bits", 8)), per_channel=bool(meta.get("per_channel", False)))
    except (KeyError, TypeError, ValueError) as e:
        raise CheckpointError(f"checkpoint metadata is incomplete or invalid: {e}") from e


def load_state(model: nn.Module, state: dict[str, torch.Tensor], source: str = "checkpoint",
               hint: str = "it was saved from a different model") -> None:
    """Strict load that names what is missing, unexpected or of the wrong shape; `hint` says what to do."""
    own = model.state_dict()
    missing = sorted(set(own) - set(state))
    unexpected = sorted(set(state) - set(own))
    shapes = [f"{k} {tuple(state[k].shape)} != {tuple(own[k].shape)}" for k in own if k in state and state[k].shape != own[k].shape]
    if missing or unexpected or shapes:
        def few(xs):
            return ", ".join(xs[:8]) + (f" (+{len(xs) - 8} more)" if len(xs) > 8 else "")
        parts = [f"missing keys: {few(missing)}" if missing else "", f"unexpected keys: {few(unexpected)}" if unexpected else "",
                 f"wrong shapes: {few(shapes)}" if shapes else ""]
        raise CheckpointError(f"{source} does not match the model ({'; '.join(p for p in parts if p)}); {hint}")
    model.load_state_dict(state, strict=True)


def load(path: str | Path, device: str | torch.device = "cpu", *, backbone: str | None = None, scale: int | None = None,
         method: str | None = None) -> nn.Module:
    """Load a cadyq safetensors checkpoint, or import a foreign .pt/.pth/.pth.tar (or a safetensors file
    without cadyq metadata); eval mode. backbone/scale/method describe foreign files; given with a
    cadyq file they must agree with it. A zoo name (`cadyq.list_models(pretrained=True)`) that is not a
    file here loads the shipped weights of that name."""
    path = Path(path)
    if not path.exists() and path.suffix == "" and len(path.parts) == 1:
        from . import zoo

        if path.name in zoo.available():
            path = zoo.path_of(path.name)
        else:
            raise CheckpointError(f"{path}: no such checkpoint file, and no shipped weights of that name (shipped: "
                                  f"{', '.join(zoo.available()) or 'none'})")
    _require_file(path)
    meta = _safetensors_metadata(path) if path.suffix == ".safetensors" else None
    if meta is not None:
        from safetensors.torch import load_file

        if meta.get("format", 0) > FORMAT_VERSION:
            raise CheckpointError(f"{path}: written by a newer cadyq (format {meta['format']}); upgrade cadyq")
        try:
            model = build(meta)
        except (CheckpointError, ModelError) as e:
            raise CheckpointError(f"{path}: {e}") from e
        check_asked(model, str(path), backbone, scale, method)
        try:
            state = load_file(str(path))
        except Exception as e:
            raise CheckpointError(f"{path}: the tensors cannot be read ({_first_line(e)}); the file is truncated "
                                  "or damaged") from e
        load_state(model, state, str(path), "its tensors do not fit its own metadata: the file was edited or "
                                            "damaged; re-save the model with cadyq.save")
        record_trained(model, recorded_trained(meta))
        if "upsampler_clips" in meta:  # INT8-upsampler clip values (`cadyq calibrate --upsampler`)
            clips = meta["upsampler_clips"]
            if not all(isinstance(v, (int, float)) and not isinstance(v, bool) and v > 0 for v in clips.values()):
                raise CheckpointError(f"{path}: its cadyq metadata is damaged ('upsampler_clips' is not a map of "
                                      "positive clip values); re-calibrate with `cadyq calibrate --upsampler`")
            model.upsampler_clips = {str(k): float(v) for k, v in clips.items()}
    else:
        model = import_checkpoint(path, backbone=backbone, scale=scale, method=method)
    return model.to(device).eval()


def check_asked(model: nn.Module, source: str, backbone: str | None = None, scale: int | None = None,
                method: str | None = None) -> None:
    """--backbone/--scale/--method given with a model that knows its own: they must agree with it."""
    have = {"backbone": model.config.name, "scale": model.config.scale, "method": quant_config(model).method}
    asked = {"backbone": canonical_name(backbone) if backbone else None, "scale": scale, "method": method}
    wrong = [k for k, v in asked.items() if v is not None and v != have[k]]
    if wrong:
        flags = "/".join(f"--{k}" for k in wrong)
        raise CheckpointError(f"{source} is a {have['backbone']} x{have['scale']} {have['method']} model, but "
                              f"{' '.join(f'--{k} {asked[k]}' for k in wrong)} asks for another; drop {flags} "
                              "(these options describe foreign checkpoints) or pass a matching model")


def load_model(name: str | Path | None = None, device: str | torch.device = "cpu", *, backbone: str | None = None,
               scale: int | None = None, method: str | None = None) -> nn.Module:
    """What a user names with --model: a checkpoint file, a zoo name, or None for the default model."""
    from . import zoo

    name = zoo.default_name() if name is None else name
    path = Path(name)
    if path.suffix in (".onnx", ".engine", ".plan"):
        raise CheckpointError(f"{path}: this needs a checkpoint (.safetensors/.pt/.pth) or a zoo name, not a {path.suffix} file")
    if path.exists() or path.is_symlink():
        return load(path, device, backbone=backbone, scale=scale, method=method)
    if not path.suffix and "/" not in str(name):
        model = zoo.load_pretrained(str(name))
        check_asked(model, str(name), backbone, scale, method)
        return model.to(device)
    raise CheckpointError(f"{path}: no such checkpoint file; check the path, or pass a zoo name "
                          f"({', '.join(zoo.available()) or 'none shipped'})")


def scale_before_loading(name: str | Path | None) -> int | None:
    """The scale of the model `load_model(name)` loads, from its metadata alone (no weights read): for the default
    model, zoo names and cadyq .safetensors files; None for the rest (foreign checkpoints, exports, damaged
    files: loading them says what they are)."""
    from . import zoo

    name = zoo.default_name() if name is None else name
    path = Path(name)
    if not (path.exists() or path.is_symlink()) and not path.suffix and "/" not in str(name):
        if str(name) not in zoo.available():
            return None
        path = zoo.path_of(str(name))
    if path.suffix != ".safetensors" or not path.is_file():
        return None
    try:
        meta = _safetensors_metadata(path)
    except CheckpointError:
        return None
    return None if meta is None else int(meta["scale"])


def transfer_state(dst: nn.Module, src: dict[str, torch.Tensor]) -> None:
    """Initialise `dst` from another method's state (fp32 -> pams8 -> cadyq): copies every tensor
    present in both; a single clip value fills all K candidates of a selector at the same site."""
    own = dst.state_dict()
    new = {}
    for k, v in src.items():
        if k not in own:
            continue
        if v.shape != own[k].shape:
            if k.endswith("alpha") and v.numel() == 1:
                v = v.reshape(1).expand_as(own[k]).clone()
            else:
                raise CheckpointError(f"{k}: shape {tuple(v.shape)} does not fit {tuple(own[k].shape)}")
        new[k] = v
    if not any(k.endswith("weight") for k in new):
        raise CheckpointError("the source checkpoint shares no weights with this model; wrong backbone?")
    dst.load_state_dict(new, strict=False)


# ---- foreign checkpoints -------------------------------------------------------------------------
# Official CADyQ (Cheeun/CADyQ) students and PAMS teachers, and EDSR-PyTorch / CARN FP32 files.
# Rules rewrite their keys to ours; see ../shared/reference/cadyq-reference.md section 5.
_RULES = {
    "edsr": [
        (r"^body\.(\d+)\.(bitsel1|quant_act1)\.", r"body.\1.input_quant."),
        (r"^body\.(\d+)\.quant_act3\.", r"body.\1.body_output_quant."),
        (r"^body\.(\d+)\.quant_act2\.", r"body.\1.body.2.input_quant."),
        (r"^body\.(\d+)\.body\.2\.(quant_bit\d|net_small|alpha|max_val)", r"body.\1.body.2.input_quant.\2"),
        (r"^body\.(\d+)\.body\.3\.", r"body.\1.body.2."),
    ],
    "srresnet": [
        (r"^body\.(\d+)\.(classify|quant_act)(1|2)\.", r"body.\1.conv\3.input_quant."),
    ],
    "carn": [
        (r"^(b\d\.b\d)\.body\.0\.(quant_bit\d|net_small|alpha|max_val)", r"\1.body.0.input_quant.\2"),
        (r"^(b\d\.b\d)\.body\.3\.(quant_bit\d|net_small|alpha|max_val)", r"\1.body.2.input_quant.\2"),
        (r"^(b\d\.b\d)\.body\.1\.", r"\1.body.0."),
        (r"^(b\d\.b\d)\.body\.4\.", r"\1.body.2."),
        (r"^upsample\.up\d?\.body\.", r"upsample.up."),
    ],
    "idn": [
        (r"^fblock\.quant_actf(1|2)\.", lambda m: f"fblock.module.{2 * (int(m[1]) - 1)}.input_quant."),
        (r"^fblock\.module\.(1|4)\.", lambda m: f"fblock.module.{(int(m[1]) - 1) // 3 * 2}."),
        (r"^(dblocks\.\d+\.enhancement_\w+?)\.(0|3|6)\.(quant_bit\d|net_small|alpha)",
         lambda m: f"{m[1]}.{int(m[2]) // 3 * 2}.input_quant.{m[3]}"),
        (r"^(dblocks\.\d+\.enhancement_\w+?)\.(1|4|7)\.", lambda m: f"{m[1]}.{(int(m[2]) - 1) // 3 * 2}."),
    ],
}
_DROP = re.compile(r"(^|\.)(sub_mean|add_mean)\.|max_val$|^fblock\.module\.(0|3)\.alpha$")


def _unwrap(obj, source: str = "the file") -> dict[str, torch.Tensor]:
    for key in ("state_dict", "model", "params"):
        if isinstance(obj, dict) and key in obj and isinstance(obj[key], dict):
            obj = obj[key]
    if not isinstance(obj, dict):
        raise CheckpointError(f"{source}: holds a {type(obj).__name__}, not a state_dict (a dict of tensors, or one "
                              "under 'state_dict'); save model.state_dict()")
    other = next(((k, v) for k, v in obj.items() if not isinstance(v, torch.Tensor)), None)
    if other is not None or not obj:
        found = "it is empty" if not obj else f"{other[0]!r} is {type(other[1]).__name__!r}, not a tensor"
        raise CheckpointError(f"{source}: not a state_dict (expected a dict of tensors, or one under 'state_dict'; "
                              f"{found}); save model.state_dict()")
    return {str(k).removeprefix("module."): v for k, v in obj.items()}


def detect(state: dict[str, torch.Tensor]) -> tuple[str, str]:
    """(backbone, method) of a foreign state_dict, from its keys."""
    keys = set(state)
    if "entry.weight" in keys:
        backbone = "carn"
    elif any(k.startswith("fblock.") for k in keys):
        backbone = "idn"
    elif "head.0.weight" in keys:
        backbone = "srresnet" if state["head.0.weight"].shape[-1] == 9 else "edsr"
    else:
        example = ", ".join(sorted(keys)[:3])
        raise CheckpointError(f"cannot tell the backbone from the tensor names ({example}, ...): this is not an "
                              "EDSR/SRResNet/CARN/IDN checkpoint cadyq knows; if it is one, pass --backbone")
    return backbone, _detect_method(keys)


def _detect_method(keys) -> str:
    if any("net_small" in k or k.endswith("input_quant.net.weight") for k in keys):  # official, or cadyq's own names
        return "cadyq"
    if any(k.endswith("alpha") for k in keys):
        return "pams8"
    return "fp32"


def _detect_scale(backbone: str, state) -> int | None:
    if backbone == "idn":
        return None  # the deconv has the same shape at every scale
    prefix = {"edsr": "tail.0.", "srresnet": "tail.0.", "carn": "upsample.up"}[backbone]
    convs = [v for k, v in state.items() if k.startswith(prefix) and k.endswith("weight") and v.dim() == 4]
    if backbone == "carn" and any(k.startswith("upsample.up2.") for k in state):
        return None  # multi-scale file: the user picks the scale
    if not convs:
        return None
    ratio = convs[0].shape[0] // convs[0].shape[1]
    return 3 if ratio == 9 else 2 ** len(convs)


def convert_state(state: dict[str, torch.Tensor], backbone: str, scale: int) -> dict[str, torch.Tensor]:
    out: dict[str, torch.Tensor] = {}
    alphas: dict[str, dict[int, torch.Tensor]] = {}
    shared_prelu = state.get("head.1.weight") if backbone == "srresnet" else None
    for key, v in state.items():
        if _DROP.search(key):
            continue
        if backbone == "carn" and key.startswith("upsample.up") and not key.startswith(("upsample.up.", f"upsample.up{scale}.")):
            continue  # other scales of a multi-scale CARN
        for pattern, repl in _RULES[backbone]:
            key = re.sub(pattern, repl, key)
        key = key.replace(".net_small.0.", ".net.")
        m = re.match(r"^(.*)\.quant_bit(\d)\.alpha$", key)
        if m:
            alphas.setdefault(f"{m[1]}.alpha", {})[int(m[2])] = v.reshape(())
            continue
        if key.endswith("_output_quant.alpha") or key.endswith("input_quant.alpha"):
            v = v.reshape(1)
        out[key] = v
    for key, parts in alphas.items():
        out[key] = torch.stack([parts[i] for i in sorted(parts)])
    if backbone == "carn":  # CARN's official gradient feature lacks the x1e3 of the others
        for key in [k for k in out if k.endswith("input_quant.net.weight")]:
            w = out[key].clone()
            w[:, :2] *= 1e-3
            out[key] = w
    if shared_prelu is not None:  # one PReLU shared by the head and all blocks in the official file
        for key in [k for k in out if re.match(r"^body\.\d+\.act\.weight$", k)]:
            out[key] = shared_prelu.clone()
    return out


def _read_foreign(path) -> dict[str, torch.Tensor]:
    """The state_dict of a foreign file: torch.load(weights_only=True) only, or a plain safetensors file."""
    path = Path(path)
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        try:
            return _unwrap(load_file(str(path)), str(path))
        except CheckpointError:
            raise
        except Exception as e:
            raise CheckpointError(f"{path}: not a readable safetensors file ({_first_line(e)})") from e
    try:
        with warnings.catch_warnings():  # torch's note on pickle protocols: the error below says it all
            warnings.filterwarnings("ignore", message="Detected pickle protocol")
            raw = torch.load(str(path), map_location="cpu", weights_only=True)
    except Exception as e:
        raise CheckpointError(f"{path}: {_why_torch_load_failed(path, e)}") from None
    return _unwrap(raw, str(path))


def _why_torch_load_failed(path: Path, e: Exception) -> str:
    """One line for torch.load's (multi-line) errors; never its advice to retry with weights_only=False."""
    with open(path, "rb") as f:
        head = f.read(4)
    if not head:
        return "the file is empty; copy or save it again"
    refused = re.search(r"GLOBAL ([\w.]+)", str(e))
    if refused:
        return (f"refused: it holds Python objects besides tensors ({refused[1]}), which loading would execute; cadyq "
                "loads tensors only (weights_only=True). Ask for a plain state_dict or a .safetensors file")
    if head.startswith(b"PK"):
        return (f"cannot read it as a PyTorch checkpoint: a damaged or truncated archive ({_first_line(e)[:120]}); "
                "copy or save it again")
    if head[:1] != b"\x80":
        return ("cannot read it as a PyTorch checkpoint: it is neither a torch.save archive nor a pickle "
                "(wrong file, or not a checkpoint at all)")
    operand = re.search(r"Unsupported operand \d+", str(e))
    if operand:  # pickle.dumps (protocol 4+) output, not torch.save: the safe loader cannot even parse it
        return (f"refused: a plain pickle, not a torch.save file ({operand[0]} for the safe loader); a pickle can "
                "run code when loaded, and cadyq loads tensors only (weights_only=True). Ask for a state_dict saved "
                "with torch.save, or a .safetensors file")
    return (f"cannot read it as a PyTorch checkpoint: the pickle is truncated or damaged "
            f"({type(e).__name__}{': ' + _first_line(e)[:80] if str(e) else ''}); copy or save it again")


def import_checkpoint_into(model: nn.Module, path: str | Path) -> nn.Module:
    """Load a foreign checkpoint into an already built model (of a non-default size, say)."""
    converted = convert_state(_read_foreign(path), model.config.name, model.config.scale)
    if model.config.name == "srresnet" and "head.1.weight" in converted:
        for k in model.state_dict():  # per-block PReLUs that the official file stores once
            if re.match(r"^body\.\d+\.act\.weight$", k) and k not in converted:
                converted[k] = converted["head.1.weight"].clone()
    own = model.state_dict()
    if not set(converted) & set(own):  # no flag can make it one: say so instead of advising flags
        example = ", ".join(sorted(converted)[:3])
        raise CheckpointError(f"{path}: none of its tensor names ({example}, ...) is one of {model.config.name}'s: it "
                              "is not an EDSR/SRResNet/CARN/IDN checkpoint, and --backbone/--scale/--method cannot make "
                              "it one; pass a checkpoint of one of these models")
    for k, v in own.items():  # absent from checkpoints older than torch 0.4.1
        if k.endswith("num_batches_tracked"):
            converted.setdefault(k, v)
    load_state(model, converted, f"{path} (read as {model.config.name} x{model.config.scale} {quant_config(model).method})",
               "check --backbone/--scale/--method")
    record_trained(model, None)  # a foreign file does not say how its weights were made
    return model


def import_checkpoint(path: str | Path, backbone: str | None = None, scale: int | None = None,
                      method: str | None = None) -> nn.Module:
    """Build our model for a foreign checkpoint (torch.load(weights_only=True) only) and load it."""
    state = _read_foreign(path)
    try:
        found_backbone, found_method = detect(state)
    except CheckpointError as e:
        if not backbone:
            raise CheckpointError(f"{path}: {e}") from None
        found_backbone, found_method = None, _detect_method(set(state))  # the user names it: trust --backbone
    if backbone and found_backbone and canonical_name(backbone) != found_backbone:
        shown = {"edsr": "EDSR", "srresnet": "SRResNet", "carn": "CARN", "idn": "IDN"}
        raise CheckpointError(f"{path}: its tensor names are {shown[found_backbone]}'s, not {shown[canonical_name(backbone)]}'s "
                              f"(--backbone {backbone}); drop --backbone, or pass --backbone {found_backbone}")
    backbone = canonical_name(backbone) if backbone else found_backbone
    scale = scale or _detect_scale(backbone, state)
    if scale is None:
        raise CheckpointError(f"{path}: the scale cannot be read from this {backbone} file; pass --scale")
    try:
        model = quantize(create_model(backbone, scale=scale), method or found_method)
    except ModelError as e:
        raise CheckpointError(f"{path}: {e}") from e
    return import_checkpoint_into(model, path)
