"""Issue 21's one table, assembled from the measurements stored beside this file (nothing is re-run here).

Each row names the JSON that `benchmarks/dynamic_vs_static.py --json` (or, for fp32, `cadyq eval --json`) wrote for
KDE's photos (the report set of cadyq.data.photos, quoted first) and for the zoo's 5 original held-out photos (the
decision set until issue 37 grew it to 22: every row here was chosen on those 5), and the model's name in it. A cell
with no measurement reads "-". The shipped models on today's two sets: benchmarks/zoo_sets.py.

    python benchmarks/allocation/summary.py [--scale 4|2]      # markdown, as in allocation.md and MODEL_CARD.md
"""
import argparse
import json
import re
from pathlib import Path

HERE = Path(__file__).parent

# (label, iterations of fine-tuning, (zoo val JSON, model), (KDE JSON, model)); the model is matched by name suffix,
# (None, None) where nothing was measured; a label naming a zoo file in backticks is a shipped model
ROWS = {
    4: [
        ("`edsr-fp32-x4`", "", ("eval_fp32_x4_val.json", None), ("eval_fp32_x4_kde.json", None)),
        ("`edsr-pams8-x4`", "", ("dvs_x4_val.json", "edsr-pams8-x4"), ("dvs_x4_kde.json", "edsr-pams8-x4")),
        ("`edsr-cadyq-x4` (the paper's recipe)", "250", ("dvs_x4_val.json", "edsr-cadyq-x4"),
         ("dvs_x4_kde.json", "edsr-cadyq-x4")),
        ("static 5.81 (sensitivity-guided)", "452", ("dvs_ft3s_x4_val.json", "ft3-static-5.85.safetensors"),
         ("dvs_ft3s_x4_kde.json", "ft3-static-5.85.safetensors")),
        ("uniform 6", "452", ("dvs_ft3u_x4_val.json", "ft3-uni6.safetensors"),
         ("dvs_ft3u_x4_kde.json", "ft3-uni6.safetensors")),
        ("cadyq allocated 5.35 (like for like)", "452", ("dvs_ft3_x4_val.json", "ft3-dyn-5.35.safetensors"),
         ("dvs_ft3_x4_kde.json", "ft3-dyn-5.35.safetensors")),
        ("**`edsr-cadyq-alloc-x4`** (the default)", "1,852", ("dvs_ft5_x4_val.json", "x4a-graft-5.38.safetensors"),
         ("dvs_ft5_x4_kde.json", "x4a-graft-5.38.safetensors")),
        ("static 5.00 (sensitivity-guided)", "0", ("dvs_gdq_x4_val.json", "x4-static-5.0.safetensors"),
         ("dvs_gdq_x4_kde.json", "x4-static-5.0.safetensors")),
        ("uniform 5", "0", ("dvs_uniform_x4_val.json", "x4-uniform-5.safetensors"),
         ("dvs_uniform_x4_kde.json", "x4-uniform-5.safetensors")),
        ("**`edsr-gdq-alloc-x4`** (Granular-DQ)", "0", ("dvs_gdqx_x4_val.json", "x4-gdqx-5.0.safetensors"),
         ("dvs_gdqx_x4_kde.json", "x4-gdqx-5.0.safetensors")),
    ],
    2: [
        ("`edsr-fp32-x2`", "", ("eval_fp32_x2_val.json", None), ("eval_fp32_x2_kde.json", None)),
        ("`edsr-pams8-x2`", "", ("dvs_x2_val.json", "edsr-pams8-x2"), ("dvs_x2_kde.json", "edsr-pams8-x2.safetensors")),
        ("`edsr-cadyq-x2` (the paper's recipe)", "750", ("dvs_x2_val.json", "edsr-cadyq-x2"),
         ("eval_cadyq_x2_kde.json", None)),
        ("static 6.00 (sensitivity-guided)", "452", ("dvs_ft3s_x2_val.json", "ft3-x2-static6.safetensors"),
         ("dvs_ft3s_x2_kde.json", "ft3-x2-static6.safetensors")),
        ("cadyq allocated 5.5 (like for like)", "452", ("dvs_ft3_x2_val.json", "ft3-x2-dyn-452.safetensors"),
         ("dvs_x2_kde.json", "ft3-x2-dyn-452.safetensors")),
        ("static 6.00 (sensitivity-guided)", "1,150", ("dvs_ft4s_x2_val.json", "ft4-x2-static6.safetensors"),
         (None, None)),
        ("cadyq allocated 5.5 (like for like)", "1,150", ("dvs_ft4_x2_val.json", "ft4-x2-dyn-1150.safetensors"),
         ("dvs_ft4_x2_kde.json", "ft4-x2-dyn-1150.safetensors")),
        ("**`edsr-cadyq-alloc-x2`**", "3,550", ("dvs_ft10_x2_val.json", "ft10-x2-anneal.safetensors"),
         ("dvs_ft10_x2_kde.json", "ft10-x2-anneal.safetensors")),
        ("static 5.00 (sensitivity-guided)", "0", ("dvs_x2_val.json", "x2-static-5.0.safetensors"),
         ("dvs_static5_x2_kde.json", "x2-static-5.0.safetensors")),
        ("uniform 5", "0", ("dvs_gdq_x2_val.json", "x2-uniform-5.safetensors"),
         ("dvs_uniform5_x2_kde.json", "x2-uniform-5.safetensors")),
        ("**`edsr-gdq-alloc-x2`** (Granular-DQ)", "0", ("dvs_gdqx_x2_val.json", "x2-gdqx-5.0.safetensors"),
         ("dvs_gdqx_x2_kde.json", "edsr-gdq-alloc-x2.safetensors")),
    ],
}


