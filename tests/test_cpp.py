"""The C++ library (cpp/): built once per session (`cpp/scripts/build.sh` into build/cpp, as `make cpp`)
and checked against the Python implementation: tiling and stitching bit for bit against cadyq.tiling,
the C++ Upscaler and `cadyq-upscale` against the Python Upscaler on the same AOTInductor package
(bit-exact: the same compiled code), against the torch and native backends (within 1 LSB), the C API
from a C program, and the command line's bad inputs.

One tiny CADyQ EDSR x2 (8 features, 1 block, random selectors so all of 4/6/8 bits are chosen) is
compiled once per session through `cadyq export --format aoti`; the C++ build runs meanwhile."""
from __future__ import annotations

import contextlib
import fcntl
import json
import os
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import photo_crops, randomize_selectors

from cadyq.data.io import Image, read_image, write_image
from cadyq.errors import BackendError, ExportError, TilingError

REPO = Path(__file__).resolve().parents[1]
BUILD = REPO / "build" / "cpp"
TOOLS = ("cadyq-upscale", "cadyq-tiling-check", "cadyq-c-api-test", "cadyq-unit-tests", "cadyq-embed-example")
TILE, OVERLAP, BATCH = 32, 4, 8


def _missing_tools() -> str | None:
    for tool in ("cmake", "make"):
        if shutil.which(tool) is None:
            return tool
    if shutil.which("g++") is None and shutil.which("c++") is None:
        return "a C++ compiler (g++)"
    return None


pytestmark = pytest.mark.skipif(_missing_tools() is not None,
                                reason=f"the C++ build needs {_missing_tools()} (apt-get install cmake g++ make)")


@contextlib.contextmanager
def _locked(path: Path):
    """An exclusive lock across pytest-xdist workers (and concurrent sessions)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


def _shared_dir(tmp_path_factory) -> Path:
    """A folder all xdist workers of this session share."""
    base = tmp_path_factory.getbasetemp()
    return base.parent if os.environ.get("PYTEST_XDIST_WORKER") else base


class _Build:
    """The CMake build (cpp/scripts/build.sh, as `make cpp`), started in the background so the
    AOTInductor compile runs meanwhile. The child holds a lock on build/cpp while it builds."""

    _CHILD = ("import fcntl, subprocess, sys\n"
              "lock = open(sys.argv[1], 'w')\n"
              "fcntl.flock(lock, fcntl.LOCK_EX)\n"
              "sys.exit(subprocess.call(['sh', sys.argv[2], sys.argv[3]]))\n")

    def __init__(self, shared: Path):
        BUILD.parent.mkdir(parents=True, exist_ok=True)
        self.log = shared / f"cpp-build-{os.environ.get('PYTEST_XDIST_WORKER', 'main')}.log"
        with open(self.log, "w") as log:
            self.proc = subprocess.Popen(
                [sys.executable, "-c", self._CHILD, str(BUILD.parent / ".cpp-build.lock"),
                 str(REPO / "cpp" / "scripts" / "build.sh"), str(BUILD)],
                cwd=REPO, stdout=log, stderr=subprocess.STDOUT, env={**os.environ, "PY": sys.executable})
        self.rc: int | None = None

    def wait(self) -> Path:
        if self.rc is None:
            self.rc = self.proc.wait()
        if self.rc != 0:
            pytest.fail(f"the C++ build failed (rc {self.rc}):\n{self.log.read_text()[-4000:]}")
        return BUILD


@pytest.fixture(scope="session")
def _cpp_build_job(tmp_path_factory):
    return _Build(_shared_dir(tmp_path_factory))


@pytest.fixture(scope="session")
def package(_cpp_build_job, tmp_path_factory) -> Path:
    """The tiny model's AOTInductor package, compiled once per session (by `cadyq export --format aoti`)."""
    import cadyq
    from cadyq.cli import main

    shared = _shared_dir(tmp_path_factory)
    pkg, ckpt = shared / "tiny_cadyq_x2.pt2", shared / "tiny_cadyq_x2.safetensors"
    with _locked(shared / "tiny_cadyq_x2.lock"):
        if not pkg.is_file():
            torch.manual_seed(0)
            m = cadyq.quantize(cadyq.create_model("edsr", 2, n_feats=8, n_resblocks=1), "cadyq").eval()
            randomize_selectors(m, photo_crops(16, 48))
            cadyq.save(m, ckpt)
            assert main(["export", "--model", str(ckpt), "--format", "aoti", "-o", str(pkg), "--tile", "48"]) == 0
    return pkg


