import numpy as np
import pytest
import torch
from conftest import tiny

import cadyq
from cadyq import quantize
from cadyq.data.io import Image
from cadyq.errors import BackendError, ImageError
from cadyq.quant import ModelInfo, dynamic_quantizers, observe
from cadyq.runtime import Backend, Upscaler


@pytest.fixture(scope="module")
def model(photo_tiles):
    m = quantize(tiny("edsr"), "cadyq")
    with torch.no_grad(), observe(m):
        m(photo_tiles)
    torch.manual_seed(3)
    with torch.no_grad():
        for s in dynamic_quantizers(m):
            s.net.weight.normal_(0, 0.02)
    return m.eval()


def test_upscale_real_photo(model, photo):
    img = photo[:150, :230]
    r = Upscaler(model, device="cpu", tile=48, overlap=6, batch=5).upscale(img)
    assert r.image.rgb.shape == (300, 460, 3) and r.image.rgb.dtype == np.uint8
    assert r.bit_map.shape == (r.grid.rows, r.grid.cols, 4) == (4, 6, 4)
    assert r.fqr == pytest.approx(r.bit_map.mean().item())
    assert set(r.bit_map.unique().tolist()) <= {4.0, 6.0, 8.0} and len(r.bit_map.unique()) > 1
    info = ModelInfo.from_model(model)
    per_tile = r.bit_map.reshape(-1, 4)
    assert r.bitops == pytest.approx(float(info.bitops(per_tile, 48, 48).sum()))
    assert {"decode", "inference", "stitch", "total"} <= set(r.timings)


@pytest.mark.parametrize("bf16", [False, True])
def test_tiles_match_direct_run_away_from_seams(model, photo, bf16):
    """Each stitched SR pixel equals the backend's output on the tile that owns it. The automatic backend (native)
    runs the float layers in bf16 where the CPU computes in it: forced both ways here (emulated where the CPU has no
    bf16); in fp32 that output is the fake-quant model's, exactly."""
    from cadyq import hardware

    img = photo[:100, :100]
    x = torch.from_numpy(img).permute(2, 0, 1).float()[None, :, :48, :48]
    with hardware.forced(bf16=bf16):
        up = Upscaler(model, device="cpu", tile=48, overlap=6, batch=64)
        r = up.upscale(img)
        first = up.backend.run(x)[0][0].clamp(0, 255).round()
    assert up.backend.float_precision == ("bf16" if bf16 else "fp32")
    own = r.grid.bounds(2)
    want = first.permute(1, 2, 0)[: own[0][1], : own[1][1]].numpy().astype(np.uint8)
    np.testing.assert_array_equal(r.image.rgb[: own[0][1], : own[1][1]], want)
    if not bf16:
        with torch.no_grad():
            direct = model(x)[0].clamp(0, 255).round().permute(1, 2, 0)[: own[0][1], : own[1][1]]
        np.testing.assert_array_equal(want, direct.numpy().astype(np.uint8))


def test_small_gray_alpha_and_16bit_images(model):
    rng = np.random.default_rng(0)
    gray = rng.integers(0, 255, (20, 30), dtype=np.uint8)
    rgb = np.repeat(gray[..., None], 3, 2)
    alpha = np.linspace(0, 255, 20 * 30).reshape(20, 30).astype(np.uint8)
    up = Upscaler(model, device="cpu", tile=48, overlap=6)
    r = up.upscale(Image(rgb, alpha, 8, True, None, None, "LA"))  # smaller than a tile: reflect-padded
    assert r.image.rgb.shape == (40, 60, 3) and r.image.gray and r.image.alpha.shape == (40, 60)
    assert r.grid.n_tiles == 1
    assert abs(int(r.image.alpha[0, 0]) - 0) < 10 and abs(int(r.image.alpha[-1, -1]) - 255) < 10
    r16 = up.upscale(Image((rgb.astype(np.uint16) * 257), None, 16, False, None, None, "RGB"))
    assert r16.image.rgb.dtype == np.uint16 and r16.image.bit_depth == 16
    np.testing.assert_allclose(r16.image.rgb / 257.0, r.image.rgb, atol=1.0)  # same picture, finer steps


class Recording(Backend):
    """A backend that only records what it is given (nearest-neighbour 'SR')."""

    name = "recording"

    def __init__(self, scale=2):
        self.info = ModelInfo("edsr", scale, "pams8", (8,), "full", ())
        self.device = torch.device("cpu")
        self.batches = []

    def run(self, tiles):
        self.batches.append(tiles.shape[0])
        s = self.info.scale
        return tiles.repeat_interleave(s, -1).repeat_interleave(s, -2), torch.zeros(tiles.shape[0], 0)


@pytest.mark.slow
def test_8k_input_is_streamed_in_batches():
    be = Recording(scale=2)
    lr = np.zeros((4320, 7680, 3), np.uint8)
    lr[::7] = 200
    r = Upscaler(be, tile=96, overlap=6, batch=64).upscale(lr)
    assert max(be.batches) <= 64 and sum(be.batches) == r.grid.n_tiles == 48 * 86
    assert r.image.rgb.shape == (8640, 15360, 3)
    np.testing.assert_array_equal(r.image.rgb[::2, ::2], lr)


