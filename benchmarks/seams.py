"""Seams: is the stitched SR worse where two tiles meet, and more so where their bits differ?

A seam is where `cadyq upscale` hands the image from one tile to the next (`TileGrid.bounds`: the middle of the
overlap). Each side of it was computed from a different crop of the LR image, with the zero padding of the tile's
border a few pixels away and, for a dynamic model, with different bits. What the eye sees there is a step that the
photo does not have, so the measure is the error of the SR's step across the seam against the HR's:

    e(c) = mean over the seam's rows of |(SR[:, c] - SR[:, c-1]) - (HR[:, c] - HR[:, c-1])|   (RGB, 0..255)

at the seam column c, against the same at the columns k, 2k, 3k px away on either side (k = lcm(8, scale): the same
phase within an LR pixel, whose step errors differ, and within the 8-px blocks of the JPEG photos; the same content,
no seam); the same for horizontal seams. A seam's ratio e(seam) / e(near) is about 1 where the seam cannot be told
from its surroundings (`--untiled`: the same positions in the SR of the whole image as one tile). Seams are grouped by
the difference of the two tiles' mean bits, so a seam that bit differences cause shows as a ratio growing with |delta
bits|; the fp32 model gives the tiling's own seams (no bits).

    python benchmarks/seams.py MODEL... [--val FOLDER...] [--overlap 6 12] [--backend auto] [--json OUT]
"""
import argparse
import json
import math

import numpy as np

import cadyq
from cadyq.data.layouts import find_pairs, load_pair
from cadyq.tiling import plan_tiles

BUCKETS = ((0.0, 0.0), (0.0, 0.5), (0.5, 1.0), (1.0, 99.0))  # |delta bits|: equal, then (lo, hi]


def step_error(sr: np.ndarray, hr: np.ndarray, c: int, r0: int, r1: int) -> float:
    """Mean |SR step - HR step| between columns c-1 and c over rows [r0, r1) (arrays HxWx3, float)."""
    d = (sr[r0:r1, c] - sr[r0:r1, c - 1]) - (hr[r0:r1, c] - hr[r0:r1, c - 1])
    return float(np.abs(d).mean())


def near(scale: int) -> list[int]:
    """HR px from the seam of the reference columns."""
    k = math.lcm(8, scale)
    return [k, 2 * k, 3 * k]


def seams(sr: np.ndarray, hr: np.ndarray, grid, scale: int, tile_bits: np.ndarray):
    """One row per seam segment: (|delta bits|, e at the seam, mean e at the `near` columns)."""
    by, bx = grid.bounds(scale)
    out = []
    t = (1, 0, 2)  # horizontal seams are the vertical ones of the transposed images
    for img, ref, bits, cuts, spans in ((sr, hr, tile_bits, bx, by),
                                        (sr.transpose(t), hr.transpose(t), tile_bits.T, by, bx)):
        w = img.shape[1]
        for j, c in enumerate(cuts[1:-1], start=1):  # the seam between tile columns j-1 and j
            for r in range(len(spans) - 1):
                r0, r1 = spans[r], spans[r + 1]
                ref_e = [step_error(img, ref, c + s * k, r0, r1)
                         for k in near(scale) for s in (-1, 1) if 1 <= c + s * k < w]
                out.append((abs(float(bits[r, j] - bits[r, j - 1])), step_error(img, ref, c, r0, r1),
                            float(np.mean(ref_e))))
    return out


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("models", nargs="+")
    p.add_argument("--val", nargs="+", default=["/work/data/zoo/decision"], help="folders of HR photos")
    p.add_argument("--overlap", type=int, nargs="+", default=[6], help="LR px (cadyq upscale: 6)")
    p.add_argument("--backend", default="auto")
    p.add_argument("--untiled", action="store_true", help="also each model on the whole image as one tile, measured "
                   "at the seams of the first --overlap: the metric's no-seam level on these photos")
    p.add_argument("--json")
    a = p.parse_args(argv)
    pairs, rows = {}, []  # scale -> [(LR, HR)] of every photo, made once (cadyq eval's pairs: bicubic LR)
    print("| model | overlap | seams | seam / near error, all | by abs(delta bits): 0 | (0, 0.5] | (0.5, 1] | > 1 |"
          " excess at the seam (levels) |\n|---|---|---|---|---|---|---|---|---|")
    for m in a.models:
        for ov in a.overlap + (["untiled"] if a.untiled else []):
            untiled = ov == "untiled"
            up = cadyq.Upscaler(m, backend=a.backend, device="cpu", overlap=a.overlap[0] if untiled else ov)
            s, found = up.scale, []
            if s not in pairs:
                pairs[s] = [load_pair(pr, s) for v in a.val for pr in find_pairs(v, s)]
            for lr, hr in pairs[s]:
                grid = plan_tiles(lr.shape[0], lr.shape[1], up.tile, up.overlap)
                if untiled:  # one tile for the whole image, measured where the tiled run has its seams
                    whole = cadyq.Upscaler(up.backend, tile=max(lr.shape[:2]), overlap=0)
                    r = whole.upscale(lr)
                    tile_bits = np.full((grid.rows, grid.cols), float(r.bit_map.float().mean()))
                else:
                    r = up.upscale(lr)
                    assert r.grid == grid
                    tile_bits = r.bit_map.float().mean(-1).numpy()
                found += seams(r.array.astype(np.float64), hr.astype(np.float64), grid, s, tile_bits)
            d, e, n = (np.array(x) for x in zip(*found))
            ratio = e / np.maximum(n, 1e-9)
            cells, by_bits = [], {}
            for lo, hi in BUCKETS:
                sel = d == 0 if hi == 0 else (d > lo) & (d <= hi)
                key = "0" if hi == 0 else f"({lo}, {hi}]"
                by_bits[key] = {"seams": int(sel.sum()), "ratio": float(ratio[sel].mean()) if sel.any() else None}
                cells.append(f"{ratio[sel].mean():.3f} ({sel.sum()})" if sel.any() else "-")
            row = {"model": m, "overlap": ov, "seams": len(d), "ratio": float(ratio.mean()),
                   "excess_levels": float((e - n).mean()), "by_delta_bits": by_bits}
            rows.append(row)
            print(f"| {m} | {ov} | {len(d)} | {row['ratio']:.3f} | " + " | ".join(cells)
                  + f" | {row['excess_levels']:+.3f} |", flush=True)
    if a.json:
        with open(a.json, "w") as f:
            json.dump({"val": a.val, "near_px": near(up.scale), "rows": rows}, f, indent=1)


if __name__ == "__main__":
    main()
