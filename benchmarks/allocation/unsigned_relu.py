"""The paper's unsigned quantizer after ReLU, measured post-training: the inputs of each block's second conv
(post-ReLU, never negative) at levels 2^b - 1 (0..15 at 4 bits, 0..63 at 6; 8 bits kept at 0..127, what an s8
executor holds) against cadyq's symmetric 2^(b-1) - 1 (0..7, 0..31), same clips. Torch reference, whole held-out
photos, `cadyq eval`'s PSNR (Y); the result is in docs/deviations.md (activation quantizer).

    python benchmarks/allocation/unsigned_relu.py MODEL [VAL]
"""
import sys

import numpy as np
import torch

import cadyq
from cadyq.checkpoint import load_model
from cadyq.data.layouts import find_pairs, load_pair
from cadyq.metrics import psnr
from cadyq.quant.ops import fake_quant
from cadyq.quant.quantizers import BitSelector


def unsigned_levels(bits):
    return torch.where(bits < 8, 2.0 ** bits - 1, 2.0 ** (bits - 1) - 1)


def unsigned_forward(self, x):
    """BitSelector's inference forward with unsigned levels (modes "full" and "tile")."""
    k = self.state.tile_choice if self.mode == "tile" else self.logits(x).argmax(1)
    y = fake_quant(x, self.alpha[k].view(-1, 1, 1, 1), unsigned_levels(self.bits)[k].view(-1, 1, 1, 1))
    self.last_bits = self.last_bits_ste = self.bits[k]
    self.last_weighted = None
    return y


def evaluate(model, val):
    up = cadyq.Upscaler(model, backend="torch", device="cpu")
    psnrs, fqrs = [], []
    for lr, hr in (load_pair(pair, up.scale) for pair in find_pairs(val, up.scale)):
        r = up.upscale(lr)
        psnrs.append(psnr(r.array, hr, up.scale))
        fqrs.append(r.fqr)
    return float(np.mean(psnrs)), float(np.mean(fqrs))


def main(name, val="/work/data/zoo/decision"):
    torch.set_num_threads(1)
    for unsigned in (False, True):
        model = load_model(name).eval()
        post_relu = [m for n, m in model.named_modules() if isinstance(m, BitSelector) and n.endswith(".body.2.input_quant")]
        if unsigned:
            for m in post_relu:
                m.forward = unsigned_forward.__get__(m)
        p, f = evaluate(model, val)
        print(f"{name}: {'unsigned' if unsigned else 'symmetric'} after ReLU ({len(post_relu)} layers): "
              f"PSNR {p:.3f} dB, FQR {f:.2f}", flush=True)


if __name__ == "__main__":
    main(*sys.argv[1:])