@pytest.fixture(scope="session")
def checkpoint(package) -> Path:
    return package.with_suffix(".safetensors")


@pytest.fixture(scope="session")
def cpp(_cpp_build_job) -> Path:
    """The build folder with the C++ programs."""
    build = _cpp_build_job.wait()
    for tool in TOOLS:
        assert (build / tool).is_file(), f"{tool} was not built"
    return build


def _python_upscaler(package, **kw):
    import cadyq
    from cadyq.runtime.aoti_backend import AOTIBackend

    return cadyq.Upscaler(AOTIBackend(package), **{"tile": TILE, "overlap": OVERLAP, "batch": BATCH, **kw})


def _run(cpp, *args, check=True):
    p = subprocess.run([str(cpp / "cadyq-upscale"), *map(str, args)], capture_output=True, text=True, timeout=300)
    if check and p.returncode != 0:
        raise AssertionError(f"cadyq-upscale {' '.join(map(str, args))} failed ({p.returncode}): {p.stderr}")
    return p


def _photo(h, w, which="astronaut", y=0, x=0) -> np.ndarray:
    from skimage import data

    return np.ascontiguousarray(getattr(data, which)()[y:y + h, x:x + w])


# ---- library units --------------------------------------------------------------------------------------

def test_unit_tests(cpp, tmp_path):
    p = subprocess.run([str(cpp / "cadyq-unit-tests"), str(tmp_path)], capture_output=True, text=True, timeout=120)
    assert p.returncode == 0, p.stderr


def _tiling_cases():
    cases = []
    for protocol in ("shift", "official"):
        for h in list(range(1, 40)) + [41, 47, 48, 49, 55, 89, 90, 91, 95, 96, 97, 100, 185, 186, 187, 281]:
            cases.append((h, (h * 7) % 61 + 1, 12, 3, protocol, 1 + h % 4, 1 + h % 5))
        for h, w in [(1, 1), (95, 97), (96, 96), (186, 90), (150, 201), (17, 250)]:
            cases.append((h, w, 96, 6, protocol, 2, 64))
            cases.append((h, w, 48, 6, protocol, 3, 5))
            cases.append((h, w, 20, 7, protocol, 2, 3))   # odd overlap: the boundary floors in HR pixels
            cases.append((h, w, 16, 0, protocol, 4, 1000))
        for h, w in [(1, 1), (4, 13), (9, 7), (23, 31)]:
            cases.append((h, w, 5, 4, protocol, 2, 3))     # step 1
        for h in range(1, 300, 17):
            cases.append((h, 301 - h, 48, 6, protocol, 2, 7))
    return cases


def _python_tiling(h, w, tile, overlap, protocol, scale, batch):
    from cadyq.tiling import Stitcher, iter_batches, plan_tiles

    g = plan_tiles(h, w, tile, overlap, protocol)
    c, y, x = np.meshgrid(np.arange(3), np.arange(h), np.arange(w), indexing="ij")
    lr = torch.from_numpy(((c * 131 + y * 31 + x * 17) % 251).astype(np.float32))
    st = Stitcher(g, scale, 3, dtype=torch.uint8)
    batches = []
    for idx, tiles in iter_batches(lr, g, batch):
        batches.append(idx)
        up = tiles.to(torch.int32).repeat_interleave(scale, -2).repeat_interleave(scale, -1)
        yy = torch.arange(up.shape[-2]).view(-1, 1) % scale
        xx = torch.arange(up.shape[-1]).view(1, -1) % scale
        k = torch.tensor(idx).view(-1, 1, 1, 1)
        st.add(idx, ((up + 7 * k + 3 * yy + xx) % 256).to(torch.uint8))
    by, bx = g.bounds(scale)
    geo = {"ys": list(g.ys), "xs": list(g.xs), "heights": g.tile_heights, "widths": g.tile_widths, "by": by, "bx": bx,
           "padded": list(g.padded_size), "batches": batches}
    return geo, st.result().permute(1, 2, 0).numpy()