def measured(source):
    """The row of `model` in a stored JSON (a cadyq eval JSON: its mean), or None where nothing was measured."""
    name, model = source
    if name is None:
        return None
    if not (HERE / name).is_file():
        raise SystemExit(f"{HERE / name}: no such measurement")
    d = json.loads((HERE / name).read_text())
    if "rows" not in d:
        return d["mean"]
    hits = [r for r in d["rows"] if r["model"].endswith(model)]
    if len(hits) != 1:
        raise SystemExit(f"{name}: {len(hits)} rows named *{model}")
    return hits[0]


def shipped():
    """(zoo name, its KDE row) for every row of a shipped model."""
    for rows in ROWS.values():
        for label, _, _, kde in rows:
            if name := re.search(r"`(edsr-[a-z0-9-]+)`", label):
                yield name[1], measured(kde)


def cells(r):
    if r is None:
        return ["-"] * 5
    dyn = "spread" in r and r["spread"] > 0
    return [f"{r['psnr']:.3f} / {r['ssim']:.4f}", f"{r['fqr']:.2f}", f"{r['bitops_g']:.1f}",
            f"{r['spread']:.2f}" if "spread" in r else "-",
            f"{r['rho_gradient']:+.2f} / {r['rho_sensitivity']:+.2f}" if dyn else "-"]


def table(scale):
    head = ["model", "it.", "KDE (report set) PSNR / SSIM", "FQR", "BitOPs (G)", "spread", "rho grad. / sens.",
            "zoo val (5) PSNR / SSIM", "FQR", "BitOPs (G)", "spread", "rho grad. / sens."]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for label, iters, val, kde in ROWS[scale]:
        lines.append("| " + " | ".join([label, iters] + cells(measured(kde)) + cells(measured(val))) + " |")
    return "\n".join(lines)


def main(argv=None):
    p = argparse.ArgumentParser()
    p.add_argument("--scale", type=int, choices=sorted(ROWS), action="append")
    for s in p.parse_args(argv).scale or sorted(ROWS, reverse=True):
        print(f"x{s}\n\n{table(s)}\n")


if __name__ == "__main__":
    main()
