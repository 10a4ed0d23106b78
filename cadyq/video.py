"""Video in, video out (`cadyq upscale clip.mp4 -o out.mp4`), with PyAV (`pip install "cadyq[video]"`).

Frames are decoded in one thread, upscaled through the Upscaler (the same tiling, backends and bit maps as
images) in the caller's, and encoded in a third, through bounded queues (`_Pipeline`): decoding, the backend and
encoding overlap, and memory holds a few frames whatever the length. The video keeps its frame
timestamps, time base and frame rate; audio and subtitle streams are copied packet by packet (no re-encode).
The file is written under a temporary name beside the output and renamed when complete: Ctrl-C or an error
leaves the old file or nothing. yuv420p needs even sizes: an odd SR width or height loses its last pixel row or
column, with a warning.
"""
from __future__ import annotations

import collections
import contextlib
import os
import queue
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np

from .data.io import Image, write_image
from .errors import CadyqError, ImageError, OptionError

VIDEO_EXTENSIONS = (".mp4", ".mkv", ".mov", ".webm", ".avi")
_DEFAULT_CODEC = {".webm": "libvpx-vp9"}  # else libx264
_MAX_SIDE = {"libx264": 16384, "libx265": 16384, "libvpx-vp9": 16384, "mpeg4": 8192}


def is_video(path) -> bool:
    return Path(path).suffix.lower() in VIDEO_EXTENSIONS


def is_sequence(path) -> bool:
    """An image-sequence output name: a printf pattern for the frame number and an image extension
    (`frames/%06d.png`: frames/000001.png, frames/000002.png, ...)."""
    from .data.io import IMAGE_EXTENSIONS

    p = Path(path)
    if "%" not in p.name or p.suffix.lower() not in IMAGE_EXTENSIONS:
        return False
    try:
        return p.name % 1 != p.name % 2
    except (TypeError, ValueError):
        return False


@dataclass
class VideoOptions:
    codec: str | None = None  # None: libx264 (libvpx-vp9 for .webm)
    crf: int = 18  # visually lossless for x264; lower is better and larger
    preset: str = "medium"  # x264/x265 speed preset
    reuse_static: float | None = None  # Upscaler.upscale_many's reuse: still tiles keep their last SR tile

    def __post_init__(self):
        if self.reuse_static is not None and not 0 <= self.reuse_static <= 255:
            raise OptionError(f"--reuse-static {self.reuse_static}: a mean difference in levels, 0 to 255")


def _av():
    try:
        import av
    except ImportError:
        raise CadyqError('video needs PyAV: pip install "cadyq[video]" (or pip install av)') from None
    return av


def _codec(dst: Path, options: VideoOptions) -> str:
    av = _av()
    codec = options.codec or _DEFAULT_CODEC.get(dst.suffix.lower(), "libx264")
    if codec not in av.codecs_available:
        raise OptionError(f"--codec {codec}: this FFmpeg (PyAV {av.__version__}) has no such encoder; try libx264, "
                          "libx265, libvpx-vp9 or mpeg4")
    if not 0 <= options.crf <= 63:
        raise OptionError(f"--crf {options.crf}: use 0 (lossless) to 51 (x264/x265) or 63 (vp9)")
    return codec


def probe(src: Path) -> tuple[int, int]:
    """(height, width) of the first video stream, or one ImageError that says why it cannot be read."""
    av = _av()
    try:
        with av.open(str(src)) as inp:
            if not inp.streams.video:
                raise ImageError(f"{src}: has no video stream")
            cc = _decoder(src, inp.streams.video[0])
            if not cc.width or not cc.height:
                raise ImageError(f"{src}: its video stream has no frame size (a broken header)")
            return cc.height, cc.width
    except av.error.FFmpegError as e:
        raise ImageError(f"{src}: not a readable video ({e.strerror or e})") from None


