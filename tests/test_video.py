"""`cadyq upscale clip.mp4`: frames, timing and audio kept, per-frame bits reported, nothing half-written."""
import json

import numpy as np
import pytest

av = pytest.importorskip("av", reason="the video extra (make install installs it)")

from cadyq.cli import main  # noqa: E402

MODEL = "edsr-tiny-cadyq-x2-cpu"


def make_clip(path, photo, n=10, w=64, h=48, fps=10, audio=True, pan=5):
    """A pan (`pan` px per frame; 0: a still camera) across a real photo, H.264, with an AAC sine track."""
    with av.open(str(path), "w") as out:
        vs = out.add_stream("libx264", rate=fps)
        vs.width, vs.height, vs.pix_fmt = w, h, "yuv420p"
        if audio:
            a = out.add_stream("aac", rate=16000)
            a.layout = "mono"
        for i in range(n):
            crop = np.ascontiguousarray(photo[100:100 + h, 100 + pan * i:100 + pan * i + w])
            for p in vs.encode(av.VideoFrame.from_ndarray(crop, format="rgb24")):
                out.mux(p)
        for p in vs.encode(None):
            out.mux(p)
        if audio:
            t = np.arange(int(16000 * n / fps)) / 16000
            samples = (0.3 * np.sin(2 * np.pi * 440 * t)).astype(np.float32)[None]
            for i in range(0, samples.shape[1], 1024):
                fr = av.AudioFrame.from_ndarray(np.ascontiguousarray(samples[:, i:i + 1024]), format="fltp", layout="mono")
                fr.sample_rate, fr.pts = 16000, i
                for p in a.encode(fr):
                    out.mux(p)
            for p in a.encode(None):
                out.mux(p)
    return path


def streams(path):
    with av.open(str(path)) as c:
        info = [(s.type, s.codec_context.name, s.frames, s.duration, s.time_base) for s in c.streams]
        v = c.streams.video[0]
        size, rate = (v.codec_context.width, v.codec_context.height), v.average_rate
        frames = [f.to_ndarray(format="rgb24") for f in c.decode(video=0)]
    return info, size, rate, frames


def test_video_in_video_out_keeps_frames_timing_and_audio(tmp_path, photo, monkeypatch):
    from cadyq.runtime import Upscaler

    src = make_clip(tmp_path / "clip.mp4", photo)
    dst, rep = tmp_path / "out.mp4", tmp_path / "r.json"
    batches, real_many = [], Upscaler.upscale_many

    def counting(self, images, **kw):
        run = self.backend.run
        self.backend.run = lambda tiles: batches.append(tiles.shape[0]) or run(tiles)
        return real_many(self, images, **kw)
    monkeypatch.setattr(Upscaler, "upscale_many", counting)
    assert main(["upscale", str(src), "-o", str(dst), "--model", MODEL, "--json", str(rep), "--crf", "12",
                 "--bitmap"]) == 0
    (vi, ai), size, rate, frames = streams(dst)[0], *streams(dst)[1:]
    (vi0, ai0), size0, rate0, frames0 = streams(src)[0], *streams(src)[1:]
    assert size == (128, 96) and size0 == (64, 48) and rate == rate0 == 10
    assert len(frames) == len(frames0) == 10 and vi[2] == vi0[2] and vi[3:] == vi0[3:]  # frames, duration, time base
    assert ai == ai0  # the audio stream copied as it was: codec, packets, duration, time base
    assert batches == [10]  # one tile per frame: the frames' tiles share one batch
    r = json.loads(rep.read_text())
    v = r["videos"][0]
    assert v["frames"] == 10 and len(v["per_frame"]) == 10 and v["copied_streams"] == 1
    assert all(4 <= f["fqr"] <= 8 for f in v["per_frame"]) and v["bitops_g"] > 0
    # each frame is the upscaled frame (up to the codecs' loss): against the image path on the decoded input
    ref = Upscaler(MODEL, device="cpu").upscale(frames0[4]).image.rgb.astype(float)
    mse = ((frames[4].astype(float) - ref) ** 2).mean()
    assert 10 * np.log10(255 ** 2 / mse) > 30
    assert not list(tmp_path.glob(".*part*"))
    # the bit-map video: one picture per frame, the SR's size, no audio
    (vb, *rest), size_b, _, frames_b = streams(tmp_path / "out_bits.mp4")[0], *streams(tmp_path / "out_bits.mp4")[1:]
    assert not rest and size_b == (128, 96) and len(frames_b) == 10 and v["bit_map"] == str(tmp_path / "out_bits.mp4")


