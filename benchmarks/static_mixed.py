"""The honest baseline of a dynamic-bit model (issue 21, item 4): static mixed precision at the same FQR.

One bit-width per layer, the same for every tile, allocated by the measured sensitivity (`benchmarks/sensitivity.py`):
the layers whose single-layer 8 -> 4-bit drop damages the SR least get 4 bits, as many as the target FQR allows,
the rest 8 bits. Built from the pams8 model with per-candidate MSE clip values (as the sensitivity was measured)
and constant selectors (weights 0, one-hot bias: every tile takes the layer's bit-width), then evaluated with
`cadyq eval` on the held-out photos beside the pams8 and dynamic models.

    python benchmarks/static_mixed.py --sensitivity benchmarks/sensitivity_pams8_x4.json --fqr 6.37 \
        [--model edsr-pams8-x4] [--data /work/data/zoo] [--out /tmp/static_mixed]
"""
import argparse
import json
import math
import subprocess
import sys
from pathlib import Path

import torch

from cadyq.calib import calibrate, photo_tiles
from cadyq.checkpoint import load_model, save
from cadyq.quant import dynamic_quantizers


def allocation(damage: list[float], fqr: float, low: int = 4, high: int = 8) -> list[int]:
    """Bits per layer: `low` for the least damaging layers, as few as bring the mean bit-width to `fqr` or below."""
    n = len(damage)
    n_low = min(n, max(0, math.ceil(n * (high - fqr) / (high - low) - 1e-9)))
    bits = [high] * n
    for j in sorted(range(n), key=lambda j: damage[j])[:n_low]:
        bits[j] = low
    return bits


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--sensitivity", required=True)
    p.add_argument("--fqr", type=float, required=True, help="the dynamic model's FQR to match (at most)")
    p.add_argument("--model", default="edsr-pams8-x4")
    p.add_argument("--data", default="/work/data/zoo")
    p.add_argument("--out", default="/tmp/static_mixed")
    a = p.parse_args()
    out = Path(a.out)
    out.mkdir(parents=True, exist_ok=True)
    sens = json.loads(Path(a.sensitivity).read_text())
    bits = allocation(sens["mean_sensitivity_per_layer"], a.fqr)
    pams = load_model(a.model)
    batches, _ = photo_tiles(f"{a.data}/train", pams.config.scale, max_tiles=64)
    model = calibrate(pams, batches, target="cadyq", method="mse")
    sel = dynamic_quantizers(model)
    assert len(sel) == len(bits), (len(sel), len(bits))
    with torch.no_grad():
        for q, b in zip(sel, bits):
            q.net.weight.zero_()
            q.net.bias.zero_()
            q.net.bias[q.bits.tolist().index(float(b))] = 1.0
    name = f"static-{sum(bits) / len(bits):.2f}"
    path = out / f"{name}.safetensors"
    save(model, path, {"static_mixed": {"bits": bits, "from": a.model, "sensitivity": a.sensitivity}})
    print(f"{name}: bits per layer {bits} (FQR {sum(bits) / len(bits):.3f})")
    subprocess.run([sys.executable, "-m", "cadyq", "eval", "--model", str(path), "--data", f"{a.data}/decision",
                    "--backend", "native", "--json", str(out / f"{name}.json")], check=True)


if __name__ == "__main__":
    main()
