"""Put the selectors of one allocation onto a fine-tuned model: its weights and clip values, the other's cuts.

A fine-tune with frozen selectors moves the statistics they read, so the held-out FQR drifts from the calibrated one
(x2: 6.00 -> 6.04 after 1,150 iterations). A calibration at a lower --fqr of the same measurement gives cuts that
land the fine-tuned model back under the target; this writes them into it for the next fine-tune.

    python benchmarks/allocation/graft_selectors.py FINE_TUNED.safetensors ALLOC.safetensors OUT.safetensors
"""
import sys

import torch

from cadyq import save
from cadyq.checkpoint import load_model
from cadyq.quant import dynamic_quantizers


def graft(model_path: str, alloc_path: str, out: str) -> None:
    model, alloc = load_model(model_path), load_model(alloc_path)
    src, dst = dynamic_quantizers(alloc), dynamic_quantizers(model)
    if len(src) != len(dst):
        sys.exit(f"{alloc_path} has {len(src)} selectors, {model_path} {len(dst)}")
    with torch.no_grad():
        for a, b in zip(src, dst):
            b.net.load_state_dict(a.net.state_dict())
    save(model, out)


if __name__ == "__main__":
    if len(sys.argv) != 4:
        sys.exit(__doc__)
    graft(*sys.argv[1:])