def test_video_mistakes_are_one_line_and_write_nothing(tmp_path, photo, capsys, monkeypatch):
    src = make_clip(tmp_path / "clip.mp4", photo, n=4, audio=False)
    (tmp_path / "bad.mp4").write_bytes(b"not a video at all" * 10)
    with av.open(str(tmp_path / "sound.mp4"), "w") as out:  # audio only
        a = out.add_stream("aac", rate=16000)
        a.layout = "mono"
        fr = av.AudioFrame.from_ndarray(np.zeros((1, 1024), np.float32), format="fltp", layout="mono")
        fr.sample_rate, fr.pts = 16000, 0
        for pk in [*a.encode(fr), *a.encode(None)]:
            out.mux(pk)
    assert main(["upscale", str(tmp_path / "sound.mp4"), "-o", str(tmp_path / "o.mp4"), "--model", MODEL]) == 1
    assert "sound.mp4: has no video stream" in capsys.readouterr().err
    assert main(["upscale", str(tmp_path / "bad.mp4"), "-o", str(tmp_path / "o.mp4"), "--model", MODEL]) == 1
    err = capsys.readouterr().err
    assert "error: " in err and "not a readable video" in err and not (tmp_path / "o.mp4").exists()
    from cadyq.data.io import Image, write_image

    write_image(tmp_path / "a.png", Image(np.ascontiguousarray(photo[:40, :40]), None, 8, False, None, None, "RGB"))
    assert main(["upscale", str(src), str(tmp_path / "a.png"), "-o", str(tmp_path / "o"), "--model", MODEL]) == 2
    assert "separate runs" in capsys.readouterr().err
    assert main(["upscale", str(src), "-o", str(tmp_path / "o.gif"), "--model", MODEL]) == 2
    assert main(["upscale", str(src), "-o", str(tmp_path / "o.mp4"), "--model", MODEL, "--codec", "nosuch"]) == 2
    import cadyq.video as video

    monkeypatch.setattr(video, "_MAX_SIDE", {"libx264": 100})
    assert main(["upscale", str(src), "-o", str(tmp_path / "o.mp4"), "--model", MODEL]) == 2
    assert "over libx264's limit of 100 px" in capsys.readouterr().err
    monkeypatch.undo()
    # Ctrl-C in the middle: no output, no temporary file
    from cadyq.runtime import Upscaler

    calls = {"n": 0}
    real = Upscaler._start  # takes each frame in

    def interrupted(self, *a, **k):
        calls["n"] += 1
        if calls["n"] == 3:
            raise KeyboardInterrupt
        return real(self, *a, **k)

    monkeypatch.setattr(Upscaler, "_start", interrupted)
    assert main(["upscale", str(src), "-o", str(tmp_path / "o.mp4"), "--model", MODEL, "--bitmap"]) == 130
    assert not (tmp_path / "o.mp4").exists() and not (tmp_path / "o_bits.mp4").exists()
    assert not list(tmp_path.glob(".*part*"))
    assert not (tmp_path / "o").exists() or not any((tmp_path / "o").iterdir())


@pytest.mark.parametrize("fails", ["decode", "encode", "caller", None])
def test_pipeline_overlaps_stages_and_stops_on_any_error(fails):
    """decode -> caller -> encode threads: items arrive in order; an error in any stage stops all three and is
    raised in the caller; nothing is left running."""
    import threading

    from cadyq.errors import ImageError
    from cadyq.video import _END, _Pipeline

    got = []

    def decode(put):
        for i in range(20):
            if fails == "decode" and i == 5:
                raise ImageError("frame 6 cannot be decoded")
            put(i)

    def encode(get):
        while (item := get()) is not _END:
            if fails == "encode" and item == 14:
                raise OSError("disk full")
            got.append(item)

    before = threading.active_count()
    pipe = _Pipeline(depth=2)
    err = {"decode": ImageError, "encode": OSError, "caller": KeyboardInterrupt}.get(fails)
    ctx = pytest.raises(err) if err else __import__("contextlib").nullcontext()
    with ctx:
        with pipe.run(decode, encode) as (get, put):
            while (item := get()) is not _END:
                if fails == "caller" and item == 3:
                    raise KeyboardInterrupt
                put(item * 2)
    assert threading.active_count() == before
    if fails is None:
        assert got == [2 * i for i in range(20)]
    else:
        assert got == [2 * i for i in range(len(got))] and len(got) < 20


