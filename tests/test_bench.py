"""`cadyq bench`: report fields, percentile order, iteration counts, baselines with the same weights,
JSON, argument errors. Tiny settings (24-px tiles, batches of 2): no timing assertions."""
import json

import numpy as np
import pytest
import torch
from PIL import Image as PILImage

from cadyq.bench import (
    BenchError,
    BenchSettings,
    benchmark,
    build_baseline,
    latency_stats,
    format_report,
    make_configs,
)
from cadyq.checkpoint import load_model
from cadyq.cli import build_parser, main
from cadyq.errors import CadyqError

ZOO = "edsr-tiny-cadyq-x2-cpu"
TINY = BenchSettings(tile=24, overlap=4, batch=2, warmup=1, iterations=3)
ORDER = ("min", "median", "p90", "p95", "p99", "max")


@pytest.fixture(scope="module")
def hr(photo):
    return np.ascontiguousarray(photo[200:264, 150:214])  # 64x64 HR -> 32x32 LR: 4 tiles of 24


@pytest.fixture(scope="module")
def report(hr, one_torch_thread):
    return benchmark(ZOO, ["fp32", "pams8", "fp16"], "torch", "cpu", TINY, image=hr)


def test_report_fields_and_order(report):
    rows = report["results"]
    assert [r["label"] for r in rows] == [ZOO, "fp32", "pams8"]
    assert report["skipped"] == [{"label": "fp16", "reason": report["skipped"][0]["reason"]}]
    assert "CUDA only" in report["skipped"][0]["reason"]
    for r in rows:
        lat = r["latency_ms"]
        assert [lat[k] for k in ORDER] == sorted(lat[k] for k in ORDER)
        assert lat["min"] <= lat["mean"] <= lat["max"]
        assert r["iterations"] == 3 and len(r["times_ms"]["latency"]) == 3 and r["batch"] == 2
        t = r["throughput"]
        assert t["sr_mpix_per_s"] == pytest.approx(t["lr_mpix_per_s"] * 4) and t["tiles_per_s"] > 0
        im = r["image"]
        assert im["lr_size"] == [32, 32] and im["sr_size"] == [64, 64] and im["n_tiles"] == 4
        for k in ("end_to_end_s", "fqr", "bitops_g", "bitops_g_per_sr_mpix", "psnr", "ssim", "psnr_bicubic"):
            assert np.isfinite(im[k])
        assert im["psnr_gain_db"] == pytest.approx(im["psnr"] - im["psnr_bicubic"])
        assert im["bitops_g_per_sr_mpix"] == pytest.approx(im["bitops_g"] / (64 * 64 / 1e6))
        assert set(r["vs_first"]) >= {"throughput_x", "end_to_end_speed_x", "bitops_x", "psnr_delta_db"}
    assert rows[0]["vs_first"]["throughput_x"] == 1.0 and rows[0]["vs_first"]["psnr_delta_db"] == 0.0
    fp32, pams8 = rows[1]["image"], rows[2]["image"]
    assert fp32["fqr"] == 32.0 and pams8["fqr"] == 8.0 and 4.0 <= rows[0]["image"]["fqr"] <= 8.0
    assert fp32["bitops_g"] == pytest.approx(fp32["flops_g"])  # 32-bit BitOPs are FLOPs
    assert pams8["bitops_g"] == pytest.approx(fp32["bitops_g"] / 16)  # 8x8 vs 32x32 bits
    m = report["machine"]
    assert m["torch"] == torch.__version__ and m["device"] == "cpu" and m["cpu"] and "onnxruntime" in m
    assert report["settings"]["iterations"] == 3 and report["image"]["hr_size"] == [64, 64]


def test_percentiles_are_ordered():
    st = latency_stats(np.random.default_rng(0).exponential(5.0, 57))
    assert [st[k] for k in ORDER] == sorted(st[k] for k in ORDER)
    assert latency_stats([2.0])["p99"] == 2.0
    with pytest.raises(BenchError):
        latency_stats([])


