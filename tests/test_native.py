"""The native CPU backend: oneDNN INT8 convolutions and the C kernels against the torch integer
reference and the fake-quant model (bits per decision, SR), the C kernels against torch op for op."""
import copy

import numpy as np
import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F
from conftest import boundary_tile_batch, photo_crops, randomize_selectors, tiny

from cadyq import create_model, quantize
from cadyq.errors import BackendError
from cadyq import hardware
from cadyq.kernels.cpu import OneDNNKernels, available
from cadyq.kernels.cpu import build
from cadyq.quant import ModelInfo, fake_quant, observe
from cadyq.quant.lowering import IntConv2d, IntQuantizer, QAct, ReferenceKernels, _Context, lower
from cadyq.quant.parity import compare

pytestmark = [pytest.mark.usefixtures("one_torch_thread"),
              pytest.mark.skipif(available() is not None, reason=f"{available()}")]
BACKBONES = ("edsr", "srresnet", "carn", "idn")


def per_tile(program, tiles):
    outs = [program(tiles[i:i + 1]) for i in range(tiles.shape[0])]
    return torch.cat([o[0] for o in outs]), torch.cat([o[1] for o in outs])


def kernel_sets():
    """The 7-bit forms are exact on every CPU; the full-range form only where u8 x s8 accumulates in 32 bits (its
    choice logic is tested on every CPU by forcing: test_int8_range_branch_is_decided_in_cadyq_hardware)."""
    sets = [("7bit", True, "float"), ("7bit", True, "halves")]
    if hardware.int8_range() == "full":  # CPUs with VNNI/AMX: the single full-range convolution
        sets.append(("full", True, "float"))
    return sets


CASES = [(n, m, *k) for n in BACKBONES for m in ("pams8", "cadyq") for k in kernel_sets()]
CASES += [("edsr", "cadyq", "7bit", False, "float"), ("idn", "cadyq", "7bit", False, "halves")]  # no C compiler


