"""Every shipped full-size model on the two photo sets of cadyq.data.photos (issue 37): the report set (KDE's
photographs, only ever reported) first, the decision set (the photos every choice is made on) beside it.

    python benchmarks/zoo_sets.py measure [--models M ...] [--json benchmarks/zoo_sets.json]
        runs `cadyq eval` (backend auto, one thread: OMP_NUM_THREADS=1) on both sets, 1024x768 centre crops as
        `photos.prepare` / `photos.prepare_report` lay them out, and stores each figure with its command
    python benchmarks/zoo_sets.py apply [--json benchmarks/zoo_sets.json]
        writes the stored figures into the zoo files' metadata (extra.report, then extra.decision; extra.held_out, the
        5-photo figures they replace, is dropped). Only the metadata changes (every tensor and every other metadata
        field is kept as it is); a file that already records them is left untouched, so it can be re-run after a
        merge that rewrote the files
    python benchmarks/zoo_sets.py table [--json benchmarks/zoo_sets.json]
        the markdown table of README and MODEL_CARD
    python benchmarks/zoo_sets.py bitmap [--photo EveningGlow] [--model edsr-cadyq-alloc-x4]
        README's bit-map picture from a report-set photo: the whole 2560x1600 photo bicubic-downscaled x4 (LR 640x400,
        8x5 tiles), `cadyq upscale LR --bitmap`, the picture halved to docs/edsr-cadyq-alloc-x4-bitmap.png

Measuring reads the report set; nothing here decides anything. The decision code (benchmarks/zoo_ship.py,
benchmarks/allocation/) takes its choices from the decision set alone (tests/test_photo_sets.py).
"""
from __future__ import annotations

import argparse
import datetime
import json
import os
import shlex
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
JSON = ROOT / "benchmarks" / "zoo_sets.json"
MODELS = ["edsr-fp32-x4", "edsr-pams8-x4", "edsr-cadyq-x4", "edsr-cadyq-alloc-x4", "edsr-gdq-alloc-x4",
          "edsr-fp32-x2", "edsr-pams8-x2", "edsr-cadyq-x2", "edsr-cadyq-alloc-x2", "edsr-gdq-alloc-x2"]
SETS = ("report", "decision")  # the order every table and every metadata record quotes them in
KEYS = ("psnr", "ssim", "fqr", "bitops_g", "psnr_bicubic")


def set_dirs() -> dict:
    from cadyq.data import photos

    return {"report": photos.REPORT_DIR, "decision": photos.DECISION_DIR}


def set_label(name: str, n: int) -> str:
    return {"report": f"report set: KDE's plasma-workspace-wallpapers photographs ({n}), never used to train or decide",
            "decision": f"decision set: cadyq.data.photos split 'decision' ({n}), chooses runs, anneals, cuts and "
                        f"defaults"}[name]


def cpu_flags() -> str:
    try:
        out = subprocess.run(["lscpu"], capture_output=True, text=True, check=True).stdout
    except (OSError, subprocess.CalledProcessError):
        return ""
    lines = dict(line.split(":", 1) for line in out.splitlines() if ":" in line)
    flags = lines.get("Flags", "").split()
    keep = [f for f in flags if f.startswith(("avx", "amx")) or f in ("fma", "f16c", "sse4_2")]
    return f"{lines.get('Model name', '?').strip()} (family {lines.get('CPU family', '?').strip()} model " \
           f"{lines.get('Model', '?').strip()}): {' '.join(keep)}"


def commit() -> str:
    r = subprocess.run(["git", "-C", str(ROOT), "rev-parse", "--short", "HEAD"], capture_output=True, text=True)
    return r.stdout.strip()


def eval_command(model: str, data: str, out: str) -> list[str]:
    return [sys.executable, "-m", "cadyq", "eval", "--model", model, "--data", data, "--json", out]