def test_video_into_an_image_sequence(tmp_path, photo, capsys):
    from cadyq.data.io import read_image

    src = make_clip(tmp_path / "clip.mp4", photo, n=5)
    pattern = tmp_path / "frames" / "f_%04d.png"
    assert main(["upscale", str(src), "-o", str(pattern), "--model", MODEL, "--bitmap"]) == 0
    assert "audio stream 1 is not written to an image sequence" in capsys.readouterr().err
    files = sorted((tmp_path / "frames").glob("f_????.png"))
    assert [f.name for f in files] == [f"f_{i:04d}.png" for i in range(1, 6)]
    assert len(list((tmp_path / "frames").glob("f_????_bits.png"))) == 5
    frames0 = streams(src)[3]
    from cadyq.runtime import Upscaler

    ref = Upscaler(MODEL, device="cpu").upscale(frames0[2]).image.rgb
    assert np.array_equal(read_image(files[2]).rgb, ref)  # lossless: the frame exactly as an image upscale gives it
    assert main(["upscale", str(src), "-o", str(pattern), "--model", MODEL]) == 2
    assert "f_0001.png: exists; pass --overwrite" in capsys.readouterr().err
    assert main(["upscale", str(src), "-o", str(pattern), "--model", MODEL, "--overwrite"]) == 0


def _timestamps(path):
    with av.open(str(path)) as c:
        return [f.pts * f.time_base for f in c.decode(video=0)]


def test_variable_frame_rate_truncated_files_and_resumed_batches(tmp_path, photo, capsys):
    import fractions

    vfr = tmp_path / "vfr.mp4"
    ms = [0, 100, 150, 400, 450, 500, 900, 1000]
    with av.open(str(vfr), "w") as out:  # frames at irregular times (a phone's variable-rate recording)
        vs = out.add_stream("libx264", rate=10)
        vs.width, vs.height, vs.pix_fmt = 64, 48, "yuv420p"
        vs.codec_context.time_base = fractions.Fraction(1, 1000)
        for i, t in enumerate(ms):
            f = av.VideoFrame.from_ndarray(np.ascontiguousarray(photo[100:148, 100 + 5 * i:164 + 5 * i]), format="rgb24")
            f.pts, f.time_base = t, fractions.Fraction(1, 1000)
            for p in vs.encode(f):
                out.mux(p)
        for p in vs.encode(None):
            out.mux(p)
    assert main(["upscale", str(vfr), "-o", str(tmp_path / "vfr_x2.mp4"), "--model", MODEL]) == 0
    assert "variable frame rate (frame durations 50.0 to 400.0 ms): every frame keeps its timestamp" in \
        capsys.readouterr().err
    assert _timestamps(tmp_path / "vfr_x2.mp4") == _timestamps(vfr) == [fractions.Fraction(t, 1000) for t in ms]
    # a truncated (streamable) file: what decodes is upscaled, and one line says the file ends early
    full = make_clip(tmp_path / "full.mkv", photo, n=30, audio=False)
    cut = tmp_path / "cut.mkv"
    cut.write_bytes(full.read_bytes()[: full.stat().st_size * 6 // 10])
    assert main(["upscale", str(cut), "-o", str(tmp_path / "cut_x2.mkv"), "--model", MODEL]) == 0
    err = capsys.readouterr().err
    n = len(_timestamps(tmp_path / "cut_x2.mkv"))
    assert 5 < n < 30 and f"(a truncated file?); the {n} frames decoded were upscaled" in err
    # a batch of videos resumes: --skip-existing runs only the missing ones
    batch = tmp_path / "in"
    batch.mkdir()
    for k in range(3):
        make_clip(batch / f"c{k}.mp4", photo, n=3, audio=False)
    args = ["upscale", str(batch), "-o", str(tmp_path / "out"), "--model", MODEL]
    assert main(args) == 0
    (tmp_path / "out" / "c1_x2.mp4").unlink()
    before = (tmp_path / "out" / "c0_x2.mp4").stat().st_mtime_ns
    assert main(args + ["--skip-existing"]) == 0
    assert "skipped 2 of 3 videos" in capsys.readouterr().err
    assert (tmp_path / "out" / "c1_x2.mp4").is_file() and (tmp_path / "out" / "c0_x2.mp4").stat().st_mtime_ns == before


def test_reuse_static_keeps_still_tiles(tmp_path, photo):
    still = make_clip(tmp_path / "still.mp4", photo, n=6, w=128, h=96, audio=False, pan=0)
    rep = tmp_path / "r.json"
    assert main(["upscale", str(still), "-o", str(tmp_path / "o.mp4"), "--model", MODEL, "--tile", "48",
                 "--reuse-static", "2", "--json", str(rep)]) == 0
    per_frame = json.loads(rep.read_text())["videos"][0]["per_frame"]
    n = per_frame[0]["tiles"][0] * per_frame[0]["tiles"][1]
    assert per_frame[0]["reused_tiles"] == 0 and all(f["reused_tiles"] == n for f in per_frame[2:])
    assert per_frame[3]["bitops_g"] == 0
    frames = streams(tmp_path / "o.mp4")[3]
    assert np.abs(frames[4].astype(int) - frames[3].astype(int)).mean() < 1  # up to the encoder's own noise
    assert main(["upscale", str(still), "-o", str(tmp_path / "p.mp4"), "--model", MODEL, "--reuse-static", "-1"]) == 2