def test_tiling_and_stitching_match_python_bit_for_bit(cpp, tmp_path, one_torch_thread):
    """Tile origins and sizes, padding, batch order, ownership bounds and the stitched image of every case."""
    cases = _tiling_cases()
    lines = "\n".join(" ".join(map(str, c)) for c in cases) + "\n"
    p = subprocess.run([str(cpp / "cadyq-tiling-check"), str(tmp_path)], input=lines, capture_output=True, text=True,
                       timeout=120)
    assert p.returncode == 0, p.stderr
    out = [json.loads(line) for line in p.stdout.splitlines()]
    assert len(out) == len(cases) > 200
    for n, (case, got) in enumerate(zip(cases, out)):
        geo, img = _python_tiling(*case)
        assert got == geo, f"case {case}"
        cimg = np.fromfile(tmp_path / f"case_{n}.u8", np.uint8).reshape(img.shape)
        assert np.array_equal(cimg, img), f"case {case}: stitched images differ"


def test_tiling_rejects_what_python_rejects(cpp, tmp_path):
    from cadyq.tiling import plan_tiles

    bad = [(10, 10, 0, 0, "shift"), (10, 10, 8, 8, "shift"), (10, 10, 8, -1, "shift"), (10, 10, 8, 2, "diagonal")]
    p = subprocess.run([str(cpp / "cadyq-tiling-check"), str(tmp_path)], capture_output=True, text=True,
                       input="".join(f"{h} {w} {t} {o} {pr} 2 4\n" for h, w, t, o, pr in bad), timeout=60)
    assert [json.loads(line) for line in p.stdout.splitlines()] == [{"error": 1}] * len(bad)
    for h, w, t, o, pr in bad:
        with pytest.raises(TilingError):
            plan_tiles(h, w, t, o, pr)


# ---- the package in Python ------------------------------------------------------------------------------

def test_package_metadata_and_python_loader(package):
    from cadyq.export.aoti import load_aoti, read_aoti_metadata

    meta = read_aoti_metadata(package)
    exp = json.loads(meta["cadyq.export"])
    assert exp["program"] == "integer" and exp["kernels"] == "reference" and exp["device"] == "cpu"
    assert exp["batch"] == [1, 1024] and exp["tile"] is None and exp["tile_range"] == [2, 2048]
    info = json.loads(meta["cadyq.info"])
    assert (info["backbone"], info["scale"], info["method"], info["bits"]) == ("edsr", 2, "cadyq", [4, 6, 8])
    assert json.loads(meta["cadyq.model"])["arch"]["n_feats"] == 8
    pkg = load_aoti(package)
    sr, bits = pkg.run(photo_crops(3, 20))
    assert sr.shape == (3, 3, 40, 40) and bits.shape == (3, pkg.info.n_layers)
    with pytest.raises(BackendError, match="takes"):
        pkg.run(torch.zeros(1, 3, 1, 8))  # below the tile range


def test_package_matches_the_integer_program(package, checkpoint):
    """The compiled program against the eager integer program (cadyq.quant.lowering) it was made of."""
    from cadyq import load
    from cadyq.export.aoti import load_aoti
    from cadyq.quant.lowering import lower

    tiles = photo_crops(24, 40, seed=5)
    with torch.no_grad():
        ref_sr, ref_bits = lower(load(checkpoint))(tiles)
    sr, bits = load_aoti(package).run(tiles)
    assert (bits == ref_bits).float().mean() >= 0.99
    assert len(ref_bits.unique()) == 3  # every candidate is chosen somewhere
    agree = (bits == ref_bits).all(1)
    assert (sr[agree] - ref_sr[agree]).abs().max() < 1e-3  # float fusion order only


