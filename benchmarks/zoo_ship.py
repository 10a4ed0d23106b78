"""Ship one trained zoo model: copy its weights into cadyq/zoo/NAME.safetensors with the metadata the model card
and tests/test_zoo.py read (the run, its iteration, its validation row, and the PSNR of tests/data/zoo_crop.png).

    python benchmarks/zoo_ship.py WEIGHTS NAME [--run RUN_DIR] [--val VAL_DIR] [--recipe TEXT]
    python benchmarks/zoo_ship.py RUN_DIR NAME --max-fqr 6.5 [--max-drop 0.1]
        (cadyq: of the iter-N.safetensors at FQR <= 6.5, the highest PSNR; with --max-drop, the lowest FQR whose PSNR
         is within that many dB of the teacher's best validation PSNR: issue 8's target)

WEIGHTS: the run's best.safetensors (fp32, pams8) or an iter-N.safetensors (cadyq: the highest validation PSNR
is the 8-bit start, so the shipped one is picked by PSNR at the FQR target). The validation row of the same
iteration comes from RUN_DIR/val.csv (default: the folder of WEIGHTS), or with --val (a run that did not validate
at that iteration) from validating WEIGHTS on VAL_DIR with the trainer's protocol. --recipe: how the weights were
made, when not by benchmarks/train_zoo.sh alone.
"""
import argparse
import csv
import json
from pathlib import Path

from cadyq import checkpoint, zoo
from cadyq.train.trainer import validate, validation_images
from cadyq.zoo.check import crop_psnr


def pick(run: Path, max_fqr: float | None, max_drop: float | None) -> Path:
    """The iter-N.safetensors of `run` at FQR <= max_fqr with the highest validation PSNR, or with max_drop the one
    with the lowest FQR among those within max_drop dB of the teacher's best validation PSNR."""
    rows = {int(r["iter"]): r for r in csv.DictReader(open(run / "val.csv"))}
    ok = [(float(rows[it]["psnr"]), float(rows[it]["fqr"]), f) for f in run.glob("iter-*.safetensors")
          if (it := int(f.stem.split("-")[1])) in rows and (max_fqr is None or float(rows[it]["fqr"]) <= max_fqr)]
    if max_drop is not None:
        teacher = Path(json.loads((run / "config.json").read_text())["teacher"])
        held = checkpoint.read_metadata(teacher).get("extra", {}).get("held_out")  # a shipped teacher has no val.csv
        ref = held["psnr"] if held else max(float(r["psnr"]) for r in csv.DictReader(open(teacher.parent / "val.csv")))
        ok = [(-fqr, psnr, f) for psnr, fqr, f in ok if psnr >= ref - max_drop]
    if not ok:
        raise SystemExit(f"{run}: no iter-N.safetensors validated at FQR <= {max_fqr}"
                         + (f" within {max_drop} dB of the teacher" if max_drop is not None else ""))
    return max(ok)[2]


def main(argv=None):
    p = argparse.ArgumentParser()
    p.add_argument("weights")
    p.add_argument("name")
    p.add_argument("--run", default=None)
    p.add_argument("--max-fqr", type=float, default=None)
    p.add_argument("--max-drop", type=float, default=None)
    p.add_argument("--val", default=None, help="validate the weights on this folder instead of reading val.csv")
    p.add_argument("--recipe", default="benchmarks/train_zoo.sh")
    a = p.parse_args(argv)
    if Path(a.weights).is_dir():
        a.run = a.weights
        a.weights = str(pick(Path(a.weights), a.max_fqr, a.max_drop))
    run = Path(a.run or Path(a.weights).parent)
    model = checkpoint.load(a.weights)
    extra = checkpoint.read_metadata(a.weights).get("extra", {})
    it = extra.get("iteration")
    if a.val:
        row = validate(model, validation_images(a.val, model.config.scale), model.config.scale)
    else:
        rows = {int(r["iter"]): r for r in csv.DictReader(open(run / "val.csv"))}
        if it not in rows:
            raise SystemExit(f"{run / 'val.csv'} has no row for iteration {it}; pass --val VAL_DIR to validate")
        row = rows[it]
    val = {k: round(float(row[k]), 4) for k in ("psnr", "ssim", "fqr", "bicubic_psnr", "bicubic_ssim")}
    val["images"] = int(row["images"])
    cfg_path = run / "config.json"  # absent for calibrated weights that were not trained (the recipe says so)
    config = json.loads(cfg_path.read_text()) if cfg_path.is_file() else {}
    train = {k: config[k] for k in ("method", "batch", "patch", "lr", "decay", "iters", "w_bit", "w_bit_step",
                                    "w_bit_every", "precision", "seed") if config.get(k) is not None}
    check = crop_psnr(model)
    meta = {"recipe": a.recipe, "iteration": it, "train": train,
            "train_data": "cadyq.data.photos, split train (MODEL_CARD.md lists every file)",
            "held_out": val, "crop_check": check}
    out = zoo.ZOO_DIR / f"{a.name}.safetensors"
    checkpoint.save(model, out, meta)
    print(f"{out}: iteration {it}, held-out {val['psnr']:.3f} dB (bicubic {val['bicubic_psnr']:.3f}), FQR {val['fqr']:.2f}; "
          f"crop {check['psnr']:.3f} dB (bicubic {check['bicubic_psnr']:.3f})")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
