"""Ship one trained zoo model: copy its weights into cadyq/zoo/NAME.safetensors with the metadata the model card
and tests/test_zoo.py read (the run, its iteration, its figures on the report set and on the decision set, and the
PSNR of tests/data/zoo_crop.png).

    python benchmarks/zoo_ship.py WEIGHTS NAME [--run RUN_DIR] [--decision DECISION_DIR] [--report REPORT_DIR] [--recipe TEXT]
    python benchmarks/zoo_ship.py RUN_DIR NAME --max-fqr 6.5 [--max-drop 0.1]
        (cadyq: of the iter-N.safetensors at FQR <= 6.5, the highest PSNR; with --max-drop, the lowest FQR whose PSNR
         is within that many dB of the teacher's decision-set PSNR: issue 8's target)

Two photo sets (cadyq.data.photos), kept apart: every choice here (which iter-N, the teacher's reference) is made on
the decision set, the run's validation (RUN_DIR/val.csv, made on the decision folder the run was given) or
--decision; the report set (KDE's photos, --report, default /work/data/report) is measured only after the weights are
chosen and written beside the decision figures, never compared with anything here (tests/test_photo_sets.py).

WEIGHTS: the run's best.safetensors (fp32, pams8) or an iter-N.safetensors (cadyq: the highest validation PSNR
is the 8-bit start, so the shipped one is picked by PSNR at the FQR target). The decision row of the same
iteration comes from RUN_DIR/val.csv (default: the folder of WEIGHTS), or with --decision (a run that did not
validate at that iteration) from validating WEIGHTS on DECISION_DIR with the trainer's protocol. --recipe: how the
weights were made, when not by benchmarks/train_zoo.sh alone.
"""
import argparse
import csv
import json
from pathlib import Path

from cadyq import checkpoint, zoo
from cadyq.data import photos
from cadyq.train.trainer import validate, validation_images
from cadyq.zoo.check import crop_psnr

ROW_KEYS = ("psnr", "ssim", "fqr", "bicubic_psnr", "bicubic_ssim")


def pick(run: Path, max_fqr: float | None, max_drop: float | None) -> Path:
    """The iter-N.safetensors of `run` at FQR <= max_fqr with the highest validation PSNR, or with max_drop the one
    with the lowest FQR among those within max_drop dB of the teacher's best validation PSNR."""
    refuse_report_run(run)
    rows = {int(r["iter"]): r for r in csv.DictReader(open(run / "val.csv"))}
    ok = [(float(rows[it]["psnr"]), float(rows[it]["fqr"]), f) for f in run.glob("iter-*.safetensors")
          if (it := int(f.stem.split("-")[1])) in rows and (max_fqr is None or float(rows[it]["fqr"]) <= max_fqr)]
    if max_drop is not None:
        teacher = Path(json.loads((run / "config.json").read_text())["teacher"])
        held = checkpoint.read_metadata(teacher).get("extra", {}).get("decision")  # a shipped teacher has no val.csv
        if not held:
            refuse_report_run(teacher.parent)
        ref = held["psnr"] if held else max(float(r["psnr"]) for r in csv.DictReader(open(teacher.parent / "val.csv")))
        ok = [(-fqr, psnr, f) for psnr, fqr, f in ok if psnr >= ref - max_drop]
    if not ok:
        raise SystemExit(f"{run}: no iter-N.safetensors validated at FQR <= {max_fqr}"
                         + (f" within {max_drop} dB of the teacher" if max_drop is not None else ""))
    return max(ok)[2]


def refuse_report_run(run: Path) -> None:
    """A run validated on the report set cannot be picked from (its val.csv was made there)."""
    cfg = run / "config.json"
    if cfg.is_file():
        photos.refuse_report(json.loads(cfg.read_text()).get("val"), use="pick a run on")


def decide(a) -> tuple[Path, Path, dict]:
    """The decision: which weights ship, and their decision-set row. Reads the decision set only."""
    photos.refuse_report(a.decision, use="decide on")
    if Path(a.weights).is_dir():
        a.run = a.weights
        a.weights = str(pick(Path(a.weights), a.max_fqr, a.max_drop))
    run = Path(a.run or Path(a.weights).parent)
    it = checkpoint.read_metadata(a.weights).get("extra", {}).get("iteration")
    if a.decision:
        model = checkpoint.load(a.weights)
        row = validate(model, validation_images(a.decision, model.config.scale), model.config.scale)
    else:
        refuse_report_run(run)
        rows = {int(r["iter"]): r for r in csv.DictReader(open(run / "val.csv"))}
        if it not in rows:
            raise SystemExit(f"{run / 'val.csv'} has no row for iteration {it}; pass --decision DIR to validate")
        row = rows[it]
    val = {k: round(float(row[k]), 4) for k in ROW_KEYS} | {"images": int(row["images"])}
    return Path(a.weights), run, val


def report(model, report_dir) -> dict:
    """The report set's row of the chosen weights: measured after the decision, only written down."""
    if not Path(report_dir).is_dir():
        photos.prepare_report(report_dir)
    row = validate(model, validation_images(report_dir, model.config.scale, report=True), model.config.scale)
    return {k: round(float(row[k]), 4) for k in ROW_KEYS} | {"images": int(row["images"])}


def main(argv=None):
    p = argparse.ArgumentParser()
    p.add_argument("weights")
    p.add_argument("name")
    p.add_argument("--run", default=None)
    p.add_argument("--max-fqr", type=float, default=None)
    p.add_argument("--max-drop", type=float, default=None)
    p.add_argument("--decision", "--val", dest="decision", default=None,
                   help="validate the weights on this decision folder instead of reading val.csv")
    p.add_argument("--report", default=photos.REPORT_DIR, help="the report set, measured and recorded only")
    p.add_argument("--recipe", default="benchmarks/train_zoo.sh")
    a = p.parse_args(argv)
    weights, run, val = decide(a)
    model = checkpoint.load(weights)
    extra = checkpoint.read_metadata(weights).get("extra", {})
    it = extra.get("iteration")
    kde = report(model, a.report)
    cfg_path = run / "config.json"  # absent for calibrated weights that were not trained (the recipe says so)
    config = json.loads(cfg_path.read_text()) if cfg_path.is_file() else {}
    train = {k: config[k] for k in ("method", "batch", "patch", "lr", "decay", "iters", "w_bit", "w_bit_step",
                                    "w_bit_every", "precision", "seed") if config.get(k) is not None}
    check = crop_psnr(model)
    meta = {"recipe": a.recipe, "iteration": it, "train": train,
            "train_data": "cadyq.data.photos, split train (MODEL_CARD.md lists every file)",
            "report": {"set": "report", "backend": "torch"} | kde,
            "decision": {"set": "decision", "backend": "torch"} | val, "crop_check": check}
    out = zoo.ZOO_DIR / f"{a.name}.safetensors"
    checkpoint.save(model, out, meta)
    print(f"{out}: iteration {it}; report set {kde['psnr']:.3f} dB at FQR {kde['fqr']:.2f} (bicubic "
          f"{kde['bicubic_psnr']:.3f}); decision set {val['psnr']:.3f} dB (bicubic {val['bicubic_psnr']:.3f}), FQR {val['fqr']:.2f}; "
          f"crop {check['psnr']:.3f} dB (bicubic {check['bicubic_psnr']:.3f})")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
