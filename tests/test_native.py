"""The native CPU backend: oneDNN INT8 convolutions and the C kernels against the torch integer reference and the
fake-quant model (bits per decision, SR), the C kernels against torch op for op, the program's calls."""
import copy

import numpy as np
import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F
from conftest import boundary_tile_batch, photo_crops, randomize_selectors, tiny

from cadyq import create_model, hardware, quantize
from cadyq.errors import BackendError
from cadyq.kernels.cpu import OneDNNKernels, available
from cadyq.kernels.cpu import build
from cadyq.kernels.cpu import onednn as K
from cadyq.quant import ModelInfo
from cadyq.quant.lowering import IntConv2d, IntQuantizer, lower
from cadyq.quant.parity import compare
from cadyq.runtime.native_backend import NativeBackend

pytestmark = [pytest.mark.usefixtures("one_torch_thread"),
              pytest.mark.skipif(available() is not None, reason=f"{available()}")]
BACKBONES = ("edsr", "srresnet", "carn", "idn")


def forms():
    """The float form of the convolutions is exact on every CPU; the oneDNN INT8 form only where u8 x s8 accumulates
    in 32 bits (its choice logic is tested on every CPU by forcing: test_int8_range_branch_is_decided_in_cadyq_hardware)."""
    return ["7bit"] + (["full"] if hardware.int8_range() == "full" else [])


def native(m, form, tiles_per_call=4, **kw):
    with hardware.forced(int8_range=form, tiles_per_call=tiles_per_call):
        return NativeBackend(m, "cpu", float_precision="fp32", **kw)


CASES = [(n, m, f) for n in BACKBONES for m in ("pams8", "cadyq") for f in forms()]