def measure(models, path: Path) -> dict:
    from cadyq.data import photos

    photos.prepare(Path(photos.DECISION_DIR).parent)
    photos.prepare_report(photos.REPORT_DIR)
    stored = json.loads(path.read_text()) if path.is_file() else {}
    stored.update({"cpu": cpu_flags(), "commit": commit(), "threads": 1,
                   "protocol": "cadyq eval, backend auto, 96-px tiles, 6-px overlap, 1024x768 centre crops "
                               "(castle-maintenon 1024x681), bicubic LR, PSNR/SSIM on Y with shave = scale"})
    rows = stored.setdefault("models", {})
    for name, data in set_dirs().items():
        stored.setdefault("sets", {})[name] = {"dir": data, "images": len(list(Path(data).glob("*.png"))),
                                               "label": set_label(name, len(list(Path(data).glob("*.png"))))}
    env = os.environ | {"OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
    for m in models:
        for name, data in set_dirs().items():
            with tempfile.TemporaryDirectory() as tmp:
                out = Path(tmp) / "eval.json"
                cmd = eval_command(m, data, str(out))
                r = subprocess.run(cmd, env=env, capture_output=True, text=True, cwd=ROOT)
                if r.returncode != 0:
                    raise SystemExit(f"{shlex.join(cmd)} failed:\n{r.stdout}{r.stderr}")
                d = json.loads(out.read_text())
            shown = f"OMP_NUM_THREADS=1 python -m cadyq eval --model {m} --data {data} --json OUT.json"
            rows.setdefault(m, {})[name] = {
                "command": shown, "backend": d["backend_choice"], "scale": d["scale"],
                "images": len(d["images"]), **{k: round(d["mean"][k], 4) for k in KEYS},
                "time_s": round(d["mean"]["time_s"], 3),
                "per_image": {i["name"]: {k: round(i[k], 4) for k in ("psnr", "ssim", "fqr")} for i in d["images"]}}
            print(f"{m:22s} {name:8s} {d['mean']['psnr']:.3f} / {d['mean']['ssim']:.4f} at FQR {d['mean']['fqr']:.2f} "
                  f"({len(d['images'])} photos)", flush=True)
            stored["date"] = datetime.date.today().isoformat()
            path.write_text(json.dumps(stored, indent=1, ensure_ascii=False) + "\n")
    return stored


def record(row: dict, label: str) -> dict:
    """What a zoo file's metadata keeps of one set's measurement."""
    return {"set": label, "images": row["images"], "psnr": row["psnr"], "ssim": row["ssim"], "fqr": row["fqr"],
            "bitops_g": row["bitops_g"], "bicubic_psnr": row["psnr_bicubic"],
            "measured": f"{row['command']} ({row['backend'].split(' (')[0]})"}


def write_extra(path: Path, update: dict, drop=("held_out",)) -> bool:
    """Put `update` into the `extra` metadata of the cadyq safetensors file `path` (other keys of extra kept, the
    `update` keys first, `drop` removed); tensors and the rest of the header untouched. False where the file already
    says so (nothing written)."""
    from safetensors import safe_open
    from safetensors.torch import save_file

    from cadyq.checkpoint import _META_KEY, parse_metadata
    from cadyq.outputs import atomic_write

    with safe_open(str(path), "pt") as f:
        header = dict(f.metadata() or {})
        tensors = {k: f.get_tensor(k) for k in f.keys()}
    meta = json.loads(header[_META_KEY])
    old = meta.get("extra", {})
    extra = dict(update) | {k: v for k, v in old.items() if k not in update and k not in drop}
    if extra == old and list(extra) == list(old):
        return False
    meta["extra"] = extra
    header[_META_KEY] = json.dumps(meta)
    parse_metadata(header[_META_KEY], path)  # still a valid cadyq header
    atomic_write(path, lambda tmp: save_file(tensors, tmp, metadata=header))
    return True


def apply(path: Path) -> int:
    from cadyq import zoo

    stored = json.loads(path.read_text())
    changed = 0
    for m, sets in stored["models"].items():
        update = {s: record(sets[s], stored["sets"][s]["label"]) for s in SETS}
        update["sets_measured"] = {"date": stored["date"], "commit": stored["commit"], "cpu": stored["cpu"],
                                   "json": "benchmarks/zoo_sets.json"}
        if write_extra(Path(zoo.path_of(m)), update):
            changed += 1
            print(f"{zoo.path_of(m)}: report {update['report']['psnr']:.3f} dB, decision {update['decision']['psnr']:.3f} dB")
    print(f"{changed} zoo file(s) rewritten, {len(stored['models']) - changed} already up to date")
    return 0


def table(stored: dict) -> str:
    n = {s: stored["sets"][s]["images"] for s in SETS}
    head = ["model", f"report set ({n['report']} KDE photos) PSNR / SSIM", "FQR", "vs pams8",
            f"decision set ({n['decision']} photos) PSNR / SSIM", "FQR", "vs pams8"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for scale in (4, 2):
        bic = next(r for m, r in stored["models"].items() if m.endswith(f"-x{scale}"))
        lines.append("| bicubic x%d | %.3f | | | %.3f | | |" % (scale, bic["report"]["psnr_bicubic"],
                                                                 bic["decision"]["psnr_bicubic"]))
        for m, r in stored["models"].items():
            if not m.endswith(f"-x{scale}"):
                continue
            ref = stored["models"].get(f"edsr-pams8-x{scale}")
            cells = [f"`{m}`"]
            for s in SETS:
                d = f"{r[s]['psnr'] - ref[s]['psnr']:+.3f}" if ref and "pams8" not in m else ""
                cells += [f"{r[s]['psnr']:.3f} / {r[s]['ssim']:.4f}", f"{r[s]['fqr']:.2f}", d]
            lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def bitmap(photo: str, model: str) -> None:
    import numpy as np
    from PIL import Image as PILImage

    from cadyq.data import photos
    from cadyq.data.io import Image, read_image, write_image
    from cadyq.data.resize import bicubic_downscale, mod_crop

    src = next(p for p in photos.REPORT if p.name == photo).path
    with tempfile.TemporaryDirectory() as tmp:
        lr = Path(tmp) / f"{photo}.png"
        hr = read_image(src).rgb
        write_image(lr, Image(bicubic_downscale(np.ascontiguousarray(mod_crop(hr, 4)), 4), None, 8, False, None, None,
                              "RGB"))
        cmd = [sys.executable, "-m", "cadyq", "upscale", str(lr), "-o", f"{tmp}/sr.png", "--model", model, "--bitmap"]
        subprocess.run(cmd, check=True, cwd=ROOT, env=os.environ | {"OMP_NUM_THREADS": "1"})
        pic = PILImage.open(f"{tmp}/sr_bits.png")
        out = ROOT / "docs" / f"{model}-bitmap.png"
        pic.resize((pic.width // 2, pic.height // 2), PILImage.LANCZOS).save(out, optimize=True)
    print(f"{out}: {photo} ({src}), {model}")


def main(argv=None):
    p = argparse.ArgumentParser()
    p.add_argument("what", choices=["measure", "apply", "table", "bitmap"])
    p.add_argument("--photo", default="EveningGlow", help="bitmap: the report-set photo")
    p.add_argument("--model", default="edsr-cadyq-alloc-x4", help="bitmap: the model")
    p.add_argument("--models", nargs="+", default=MODELS)
    p.add_argument("--json", type=Path, default=JSON)
    a = p.parse_args(argv)
    if a.what == "measure":
        measure(a.models, a.json)
        return 0
    if a.what == "apply":
        return apply(a.json)
    if a.what == "bitmap":
        bitmap(a.photo, a.model)
        return 0
    print(table(json.loads(a.json.read_text())))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