def test_baselines_have_the_same_weights(one_torch_thread, photo_tiles):
    from safetensors.torch import load_file

    from cadyq import create_model
    from cadyq.zoo import path_of

    src = load_model(ZOO)
    plain = create_model("edsr", scale=2, n_feats=16, n_resblocks=4).eval()
    state = load_file(str(path_of(ZOO)))
    plain.load_state_dict({k: v for k, v in state.items() if k in plain.state_dict()}, strict=True)
    fp32, _ = build_baseline(src, "fp32")
    x = photo_tiles[:4]
    with torch.inference_mode():
        assert torch.equal(fp32(x), plain(x))
    pams8, notes = build_baseline(src, "pams8")
    ps, ss = pams8.state_dict(), src.state_dict()
    assert all(torch.equal(ps[k], ss[k]) for k in ps if k.endswith("weight") and "input_quant" not in k)
    k8 = src.quant_config.bits.index(8)
    assert torch.equal(ps["body.0.input_quant.alpha"], ss["body.0.input_quant.alpha"][k8 : k8 + 1])
    assert torch.equal(ps["body.0.body_output_quant.alpha"], ss["body.0.body_output_quant.alpha"])
    assert "8-bit" in notes[0]
    # an fp32 model has no clip values: pams8 is calibrated on the tiles, and says so
    p2, notes2 = build_baseline(fp32, "pams8", x)
    assert "calibrated" in notes2[0] and float(p2.state_dict()["body.0.input_quant.alpha"]) != 10.0
    with pytest.raises(BenchError):
        build_baseline(fp32, "pams8")  # no tiles to calibrate with
    # the configurations the benchmark runs hold exactly these models
    configs, skipped = make_configs(ZOO, ["fp32", "pams8", "fp16"], "torch", "cpu", 24, x)
    assert [c.label for c in configs] == [ZOO, "fp32", "pams8"] and [s["label"] for s in skipped] == ["fp16"]
    assert all(torch.equal(configs[1].backend.model.state_dict()[k], v) for k, v in plain.state_dict().items())


def test_cli_json_and_duration(hr, tmp_path, capsys, one_torch_thread):
    img = tmp_path / "hr.png"
    PILImage.fromarray(hr).save(img)
    out = tmp_path / "sub" / "bench.json"
    rc = main(["bench", "--model", ZOO, "--device", "cpu", "--tile", "24", "--overlap", "4", "--batch", "3",
               "--warmup", "0", "--duration", "0.01", "--image", str(img), "--compare", "fp32",
               "--json", str(out)])
    assert rc == 0
    text = capsys.readouterr().out
    assert "=== Performance summary: fp32" in text and "percentile(99%)" in text and "Comparison" in text
    rep = json.loads(out.read_text())
    assert rep["image"]["name"] == str(img) and rep["settings"]["duration"] == 0.01
    assert rep["settings"]["iterations"] is None
    n = rep["results"][0]["iterations"]
    assert n >= 1 and all(r["iterations"] == n == len(r["times_ms"]["latency"]) for r in rep["results"])
    assert rep["results"][0]["batch"] == 3 and rep["machine"]["cpu_count"] >= 1
    assert not list(out.parent.glob(".*.tmp"))


def test_onnxruntime_rows(hr, tmp_path, one_torch_thread):
    pytest.importorskip("onnxruntime")
    from cadyq.export import export_onnx

    onnx_path = export_onnx(load_model(ZOO), tmp_path / "m.onnx", tile=24)
    s = BenchSettings(tile=24, overlap=4, batch=2, warmup=0, iterations=2)
    rep = benchmark(str(onnx_path), [f"{ZOO}@torch"], "auto", "cpu", s, image=hr)
    a, b = rep["results"]
    assert (a["backend"], b["backend"]) == ("onnxruntime", "torch") and a["label"] == "m.onnx"
    assert a["image"]["psnr"] == pytest.approx(b["image"]["psnr"], abs=0.05)  # same model, two runtimes
    with pytest.raises(CadyqError, match="checkpoint"):
        benchmark(str(onnx_path), ["fp32"], "auto", "cpu", s, image=hr)  # no weights to build it from
    with pytest.raises(CadyqError, match="--tile"):
        benchmark(str(onnx_path), [], "auto", "cpu", BenchSettings(tile=32, batch=1, warmup=0, iterations=1), image=hr)


@pytest.mark.parametrize("argv, match", [
    (["--iterations", "0"], "iterations"),
    (["--iterations", "5", "--duration", "1"], "not both"),
    (["--duration", "0"], "duration"),
    (["--batch", "0"], "batch"),
    (["--warmup", "-1"], "warmup"),
    (["--tile", "2"], "tile"),
    (["--overlap", "24"], "overlap"),
    (["--compare", ","], "no baseline"),
    (["--compare", "no-such-model"], "no-such-model"),
    (["--compare", "missing.onnx"], "missing.onnx"),
    (["--image", "/nonexistent/x.png"], "x.png"),
    (["--threads", "0"], "threads"),
])
def test_bad_arguments(argv, match, one_torch_thread):
    count = [] if {"--iterations", "--duration"} & set(argv) else ["--iterations", "1"]
    args = build_parser().parse_args(["bench", "--model", ZOO, "--device", "cpu", "--tile", "24", "--batch", "1",
                                      "--warmup", "0", *count, *argv])
    with pytest.raises(CadyqError, match=match):
        args.func(args)