def test_bad_packages_are_refused(tmp_path):
    from cadyq.export.aoti import load_aoti

    with pytest.raises(BackendError, match="no such model package"):
        load_aoti(tmp_path / "missing.pt2")
    (tmp_path / "text.pt2").write_text("not a zip")
    with pytest.raises(BackendError, match="not an AOTInductor package"):
        load_aoti(tmp_path / "text.pt2")
    with zipfile.ZipFile(tmp_path / "empty.pt2", "w") as z:
        z.writestr("x/data/version", "1")
    with pytest.raises(BackendError, match="without an AOTInductor model"):
        load_aoti(tmp_path / "empty.pt2")


def test_export_programs_for_every_method():
    """fp32 and fakequant programs export too (compiling them is what export_aoti adds)."""
    import cadyq
    from cadyq.export.aoti import export_program

    torch.manual_seed(0)
    fp = cadyq.create_model("edsr", 2, n_feats=8, n_resblocks=1).eval()
    ep, kind = export_program(fp, max_batch=4, tile_range=(8, 64))
    assert kind == "float"
    x = photo_crops(3, 24)
    sr, bits = ep.module()(x)
    with torch.no_grad():
        assert torch.allclose(sr, fp(x), atol=1e-4)
    assert (bits == 32).all()
    with pytest.raises(ExportError, match="no integer program"):
        export_program(fp, program="integer")
    q = cadyq.quantize(cadyq.create_model("edsr", 2, n_feats=8, n_resblocks=1), "cadyq").eval()
    randomize_selectors(q, photo_crops(8, 24))
    ep, kind = export_program(q, program="fakequant", max_batch=4, tile_range=(8, 64))
    from cadyq.quant import selected_bits

    sr, bits = ep.module()(x)
    with torch.no_grad():
        ref = q(x)
    assert kind == "fakequant" and torch.equal(bits, selected_bits(q)) and torch.allclose(sr, ref, atol=1e-3)


def test_export_cli_refuses_what_aoti_cannot_do(checkpoint, tmp_path, capsys):
    from cadyq.cli import main

    assert main(["export", "--model", str(checkpoint), "--format", "aoti", "-o", str(tmp_path / "m.pt2"),
                 "--dtype", "fp16"]) == 2
    assert "fp16 is an ONNX option" in capsys.readouterr().err
    assert main(["export", "--model", str(checkpoint), "--format", "aoti", "-o", str(tmp_path / "m.bin")]) == 2
    assert "*.pt2" in capsys.readouterr().err
    assert not list(tmp_path.iterdir())


# ---- C++ against Python -------------------------------------------------------------------------------

@pytest.mark.parametrize("protocol", ["shift", "official"])
def test_cpp_upscale_equals_python_upscaler(cpp, package, tmp_path, protocol):
    """cadyq-upscale vs cadyq.Upscaler on the same package: the same pixels, bit map, FQR and BitOPs."""
    from cadyq.runtime.bitmap import render_bit_map

    src = tmp_path / "in.png"
    write_image(src, Image(_photo(75, 101, y=30, x=140), None, 8, False, None, None, "RGB"))  # not a multiple of the step
    out = tmp_path / "out.png"
    _run(cpp, src, "-o", out, "--model", package, "--tile", TILE, "--overlap", OVERLAP, "--batch", BATCH,
         "--protocol", protocol, "--bitmap", "--json", tmp_path / "r.json")
    up = _python_upscaler(package, protocol=protocol)
    r = up.upscale(src)
    got = read_image(out)
    assert got.rgb.shape == (150, 202, 3)
    np.testing.assert_array_equal(got.rgb, r.image.rgb)  # bit-exact
    rep = json.loads((tmp_path / "r.json").read_text())["images"][0]
    np.testing.assert_array_equal(np.array(rep["bits"], dtype=np.float32), r.bit_map.numpy())
    assert len(np.unique(rep["bits"])) == 3
    assert rep["fqr"] == r.fqr and rep["bitops"] == r.bitops and rep["tiles"] == [r.grid.rows, r.grid.cols]
    pic = render_bit_map(r.bit_map, r.grid, 2, r.image.rgb, up.backend.info.bits)
    cpic = read_image(tmp_path / "out_bits.png").rgb
    assert np.abs(cpic.astype(int) - pic).max() <= 1 and (cpic == pic).mean() > 0.999


