"""Snap a zoo model's lower clip values onto odd multiples of each layer's 8-bit step (`cadyq.quant.snap_clips`), in
place, recording it in the metadata (`extra.clips_snapped`) and re-recording the crop check. Issue 36's one 8-bit grid
rounds a dynamic quantizer's input to 8 bits before the 4/5/6-bit re-quantization; with snapped clips that loses
nothing (every level on the grid, every threshold on a bin edge). Whether a model is shipped snapped is decided on the
decision set (`benchmarks/int8_upsampler.md`).

    python benchmarks/zoo_snap.py edsr-gdq-alloc-x4 edsr-gdq-alloc-x2
"""
import argparse
import sys

from cadyq import checkpoint, zoo
from cadyq.quant import snap_clips
from cadyq.zoo.check import crop_psnr


def main(argv=None):
    p = argparse.ArgumentParser()
    p.add_argument("models", nargs="+")
    a = p.parse_args(argv)
    for name in a.models:
        path = zoo.path_of(name)
        model = zoo.load_pretrained(name)
        moved = snap_clips(model)
        extra = checkpoint.read_metadata(path).get("extra", {})
        if not moved and "clips_snapped" in extra:
            print(f"{name}: already snapped", file=sys.stderr)
            continue
        extra["crop_check"] = crop_psnr(model)
        extra["clips_snapped"] = {"moved": moved, "rule": "cadyq.quant.ops.snap_to_top_grid",
                                  "command": f"python benchmarks/zoo_snap.py {name}",
                                  "why": "the one 8-bit grid of inference computes the papers' quantizer exactly (benchmarks/int8_upsampler.md)"}
        checkpoint.save(model, path, extra)
        print(f"{name}: {moved} clip values moved; crop check {extra['crop_check']}", file=sys.stderr)


if __name__ == "__main__":
    main()
