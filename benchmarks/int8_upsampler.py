"""Issue 36 on the photos: every shipped quantized model on the report set and the decision set, on the native backend
with the upsampler and tail in float (the papers') and in INT8 (the default on CPUs with VNNI/AMX), and the float
run against the figures measured before the one arithmetic of `cadyq.quant.ops.on_top_grid` (benchmarks/zoo_sets.json
at a14f642, kept in the JSON under "before"; the same protocol: `cadyq eval`, backend native, one thread, 1024x768
centre crops).

    python benchmarks/int8_upsampler.py [--models M ...] [--json benchmarks/int8_upsampler.json]
    python benchmarks/int8_upsampler.py table [--json ...]
"""
import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
JSON = ROOT / "benchmarks" / "int8_upsampler.json"
MODELS = ["edsr-pams8-x4", "edsr-cadyq-x4", "edsr-cadyq-alloc-x4", "edsr-gdq-alloc-x4",
          "edsr-pams8-x2", "edsr-cadyq-x2", "edsr-cadyq-alloc-x2", "edsr-gdq-alloc-x2"]
SETS = ("report", "decision")


def evaluate(model: str, data: str, upsampler: str) -> dict:
    env = os.environ | {"OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "eval.json"
        cmd = [sys.executable, "-m", "cadyq", "eval", "--model", model, "--data", data, "--backend", "native",
               "--int8-upsampler", upsampler, "--json", str(out)]
        r = subprocess.run(cmd, env=env, capture_output=True, text=True, cwd=ROOT)
        if r.returncode != 0:
            raise SystemExit(f"{' '.join(cmd)} failed:\n{r.stdout}{r.stderr}")
        d = json.loads(out.read_text())
    return {"psnr": round(d["mean"]["psnr"], 4), "ssim": round(d["mean"]["ssim"], 4), "fqr": round(d["mean"]["fqr"], 4),
            "command": f"OMP_NUM_THREADS=1 python -m cadyq eval --model {model} --data {data} --backend native "
                       f"--int8-upsampler {upsampler}", "backend": d["backend_choice"]}


def measure(models, path: Path) -> dict:
    sys.path.insert(0, str(ROOT / "benchmarks"))
    from zoo_sets import commit, cpu_flags, set_dirs

    stored = json.loads(path.read_text()) if path.is_file() else {}
    stored.update({"cpu": cpu_flags(), "commit": commit(), "threads": 1})
    rows = stored.setdefault("models", {})
    for m in models:
        for name, data in set_dirs().items():
            for up in ("off", "on"):
                rows.setdefault(m, {}).setdefault(name, {})[up] = r = evaluate(m, data, up)
                print(f"{m:22s} {name:8s} upsampler {up:3s}: {r['psnr']:.3f} / {r['ssim']:.4f} FQR {r['fqr']:.2f}",
                      flush=True)
                path.write_text(json.dumps(stored, indent=1) + "\n")
    return stored


def table(path: Path) -> str:
    stored = json.loads(path.read_text())
    before = stored.get("before", {}).get("psnr", {})
    lines = ["| model | set | before (a14f642) | one arithmetic, float upsampler | change | INT8 upsampler and tail | "
             "cost |", "|---|---|---|---|---|---|---|"]
    for m, sets in stored["models"].items():
        for name in SETS:
            if name not in sets:
                continue
            off, on, old = sets[name]["off"], sets[name]["on"], before.get(m, {}).get(name)
            change = f"{off['psnr'] - old:+.4f}" if old is not None else "-"
            lines.append(f"| `{m}` | {name} | {old if old is not None else '-'} | {off['psnr']:.4f} | {change} | "
                         f"{on['psnr']:.4f} | {on['psnr'] - off['psnr']:+.4f} |")
    return "\n".join(lines)


def main(argv=None):
    p = argparse.ArgumentParser()
    p.add_argument("what", nargs="?", default="measure", choices=("measure", "table"))
    p.add_argument("--models", nargs="*", default=MODELS)
    p.add_argument("--json", type=Path, default=JSON)
    a = p.parse_args(argv)
    if a.what == "measure":
        measure(a.models, a.json)
    print(table(a.json))


if __name__ == "__main__":
    main()