def test_cpp_gray_alpha_16bit_and_jpeg_inputs(cpp, package, tmp_path):
    """Gray stays gray, alpha is upscaled bicubic (within 1 LSB of torch's), 16-bit PNGs keep 16 bits,
    JPEG decodes as Pillow decodes it (EXIF orientation applied)."""
    import PIL.Image

    up = _python_upscaler(package)
    photo = _photo(40, 57, "coffee", y=100, x=200)
    gray = photo.mean(2).round().astype(np.uint8)
    alpha = np.linspace(0, 255, 40 * 57).reshape(40, 57).round().astype(np.uint8)
    cases = {
        "gray.png": Image(np.repeat(gray[..., None], 3, 2), None, 8, True, None, None, "L"),
        "rgba.png": Image(photo, alpha, 8, False, None, None, "RGBA"),
        "gray16.png": Image(np.repeat((gray.astype(np.uint16) * 257 + 91)[..., None], 3, 2), None, 16, True, None, None,
                            "I;16"),
        "rgb16.png": Image(photo.astype(np.uint16) * 257 + np.uint16(77), None, 16, False, None, None, "RGB"),
    }
    for name, img in cases.items():
        write_image(tmp_path / name, img)
    PIL.Image.fromarray(photo).save(tmp_path / "photo.jpg", quality=90)
    exif = PIL.Image.Exif()
    exif[0x0112] = 6  # rotate 90 degrees clockwise to display
    PIL.Image.fromarray(photo).save(tmp_path / "rotated.jpg", quality=90, exif=exif)
    names = [*cases, "photo.jpg", "rotated.jpg"]
    _run(cpp, *[tmp_path / n for n in names], "-o", tmp_path, "--model", package, "--tile", TILE, "--overlap", OVERLAP,
         "--batch", BATCH)
    for name in names:
        got, want = read_image(tmp_path / f"{Path(name).stem}_x2.png"), up.upscale(tmp_path / name).image
        assert (got.bit_depth, got.gray, got.rgb.shape) == (want.bit_depth, want.gray, want.rgb.shape), name
        rgb = want.rgb
        if want.gray:  # written as one channel: the rounded mean of the three (cadyq.data.io.write_image)
            wide = rgb.astype(np.uint32)
            rgb = np.repeat(((wide.sum(2) + 1) // 3).astype(rgb.dtype)[..., None], 3, 2)
        np.testing.assert_array_equal(got.rgb, rgb, err_msg=name)
        if want.alpha is not None:
            d = np.abs(got.alpha.astype(int) - want.alpha)
            assert d.max() <= 1 and (d == 0).mean() > 0.999, name
    assert read_image(tmp_path / "rotated_x2.png").rgb.shape == (114, 80, 3)


def test_cpp_close_to_the_reference_backends(cpp, package, checkpoint, tmp_path):
    """The package's integer program vs the fake-quant model (torch backend) and the oneDNN integer
    kernels (native backend): their float arithmetic differs in rounding only, so the bits agree except
    at ties, and pixels are within 1 LSB except where a float difference moves an activation across a
    rounding boundary of its quantizer (then 2 LSB, a few samples per million on a photo)."""
    import cadyq

    src = tmp_path / "in.png"
    write_image(src, Image(_photo(96, 128, "chelsea", y=50, x=100), None, 8, False, None, None, "RGB"))
    _run(cpp, src, "-o", tmp_path / "out.png", "--model", package, "--tile", TILE, "--overlap", OVERLAP,
         "--json", tmp_path / "r.json")
    got = read_image(tmp_path / "out.png").rgb.astype(int)
    bits = np.array(json.loads((tmp_path / "r.json").read_text())["images"][0]["bits"])
    for backend in ("torch", "native"):
        opts = {"float_precision": "fp32"} if backend == "native" else {}  # the package's float layers are fp32
        r = cadyq.Upscaler(str(checkpoint), backend=backend, device="cpu", tile=TILE, overlap=OVERLAP,
                           backend_options=opts).upscale(src)
        agree = (bits == r.bit_map.numpy()).all(-1)  # tiles whose every choice agrees
        assert agree.mean() >= 0.95, backend
        d = np.abs(got - r.image.rgb)
        by, bx = r.grid.bounds(2)
        rows = np.repeat(agree, np.diff(by), axis=0)
        own = np.repeat(rows, np.diff(bx), axis=1)
        assert d[own].max() <= 2 and (d[own] <= 1).mean() > 0.9999 and (d[own] == 0).mean() > 0.999, backend


def test_c_api_from_c(cpp, package, tmp_path):
    raw = _photo(61, 77, "astronaut", y=200, x=180)
    raw.tofile(tmp_path / "in.raw")
    p = subprocess.run([str(cpp / "cadyq-c-api-test"), str(package), str(tmp_path / "in.raw"), "77", "61",
                        str(tmp_path / "out.raw"), str(TILE), str(OVERLAP), str(BATCH), "official"],
                       capture_output=True, text=True, timeout=300)
    assert p.returncode == 0, p.stderr
    rep = json.loads(p.stdout)
    r = _python_upscaler(package, protocol="official").upscale(raw)
    got = np.fromfile(tmp_path / "out.raw", np.uint8).reshape(122, 154, 3)
    np.testing.assert_array_equal(got, r.image.rgb)
    assert (rep["rows"], rep["cols"], rep["layers"]) == tuple(r.bit_map.shape)
    np.testing.assert_array_equal(np.array(rep["bits"], dtype=np.float32), r.bit_map.numpy().ravel())
    assert rep["fqr"] == r.fqr and rep["bitops"] == r.bitops


def test_readme_embedding_example(cpp, package, tmp_path):
    """The README's 15-line example is cpp/examples/embed.cpp, built and run here."""
    example = (REPO / "cpp" / "examples" / "embed.cpp").read_text()
    assert example in (REPO / "README.md").read_text() and len(example.splitlines()) <= 15
    src = tmp_path / "in.png"
    write_image(src, Image(_photo(50, 70, "chelsea"), None, 8, False, None, None, "RGB"))
    p = subprocess.run([str(cpp / "cadyq-embed-example"), str(package), str(src), str(tmp_path / "out.png")],
                       capture_output=True, text=True, timeout=120)
    assert p.returncode == 0 and "1x1 tiles, FQR" in p.stdout, p.stderr
    r = _python_upscaler(package, tile=96, overlap=6, batch=16).upscale(src)
    np.testing.assert_array_equal(read_image(tmp_path / "out.png").rgb, r.image.rgb)


# ---- the command line's bad inputs --------------------------------------------------------------------

@pytest.fixture()
def workdir(tmp_path):
    src = tmp_path / "in.png"
    write_image(src, Image(_photo(40, 50), None, 8, False, None, None, "RGB"))
    (tmp_path / "out.png").write_bytes(b"precious")  # what an earlier run wrote: it must survive a failed run
    (tmp_path / "bad.png").write_bytes(src.read_bytes()[:300])  # truncated
    (tmp_path / "text.jpg").write_text("not a picture")
    (tmp_path / "model.onnx").write_bytes(b"onnx?")
    (tmp_path / "broken.pt2").write_bytes(b"PK\x03\x04 not really")
    return tmp_path


def _assert_failed_cleanly(p, workdir, rc, pattern):
    assert p.returncode == rc, (p.returncode, p.stderr)
    lines = p.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("cadyq-upscale: error: "), p.stderr
    assert pattern in lines[0], lines[0]
    assert (workdir / "out.png").read_bytes() == b"precious"
    assert not [f.name for f in workdir.iterdir() if f.name.startswith(".")], "a temporary file was left behind"


@pytest.mark.parametrize("args, rc, pattern", [
    (["bad.png"], 1, "corrupt or truncated"),
    (["text.jpg"], 1, "not a PNG or JPEG file"),
    (["missing.png"], 2, "no such file or folder"),
    (["in.png", "--model", "missing.pt2"], 2, "no such model package"),
    (["in.png", "--model", "model.onnx"], 2, "expected an AOTInductor package"),
    (["in.png", "--model", "broken.pt2"], 2, "not a readable AOTInductor package"),
    (["in.png", "--model", "model.engine"], 2, "built without TensorRT"),
    (["in.png", "--tile", "abc"], 2, "is not an integer"),
    (["in.png", "--tile", "32", "--overlap", "32"], 2, "--overlap must be smaller than --tile"),
    (["in.png", "--tile", "4"], 2, "smaller than --tile (6 >= 4); use --overlap 2 or less"),
    (["in.png", "--tile", "8", "--overlap", "6"], 2, "every 2 px, so each LR pixel runs through about 16 tiles; the "
                                                     "overlap can be at most half the tile: use --overlap 4 or less"),
    (["in.png", "--tile", "1", "--overlap", "0"], 2, "tiles of 2..2048 px"),
    (["in.png", "--batch", "0"], 2, "out of range"),
    (["in.png", "--protocol", "diagonal"], 2, "not one of shift, official"),
    (["in.png", "--device", "gpu"], 2, "not one of auto, cpu, cuda"),
    (["in.png", "--device", "cuda"], 2, "compiled for cpu, not cuda"),
    (["in.png", "--frobnicate"], 2, "unknown option --frobnicate"),
    (["in.png", "--tile"], 2, "--tile needs a value"),
    (["in.png", "text.jpg"], 2, "names one image file, but 2 images"),
    (["in.png", "--json", "nowhere/r.json"], 2, "its folder does not exist"),
    (["in.png", "--json", "in.png"], 2, "would replace the input"),
])
def test_cli_bad_input_fails_cleanly(cpp, package, workdir, args, rc, pattern):
    """One line on stderr, a non-zero exit, the earlier output untouched, no temporary files."""
    argv = ["-o", workdir / "out.png", "--overwrite"] + ([] if "--model" in args else ["--model", package])
    argv += [workdir / a if a.endswith((".png", ".jpg", ".pt2", ".onnx", ".engine")) else a for a in args]
    p = _run(cpp, *argv, check=False)
    _assert_failed_cleanly(p, workdir, rc, pattern)


def test_cli_bad_image_among_good_ones(cpp, package, workdir):
    out = workdir / "outdir"  # created by the run
    p = _run(cpp, workdir / "in.png", workdir / "bad.png", "-o", out, "--model", package, "--tile", TILE, "-q",
             "--json", workdir / "r.json", check=False)
    assert p.returncode == 1
    assert [line.split(":")[0] for line in p.stderr.strip().splitlines()] == ["cadyq-upscale"] * 2
    assert sorted(f.name for f in out.iterdir()) == ["in_x2.png"]
    rep = json.loads((workdir / "r.json").read_text())
    assert rep["failed"] == [str(workdir / "bad.png")] and len(rep["images"]) == 1


def test_cli_output_plan(cpp, package, workdir):
    """Outputs are decided before any work: no overwriting without --overwrite, never an input,
    colliding names get their extension."""
    p = _run(cpp, workdir / "in.png", "-o", workdir / "out.png", "--model", package, check=False)
    _assert_failed_cleanly(p, workdir, 2, "exists; pass --overwrite")
    before = (workdir / "in.png").read_bytes()
    p = _run(cpp, workdir / "in.png", "-o", workdir / "in.png", "--model", package, "--overwrite", check=False)
    _assert_failed_cleanly(p, workdir, 2, "would replace the input")
    assert (workdir / "in.png").read_bytes() == before
    (workdir / "in.jpg").write_bytes((workdir / "text.jpg").read_bytes())
    p = _run(cpp, workdir / "in.png", workdir / "in.jpg", "-o", workdir / "o", "--model", package, "--tile", TILE,
             "-q", check=False)
    assert p.returncode == 1 and "in.jpg" in p.stderr  # the JPEG is not a picture: reported, skipped
    assert sorted(f.name for f in (workdir / "o").iterdir()) == ["in_png_x2.png"]


def test_cli_usage(cpp):
    p = _run(cpp, "--help")
    assert "usage: cadyq-upscale" in p.stdout
    p = _run(cpp, check=False)
    assert p.returncode == 2 and p.stderr.count("\n") == 1