def test_bad_inputs(model, tmp_path):
    up = Upscaler(model, device="cpu", tile=48, overlap=6)
    with pytest.raises(ImageError):
        up.upscale(np.zeros((10, 10, 4), np.float32))
    bad = tmp_path / "bad.png"
    bad.write_bytes(b"\x89PNG\r\n\x1a\nbroken")
    with pytest.raises(ImageError):
        up.upscale(bad)
    with pytest.raises(BackendError, match="batch"):
        Upscaler(model, device="cpu", batch=0)
    with pytest.raises(BackendError, match="unknown backend"):
        Upscaler(model, backend="openvino")


def test_nan_output_is_caught():
    class Broken(Recording):
        def run(self, tiles):
            sr, b = super().run(tiles)
            return sr * float("nan"), b

    with pytest.raises(BackendError, match="NaN"):
        Upscaler(Broken(), tile=16, overlap=2).upscale(np.zeros((20, 20, 3), np.uint8))


def test_fp32_model_reports_32_bits(photo):
    m = quantize(tiny("carn"), "fp32")
    r = cadyq.Upscaler(m, device="cpu", tile=32, overlap=4).upscale(photo[:40, :40])
    assert r.fqr == 32.0 and r.bit_map.shape[-1] == 18


def test_auto_backend_runs_quantized_models_on_integer_kernels(model, photo):
    """backend="auto" (the default): a quantized model on the native integer kernels, agreeing with the
    fake-quant reference on the bits and the pixels; the choice and its reason are recorded."""
    from cadyq.kernels.cpu import available

    auto = Upscaler(model, device="cpu", tile=48, overlap=6, batch=5)
    assert available() is None  # oneDNN INT8 is in every CPU torch wheel the project installs
    assert auto.backend.name == "native" and auto.backend.choice.name == "native"
    assert "integer program" in auto.backend.choice.why and "cadyq" in auto.backend.choice.why
    ref = Upscaler(model, backend="torch", device="cpu", tile=48, overlap=6, batch=5)
    assert ref.backend.choice is None  # asked for, not chosen
    img = photo[:150, :230]
    a, r = auto.upscale(img), ref.upscale(img)
    assert (a.bit_map == r.bit_map).float().mean() >= 0.99
    diff = np.abs(a.image.rgb.astype(int) - r.image.rgb.astype(int))
    assert np.mean(diff <= 1) > 0.99


@pytest.mark.parametrize("bf16", [False, True])
def test_auto_backend_for_fp32_models_and_files(tmp_path, bf16):
    from cadyq import hardware
    from cadyq.runtime.backend import choose_backend

    fp32 = quantize(tiny("edsr"), "fp32")
    with hardware.forced(bf16=bf16):
        be = cadyq.runtime.create_backend("auto", fp32, "cpu")
    assert be.name == "torch" and be.memory_format == torch.channels_last
    assert be.precision == ("bf16" if bf16 else "fp32")
    assert be.choice.why.startswith("fp32 model") and ("bf16 autocast" in be.choice.why) == bf16
    assert choose_backend(tmp_path / "m.onnx").name == "onnxruntime"
    assert choose_backend(tmp_path / "m.engine").name == "tensorrt"
    with pytest.raises(BackendError, match="float_precision is an option of the native backend"):
        cadyq.runtime.create_backend("auto", fp32, "cpu", float_precision="fp32")


def test_auto_backend_falls_back_to_the_reference_without_integer_kernels(model, monkeypatch):
    import cadyq.kernels.cpu as cpu

    monkeypatch.setattr(cpu, "available", lambda: "this torch build has no oneDNN (mkldnn)")
    be = cadyq.runtime.create_backend("auto", model, "cpu")
    assert be.name == "torch" and "no oneDNN" in be.choice.why and "reference" in be.choice.why


def test_a_strip_runs_in_proportion_to_its_pixels(model, photo):
    """An image shorter than a tile in one dimension (16 x 300 here) runs in 16 x 96 tiles, not tiles padded to
    96 x 96: 6x fewer pixels. Against padded tiles the output differs at the strip's far border (zero padding
    instead of reflected rows) and in bits where the padded tile's statistics counted the reflected rows:
    46.9-50.8 dB on the tiny zoo models, 50.6 dB for edsr-cadyq-x4 (README); >= 45 dB asserted."""
    from cadyq.metrics import psnr

    shapes = []

    class Spy(Backend):
        def __init__(self, inner):
            self.inner, self.info, self.device = inner, inner.info, inner.device

        def run(self, tiles):
            shapes.append(tuple(tiles.shape[2:]))
            return self.inner.run(tiles)

    strip = np.ascontiguousarray(photo[200:216, 100:400])
    inner = cadyq.runtime.create_backend("torch", model, "cpu")
    r = Upscaler(Spy(inner), tile=96, overlap=6, batch=8).upscale(strip)
    assert set(shapes) == {(16, 96)} and r.image.rgb.shape == (32, 600, 3) and r.grid.n_tiles == 4
    assert r.bitops == pytest.approx(float(ModelInfo.from_model(model).bitops(r.bit_map.reshape(4, -1), 16, 96).sum()))
    shapes.clear()
    zoo = cadyq.runtime.create_backend("torch", "edsr-tiny-cadyq-x4-cpu", "cpu")
    r = Upscaler(zoo, tile=96, overlap=6, batch=8).upscale(strip)
    padded = Upscaler(zoo, tile=96, overlap=6, batch=8)
    import cadyq.runtime.upscaler as upscaler_module

    orig = upscaler_module.plan_tiles
    upscaler_module.plan_tiles = lambda h, w, t, o, p, shrink=False: orig(h, w, t, o, p)  # today's padded tiles
    try:
        ref = padded.upscale(strip)
    finally:
        upscaler_module.plan_tiles = orig
    assert psnr(r.image.rgb, ref.image.rgb, 0) >= 45


