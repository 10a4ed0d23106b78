"""What a per-tile selection costs in ONNX Runtime with standard ops, on a chain of EDSR-like layers (issue 20).

Each of L layers: the CADyQSelect statistics and selection, a quantization of the conv input with per-tile scale,
a 64->64 3x3 conv (+ ReLU, or the block's skip Add). Variants (STAT/QUANT):

    none/none   the conv chain alone (the float model's cost)
    op/cur      the `ort` export itself: the CADyQSelect-2 function of cadyq.export.op (two-pass std; Max, Min,
                Div, Mul, Round), then Mul(q, scale) as ScaledKernels writes it
    one/cur     one-pass variance (ReduceMean + ReduceSumSquare), the same quantization
    two/clip    Div(x, a), Clip(-1, 1), Mul(s), Round, Mul(scale): bit-identical to `cur`, one pass fewer
    one/qdq     Div(x, a), Clip(-1, 1), QuantizeLinear(1/s per tile), DequantizeLinear(a/s per tile): int8 in
                between; rounds x/a/(1/s) instead of x/a*s, so the odd element on a rounding boundary moves

    python benchmarks/ort_selection_floor.py [--threads 1] [--rounds 5]

Prints per variant the optimized graph's op counts, the largest difference from `op/cur`, and ms per tile per
layer (batch of 16 tiles of 96 px, interleaved rounds, median).
"""
from __future__ import annotations

import argparse
import time
from collections import Counter

import numpy as np
import onnx
import onnxruntime as ort
from onnx import TensorProto, helper, numpy_helper

from cadyq.export import op as cadyq_op

N, C, H, L = 16, 64, 96, 6
VARIANTS = ["none/none", "op/cur", "one/cur", "two/clip", "one/qdq"]


def _initializers(rng):
    a = np.array([1.5, 2.0, 2.5], np.float32)
    levels = 2 ** (np.array([4, 6, 8], np.float32) - 1) - 1
    values = {"Ws": rng.normal(0, 1, (3, C + 2)), "bs": np.zeros(3), "a": a, "lev": levels, "scl": a / levels,
              "ilev": 1 / levels, "n": np.float32(H * H), "n1": np.float32(H * H - 1), "m1": np.float32(-1),
              "p1": np.float32(1)}
    for i in range(L):
        values[f"W{i}"], values[f"B{i}"] = rng.normal(0, 0.04, (C, C, 3, 3)), rng.normal(0, 0.01, C)
    inits = [numpy_helper.from_array(np.asarray(v, np.float32), k) for k, v in values.items()]
    return inits + [numpy_helper.from_array(np.array(v, np.int64), k) for k, v in (("hw", [2, 3]), ("tail", [1, 2, 3]))]