def test_bad_model_exits_nonzero(capsys):
    assert main(["bench", "--model", "nope.onnx", "--device", "cpu"]) == 2
    assert "nope.onnx" in capsys.readouterr().err


def test_fp16_wrapper_runs_through_the_upscaler(hr, one_torch_thread):
    """The fp16 baseline is benchmarked on CUDA only; its wrapper is checked here under CPU autocast."""
    from cadyq.bench import Config, _autocast_backend, image_figures, time_configs
    from cadyq.runtime import create_backend

    fp32, _ = build_baseline(load_model(ZOO), "fp32")
    b = _autocast_backend(create_backend("torch", fp32, "cpu"))
    assert b.info.method == "fp16" and b.info.bits == (16,)
    c = Config("fp16", b, "fp16")
    s = BenchSettings(tile=24, overlap=4, batch=2, warmup=0, iterations=1)
    from cadyq.data.resize import bicubic_downscale

    t = time_configs([c], torch.rand(2, 3, 24, 24) * 255, s)[0]
    assert t["iterations"] == 1 and t["batch_fqr"] == 16.0
    im = image_figures(c, hr, bicubic_downscale(hr, 2), s, 2)
    assert im["fqr"] == 16.0 and im["bitops_g"] == pytest.approx(im["flops_g"] / 4)
    assert im["psnr"] > im["psnr_bicubic"] - 1.0


def test_module_as_model(hr, one_torch_thread):
    rep = benchmark(load_model(ZOO), ["pams8"], "torch", "cpu",
                    BenchSettings(tile=24, overlap=4, batch=1, warmup=0, iterations=1), image=hr)
    assert [r["label"] for r in rep["results"]] == ["edsr x2 cadyq", "pams8"]
    assert rep["settings"]["model"] == "edsr x2 cadyq"


def test_openvino_peers_and_accuracy_beside_speed(hr, tmp_path):
    """`--compare peers` on the CPU times OpenVINO's fp32 model and NNCF's static INT8 model of the same
    weights; each row carries its PSNR against the fp32 model on the timed tiles, and what OpenVINO ran.
    In a process of its own: OpenVINO loaded into the test worker makes a later test's SIGINT crash it."""
    import os
    import subprocess
    import sys

    pytest.importorskip("openvino", reason="the peers extra (make install installs it)")
    img, rep_path = tmp_path / "hr.png", tmp_path / "bench.json"
    PILImage.fromarray(hr).save(img)
    cmd = [sys.executable, "-m", "cadyq", "bench", "--model", ZOO, "--backend", "torch", "--compare",
           "native,openvino,openvino-int8", "--tile", "24", "--overlap", "4", "--batch", "2", "--warmup", "1",
           "--iterations", "2", "--threads", "1", "--image", str(img), "--json", str(rep_path)]
    env = {**os.environ, "CADYQ_HARDWARE": "bf16=0"}  # OpenVINO's fp32 model in f32 on every CPU (bf16: the next test)
    run = subprocess.run(cmd, capture_output=True, text=True, timeout=300, env=env)
    assert run.returncode == 0, run.stderr[-2000:]
    assert "vs fp32" in run.stdout
    rep = json.loads(rep_path.read_text())
    rows = {r["label"]: r for r in rep["results"]}
    assert set(rows) == {ZOO, "native", "openvino", "openvino-int8"} and not rep["skipped"]
    ov, ov8 = rows["openvino"], rows["openvino-int8"]
    assert ov["model"]["method"] == "fp32" and ov8["model"]["method"] == "int8-ptq"
    assert ov["image"]["fqr"] == 32 and ov8["image"]["fqr"] == 8  # 8-bit weights and activations
    assert any("f32" in n and "convolutions by runtime precision" in n for n in ov["notes"])
    assert any("i8" in n or "u8" in n for n in ov8["notes"])  # NNCF's convolutions really run in INT8
    assert ov["psnr_vs_fp32_tiles_db"] > 60  # the same function, float rounding apart
    assert 20 < ov8["psnr_vs_fp32_tiles_db"] < ov["psnr_vs_fp32_tiles_db"]  # lossy, not broken
    assert 25 < rows["native"]["psnr_vs_fp32_tiles_db"] < 80
    assert rows[ZOO]["psnr_vs_fp32_tiles_db"] == pytest.approx(rows["native"]["psnr_vs_fp32_tiles_db"], abs=1.0)
    assert rep["fastest_float_peer"] == "openvino"  # the INT8 model is no float peer