def test_progress_starts_before_the_first_batch(model, photo):
    calls = []
    Upscaler(model, backend="torch", device="cpu", tile=48, overlap=6, batch=5).upscale(
        photo[:150, :230], progress=lambda done, total: calls.append((done, total)))
    assert calls == [(0, 24), (5, 24), (10, 24), (15, 24), (20, 24), (24, 24)]
    calls.clear()
    Upscaler(model, backend="torch", device="cpu", tile=48, overlap=6, batch=64).upscale(
        photo[:150, :230], progress=lambda done, total: calls.append((done, total)))
    assert calls == [(24, 24)]  # one batch: no bar to start


def test_upscale_many_fills_batches_across_images_with_the_same_results(model, photo):
    # 9, 4, 4 and 9 tiles, then a strip (5 tiles of another shape)
    images = [photo[:100, :130], photo[200:260, 40:100], photo[100:160, 240:300], photo[300:400, 300:420],
              photo[50:70, 100:300]]
    up = Upscaler(model, backend="torch", device="cpu", tile=48, overlap=6, batch=6)
    calls = []
    run = up.backend.run
    up.backend.run = lambda tiles: calls.append(tiles.shape[0]) or run(tiles)
    alone = [up.upscale(im) for im in images]
    n_alone, calls[:] = len(calls), []
    together = list(up.upscale_many(iter(images)))
    assert len(together) == len(images)
    for a, b in zip(alone, together):
        assert np.array_equal(a.image.rgb, b.image.rgb) and torch.equal(a.bit_map, b.bit_map) and a.fqr == b.fqr
    n_tiles = sum(r.grid.n_tiles for r in alone)
    assert sum(calls) == n_tiles and len(calls) < n_alone  # fewer, fuller batches
    assert calls == [6, 6, 6, 6, 2, 5]  # full except where the strip's tile shape cuts a batch
    assert list(up.upscale_many([])) == []


def test_reuse_takes_still_tiles_from_the_last_run_and_catches_drift(model, photo):
    up = Upscaler(model, backend="torch", device="cpu", tile=48, overlap=6, batch=6)
    base = photo[:100, :130].astype(np.int16)
    moved = base.copy()
    moved[:40, :40] = 255 - moved[:40, :40]  # the top-left tile changes, the rest stays
    noisy = base + (np.random.default_rng(0).integers(-1, 2, base.shape) * (np.arange(130) > 80)[:, None])  # +-1 on the right
    frames = [np.clip(f, 0, 255).astype(np.uint8) for f in (base, base, moved, noisy)]
    plain = list(up.upscale_many(frames))
    reused = list(up.upscale_many(frames, reuse=1.0))
    n = plain[0].grid.n_tiles
    assert [r.reused_tiles for r in plain] == [0, 0, 0, 0]
    assert reused[0].reused_tiles == 0 and reused[1].reused_tiles == n  # an identical frame runs nothing
    assert np.array_equal(reused[1].image.rgb, plain[0].image.rgb) and reused[1].bitops == 0
    assert 0 < reused[2].reused_tiles < n  # the changed tile runs again, the others are reused ...
    assert np.array_equal(reused[2].image.rgb[:60, :60], plain[2].image.rgb[:60, :60])  # ... and it is the new one
    assert reused[3].reused_tiles > reused[2].reused_tiles - 2  # +-1 noise is below 1 level on average
    strict = list(up.upscale_many(frames, reuse=0.0))
    assert strict[1].reused_tiles == n and strict[3].reused_tiles < n  # 0: only bit-identical tiles are reused
    # drift: each frame differs from the previous by 0.6 levels, but from the last tile run by more
    drift = [np.clip(base + k * 0.6, 0, 255).astype(np.uint8) for k in range(5)]
    runs = [r.reused_tiles for r in up.upscale_many(drift, reuse=1.0)]
    assert runs[0] == 0 and min(runs[1:]) < n
    with pytest.raises(BackendError, match="non-negative"):
        list(up.upscale_many(frames, reuse=-1))
