"""What ONNX Runtime's CPU integer convolutions buy on this machine, and where an export's time goes.

1. One 3x3 conv 64->64 on batches of 96-px tiles (the EDSR body conv), ms per tile, and whether the result is
   exact on 8-bit integers: float Conv (what ORT runs for the int8 export after folding its DequantizeLinear),
   ConvInteger (int32 out: what serves per-tile scales) with u8 or s8 weights, and QLinearConv (requantized
   8-bit out, static scales only: what the routed graphs use).
2. `--profile A.onnx B.onnx`: ORT's profiler over one batch of photo tiles per model, ms per tile by op type.
3. `--time A.onnx B.onnx ...`: the same batch, the graphs timed in interleaved rounds (no profiler): median ms per
   tile and the ratio to the first graph (e.g. the fp32 export, and the int8 and ort forms of a quantized model).

    python benchmarks/ort_int8_ops.py [--threads 2] [--profile fp32.onnx cadyq.onnx] [--time fp32.onnx int8.onnx ort.onnx]
"""
import argparse
import collections
import json
import tempfile
import time
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import torch
from onnx import TensorProto as T
from onnx import helper as h
from onnx import numpy_helper as nh

C, H, N = 64, 96, 16


def session(model, threads, profile=False):
    so = ort.SessionOptions()
    so.intra_op_num_threads = threads
    so.enable_profiling = profile
    if profile:  # the profiler's JSON goes to a temporary folder, not the working directory
        so.profile_file_prefix = str(Path(tempfile.mkdtemp(prefix="ort-profile-")) / "profile")
    src = model.SerializeToString() if isinstance(model, onnx.ModelProto) else model
    return ort.InferenceSession(src, so, providers=["CPUExecutionProvider"])


def timed(s, feed, n=5):
    s.run(None, feed)
    s.run(None, feed)
    t = time.perf_counter()
    for _ in range(n):
        out = s.run(None, feed)[0]
    return (time.perf_counter() - t) / n / next(iter(feed.values())).shape[0] * 1e3, out


def conv_graph(kind, w):
    x_type = T.FLOAT if kind == "float" else T.UINT8
    if kind == "float":
        inits = [nh.from_array(w.astype(np.float32), "w")]
        node = h.make_node("Conv", ["x", "w"], ["y"], pads=[1] * 4)
        y_type = T.FLOAT
    elif kind.startswith("ConvInteger"):
        u8w = kind.endswith("u8")
        wv = (w.astype(np.int16) + 128).astype(np.uint8) if u8w else w
        inits = [nh.from_array(wv, "w"), nh.from_array(np.array(128, np.uint8), "xzp"),
                 nh.from_array(np.array(128, np.uint8) if u8w else np.array(0, np.int8), "wzp")]
        node = h.make_node("ConvInteger", ["x", "w", "xzp", "wzp"], ["y"], pads=[1] * 4)
        y_type = T.INT32
    else:  # QLinearConv, s8 weights, y = acc / 4000 requantized
        inits = [nh.from_array(w, "w"), nh.from_array(np.array(1.0, np.float32), "xs"),
                 nh.from_array(np.array(128, np.uint8), "xzp"), nh.from_array(np.array(1.0, np.float32), "ws"),
                 nh.from_array(np.array(0, np.int8), "wzp"), nh.from_array(np.array(4000.0, np.float32), "ys"),
                 nh.from_array(np.array(128, np.uint8), "yzp")]
        node = h.make_node("QLinearConv", ["x", "xs", "xzp", "w", "ws", "wzp", "ys", "yzp"], ["y"], pads=[1] * 4)
        y_type = T.UINT8
    g = h.make_graph([node], "conv", [h.make_tensor_value_info("x", x_type, [None, C, H, H])],
                     [h.make_tensor_value_info("y", y_type, None)], inits)
    return h.make_model(g, opset_imports=[h.make_opsetid("", 17)])


def conv_table(threads):
    rng = np.random.default_rng(0)
    w = rng.integers(-127, 128, (C, C, 3, 3)).astype(np.int8)
    q = rng.integers(-127, 128, (N, C, H, H))
    exact = torch.nn.functional.conv2d(torch.tensor(q[:2]).double(), torch.tensor(w).double(), padding=1).numpy()
    print(f"one 3x3 conv {C}->{C} on {N} tiles of {H}x{H}, {threads} threads, ORT {ort.__version__}")
    print(f"{'op':<22} {'ms/tile':>8}  exact on 8-bit integers")
    for kind in ("float", "ConvInteger s8", "ConvInteger u8", "QLinearConv s8"):
        x = q.astype(np.float32) if kind == "float" else (q + 128).astype(np.uint8)
        ms, out = timed(session(conv_graph(kind, w), threads), {"x": x})
        if kind == "QLinearConv s8":
            ok = np.mean(out[:2].astype(int) == np.clip(np.round(exact / 4000) + 128, 0, 255)) > 0.999
        else:
            ok = np.abs(out[:2].astype(np.float64) - exact).max() == 0
        print(f"{kind:<22} {ms:8.2f}  {'yes' if ok else 'NO (u8 x s8 pairs saturate in int16 without VNNI)'}")


def photo_tiles():
    from skimage import data

    img = torch.from_numpy(data.astronaut()).permute(2, 0, 1).float()
    return torch.stack([img[:, 96 * i:96 * i + 96, 96 * j:96 * j + 96] for i in range(4) for j in range(4)]).numpy()


def time_graphs(paths, threads, rounds):
    x = photo_tiles()
    sessions = [session(p, threads) for p in paths]
    feeds = [{s.get_inputs()[0].name: x} for s in sessions]
    for s, f in zip(sessions, feeds):
        s.run(None, f)
    ms = [[] for _ in paths]
    for _ in range(rounds):
        for k, (s, f) in enumerate(zip(sessions, feeds)):
            t = time.perf_counter()
            s.run(None, f)
            ms[k].append((time.perf_counter() - t) / N * 1e3)
    base = float(np.median(ms[0]))
    print(f"\n{N} tiles of 96 px, {threads} threads, {rounds} interleaved rounds, ORT {ort.__version__}")
    for p, m in zip(paths, ms):
        print(f"  {p:<40} {np.median(m):8.1f} ms/tile  {base / np.median(m):5.2f}x the first")


def profile(paths, threads):
    x = photo_tiles()
    for path in paths:
        s = session(path, threads, profile=True)
        feed = {s.get_inputs()[0].name: x}
        ms, _ = timed(s, feed, n=1)
        by = collections.Counter()
        for e in json.load(open(s.end_profiling())):
            if e.get("cat") == "Node" and e["name"].endswith("_kernel_time"):
                by[e["args"]["op_name"]] += e["dur"]
        runs = 3  # the profiler saw every run of `timed` (two warm-up runs and one timed)
        print(f"\n{path}: {ms:.1f} ms per tile (profiler on)")
        for op, us in by.most_common(14):
            print(f"  {op:<20} {us / runs / N / 1e3:7.1f} ms/tile  {100 * us / sum(by.values()):5.1f} %")


if __name__ == "__main__":
    p = argparse.ArgumentParser()
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--profile", nargs="*", default=[])
    p.add_argument("--time", nargs="*", default=[])
    p.add_argument("--rounds", type=int, default=5)
    a = p.parse_args()
    if not a.time:
        conv_table(a.threads)
    profile(a.profile, a.threads)
    if a.time:
        time_graphs(a.time, a.threads, a.rounds)