def _layer(i, x, stat, quant):
    p = lambda s: f"l{i}_{s}"  # noqa: E731
    n = helper.make_node
    if quant == "none":
        nodes = [n("Identity", [x], [p("xs")])]
    elif stat == "op":
        nodes = [cadyq_op.make_select_node([x, "g", "Ws", "bs", "a"], [p("q"), p("scale"), p("bits")], [4, 6, 8]),
                 n("Unsqueeze", [p("scale"), "tail"], [p("scale4")]), n("Mul", [p("q"), p("scale4")], [p("xs")])]
    else:
        if stat == "two":
            nodes = [n("ReduceMean", [x, "hw"], [p("mean")], keepdims=1), n("Sub", [x, p("mean")], [p("d")]),
                     n("Mul", [p("d"), p("d")], [p("d2")]), n("ReduceSum", [p("d2"), "hw"], [p("ss")], keepdims=0)]
        else:
            nodes = [n("ReduceMean", [x, "hw"], [p("mean")], keepdims=0),
                     n("ReduceSumSquare", [x, "hw"], [p("sq")], keepdims=0),
                     n("Mul", [p("mean"), p("mean")], [p("m2")]), n("Mul", [p("m2"), "n"], [p("nm2")]),
                     n("Sub", [p("sq"), p("nm2")], [p("ss")])]
        nodes += [n("Div", [p("ss"), "n1"], [p("var")]), n("Sqrt", [p("var")], [p("sig")]),
                  n("Concat", ["g", p("sig")], [p("f")], axis=1), n("Gemm", [p("f"), "Ws", "bs"], [p("lg")], transB=1),
                  n("ArgMax", [p("lg")], [p("k")], axis=1, keepdims=0)]
        for v in ("a", "lev", "scl", "ilev"):
            nodes += [n("Gather", [v, p("k")], [p(v + "_n")], axis=0),
                      n("Unsqueeze", [p(v + "_n"), "tail"], [p(v + "4")])]
        if quant == "cur":
            nodes += [n("Neg", [p("a4")], [p("na")]), n("Max", [x, p("na")], [p("lo")]),
                      n("Min", [p("lo"), p("a4")], [p("c")]), n("Div", [p("c"), p("a4")], [p("u")]),
                      n("Mul", [p("u"), p("lev4")], [p("t")]),
                      n("Round", [p("t")], [p("qf")]), n("Mul", [p("qf"), p("scl4")], [p("xs")])]
        elif quant == "clip":
            nodes += [n("Div", [x, p("a4")], [p("u")]), n("Clip", [p("u"), "m1", "p1"], [p("c")]),
                      n("Mul", [p("c"), p("lev4")], [p("t")]), n("Round", [p("t")], [p("qf")]),
                      n("Mul", [p("qf"), p("scl4")], [p("xs")])]
        else:  # qdq
            nodes += [n("Div", [x, p("a4")], [p("u")]), n("Clip", [p("u"), "m1", "p1"], [p("c")]),
                      n("QuantizeLinear", [p("c"), p("ilev_n")], [p("q")], axis=0),
                      n("DequantizeLinear", [p("q"), p("scl_n")], [p("xs")], axis=0)]
    nodes.append(n("Conv", [p("xs"), f"W{i}", f"B{i}"], [p("y0")], pads=[1] * 4))
    nodes.append(n("Relu", [p("y0")], [p("y")]) if i % 2 == 0 else n("Add", [p("y0"), f"l{i - 1}_in"], [p("y")]))
    return [n("Identity", [x], [p("in")])] + nodes, p("y")


def build(variant: str, rng) -> onnx.ModelProto:
    stat, quant = variant.split("/")
    nodes, x = [], "x"
    for i in range(L):
        layer, x = _layer(i, x, stat, quant)
        nodes += layer
    nodes.append(helper.make_node("Identity", [x], ["y"]))
    inputs = [helper.make_tensor_value_info("x", TensorProto.FLOAT, [N, C, H, H]),
              helper.make_tensor_value_info("g", TensorProto.FLOAT, [N, 2])]
    graph = helper.make_graph(nodes, variant, inputs,
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)], _initializers(rng))
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)])
    cadyq_op.add_functions(model)
    return model


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--optimized-dir", default=None, help="write ORT's optimized graphs here")
    args = ap.parse_args()
    rng = np.random.default_rng(0)
    feeds = {"x": np.abs(rng.normal(0, 1, (N, C, H, H))).astype(np.float32),
             "g": rng.normal(0, 1, (N, 2)).astype(np.float32)}
    sessions = {}
    for v in VARIANTS:
        so = ort.SessionOptions()
        so.log_severity_level, so.intra_op_num_threads = 3, args.threads
        so.optimized_model_filepath = f"{args.optimized_dir or '/tmp'}/ort_floor_{v.replace('/', '_')}.onnx"
        sessions[v] = ort.InferenceSession(build(v, np.random.default_rng(1)).SerializeToString(), so)
        ops = Counter(node.op_type for node in onnx.load(so.optimized_model_filepath).graph.node)
        print(f"{v:10s} optimized graph: {dict(ops)}")
    ref = sessions["op/cur"].run(None, feeds)[0]
    times = {v: [] for v in VARIANTS}
    for _ in range(args.rounds):
        for v in VARIANTS:
            t0 = time.perf_counter()
            y = sessions[v].run(None, feeds)[0]
            times[v].append(time.perf_counter() - t0)
            if v != "none/none":
                times[v + ":diff"] = float(np.abs(y - ref).max())
    base = np.median(times["none/none"]) * 1e3 / N / L
    print(f"\n{'variant':10s} {'ms/tile/layer':>13s} {'selection':>10s} {'max |y - op/cur|':>18s}  "
          f"(threads {args.threads}, batch {N}, {C} ch, {H} px, {L} layers)")
    for v in VARIANTS:
        ms = np.median(times[v]) * 1e3 / N / L
        diff = times.get(v + ":diff", float("nan"))
        print(f"{v:10s} {ms:13.2f} {ms - base:10.2f} {diff:18.2g}")


if __name__ == "__main__":
    main()