def _timing_notes(src: Path, timing, pts: list, warn) -> tuple[bool, bool]:
    """One line each for a variable frame rate (kept: every frame keeps its timestamp) and for a stream that ends
    well before its declared duration (a truncated file: the frames decoded were upscaled). timing: (time base,
    declared duration s or None, start s). Returns (vfr, cut)."""
    tb, declared, start = timing
    steps = sorted({b - a for a, b in zip(pts, pts[1:]) if a is not None and b is not None})
    # a constant rate in a coarse time base alternates between two neighbouring ticks (29.97 fps in 1/1000: 33, 34)
    vfr = bool(steps) and steps[-1] - steps[0] > max(1, 0.02 * steps[0])
    if vfr:
        warn(f"{src.name}: variable frame rate (frame durations {float(steps[0] * tb) * 1e3:.1f} to "
             f"{float(steps[-1] * tb) * 1e3:.1f} ms): every frame keeps its timestamp")
    step = float(steps[0] * tb) if steps else 0.0
    end = float(pts[-1] * tb) - start + step if pts[-1] is not None else None
    cut = bool(declared and end is not None and end < 0.9 * declared - step)
    if cut:
        warn(f"{src.name}: the video ends at {end:.2f} s of its declared {declared:.2f} s (a truncated file?); the "
             f"{len(pts)} frames decoded were upscaled")
    return vfr, cut


def _decoder(src: Path, stream):
    """The stream's codec context, or one ImageError where FFmpeg has none for it."""
    if stream.codec_context is None:  # no decoder for its codec, or its parameters are cut off
        raise ImageError(f"{src}: its video stream cannot be decoded (a codec this FFmpeg lacks, or a damaged file)")
    return stream.codec_context


def check_output_size(src: Path, dst: Path, scale: int, options: VideoOptions) -> None:
    """Refuse, before any work, an SR frame size that the encoder cannot take."""
    if is_sequence(dst):
        return
    h, w = probe(src)
    codec = _codec(dst, options)
    side = _MAX_SIDE.get(codec, 16384)
    if max(h, w) * scale > side:
        raise OptionError(f"{src}: {w}x{h} x{scale} gives {w * scale}x{h * scale} frames, over {codec}'s limit of "
                          f"{side} px a side; upscale a smaller video or use another codec")