@pytest.mark.parametrize("name,method,range_mode,library,eight_bit", CASES)
def test_onednn_program_matches(name, method, range_mode, library, eight_bit):
    torch.manual_seed(0)
    m = quantize(tiny(name), method).eval()
    randomize_selectors(m, photo_crops(16, 24, seed=7))
    tiles = photo_crops(max(32, -(-600 // ModelInfo.from_model(m).n_layers)), 24)
    program = lower(m)
    ref_sr, ref_bits = program(tiles)
    program.use(OneDNNKernels(range_mode, library=library, eight_bit=eight_bit))
    rep = compare(m, program, tiles, run=per_tile)
    print(f"\n{name} {method} {range_mode}/{eight_bit}{'' if library else ' (torch elementwise)'}: {rep}")
    assert rep.agreement >= 0.999 and not rep.unexplained, str(rep)
    assert rep.sr_mean <= 1e-3 and rep.sr_max <= 2.0, str(rep)
    sr, bits = per_tile(program, tiles)
    assert (bits == ref_bits).float().mean() >= 0.999
    assert (sr - ref_sr).abs().max() <= 2.0


def _conv(w, act="none"):
    c = w.shape[0]
    return IntConv2d("c", w, torch.rand(c) * 0.01 + 1e-3, torch.randn(c), (1, 1), (1, 1), (1, 1), 1, None, act)


@pytest.mark.parametrize("bits", (4, 6, 8))
@pytest.mark.parametrize("eight_bit", ("float", "halves"))
def test_onednn_conv_accumulates_exactly(bits, eight_bit):
    """The int32 accumulation equals the exact integer convolution (7-bit range, the halves of 8-bit q)."""
    g = torch.Generator().manual_seed(bits)
    s = 2 ** (bits - 1) - 1
    w = torch.randint(-127, 128, (32, 64, 3, 3), generator=g).to(torch.int8)
    x = torch.randint(-s, s + 1, (1, 64, 10, 10), generator=g).float()
    x[0, :, 0, 0], x[0, :, 0, 1] = s, -s  # the extremes
    conv = _conv(w, "relu")
    conv.weight_scale.fill_(1.0)
    conv.bias.zero_()
    q = IntQuantizer("fixed", [bits], [float(s)])  # alpha = s: q = x
    k = OneDNNKernels("7bit", eight_bit=eight_bit)
    ctx = _Context(k)
    ctx.grad = torch.zeros(1, 2)
    qa = k.select_quantize(x.contiguous(memory_format=torch.channels_last), q, ctx)
    out = k.conv(qa, conv)
    exact = torch.relu(F.conv2d(x.double(), w.double(), padding=1))
    if bits == 8 and eight_bit == "float":
        torch.testing.assert_close(out.double(), exact, rtol=1e-6, atol=1e-3)
    else:
        assert torch.equal(out.double(), exact)


@pytest.mark.skipif(build.library() is None, reason=f"no C kernels: {build.why_unavailable()}")
def test_c_select_quant_rounds_as_torch_on_boundaries():
    rng = np.random.default_rng(0)
    k = OneDNNKernels("7bit")
    ref = ReferenceKernels()
    for bits, alpha in ((4, 1.7), (6, 2.3), (8, 3.1)):
        s = 2 ** (bits - 1) - 1
        x = torch.from_numpy(boundary_tile_batch(rng, (1, 16, 12, 12), alpha, s)).contiguous(memory_format=torch.channels_last)
        q = IntQuantizer("fixed", [bits], [alpha])
        ctx = _Context(k)
        ctx.grad = torch.zeros(1, 2)
        a = k.select_quantize(x, q, ctx, dequant=True)
        b = ref.select_quantize(x, q, ctx)
        torch.testing.assert_close(k.dequantize(a), ref.dequantize(b), rtol=0, atol=0)
        assert torch.equal(k.dequantize(a).div(b.scale).round(), b.q)


@pytest.mark.skipif(build.library() is None, reason=f"no C kernels: {build.why_unavailable()}")
def test_c_selection_matches_torch_std_and_first_max_on_ties():
    g = torch.Generator().manual_seed(1)
    x = (torch.randn(1, 24, 16, 16, generator=g) * 3 + 5).contiguous(memory_format=torch.channels_last)
    grad = torch.rand(1, 2, generator=g) * 10
    w = torch.randn(3, 26, generator=g)
    sigma = x.std(dim=(2, 3))
    logits = F.linear(torch.cat([grad, sigma], 1), w, torch.zeros(3))
    k = OneDNNKernels("7bit")
    ctx = _Context(k)
    ctx.grad = grad
    for target in range(3):  # a bias that makes `target` win by a margin
        b = -logits[0] + torch.tensor([0.0, 0.0, 0.0]).index_fill(0, torch.tensor([target]), 1.0)
        q = IntQuantizer("full", [4, 6, 8], [1.0, 2.0, 3.0], w, b)
        assert int(k.select_quantize(x, q, ctx).k[0]) == target
    tie = IntQuantizer("full", [4, 6, 8], [1.0, 2.0, 3.0], torch.zeros(3, 26), torch.tensor([0.5, 0.5, 0.5]))
    assert int(k.select_quantize(x, tie, ctx).k[0]) == 0  # torch.argmax: the first maximum


@pytest.mark.skipif(build.library() is None, reason=f"no C kernels: {build.why_unavailable()}")
def test_c_fake_quant_is_bitwise_torch():
    rng = np.random.default_rng(2)
    x = torch.from_numpy(boundary_tile_batch(rng, (2, 8, 10, 10), 2.5, 127)).contiguous(memory_format=torch.channels_last)
    a = torch.tensor([2.5])
    assert torch.equal(OneDNNKernels("7bit").fake_quant(x, a, 127.0), fake_quant(x, a, 127))


def test_tile_at_a_time():
    k = OneDNNKernels("7bit")
    ctx = _Context(k)
    ctx.grad = torch.zeros(2, 2)
    with pytest.raises(BackendError, match="one tile at a time"):
        k.select_quantize(torch.zeros(2, 4, 5, 5), IntQuantizer("fixed", [8], [1.0]), ctx)


def test_int8_range_branch_is_decided_in_cadyq_hardware():
    """The probe decides on this CPU; forced, every CPU takes each branch: the kernels' zero points and the notes
    a user reads follow cadyq.hardware."""
    from cadyq.runtime.native_backend import NativeBackend

    assert hardware.int8_range() in ("full", "7bit")
    assert hardware._int8_probe() == ("full" if hardware.has_vnni() or hardware.has_amx() else "7bit")
    m = quantize(tiny("edsr"), "cadyq").eval()
    q = lower(m).dynamic[0]
    for forced, zp, note in [("full", 128, "full 8-bit input range (VNNI/AMX)"), ("7bit", 64, "7-bit inputs")]:
        with hardware.forced(int8_range=forced):
            k = OneDNNKernels()
            assert k.range == forced and k._scheme(q)[3] == [zp] * q.n_candidates
            assert note in NativeBackend(m, "cpu").notes[0]


@pytest.mark.parametrize("name", ["edsr-tiny-cadyq-x4-cpu", "edsr-tiny-cadyq-x2-cpu"])
def test_trained_model_parity_on_photo_tiles(name, tmp_path):
    """A trained CADyQ model (the zoo's CPU-trained ones) on real photo tiles: the integer reference, the
    native kernels and the ONNX int8 graph in ONNX Runtime choose the fake-quant model's bits on >= 99.9 %
    of the decisions (every other one explained), with SR >= 50 dB PSNR against it."""
    from cadyq.export import export_onnx
    from cadyq.export.check import compare as compare_onnx
    from cadyq.zoo import load_pretrained

    m = load_pretrained(name).eval()
    tiles = photo_crops(40, 48)
    program = lower(m)
    for kernels in (None, OneDNNKernels()):
        if kernels is not None:
            program.use(kernels)
        rep = compare(m, program, tiles, run=per_tile if kernels is not None else None)
        print(f"\n{name} {program.kernels.name}: {rep}")
        assert rep.agreement >= 0.999 and not rep.unexplained and rep.psnr_db >= 50, str(rep)
    path = export_onnx(m, tmp_path / "m.onnx", tile=48)
    ort_rep = compare_onnx(path, m, tiles, bisect="auto")
    print(ort_rep)
    assert ort_rep.bit_agreement >= 0.999 and not ort_rep.unexplained and not ort_rep.local_failures, str(ort_rep)


def test_native_backend_through_the_upscaler_and_cli(tmp_path, photo):
    """`Upscaler(..., backend="native")` and `cadyq upscale --backend native` on a real photo: the same bit map as
    the torch backend, SR >= 50 dB against it, a bit-map image and a JSON report."""
    import json

    from cadyq.cli import main
    from cadyq.data.io import Image, read_image, write_image
    from cadyq.metrics import psnr
    from cadyq.runtime import Upscaler

    crop = np.ascontiguousarray(photo[:200, :260])
    nat = Upscaler("edsr-tiny-cadyq-x4-cpu", backend="native", device="cpu", batch=8).upscale(crop)
    ref = Upscaler("edsr-tiny-cadyq-x4-cpu", backend="torch", device="cpu", batch=8).upscale(crop)
    assert (nat.bit_map == ref.bit_map).float().mean() >= 0.999
    assert nat.fqr == pytest.approx(ref.fqr) and nat.bitops == pytest.approx(ref.bitops)
    assert psnr(nat.image.rgb, ref.image.rgb, 0) >= 50
    src = tmp_path / "photo.png"
    write_image(src, Image(crop, None, 8, False, None, None, "RGB"))
    out, rep = tmp_path / "out.png", tmp_path / "r.json"
    assert main(["upscale", str(src), "-o", str(out), "--model", "edsr-tiny-cadyq-x4-cpu", "--backend", "native",
                 "--bitmap", "--json", str(rep)]) == 0
    assert read_image(out).rgb.shape == (800, 1040, 3) and (tmp_path / "out_bits.png").is_file()
    report = json.loads(rep.read_text())
    assert report["backend"] == "native" and report["images"][0]["fqr"] == pytest.approx(nat.fqr, abs=1e-3)
    assert main(["upscale", str(src), "-o", str(tmp_path / "o2.png"), "--model", "edsr-tiny-cadyq-x4-cpu",
                 "--backend", "torch", "--float-precision", "fp32"]) == 2  # an option of the native backend only
    assert main(["upscale", str(src), "-o", str(tmp_path / "o3.png"), "--model", "edsr-tiny-fp32-x4-cpu",
                 "--float-precision", "fp32"]) == 2  # auto runs an fp32 model on torch: not native
    # with no --backend, a quantized model runs native and the JSON says why
    assert main(["upscale", str(src), "-o", str(tmp_path / "o4.png"), "--model", "edsr-tiny-cadyq-x4-cpu",
                 "--float-precision", "fp32", "--json", str(rep), "--overwrite"]) == 0
    report = json.loads(rep.read_text())
    assert report["backend"] == "native" and "auto: cadyq model: integer program" in report["backend_choice"]
    assert read_image(tmp_path / "o4.png").rgb.shape == (800, 1040, 3)


def test_native_backend_refuses_what_it_cannot_run():
    from cadyq.runtime.native_backend import NativeBackend

    with pytest.raises(BackendError, match="quantized models"):
        NativeBackend(tiny("edsr"), "cpu")
    with pytest.raises(BackendError):
        NativeBackend(quantize(tiny("edsr"), "cadyq"), "cuda")
    with pytest.raises(BackendError, match="float precision"):
        NativeBackend(quantize(tiny("edsr"), "cadyq"), "cpu", float_precision="int4")


@pytest.mark.parametrize("scale", [2, 3, 4])
def test_nhwc_pixel_shuffle_rewrite_is_exact(scale):
    from cadyq.runtime.nhwc import NHWCPixelShuffle, nhwc_pixel_shuffles

    torch.manual_seed(0)
    net = create_model("edsr", scale=scale, n_resblocks=1, n_feats=8).eval()
    x = (torch.rand(2, 3, 12, 10) * 255).contiguous(memory_format=torch.channels_last)
    with torch.no_grad():
        ref = net(x)
        fast = copy.deepcopy(net).to(memory_format=torch.channels_last)
        assert nhwc_pixel_shuffles(fast) == {2: 1, 3: 1, 4: 2}[scale]
        assert not any(type(m) is nn.PixelShuffle for m in fast.modules())
        assert any(isinstance(m, NHWCPixelShuffle) for m in fast.modules())
        got = fast(x)
    torch.testing.assert_close(got, ref, rtol=1e-5, atol=1e-3)


def test_missing_kernel_source_falls_back_to_torch_with_a_reason(monkeypatch, tmp_path):
    """An install without quant.c (or without a compiler) still runs the native backend, on torch elementwise
    work, and says why in the backend's notes instead of failing."""
    monkeypatch.setattr(build, "SOURCE", tmp_path / "quant.c")
    monkeypatch.setattr(build, "_prebuilt", lambda: None)  # nor the library compiled into the wheel
    build.library.cache_clear()
    try:
        assert build.library() is None and "source is not installed" in build.why_unavailable()
        from cadyq.runtime.native_backend import NativeBackend

        be = NativeBackend(quantize(tiny("edsr"), "cadyq"), "cpu", workers=1)
        assert any("C kernels unavailable" in n and "source is not installed" in n for n in be.notes)
        sr, bits = be.run(torch.rand(1, 3, 24, 24) * 255)
        assert sr.shape == (1, 3, 48, 48) and torch.isfinite(sr).all()
    finally:
        monkeypatch.undo()
        build.library.cache_clear()


def test_installed_wheel_runs_every_backend_from_its_own_files(tmp_path):
    """The wheel a user installs: built from a copy of the sources, installed into a fresh virtual environment
    (its dependencies from this interpreter's site-packages), run from outside the checkout. It carries the
    compiled C kernels (used where no compiler is), their source, the zoo and its card; the command line runs
    the native, torch and ONNX Runtime backends and every subcommand a CPU serves."""
    import os
    import shutil
    import site
    import subprocess
    import sys
    import zipfile
    from pathlib import Path

    from cadyq.data.io import Image, write_image

    root, src = Path(__file__).parents[1], tmp_path / "src"
    shutil.copytree(root / "cadyq", src / "cadyq", ignore=shutil.ignore_patterns("__pycache__", "*.so"))
    for f in ("pyproject.toml", "README.md", "setup.py"):
        shutil.copy(root / f, src / f)
    run = subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q", "-w",
                          str(tmp_path / "dist"), str(src)], capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stderr[-2000:]
    (wheel,) = (tmp_path / "dist").glob("cadyq-*.whl")
    names = set(zipfile.ZipFile(wheel).namelist())
    assert {"cadyq/kernels/cpu/quant.c", "cadyq/zoo/MODEL_CARD.md", "cadyq/zoo/edsr-cadyq-x4.safetensors"} <= names
    assert any(n.startswith("cadyq/kernels/cpu/_cadyq_cpu") and n.endswith(".so") for n in names)
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--system-site-packages", str(venv)], check=True, timeout=120)
    py = str(venv / "bin" / "python")
    # its dependencies: this interpreter's packages, also when it runs in a virtual environment (whose packages a
    # new venv made from it does not see: --system-site-packages means the base interpreter's)
    purelib = subprocess.run([py, "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"], check=True,
                             capture_output=True, text=True).stdout.strip()
    ours = [p for p in site.getsitepackages() if os.path.isdir(p)]
    Path(purelib, "_test_dependencies.pth").write_text("".join(f"import site; site.addsitedir({p!r})\n" for p in ours))
    subprocess.run([py, "-m", "pip", "install", "--no-deps", "--ignore-installed", "-q", str(wheel)], check=True, timeout=300)
    work = tmp_path / "work"
    work.mkdir()
    rng = np.random.default_rng(0)
    write_image(work / "a.png", Image(rng.integers(0, 256, (40, 52, 3), dtype=np.uint8), None, 8, False, None, None, "RGB"))
    # no C compiler: the wheel's prebuilt kernels run, and the cache of compiled ones is empty
    env = {**os.environ, "CC": str(tmp_path / "no-such-cc"), "CADYQ_CACHE_DIR": str(tmp_path / "cache")}
    env.pop("PYTHONPATH", None)  # the installed wheel, not a checkout named there

    def cadyq(*args, ok=True):
        r = subprocess.run([str(venv / "bin" / "cadyq"), *map(str, args)], cwd=work, env=env, capture_output=True,
                           text=True, timeout=300)
        assert (r.returncode == 0) == ok, (args, r.stdout[-1500:], r.stderr[-1500:])
        return r

    where = subprocess.run([py, "-c", "import cadyq; print(cadyq.__file__)"], cwd=work, env=env, capture_output=True,
                           text=True, check=True).stdout
    assert str(venv) in where  # the installed package, not the checkout
    m = "edsr-tiny-cadyq-x2-cpu"
    r = cadyq("upscale", "a.png", "-o", "out.png", "--model", m, "--bitmap", "--json", "r.json")
    assert "backend: native on cpu (auto:" in r.stderr and "warning: C kernels: the prebuilt portable library" in r.stderr
    assert (work / "out.png").is_file() and (work / "out_bits.png").is_file()
    cadyq("upscale", "a.png", "-o", "ref.png", "--model", m, "--backend", "torch")
    cadyq("info", m)
    cadyq("export", "--model", m, "-o", "m.onnx", "--tile", "24")
    cadyq("upscale", "a.png", "-o", "ort.png", "--model", "m.onnx", "--tile", "24")
    cadyq("check", "m.onnx", "--against", m, "--image", "a.png")
    cadyq("bench", "--model", m, "--tile", "24", "--batch", "2", "--iterations", "1", "--warmup", "0", "--image", "a.png")
    (work / "hr").mkdir()
    shutil.copy(work / "a.png", work / "hr" / "a.png")
    cadyq("eval", "--model", m, "--data", "hr")
    cadyq("calibrate", "--model", "edsr-tiny-fp32-x2-cpu", "--data", "hr", "--target", "pams8", "-o", "p.safetensors")
    cadyq("train", "--backbone", "edsr", "--n-feats", "8", "--n-resblocks", "1", "--scale", "2", "--method", "fp32",
          "--data", "hr", "--iters", "2", "--batch", "2", "--patch", "16", "--workers", "0", "--out", "run",
          "--no-progress", "--val-every", "100")
    assert (work / "run" / "last.safetensors").is_file()
    from conftest import have_trt_builder

    if have_trt_builder():  # CI installs TensorRT-RTX (make install)
        cadyq("engine", "m.onnx", "-o", "m.engine", "--batch", "1:2:4")
    assert cadyq("upscale", "missing.png", "-o", "x.png", ok=False).stderr.startswith("cadyq: error:")


def test_int8_upsampler_from_the_command_line(tmp_path, photo):
    """`cadyq calibrate --upsampler` adds the clip values; `cadyq upscale --int8-upsampler` runs them natively;
    the option is refused where it cannot apply."""
    from cadyq.cli import main
    from cadyq.data.io import Image, read_image, write_image

    crop = np.ascontiguousarray(photo[:100, :120])
    photos = tmp_path / "photos"
    photos.mkdir()
    write_image(photos / "a.png", Image(np.ascontiguousarray(photo[100:400, 100:400]), None, 8, False, None, None, "RGB"))
    src, m = tmp_path / "lr.png", tmp_path / "m.safetensors"
    write_image(src, Image(crop, None, 8, False, None, None, "RGB"))
    tiny_model = "edsr-tiny-cadyq-x4-cpu"
    assert main(["calibrate", "--model", tiny_model, "--data", str(photos), "--upsampler", "--tiles", "8",
                 "-o", str(m)]) == 0
    assert main(["upscale", str(src), "-o", str(tmp_path / "a.png"), "--model", str(m), "--int8-upsampler"]) == 0
    assert main(["upscale", str(src), "-o", str(tmp_path / "b.png"), "--model", str(m)]) == 0
    a, b = read_image(tmp_path / "a.png").rgb.astype(float), read_image(tmp_path / "b.png").rgb.astype(float)
    assert a.shape == b.shape == (400, 480, 3) and 25 < 10 * np.log10(255 ** 2 / ((a - b) ** 2).mean()) < 80
    assert main(["upscale", str(src), "-o", str(tmp_path / "c.png"), "--model", str(m), "--backend", "torch",
                 "--int8-upsampler"]) == 2
    assert main(["upscale", str(src), "-o", str(tmp_path / "d.png"), "--model", tiny_model, "--int8-upsampler"]) == 2
    assert not (tmp_path / "c.png").exists() and not (tmp_path / "d.png").exists()


def test_bf16_float_layers_keep_the_bits_and_move_pixels_a_few_levels(photo):
    """README's C++ claim: libcadyq's package (float32 float layers) is within 1 LSB of native with float_precision
    "fp32" (test_cpp); native's default on CPUs with bf16 arithmetic runs the float layers in bf16, which keeps every
    bit-width but moves pixels by up to 5 levels, as the README says."""
    import cadyq

    crop = np.ascontiguousarray(photo[100:196, 150:278])
    runs = {fp: cadyq.Upscaler("edsr-tiny-cadyq-x2-cpu", backend="native", device="cpu",
                               backend_options={"float_precision": fp}).upscale(crop) for fp in ("fp32", "bf16")}
    assert torch.equal(runs["fp32"].bit_map, runs["bf16"].bit_map)
    d = np.abs(runs["fp32"].image.rgb.astype(int) - runs["bf16"].image.rgb)
    assert 2 <= d.max() <= 5, d.max()
