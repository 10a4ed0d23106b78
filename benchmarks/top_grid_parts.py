"""Where the one arithmetic (`cadyq.quant.ops.on_top_grid`) costs accuracy: the torch reference (`cadyq eval --backend
torch`) with a dynamic quantizer computed four ways, on photos of one set.

    paper   fq(x, a_k, s_k)                      the papers' quantizer (the arithmetic before issue 36)
    outer   fq(fq(x, a_k, s_k), a_T, s_T)        the chosen levels re-expressed on the 8-bit grid only
    inner   fq(fq(x, a_T, s_T), a_k, s_k)        the input rounded to the 8-bit grid first only
    one     fq(fq(fq(x, a_T, s_T), a_k, s_k), a_T, s_T)   both: what every executor computes now

The selection statistics follow each variant's input (x for paper/outer, the 8-bit tensor for inner/one).

    python benchmarks/top_grid_parts.py --model edsr-gdq-alloc-x4 --data /work/data/zoo/decision
"""
import argparse
import json
import tempfile
from pathlib import Path

VARIANTS = ("paper", "outer", "inner", "one")


def patch(variant: str) -> None:
    import cadyq.quant.quantizers as Q
    from cadyq.quant.ops import fake_quant, on_top_grid

    if variant == "one":
        return

    def variant_fn(x, alpha, s, k=None):
        a_t, s_t = alpha[-1], s[-1]
        x_in = fake_quant(x, a_t, s_t) if variant == "inner" else x
        if k is None:
            return (x_in,)
        y = fake_quant(x_in, alpha[k].view(-1, 1, 1, 1), s[k].view(-1, 1, 1, 1))
        return x_in, fake_quant(y, a_t, s_t) if variant == "outer" else y

    assert on_top_grid is Q.on_top_grid
    Q.on_top_grid = variant_fn


def run(variant: str, model: str, data: str) -> dict:
    """`cadyq eval` in a fresh interpreter with the quantizer computed as `variant`."""
    import subprocess
    import sys

    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "eval.json"
        subprocess.run([sys.executable, __file__, "--one", variant, "--", "eval", "--model", model, "--data", data,
                        "--backend", "torch", "--json", str(out)], check=True, stdout=subprocess.DEVNULL)
        return json.loads(out.read_text())


def main(argv=None):
    import sys

    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["--one"]:  # the child: patch, then the command line of cadyq
        patch(argv[1])
        from cadyq.cli import main as cadyq_main

        raise SystemExit(cadyq_main(argv[3:]))
    p = argparse.ArgumentParser()
    p.add_argument("--model", default="edsr-gdq-alloc-x4")
    p.add_argument("--data", required=True)
    p.add_argument("--variants", nargs="*", default=list(VARIANTS), choices=VARIANTS)
    a = p.parse_args(argv)
    rows = {v: run(v, a.model, a.data) for v in a.variants}
    base = rows[a.variants[0]]["mean"]["psnr"]
    print(f"{a.model} on {a.data} ({len(rows[a.variants[0]]['images'])} photos), cadyq eval --backend torch")
    print("| variant | PSNR (Y) | vs " + a.variants[0] + " | FQR |\n|---|---|---|---|")
    for v, d in rows.items():
        print(f"| {v} | {d['mean']['psnr']:.4f} | {d['mean']['psnr'] - base:+.4f} | {d['mean']['fqr']:.2f} |")


if __name__ == "__main__":
    main()
