"""Do a dynamic-bit model's bits flicker on video? Bit flips and output flicker on two clips made from a real photo.

Clips (H.264 at --crf, so consecutive frames differ by compression noise as in real video): "static" (a fixed
camera: the same crop every frame) and "pan" (the crop moves --pan px per frame). Each decoded frame runs through
the Upscaler, as `cadyq upscale clip.mp4` does. Reported per clip:
- bit flips: the share of (tile, layer) decisions that change between consecutive frames, tiles at the same
  grid position (for the pan, the content under a tile moves, so some change is expected);
- flicker (static clip): mean |SR_t - SR_(t-1)| over mean |bicubic_t - bicubic_(t-1)|, both on the decoded frames:
  above 1, the network adds frame-to-frame change beyond what its input has;
- FQR;
- with `--reuse-static` values (the stabilising option): the share of tiles reused, the PSNR of the frames against
  the frames without reuse, and the time of the run.

    python benchmarks/temporal_bits.py [--model edsr-cadyq-x4] [--frames 16] [--size 200] [--reuse none,0.5,1,2]
"""
import argparse
import json
import time
from pathlib import Path

import av
import numpy as np
import torch

from cadyq.data.io import read_image
from cadyq.data.resize import imresize
from cadyq.runtime import Upscaler


def make_clip(path: Path, photo: np.ndarray, frames: int, size: int, pan: int, crf: int) -> None:
    with av.open(str(path), "w") as out:
        vs = out.add_stream("libx264", rate=25)
        vs.width = vs.height = size
        vs.pix_fmt = "yuv420p"
        vs.options = {"crf": str(crf)}
        y0, x0 = (photo.shape[0] - size) // 2, (photo.shape[1] - size) // 2 - frames * pan // 2
        for i in range(frames):
            crop = np.ascontiguousarray(photo[y0:y0 + size, x0 + i * pan:x0 + i * pan + size])
            for p in vs.encode(av.VideoFrame.from_ndarray(crop, format="rgb24")):
                out.mux(p)
        for p in vs.encode(None):
            out.mux(p)


def decoded(clip: Path) -> list[np.ndarray]:
    with av.open(str(clip)) as c:
        return [f.to_ndarray(format="rgb24") for f in c.decode(video=0)]


def measure(up: Upscaler, frames: list[np.ndarray], reuse: float | None, reference: list[np.ndarray] | None) -> dict:
    """Run the frames as `cadyq upscale clip.mp4 [--reuse-static reuse]` does; reference: the SR frames without
    reuse, against which the PSNR of these is measured."""
    bits, flick_sr, flick_in, fqrs, reused, srs, psnrs = [], [], [], [], [], [], []
    prev = None
    t = time.perf_counter()
    for lr, r in zip(frames, up.upscale_many(frames, reuse=reuse)):
        sr = r.image.rgb.astype(np.float64)
        srs.append(r.image.rgb)
        bic = np.clip(np.round(imresize(lr.astype(np.float64), scale=up.scale)), 0, 255)  # 8-bit, as the SR is
        bits.append(r.bit_map.reshape(-1))
        fqrs.append(r.fqr)
        reused.append(r.reused_tiles / r.grid.n_tiles)
        if reference is not None:
            mse = ((sr - reference[len(srs) - 1]) ** 2).mean()
            psnrs.append(99.0 if mse == 0 else 10 * np.log10(255 ** 2 / mse))
        if prev is not None:
            flick_sr.append(np.abs(sr - prev[0]).mean())
            flick_in.append(np.abs(bic - prev[1]).mean())
        prev = (sr, bic)
    seconds = time.perf_counter() - t
    b = torch.stack(bits)
    flips = (b[1:] != b[:-1]).float().mean().item()
    return {"reuse": reuse, "frames": len(bits), "decisions_per_frame": int(b.shape[1]), "bit_flip_rate": flips,
            "fqr": float(np.mean(fqrs)), "sr_change": float(np.mean(flick_sr)), "bicubic_change": float(np.mean(flick_in)),
            "flicker_ratio": float(np.mean(flick_sr) / max(np.mean(flick_in), 1e-9)),
            "reused_share": float(np.mean(reused)), "seconds": seconds,
            "psnr_vs_no_reuse_db": float(np.mean(psnrs)) if psnrs else None}, srs


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--model", default="edsr-cadyq-x4")
    p.add_argument("--photo", default="/usr/share/backgrounds/mate/nature/Garden.jpg")
    p.add_argument("--frames", type=int, default=16)
    p.add_argument("--size", type=int, default=200)
    p.add_argument("--pan", type=int, default=2)
    p.add_argument("--crf", type=int, default=23)
    p.add_argument("--backend", default="auto")
    p.add_argument("--reuse", default="none,0.5,1,2", help="--reuse-static values to run (none: off)")
    p.add_argument("--out", default="/tmp/temporal_bits")
    a = p.parse_args()
    out = Path(a.out)
    out.mkdir(parents=True, exist_ok=True)
    photo = read_image(a.photo).rgb
    up = Upscaler(a.model, backend=a.backend, device="cpu")
    res = {"model": a.model, "backend": up.backend.name, "photo": a.photo, "size": a.size, "crf": a.crf, "clips": {}}
    reuses = [None if v == "none" else float(v) for v in a.reuse.split(",")]
    for name, pan in (("static", 0), ("pan", a.pan)):
        clip = out / f"{name}.mp4"
        make_clip(clip, photo, a.frames, a.size, pan, a.crf)
        frames = decoded(clip)
        res["clips"][name], reference = [], None
        for reuse in reuses:
            m, srs = measure(up, frames, reuse, reference)
            reference = srs if reuse is None else reference
            res["clips"][name].append(m)
            psnr = "" if m["psnr_vs_no_reuse_db"] is None else f", {m['psnr_vs_no_reuse_db']:.2f} dB vs no reuse"
            print(f"{name:>6} reuse {reuse}: {m['frames']} frames, bit flips {100 * m['bit_flip_rate']:.2f} % per "
                  f"frame pair, FQR {m['fqr']:.2f}, SR change {m['sr_change']:.3f} vs bicubic {m['bicubic_change']:.3f} "
                  f"(flicker ratio {m['flicker_ratio']:.2f}), tiles reused {100 * m['reused_share']:.0f} %{psnr}, "
                  f"{m['seconds']:.1f} s")
    (out / "temporal_bits.json").write_text(json.dumps(res, indent=1))


if __name__ == "__main__":
    main()
