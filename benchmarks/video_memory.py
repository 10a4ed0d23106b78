"""Video throughput and peak memory by clip length: `cadyq upscale clip.mp4` on clips of the same frames, of
different lengths; peak memory (max RSS of the process) must not grow with the length (one frame at a time).

Clips: a pan across a real photo (H.264 with an AAC track), --size LR frames at 25 fps. Each run is a separate
`python -m cadyq upscale` process, so its max RSS is its own.

    python benchmarks/video_memory.py [--model edsr-tiny-cadyq-x4-cpu] [--seconds 3 12] [--width 320 --height 180]
"""
import argparse
import json
import resource
import subprocess
import sys
import time
from pathlib import Path

import av
import numpy as np

from cadyq.data.io import read_image


def make_clip(path: Path, photo, seconds: float, w: int, h: int, fps: int = 25) -> int:
    n = int(seconds * fps)
    with av.open(str(path), "w") as out:
        vs = out.add_stream("libx264", rate=fps)
        vs.width, vs.height, vs.pix_fmt = w, h, "yuv420p"
        a = out.add_stream("aac", rate=16000)
        a.layout = "mono"
        for i in range(n):
            x = (i * 3) % (photo.shape[1] - w)
            crop = np.ascontiguousarray(photo[:h, x:x + w])
            for p in vs.encode(av.VideoFrame.from_ndarray(crop, format="rgb24")):
                out.mux(p)
        for p in vs.encode(None):
            out.mux(p)
        samples = (0.2 * np.sin(np.arange(int(16000 * seconds)) / 16000 * 2 * np.pi * 440)).astype(np.float32)[None]
        for i in range(0, samples.shape[1], 1024):
            fr = av.AudioFrame.from_ndarray(np.ascontiguousarray(samples[:, i:i + 1024]), format="fltp", layout="mono")
            fr.sample_rate, fr.pts = 16000, i
            for p in a.encode(fr):
                out.mux(p)
        for p in a.encode(None):
            out.mux(p)
    return n


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--model", default="edsr-tiny-cadyq-x4-cpu")
    p.add_argument("--photo", default="/usr/share/backgrounds/mate/nature/Garden.jpg")
    p.add_argument("--seconds", type=float, nargs="+", default=[3, 12])
    p.add_argument("--width", type=int, default=320)
    p.add_argument("--height", type=int, default=180)
    p.add_argument("--backend", default="auto")
    p.add_argument("--out", default="/tmp/video_memory")
    a = p.parse_args()
    out = Path(a.out)
    out.mkdir(parents=True, exist_ok=True)
    photo = read_image(a.photo).rgb
    rows = []
    for s in a.seconds:
        clip = out / f"clip_{s:g}s.mp4"
        n = make_clip(clip, photo, s, a.width, a.height)
        dst = out / f"clip_{s:g}s_sr.mp4"
        before = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
        t = time.perf_counter()
        subprocess.run([sys.executable, "-m", "cadyq", "upscale", str(clip), "-o", str(dst), "--model", a.model,
                        "--backend", a.backend, "--overwrite", "--json", str(out / f"r_{s:g}.json")], check=True)
        wall = time.perf_counter() - t
        peak = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss  # the max over children so far (KiB)
        rep = json.loads((out / f"r_{s:g}.json").read_text())["videos"][0]
        with av.open(str(dst)) as c:
            frames_out = sum(1 for _ in c.decode(video=0))
            audio = [st for st in c.streams if st.type == "audio"]
            dur = float(c.duration or 0) / 1e6
        with av.open(str(clip)) as c:
            dur_in = float(c.duration or 0) / 1e6
        rows.append({"seconds": s, "frames": n, "frames_out": frames_out, "duration_in": dur_in, "duration_out": dur,
                     "audio_streams_out": len(audio), "fps": rep["fps"], "process_s": wall,
                     "peak_rss_mib_max_so_far": peak / 1024, "new_peak": peak > before})
        print(f"{s:g} s clip ({n} frames {a.width}x{a.height}): {frames_out} frames out, duration {dur_in:.2f} -> "
              f"{dur:.2f} s, audio streams {len(audio)}, {rep['fps']:.2f} frames/s, peak RSS {peak / 1024:.0f} MiB "
              f"({'a new maximum' if peak > before else 'no higher than the shorter clip'})")
    (out / "video_memory.json").write_text(json.dumps(rows, indent=1))


if __name__ == "__main__":
    main()
