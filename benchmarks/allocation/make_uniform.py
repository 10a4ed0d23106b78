"""Uniform-bit baselines: every tile and every layer at one candidate, by fixing a calibrated model's bit choice.

Granular-DQ checkpoint (4, 5, 6, 8 bits): its controller gets GBC class b0/b2/b3 with a constant bias, and for b1
the b3 class with E2B thresholds that send every tile to b1 (t1 < 0 <= entropy <= t2).
CADyQ checkpoint (4, 6, 8 bits): every per-layer selector gets a constant bias (the same clip values, method and
training recipe as the dynamic and static allocations, so fine-tunes compare like for like).

    python benchmarks/allocation/make_uniform.py /work/alloc/x4-gdq-6.0.safetensors /work/alloc      # -> x4-uniform-{4,5,6,8}
    python benchmarks/allocation/make_uniform.py /work/alloc/x4-static-6.0.safetensors /work/alloc   # -> x4-cadyq-uniform-{4,6,8}
"""
import sys
from pathlib import Path

import torch

from cadyq import save
from cadyq.calib.allocate import force_candidates
from cadyq.checkpoint import load_model
from cadyq.quant.transform import dynamic_quantizers, quant_config


def gdq_uniform(src: str, out: Path) -> None:
    for k in range(4):
        m = load_model(src)
        g = m.gdq
        with torch.no_grad():
            g.gbc.weight.zero_()
            g.gbc.bias.zero_()
            g.gbc.bias[{0: 0, 1: 2, 2: 1, 3: 2}[k]] = 1.0  # GBC classes: 0 -> b0, 1 -> b2, 2 -> b3 (refined by E2B)
            g.thresholds.copy_(torch.tensor([-1.0, 1e9]) if k == 1 else torch.tensor([-1.0, -1.0]))
        path = out / f"x{m.config.scale}-uniform-{g.bits[k]}.safetensors"
        save(m, path)
        print(path)


def cadyq_uniform(src: str, out: Path) -> None:
    for k in range(3):
        m = load_model(src)
        sel = dynamic_quantizers(m)
        force_candidates(sel, [k] * len(sel))
        bits = int(sel[0].bits[k])
        path = out / f"x{m.config.scale}-cadyq-uniform-{bits}.safetensors"
        save(m, path)
        print(path)


src, out = sys.argv[1], Path(sys.argv[2])
(gdq_uniform if quant_config(load_model(src)).method == "gdq" else cadyq_uniform)(src, out)
