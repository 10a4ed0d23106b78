"""What the native CPU program asks of oneDNN over one batch: every convolution primitive oneDNN executes, from its
own verbose log (ONEDNN_VERBOSE=1), grouped by minibatch, data types and shape (issue 36: every quantized conv with
at least 4 tiles and an 8-bit destination).

    python benchmarks/onednn_calls.py [MODEL] [--tiles 16] [--threads 2]
"""
import argparse
import collections
import os
import re
import subprocess
import sys

RUN = """
import torch
from cadyq.bench import BenchSettings, bench_tiles, load_hr, make_pair
from cadyq.checkpoint import load_model
from cadyq.runtime.native_backend import NativeBackend
torch.set_num_threads({threads})
m = load_model({model!r}).eval()
hr, _ = load_hr(None)
_, lr = make_pair(hr, m.config.scale)
tiles = bench_tiles(lr, BenchSettings(batch={tiles}))
be = NativeBackend(m, "cpu")
be.run(tiles[:be.tiles_per_call])
print("=== batch ===", flush=True)
be.run(tiles)
print("=== done ===", be.notes[0], flush=True)
"""


def main():
    p = argparse.ArgumentParser()
    p.add_argument("model", nargs="?", default="edsr-cadyq-alloc-x4")
    p.add_argument("--tiles", type=int, default=16)
    p.add_argument("--threads", type=int, default=2)
    a = p.parse_args()
    env = {**os.environ, "ONEDNN_VERBOSE": "1"}
    out = subprocess.run([sys.executable, "-c", RUN.format(model=a.model, tiles=a.tiles, threads=a.threads)],
                         capture_output=True, text=True, env=env, check=True).stdout
    batch = out.split("=== batch ===", 1)[1]
    notes = batch.split("=== done ===", 1)[1].strip()
    calls = collections.Counter()
    for line in batch.splitlines():
        f = line.split(",")
        if len(f) < 10 or f[0] != "onednn_verbose" or "exec" not in f or "convolution" not in f:
            continue
        types = {}
        for key, dtype in re.findall(r"\b(src|wei|dst):(\w+?):", line):  # the memory descriptors come first
            types.setdefault(key, dtype)
        impl = f[6]
        shape = next(x for x in f if x.startswith("mb"))
        mb = int(re.match(r"mb(\d+)", shape).group(1))
        dims = re.sub(r"^mb\d+_?", "", shape)
        calls[(mb, types.get("src"), types.get("wei"), types.get("dst"), dims, impl)] += 1
    print(f"{a.model}, one batch of {a.tiles} tiles, {a.threads} threads: {sum(calls.values())} convolution calls")
    print(f"native backend: {notes}")
    print("| calls | tiles per call | src | weights | dst | shape | oneDNN kernel |\n|---|---|---|---|---|---|---|")
    for (mb, src, wei, dst, dims, impl), n in sorted(calls.items(), key=lambda kv: (-kv[1], kv[0][4])):
        print(f"| {n} | {mb} | {src} | {wei} | {dst} | {dims} | {impl} |")


if __name__ == "__main__":
    main()