@pytest.mark.parametrize("name,method,form", CASES)
def test_native_program_matches_the_fake_quant_model(name, method, form):
    """Every backbone, PAMS-8 and CADyQ (selectors that choose all of 4/6/8): >= 99.9 % of the (tile, layer)
    decisions equal, every other one explained (a tie or a rounding boundary), SR within 50 dB. EDSR runs the
    8-bit program, the others the lowered module graph on the same kernels."""
    torch.manual_seed(0)
    m = quantize(tiny(name), method).eval()
    randomize_selectors(m, photo_crops(16, 24, seed=7))
    tiles = photo_crops(max(32, -(-600 // max(1, ModelInfo.from_model(m).n_layers))), 24)
    be = native(m, form)
    assert be.fused == (name == "edsr")
    rep = compare(m, be.program, tiles)
    print(f"\n{name} {method} {form}: {rep}")
    assert rep.agreement >= 0.999 and not rep.unexplained, str(rep)
    assert rep.psnr_db >= 50, str(rep)
    sr, bits = be.run(tiles)  # in groups of 4 tiles, on the workers: the same as one call
    ref_sr, ref_bits = lower(m)(tiles)
    assert (bits == ref_bits).float().mean() >= 0.999 and (sr - ref_sr).abs().max() <= 3.0


@pytest.mark.parametrize("form", forms())
def test_int8_conv_accumulates_exactly_and_writes_the_reference_8_bit_output(form):
    """u8 inputs over the whole 8-bit range (the extremes included), int8 weights: the accumulation is the exact
    integer convolution, and the 8-bit output is round(clamp(y, -a, a) / a * s), as the reference rounds it."""
    g = torch.Generator().manual_seed(3)
    w = torch.randint(-127, 128, (32, 64, 3, 3), generator=g).to(torch.int8)
    v = torch.randint(-127, 128, (4, 64, 10, 10), generator=g).float()
    v[:, :, 0, 0], v[:, :, 0, 1] = 127, -127
    u = (v + 128).to(torch.uint8).contiguous(memory_format=torch.channels_last)
    conv = IntConv2d("c", w, torch.ones(32), torch.zeros(32), (1, 1), (1, 1), (1, 1), 1, None, "relu")
    exact = torch.relu(torch.nn.functional.conv2d(v.double(), w.double(), padding=1))
    assert torch.equal(K.Int8Conv(conv, 1.0, None, form)(u).double(), exact)
    a = float(exact.max()) / 3  # a third of the outputs clip
    got = K.Int8Conv(conv, 1.0, (a, 127.0), form)(u)
    want = torch.round(exact.clamp(-a, a) / a * 127) + 128
    assert got.dtype == torch.uint8 and (got.double() - want).abs().max() <= (0 if form == "7bit" else 1)
    assert (got.double() != want).float().mean() <= 1e-3  # oneDNN may round a product of scales 1 ulp apart


def _quant(bits=(4, 6, 8), alpha=(1.7, 2.3, 3.1), mode="full", c=16, seed=0):
    g = torch.Generator().manual_seed(seed)
    w = torch.randn(len(bits), c + 2, generator=g) if mode == "full" else None
    b = torch.randn(len(bits), generator=g) if mode in ("full", "layer") else None
    return IntQuantizer(mode, list(bits), list(alpha), w, b)


def _ref_select(q, x, grad, k=None):
    """The reference: v on the top grid, the statistics of its values, the choice, the table."""
    v = q.top_integers(x.float())
    if k is None:
        sigma = (v / q.levels[-1] * q.alpha[-1]).std(dim=(2, 3))
        k = q.choose(sigma, grad, None)
    return q.requantize(v, k), k


def _ties_only(got: torch.Tensor, x: torch.Tensor, a: float, s: float) -> bool:
    """got (integers) equals the reference's round(clamp(x, -a, a) / a * s) but where x sits within float rounding of
    a .5 tie (the C passes multiply by s / a where torch divides: quant.c)."""
    scaled = x.double().clamp(-a, a) / a * s
    want = torch.round(x.float().clamp(-a, a) / a * s).double()
    off = got.double() != want
    return bool(((scaled[off] - scaled[off].floor() - 0.5).abs() <= 1e-5).all())


def test_c_quantize_select_rounds_as_torch_on_boundaries_and_chooses_as_the_reference():
    """Float input (every rounding boundary of the top grid, one float step either side): the C pass's 8-bit values
    equal the reference's but at exact ties, and its statistics choose as the reference's; bf16 input likewise."""
    rng = np.random.default_rng(0)
    q = _quant()
    q.weight[:, :2] = torch.tensor([[0.0, 0.0], [1.0, 0.0], [2.0, 0.0]])  # the tile gradient spreads the choice
    q.bias.copy_(torch.tensor([0.0, -5.0, -15.0]))
    q.weight[:, 2:] *= 0.01
    x = torch.from_numpy(boundary_tile_batch(rng, (6, 16, 12, 12), 3.1, 127)).contiguous(memory_format=torch.channels_last)
    grad = torch.tensor([[1.0, 0], [7, 0], [14, 0], [3, 1], [8, 2], [19, 5]])
    ref_q, ref_k = _ref_select(q, x, grad)
    for xx in (x, x.bfloat16()):
        want_q, want_k = _ref_select(q, xx.float(), grad) if xx.dtype == torch.bfloat16 else (ref_q, ref_k)
        u, k = K.quantize_select(xx, K.Selection(q), K.Group(grad))
        assert torch.equal(k.long(), want_k)
        top = K.Selection(q)
        top_only = _quant(bits=(8,), alpha=(3.1,), mode="fixed")
        v, _ = K.quantize_select(xx, K.Selection(top_only), K.Group(grad))  # the first rounding alone
        assert _ties_only(v.float() - 128, xx.float(), top.a, top.s)
        assert (u.float() - 128 != want_q).float().mean() <= 0.02  # the boundary batch is mostly ties
    assert len(set(ref_k.tolist())) > 1  # the test sees more than one candidate chosen


def test_c_select_u8_and_tables_cover_every_8_bit_value():
    """Each candidate's table maps every 8-bit value as `IntQuantizer.requantize` does; the top candidate's table is
    the identity (no pass); given choices (layer, tile, fixed modes) are applied as given."""
    q = _quant()
    tables = q.tables()
    v = torch.arange(-128, 128, dtype=torch.float32)
    for k in range(3):
        assert torch.equal(tables[k].float() - 128, q.requantize(v, torch.tensor(k)))
    # the top candidate's table is the identity but for v = -128, which never reaches a quantizer (below)
    assert torch.equal(tables[-1][1:], torch.arange(1, 256, dtype=torch.uint8)) and not torch.equal(tables[0], tables[-1])
    assert K.Selection(q).identity.tolist() == [0, 0, 1]
    # every value 1..255 in every tile, with a choice per tile given (tile mode)
    u = torch.arange(1, 256, dtype=torch.uint8).repeat(3 * 16 * 16 * 16 // 255 + 1)[: 3 * 16 * 16 * 16]
    u = u.view(3, 16, 16, 16).permute(0, 3, 1, 2).contiguous(memory_format=torch.channels_last)
    tile = _quant(mode="tile")
    sel = K.Selection(tile)
    logits = torch.eye(3)[[2, 0, 1]]
    ref = torch.stack([tables[k][u[i].long()] for i, k in enumerate([2, 0, 1])])
    k = K.select_u8(u, sel, K.Group(torch.zeros(3, 2), logits))
    assert k.tolist() == [2, 0, 1] and torch.equal(u, ref)


def test_c_selection_takes_the_first_maximum_on_ties():
    x = (torch.rand(2, 16, 8, 8) * 3).contiguous(memory_format=torch.channels_last)
    tie = IntQuantizer("full", [4, 6, 8], [1.0, 2.0, 3.0], torch.zeros(3, 18), torch.tensor([0.5, 0.5, 0.5]))
    assert K.quantize_select(x, K.Selection(tie), K.Group(torch.zeros(2, 2)))[1].tolist() == [0, 0]  # as torch.argmax


def test_c_residual_is_the_reference_sum():
    """EDSR's residual stream: a block's output on its fixed 8-bit quantizer plus its quantized input, onto the next
    block's grid: the same values as the fake-quant model's y + x, then its rounding."""
    from cadyq.quant.ops import fake_quant

    g = torch.Generator().manual_seed(5)
    y = torch.randint(0, 256, (3, 16, 9, 9), generator=g, dtype=torch.uint8).contiguous(memory_format=torch.channels_last)
    skip = torch.randint(1, 256, (3, 16, 9, 9), generator=g, dtype=torch.uint8).contiguous(memory_format=torch.channels_last)
    a_y, a_skip = 1.37, 2.9
    r = (y.float() - 128).clamp_min(-127) / 127.0 * a_y + (skip.float() - 128) / 127.0 * a_skip
    assert torch.equal(r, fake_quant((y.float() - 128).clamp_min(-127) / 127.0 * a_y, torch.tensor(a_y), 127)
                       + (skip.float() - 128) / 127.0 * a_skip)
    got = K.residual_float(y, a_y, skip, a_skip, torch.float32)
    torch.testing.assert_close(got, r, rtol=1e-6, atol=1e-6)  # multiplied where the reference divides (quant.c)
    assert torch.equal(K.residual_float(y, a_y, skip, a_skip, torch.bfloat16), got.bfloat16())
    nxt = _quant(bits=(8,), alpha=(4.0,), mode="fixed")
    u, _ = K.residual_select(y, a_y, skip, a_skip, K.Selection(nxt), K.Group(torch.zeros(3, 2)))
    assert _ties_only(u.float() - 128, got, 4.0, 127.0) and (u.float() - 128 != nxt.top_integers(r)).float().mean() < 1e-3
    layer = _quant(mode="layer")
    u, k = K.residual_select(y, a_y, skip, a_skip, K.Selection(layer), K.Group(torch.zeros(3, 2)))
    want, _ = _ref_select(layer, got, None, k.long())
    assert (u.float() - 128 != want).float().mean() < 1e-3


def test_native_program_calls_every_quantized_conv_with_whole_groups_and_8_bit_outputs():
    """The program's own record of its oneDNN calls over one batch of 16 tiles: every quantized convolution (and the
    INT8 upsampler's) gets tiles_per_call tiles, and each one whose output feeds a quantizer writes uint8."""
    from cadyq.calib import calibrate_upsampler
    from cadyq.zoo import load_pretrained

    m = calibrate_upsampler(load_pretrained("edsr-tiny-cadyq-x4-cpu"), [photo_crops(8, 48)])
    with hardware.forced(int8_range="full", tiles_per_call=4):
        be = NativeBackend(m, "cpu", int8_upsampler=True, workers=2)
    be.program.calls = calls = []
    be.run(photo_crops(16, 48))
    names = {c[0] for c in calls}
    n_convs = 2 * (len(m.body) - 1) + 4  # two per block; the body's last conv, the x4 upsampler's two and the tail
    assert len(names) == n_convs and len(calls) == 4 * n_convs
    assert all(tiles == 4 for _, tiles, _ in calls)
    assert all(dtype == torch.uint8 for name, _, dtype in calls if name not in ("body.last", "upsampler.2"))
    assert [d for name, _, d in calls if name == "upsampler.2"] == [torch.float32] * 4  # the tail writes the SR


def test_int8_range_branch_is_decided_in_cadyq_hardware():
    """The probe decides on this CPU; forced, every CPU takes each branch: the convolution's form and the notes a
    user reads follow cadyq.hardware, and so does the number of tiles per call."""
    assert hardware.int8_range() in ("full", "7bit")
    assert hardware._int8_probe() == ("full" if hardware.has_vnni() or hardware.has_amx() else "7bit")
    m = quantize(tiny("edsr"), "cadyq").eval()
    for forced, note, per in [("full", "full 8-bit range (VNNI/AMX)", 4), ("7bit", "float32 convolutions", 1)]:
        with hardware.forced(int8_range=forced):
            be = NativeBackend(m, "cpu")
            assert be.kernels.form == forced and note in be.notes[0] and be.tiles_per_call == per
            assert all(b.conv1.form == forced for b in be.program.blocks)


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
    for label, program in [("reference", lower(m)), ("native", NativeBackend(m, "cpu", float_precision="fp32").program)]:
        rep = compare(m, program, tiles)
        print(f"\n{name} {label}: {rep}")
        assert rep.agreement >= 0.999 and not rep.unexplained and rep.psnr_db >= 50, str(rep)
    path = export_onnx(m, tmp_path / "m.onnx", tile=48)
    ort_rep = compare_onnx(path, m, tiles, bisect="auto")
    print(ort_rep)
    assert ort_rep.bit_agreement >= 0.999 and not ort_rep.unexplained and not ort_rep.local_failures, str(ort_rep)


@pytest.mark.parametrize("name", ["edsr-cadyq-alloc-x4", "edsr-pams8-x4", "edsr-gdq-alloc-x4"])
def test_shipped_full_size_models_parity_on_photo_tiles(name):
    """Issue 36's parity target on the shipped models: the native program (float upsampler, so the SR compares with the
    fake-quant model's) chooses the torch reference's bits on >= 99.9 % of the (tile, layer) decisions, every other
    one explained, SR >= 50 dB; with the INT8 upsampler and tail the bits are the same."""
    from cadyq.zoo import load_pretrained

    m = load_pretrained(name).eval()
    tiles = photo_crops(12, 48, seed=3)
    be = NativeBackend(m, "cpu", float_precision="fp32", int8_upsampler=False)
    rep = compare(m, be.program, tiles)
    print(f"\n{name}: {rep}")
    assert rep.agreement >= 0.999 and not rep.unexplained and rep.psnr_db >= 50, str(rep)
    up = NativeBackend(m, "cpu", float_precision="fp32", int8_upsampler=True)
    assert torch.equal(up.run(tiles)[1], be.run(tiles)[1])


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


def test_missing_kernel_source_falls_back_to_the_reference_with_a_reason(monkeypatch, tmp_path):
    """An install without quant.c (nor a prebuilt library): `auto` runs the fake-quant reference and says why; asked
    for by name, the native backend refuses in one line."""
    import cadyq

    monkeypatch.setattr(build, "SOURCE", tmp_path / "quant.c")
    monkeypatch.setattr(build, "_prebuilt", lambda: None)  # nor the library compiled into the wheel
    build.library.cache_clear()
    try:
        assert build.library() is None and "source is not installed" in build.why_unavailable()
        m = quantize(tiny("edsr"), "cadyq")
        be = cadyq.runtime.create_backend("auto", m, "cpu")
        assert be.name == "torch" and "C kernels are unavailable" in be.choice.why
        with pytest.raises(BackendError, match="source is not installed"):
            NativeBackend(m, "cpu")
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
    from cadyq import save
    from cadyq.cli import main
    from cadyq.zoo import load_pretrained
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
    assert main(["upscale", str(src), "-o", str(tmp_path / "b.png"), "--model", str(m), "--int8-upsampler", "off"]) == 0
    a, b = read_image(tmp_path / "a.png").rgb.astype(float), read_image(tmp_path / "b.png").rgb.astype(float)
    assert a.shape == b.shape == (400, 480, 3) and 25 < 10 * np.log10(255 ** 2 / ((a - b) ** 2).mean()) < 80
    assert main(["upscale", str(src), "-o", str(tmp_path / "c.png"), "--model", str(m), "--backend", "torch",
                 "--int8-upsampler"]) == 2
    bare = tmp_path / "bare.safetensors"  # a model without the clip values
    m0 = load_pretrained(tiny_model)
    m0.upsampler_clips = None
    save(m0, bare)
    assert main(["upscale", str(src), "-o", str(tmp_path / "d.png"), "--model", str(bare), "--int8-upsampler"]) == 2
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


def test_portable_c_build_computes_what_the_native_one_does(monkeypatch, tmp_path):
    """The library compiled without -march=native (the wheel's, used where no compiler is) takes the scalar paths of
    quant.c: the same values, tables and choices as the AVX-512 paths of the build for this CPU."""
    g = torch.Generator().manual_seed(9)
    y = torch.randint(0, 256, (3, 64, 20, 20), generator=g, dtype=torch.uint8).contiguous(memory_format=torch.channels_last)
    skip = torch.randint(1, 256, (3, 64, 20, 20), generator=g, dtype=torch.uint8).contiguous(memory_format=torch.channels_last)
    x = (torch.randn(3, 64, 20, 20, generator=g) * 2).contiguous(memory_format=torch.channels_last)
    q = _quant(c=64)
    group = K.Group(torch.rand(3, 2, generator=g) * 10)

    def run():
        sel = K.Selection(q)
        u1, k1 = K.residual_select(y, 1.3, skip, 2.1, sel, group)
        u2, k2 = K.quantize_select(x, sel, group)
        u3 = y.clone()
        k3 = K.select_u8(u3, sel, group)
        return [u1, k1, u2, k2, u3, k3, K.residual_float(y, 1.3, skip, 2.1, torch.float32)]

    native_out = run()
    monkeypatch.setattr(build, "FLAGS", tuple(f for f in build.FLAGS if f != "-march=native"))
    monkeypatch.setenv("CADYQ_CACHE_DIR", str(tmp_path))
    build.library.cache_clear()
    try:
        portable = run()
    finally:
        monkeypatch.undo()
        build.library.cache_clear()
    assert list(tmp_path.glob("kernels/cadyq_cpu_*.so"))  # a second library was built
    for a, b in zip(native_out, portable):
        assert torch.equal(a, b)


def test_native_backend_runs_inside_and_outside_inference_mode():
    """The workers are other threads than the caller's (whose inference mode they do not share)."""
    be = native(quantize(tiny("edsr"), "cadyq").eval(), hardware.int8_range(), tiles_per_call=1, workers=2)
    tiles = photo_crops(4, 24)
    with torch.inference_mode():
        a = be.run(tiles)[0]
    assert torch.equal(a, be.run(tiles)[0])


def test_c_tile_gradient_is_the_reference_one():
    from cadyq.quant.ops import tile_gradient

    tiles = torch.cat([photo_crops(5, 24), torch.zeros(1, 3, 24, 24), torch.full((1, 3, 24, 24), 255.0)])
    for t in (tiles, photo_crops(2, 17)[:, :, :, :11]):  # odd sizes: the borders replicate
        torch.testing.assert_close(K.tile_gradient(t), tile_gradient(t), rtol=1e-5, atol=1e-4)


@pytest.mark.parametrize("c,hw", [(64, (12, 12)), (32, (7, 9)), (24, (10, 10))])
def test_c_select_u8_reads_the_statistics_of_every_channel(c, hw):
    """The choice of select_u8 is the reference's from the per-channel std of the 8-bit values, with selector weights
    that make every channel matter (the vectorized statistics' channel order; odd pixel counts take the other path)."""
    g = torch.Generator().manual_seed(c)
    n = 48
    spread = torch.rand(n, c, 1, 1, generator=g) * 60
    v = (torch.randn(n, c, *hw, generator=g) * spread).round().clamp(0, 127)  # a ReLU'd conv output on the grid
    u = (v + 128).to(torch.uint8).contiguous(memory_format=torch.channels_last)
    q = IntQuantizer("full", [4, 6, 8], [20.0, 40.0, 127.0], torch.randn(3, c + 2, generator=g), torch.zeros(3))
    sigma = (v / 127.0 * 127.0).std(dim=(2, 3))
    grad = torch.rand(n, 2, generator=g)
    q.bias.copy_(-F.linear(torch.cat([grad, sigma], 1), q.weight).median(0).values)  # centred: all three chosen
    want = q.choose(sigma, grad, None)
    k = K.select_u8(u.clone(memory_format=torch.channels_last), K.Selection(q), K.Group(grad))
    assert len(set(want.tolist())) == 3 and torch.equal(k.long(), want)