@pytest.mark.parametrize("bf16", [False, True])
def test_openvino_precision_follows_cadyq_hardware(bf16):
    """OpenVINO's float peer runs bf16 where cadyq.hardware says the CPU computes in it, f32 elsewhere; the row's
    note says what really ran (the compiled model's precision: f32 where the CPU cannot do what was asked)."""
    import os
    import subprocess
    import sys

    pytest.importorskip("openvino", reason="the peers extra (make install installs it)")
    code = ("from cadyq.zoo import load_pretrained\n"
            "from cadyq.bench.openvino_peer import OpenVINOBackend\n"
            "b = OpenVINOBackend(load_pretrained('edsr-tiny-fp32-x4-cpu'), 24, 'fp32')\n"
            "print(b.notes[-1]); print(b.compiled.get_property('INFERENCE_PRECISION_HINT'))\n")
    env = {**os.environ, "CADYQ_HARDWARE": f"bf16={int(bf16)}"}
    run = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300, env=env)
    assert run.returncode == 0, run.stderr[-2000:]
    note, ran = run.stdout.strip().splitlines()[-2:]
    ran = "bf16" if "bfloat16" in ran else "f32" if "float32" in ran else ran
    assert note.endswith(f"convolutions by runtime precision: 13 {ran}"), note
    if not bf16:
        assert ran == "f32"


def test_peers_expand_to_openvino_on_the_cpu_only():
    from cadyq.bench import expand_compare

    cpu = expand_compare(["peers"], torch.device("cpu"), "native")
    assert {"openvino", "openvino-int8", "fp32-cl", "bf16-cl", "fp32@onnxruntime", "fakequant"} <= set(cpu)
    assert "native" not in cpu
    assert "openvino" not in expand_compare(["peers"], torch.device("cuda"), "native")


def test_native_int8_upsampler_row_or_its_reason(hr, tmp_path, one_torch_thread):
    """native-int8up needs calibrated clip values (the zoo's quantized models carry them): without, the row is skipped
    with the reason; native-floatup runs the paper's float upsampler beside it."""
    from cadyq import save
    from cadyq.calib import calibrate_upsampler

    m = load_model(ZOO)
    m.upsampler_clips = None
    bare = tmp_path / "bare.safetensors"
    save(m, bare)
    rep = benchmark(str(bare), ["native-int8up"], "native", "cpu", TINY, image=hr)
    assert [s["label"] for s in rep["skipped"]] == ["native-int8up"] and "calibrate" in rep["skipped"][0]["reason"]
    path = tmp_path / "m.safetensors"
    save(calibrate_upsampler(m, [torch.rand(4, 3, 24, 24) * 255]), path)
    rep = benchmark(str(path), ["native-int8up", "native-floatup"], "native", "cpu", TINY, image=hr)
    rows = {r["label"]: r for r in rep["results"]}
    assert any("upsampler and tail INT8 (asked for)" in n for n in rows["native-int8up"]["notes"])
    assert any("upsampler float (asked for)" in n for n in rows["native-floatup"]["notes"])
    assert abs(rows["native-int8up"]["image"]["psnr"] - rows["native-floatup"]["image"]["psnr"]) < 0.5


def test_auto_backend_row_says_what_it_chose(hr, one_torch_thread):
    rep = benchmark(ZOO, [], "auto", "cpu", TINY, image=hr)
    row = rep["results"][0]
    assert row["backend"] == "native" and "integer program" in row["choice"]
    assert "chosen automatically" in format_report(rep)


def test_rows_that_differ_by_backend_have_different_labels(one_torch_thread):
    """`--compare fp32,fp32@onnxruntime` (as `peers` expands) gives two rows: their labels say which is which."""
    x = torch.rand(2, 3, 24, 24) * 255
    configs, _ = make_configs(ZOO, ["fp32", "fp32@onnxruntime"], "torch", "cpu", 24, x)
    assert [(c.label, c.backend.name) for c in configs] == [(ZOO, "torch"), ("fp32", "torch"),
                                                            ("fp32@onnxruntime", "onnxruntime")]
    with pytest.raises(BenchError, match="fp32 would be two rows"):
        make_configs(ZOO, ["fp32", "fp32"], "torch", "cpu", 24, x)
