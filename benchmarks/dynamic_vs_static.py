"""Issue 21's table: do a model's bits follow content, and does that beat one bit-width per layer at the same FQR?

For each model, on a folder of held-out HR photos (bicubic LR, `cadyq eval`'s protocol): PSNR/SSIM (Y), FQR,
BitOPs; and over the tiles `cadyq upscale` cuts (96 px, 6 px overlap): the spread of per-tile FQR (p90 - p10), the
Spearman correlation of tile bits with the tile's image gradient and with its measured sensitivity. A tile's
sensitivity is measured once, on a reference model (default: edsr-pams8-x4 with MSE clip values for 4/6/8 bits, the
CADyQ starting point): the mean squared change of its SR tile when every layer drops from 8 to 4 bits.

    python benchmarks/dynamic_vs_static.py MODEL... [--decision /work/data/zoo/decision] [--reference CKPT] [--json OUT]
        [--report /work/data/report --report-json OUT_REPORT]

Two photo sets (cadyq.data.photos): the table that allocation decisions are read from is measured on the decision set
(--decision; the report set is refused there); with --report the same models are measured on the report set (KDE's
photos) afterwards and written beside it (--report-json), for reporting only.
"""
import argparse
import json
import sys
from pathlib import Path

import numpy as np
import torch
from scipy.stats import spearmanr

import cadyq
from cadyq.calib import calibrate, photo_tiles
from cadyq.calib.allocate import force_candidates
from cadyq.checkpoint import load_model
from cadyq.cli import main as cli
from cadyq.data import photos
from cadyq.data.io import list_images, read_image
from cadyq.data.resize import bicubic_downscale, mod_crop
from cadyq.quant import dynamic_quantizers
from cadyq.quant.ops import tile_gradient
from cadyq.tiling import iter_batches, plan_tiles


def val_tiles(val, scale):
    """LR tiles of every held-out photo in `cadyq upscale`'s grid: [T,3,96,96] and each photo's LR."""
    tiles, lrs = [], []
    for path in list_images([val]):
        lr = bicubic_downscale(np.ascontiguousarray(mod_crop(read_image(path).rgb, scale)), scale)
        lrs.append(lr)
        t = torch.from_numpy(lr).permute(2, 0, 1).float()
        for _, batch in iter_batches(t, plan_tiles(lr.shape[0], lr.shape[1]), 64):
            tiles.append(batch.float())
    return torch.cat(tiles), lrs


@torch.no_grad()
def tile_sensitivity(ref, tiles, batch=8):
    """Per tile: mean squared change of the SR tile, every selector forced from the top candidate to the lowest."""
    sel = dynamic_quantizers(ref)

    def run(k):
        force_candidates(sel, [k] * len(sel))
        return torch.cat([ref(tiles[i:i + batch]) for i in range(0, len(tiles), batch)])
    return ((run(0) - run(-1)) ** 2).mean(dim=(1, 2, 3)).numpy()


def measure_set(models, folder, ref, backend):
    """The table's rows on one folder of HR photos, and each tile's gradient and sensitivity."""
    s = cadyq.Upscaler(models[0], backend=backend, device="cpu").scale
    tiles, lrs = val_tiles(folder, s)
    grad = tile_gradient(tiles).sum(1).numpy()
    sens = tile_sensitivity(ref, tiles)
    rows = []
    for m in models:
        ev = Path("/tmp") / f"dvs_{Path(m).stem}.json"
        assert cli(["eval", "--model", m, "--data", folder, "--backend", backend, "--json", str(ev)]) == 0
        mean = json.loads(ev.read_text())["mean"]
        up = cadyq.Upscaler(m, backend=backend, device="cpu")
        bits = np.concatenate([up.upscale(lr).bit_map.float().mean(-1).reshape(-1).numpy() for lr in lrs])
        flat = np.ptp(bits) == 0
        rows.append({"model": m, "psnr": mean["psnr"], "ssim": mean["ssim"], "fqr": mean["fqr"],
                     "bitops_g": mean["bitops_g"], "tiles": int(bits.size),
                     "tile_fqr_p10": float(np.percentile(bits, 10)), "tile_fqr_p90": float(np.percentile(bits, 90)),
                     "spread": float(np.percentile(bits, 90) - np.percentile(bits, 10)),
                     "rho_gradient": float("nan") if flat else float(spearmanr(bits, grad).statistic),
                     "rho_sensitivity": float("nan") if flat else float(spearmanr(bits, sens).statistic)})
    print(f"{folder} ({len(lrs)} photos, {tiles.shape[0]} tiles), backend {backend}; "
          f"rho(gradient, sensitivity) = {spearmanr(grad, sens).statistic:+.3f}")
    print("| model | PSNR | SSIM | FQR | BitOPs (G) | per-tile FQR p10..p90 (spread) | rho vs gradient | rho vs sensitivity |")
    print("|---|---|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['model']} | {r['psnr']:.3f} | {r['ssim']:.4f} | {r['fqr']:.2f} | {r['bitops_g']:.1f} | "
              f"{r['tile_fqr_p10']:.2f}..{r['tile_fqr_p90']:.2f} ({r['spread']:.2f}) | {r['rho_gradient']:+.3f} | "
              f"{r['rho_sensitivity']:+.3f} |")
    return rows, grad, sens


def main(argv=None):
    p = argparse.ArgumentParser()
    p.add_argument("models", nargs="+")
    p.add_argument("--decision", "--val", dest="decision", default=photos.DECISION_DIR,
                   help="the decision set (HR photos) the table is read from")
    p.add_argument("--report", help="also measure the report set (HR photos: KDE's), only to report it")
    p.add_argument("--report-json", help="where the report set's table goes (with --report)")
    p.add_argument("--reference", help="cadyq checkpoint whose forced 8 -> 4-bit drop measures tile sensitivity "
                                       "(default: edsr-pams8-x{scale} with MSE clips from --calib)")
    p.add_argument("--calib", default="/work/data/zoo/train")
    p.add_argument("--backend", default="native")
    p.add_argument("--json")
    a = p.parse_args(argv)
    photos.refuse_report(a.decision, a.calib, use="decide on")
    s = cadyq.Upscaler(a.models[0], backend=a.backend, device="cpu").scale
    if a.reference:
        ref = load_model(a.reference)
    else:
        batches, _ = photo_tiles(a.calib, s, max_tiles=64)
        ref = calibrate(load_model(f"edsr-pams8-x{s}"), batches, target="cadyq", method="mse")
    ref.eval()
    sets = [("decision", a.decision, a.json)] + ([("report", a.report, a.report_json)] if a.report else [])
    for name, folder, out in sets:  # the decision set first: nothing measured on the report set can feed it
        rows, grad, sens = measure_set(a.models, folder, ref, a.backend)
        if out:
            Path(out).write_text(json.dumps({"set": name, "val": folder, "backend": a.backend, "rows": rows,
                                             "tile_gradient": grad.tolist(), "tile_sensitivity": sens.tolist()},
                                            indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
