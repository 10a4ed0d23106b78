"""Uniform-bit baselines from a calibrated Granular-DQ checkpoint: every tile and every layer at one of its
candidates (4, 5, 6 or 8 bits), by fixing its controller: GBC class b0/b2/b3 with a constant bias, and for b1 the
b3 class with E2B thresholds that send every tile to b1 (t1 < 0 <= entropy <= t2).

    python benchmarks/allocation/make_uniform.py /work/alloc/x4-gdq-6.0.safetensors /work/alloc   # -> x4-uniform-{4,5,6,8}
"""
import sys
from pathlib import Path

import torch

from cadyq import save
from cadyq.checkpoint import load_model

src, out = sys.argv[1], Path(sys.argv[2])
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