def upscale_video(fit: Callable, src: Path, dst: Path, scale: int, options: VideoOptions,
                  progress: Callable[[int, int | None, float], None] | None = None,
                  warn: Callable[[str], None] = lambda m: None, bit_map: Path | None = None) -> dict:
    """Upscale `src` into `dst`. `fit(h, w)` returns the Upscaler for frames of that size; `progress(done, total,
    seconds)` is called after each frame; `bit_map`: also write the bit-map video there (each frame's tiles coloured
    by their mean bit-width over its luma, as `--bitmap` draws images; no audio). Returns the report: frames, rate,
    streams, per-frame FQR and BitOPs."""
    av = _av()
    sequence = is_sequence(dst)
    codec = "png-sequence" if sequence else _codec(dst, options)
    t0 = time.perf_counter()
    try:
        inp = av.open(str(src))
    except av.error.FFmpegError as e:
        raise ImageError(f"{src}: not a readable video ({e.strerror or e})") from None
    # a video is written under a temporary name and renamed when complete; a sequence frame by frame, each atomically
    tmp = None if sequence else dst.with_name(f".{dst.stem}.part{dst.suffix}")
    tmp_map = None if bit_map is None or sequence else bit_map.with_name(f".{bit_map.stem}.part{bit_map.suffix}")
    frames: list[dict] = []
    try:
        with inp:
            if not inp.streams.video:
                raise ImageError(f"{src}: has no video stream")
            vs = inp.streams.video[0]
            h, w = _decoder(src, vs).height, vs.codec_context.width
            vs.thread_type = "AUTO"
            sh, sw = (h * scale, w * scale) if sequence else (h * scale // 2 * 2, w * scale // 2 * 2)
            if (sh, sw) != (h * scale, w * scale):
                warn(f"{src.name}: {w * scale}x{h * scale} is odd; yuv420p frames are cropped to {sw}x{sh}")
            rate = vs.average_rate or vs.guessed_rate
            declared = float(vs.duration * vs.time_base) if vs.duration else (inp.duration / 1e6 if inp.duration else None)
            timing = (vs.time_base, declared, float(vs.start_time * vs.time_base) if vs.start_time is not None else 0.0)
            with _maybe_open(av, tmp) as out, _maybe_open(av, tmp_map) as map_out:
                ovs = None if sequence else _video_stream(out, codec, rate, sw, sh, vs, options)
                mvs = None if map_out is None else _video_stream(map_out, codec, rate, sw, sh, vs, options)
                copies = {}
                for s in inp.streams:
                    if s.type in ("audio", "subtitle") and sequence:
                        warn(f"{src.name}: its {s.type} stream {s.index} is not written to an image sequence")
                    elif s.type in ("audio", "subtitle"):
                        try:
                            copies[s.index] = out.add_stream_from_template(s)
                        except (ValueError, av.error.FFmpegError) as e:
                            warn(f"{src.name}: its {s.type} stream {s.index} ({s.codec_context.name}) cannot be "
                                 f"copied into {dst.suffix} ({e}); it is left out")
                total = vs.frames or None
                pipe = _Pipeline()
                n_written = [0]
                streams_in = (vs, *(inp.streams[i] for i in copies))

                def decode(put):  # thread 1: demux and decode, in file order (copied packets pass through)
                    n = 0
                    for packet in inp.demux(*streams_in):
                        if packet.stream.index in copies:
                            if packet.dts is not None:
                                put(("packet", packet))
                            continue
                        try:
                            decoded = packet.decode()
                        except av.error.FFmpegError as e:
                            raise ImageError(f"{src}: frame {n + 1} cannot be decoded ({e.strerror or e})") from None
                        for frame in decoded:
                            n += 1
                            rotation = getattr(frame, "rotation", 0) if n == 1 else 0
                            put(("frame", (frame.pts, frame.time_base, frame.to_ndarray(format="rgb24"), rotation)))

                def encode(get):  # thread 2: encode and mux
                    while (item := get()) is not _END:
                        kind, payload = item
                        if kind == "packet":
                            payload.stream = copies[payload.stream.index]
                            out.mux(payload)
                            continue
                        pts, tb, sr_rgb, map_rgb = payload
                        if sequence:
                            n_written[0] += 1
                            for pattern, rgb in ((dst, sr_rgb), (bit_map, map_rgb)):
                                if pattern is not None:
                                    write_image(pattern.with_name(pattern.name % n_written[0]),
                                                Image(rgb, None, 8, False, None, None, "RGB"))
                            continue
                        for stream, container, rgb in ((ovs, out, sr_rgb), (mvs, map_out, map_rgb)):
                            if stream is not None:
                                f = av.VideoFrame.from_ndarray(rgb, format="rgb24")
                                f.pts, f.time_base = pts, tb
                                for p in stream.encode(f):
                                    container.mux(p)
                    for stream, container in ((ovs, out), (mvs, map_out)):
                        if stream is not None:
                            for p in stream.encode(None):
                                container.mux(p)

                with pipe.run(decode, encode) as (get, put):  # the backend runs here, between the two threads
                    stamps: collections.deque = collections.deque()  # (pts, time base) of the frames in flight

                    def decoded():  # the frames, in order; copied packets go straight on to the encoder
                        while (item := get()) is not _END:
                            kind, payload = item
                            if kind == "packet":
                                put(item)
                                continue
                            pts, tb, rgb, rotation = payload
                            if rotation or (not stamps and not frames and _rotation(vs)):
                                warn(f"{src.name}: its {rotation or _rotation(vs)}° display rotation is not copied; "
                                     "the frames are upscaled and written as stored")
                            stamps.append((pts, tb))
                            yield rgb

                    up = fit(h, w)
                    for r in up.upscale_many(decoded(), reuse=options.reuse_static):  # frames share batches
                        pts, tb = stamps.popleft()
                        map_rgb = None
                        if bit_map is not None:
                            from .runtime.bitmap import render_bit_map

                            pic = render_bit_map(r.bit_map, r.grid, scale, r.image.rgb, up.backend.info.bits)
                            map_rgb = np.ascontiguousarray(pic[:sh, :sw])
                        put(("frame", (pts, tb, np.ascontiguousarray(r.image.rgb[:sh, :sw]), map_rgb)))
                        frames.append({"pts": pts, "fqr": round(r.fqr, 4), "bitops_g": round(r.bitops / 1e9, 4),
                                       "tiles": [r.grid.rows, r.grid.cols], "reused_tiles": r.reused_tiles})
                        if progress is not None:
                            progress(len(frames), total, time.perf_counter() - t0)
        if not frames:
            raise ImageError(f"{src}: no video frame could be decoded")
        vfr, cut = _timing_notes(src, timing, [f["pts"] for f in frames], warn)
        if tmp is not None:
            os.replace(tmp, dst)
        if tmp_map is not None:
            os.replace(tmp_map, bit_map)
    except BaseException:
        for t in (tmp, tmp_map):
            if t is not None:
                t.unlink(missing_ok=True)
        raise
    seconds = time.perf_counter() - t0
    return {"input": str(src), "output": str(dst), **({"bit_map": str(bit_map)} if bit_map else {}), "codec": codec, "crf": options.crf, "lr_size": [h, w],
            "sr_size": [sh, sw], "frames": len(frames), "rate": str(rate), "copied_streams": len(copies),
            "fqr": round(sum(f["fqr"] for f in frames) / len(frames), 4),
            "bitops_g": round(sum(f["bitops_g"] for f in frames), 4), "time_s": round(seconds, 3),
            "fps": round(len(frames) / seconds, 4), "variable_frame_rate": vfr, "truncated": cut, "per_frame": frames}


_END = object()


class _Stopped(Exception):
    """A pipeline thread gives up because the pipeline stopped (an error or Ctrl-C elsewhere)."""


class _Pipeline:
    """decode thread -> (the caller: the backend) -> encode thread, through two bounded queues, so decoding, the
    backend and encoding overlap while at most a few frames are in flight. An error in either thread, or in the
    caller (Ctrl-C included), stops all three; the first error is raised in the caller."""

    def __init__(self, depth: int = 3):
        self.inbox, self.outbox = queue.Queue(depth), queue.Queue(depth)
        self.stop = threading.Event()
        self.errors: list[BaseException] = []

    def _put(self, q, item):
        while not self.stop.is_set():
            try:
                return q.put(item, timeout=0.05)
            except queue.Full:
                pass
        raise _Stopped

    def _get(self, q):
        while True:
            try:
                return q.get(timeout=0.05)
            except queue.Empty:
                if self.stop.is_set():
                    raise _Stopped from None

    def _thread(self, body, *args, end=None):
        def run():
            try:
                body(*args)
                if end is not None:
                    end()
            except _Stopped:
                pass
            except BaseException as e:  # noqa: BLE001 - handed to the caller
                self.errors.append(e)
                self.stop.set()
        t = threading.Thread(target=run, daemon=True)
        t.start()
        return t

    @contextlib.contextmanager
    def run(self, decode, encode):
        get = lambda: self._get(self.inbox)  # noqa: E731
        put = lambda item: self._put(self.outbox, item)  # noqa: E731
        threads = [self._thread(decode, lambda item: self._put(self.inbox, item), end=lambda: self._put(self.inbox, _END)),
                   self._thread(encode, lambda: self._get(self.outbox))]
        try:
            try:
                yield get, put
            except _Stopped:
                pass  # a thread failed: its error is raised below
            else:
                with contextlib.suppress(_Stopped):  # a failed encoder stops the pipeline: its error is raised below
                    put(_END)
                    threads[1].join()
        except BaseException:
            self.stop.set()
            raise
        finally:
            self.stop.set()
            for t in threads:
                t.join()
        if self.errors:
            raise self.errors[0]


def _video_stream(out, codec: str, rate, width: int, height: int, src_stream, options: VideoOptions):
    vs = out.add_stream(codec, rate=rate)
    vs.width, vs.height, vs.pix_fmt = width, height, "yuv420p"
    # the source's time base for the encoder too: frame timestamps pass through exactly; with 1/rate, the frames of a
    # variable-frame-rate video would round onto the same tick and the muxer refuse them
    vs.time_base = vs.codec_context.time_base = src_stream.time_base
    vs.options = ({"crf": str(options.crf), "b": "0"} if codec == "libvpx-vp9" else
                  {"crf": str(options.crf), "preset": options.preset} if codec in ("libx264", "libx265") else {})
    _copy_colour(src_stream.codec_context, vs.codec_context)
    return vs


def _maybe_open(av, path: Path | None):
    return contextlib.nullcontext() if path is None else av.open(str(path), "w")


def _rotation(stream) -> int:
    try:
        return int(float(stream.metadata.get("rotate", 0)))
    except (TypeError, ValueError):
        return 0


def _copy_colour(src, dst) -> None:
    """Colour range, primaries, transfer and matrix of the input, where this PyAV exposes them."""
    for name in ("color_range", "color_primaries", "color_trc", "colorspace"):
        try:
            value = getattr(src, name)
            if value is not None:
                setattr(dst, name, value)
        except (AttributeError, ValueError, TypeError):
            pass
