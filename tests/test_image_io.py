import struct
import warnings
import zlib

import numpy as np
import pytest
import torch
from PIL import Image as PILImage
from PIL import ImageCms

from cadyq.data.io import Image, from_tensor, list_images, read_image, to_tensor, write_image
from cadyq.errors import CadyqError, ImageError

RNG = np.random.default_rng(0)


def rand(shape, dtype=np.uint8):
    return RNG.integers(0, np.iinfo(dtype).max + 1, shape, dtype=np.int64).astype(dtype)


def png_bytes(arr: np.ndarray, color_type: int, bit_depth: int, size=None) -> bytes:
    """A PNG written by hand (filter 0), so tests do not depend on Pillow's encoder."""
    h, w = arr.shape[:2] if size is None else size
    dt = ">u2" if bit_depth == 16 else "u1"
    raw = b"".join(b"\0" + arr[y].astype(dt).tobytes() for y in range(arr.shape[0]))

    def chunk(t, d):
        return struct.pack(">I", len(d)) + t + d + struct.pack(">I", zlib.crc32(t + d))
    ihdr = struct.pack(">IIBBBBB", w, h, bit_depth, color_type, 0, 0, 0)
    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(raw))
            + chunk(b"IEND", b""))


def decode_png16(data: bytes) -> np.ndarray:
    """Independent decoder for the 16-bit PNGs write_image makes (filters None/Up only)."""
    pos, idat, ihdr = 8, b"", None
    while pos < len(data):
        n, tag = struct.unpack(">I4s", data[pos:pos + 8])
        body = data[pos + 8:pos + 8 + n]
        if tag == b"IHDR":
            ihdr = struct.unpack(">IIBBBBB", body)
        elif tag == b"IDAT":
            idat += body
        pos += 12 + n
    w, h, depth, ctype = ihdr[:4]
    assert depth == 16
    c = {0: 1, 4: 2, 2: 3, 6: 4}[ctype]
    rows = np.frombuffer(zlib.decompress(idat), np.uint8).reshape(h, 1 + w * c * 2)
    out = np.zeros((h, w * c * 2), np.uint8)
    for y in range(h):
        f, line = rows[y, 0], rows[y, 1:]
        assert f in (0, 2)
        out[y] = line + (out[y - 1] if (f == 2 and y) else 0)
    return out.view(">u2").astype(np.uint16).reshape(h, w, c)


def srgb_icc() -> bytes:
    return ImageCms.ImageCmsProfile(ImageCms.createProfile("sRGB")).tobytes()


# ---------------------------------------------------------------- reading


@pytest.mark.parametrize("ext", [".png", ".bmp", ".tif", ".webp"])
def test_rgb8_lossless_roundtrip(tmp_path, ext):
    a = rand((13, 17, 3))
    p = tmp_path / f"a{ext}"
    write_image(p, Image(a, None, 8, False, None, None, "RGB"))
    img = read_image(p)
    assert img.rgb.dtype == np.uint8 and img.rgb.flags.c_contiguous
    assert img.bit_depth == 8 and not img.gray and img.alpha is None
    np.testing.assert_array_equal(img.rgb, a)


def test_jpeg_is_close(tmp_path):
    a = np.tile(np.linspace(0, 255, 32, dtype=np.uint8)[None, :, None], (24, 1, 3))
    write_image(tmp_path / "a.jpg", Image(a, None, 8, False, None, None, "RGB"))
    img = read_image(tmp_path / "a.jpg")
    assert img.source_mode == "RGB" and img.rgb.shape == a.shape
    assert np.abs(img.rgb.astype(int) - a).max() <= 3


def test_rgba_alpha_kept(tmp_path):
    a = rand((9, 11, 4))
    PILImage.fromarray(a).save(tmp_path / "a.png")
    img = read_image(tmp_path / "a.png")
    np.testing.assert_array_equal(img.rgb, a[..., :3])
    np.testing.assert_array_equal(img.alpha, a[..., 3])
    for ext in (".png", ".webp", ".tif"):
        write_image(tmp_path / f"b{ext}", img)
        back = PILImage.open(tmp_path / f"b{ext}")
        assert back.mode == "RGBA"
        np.testing.assert_array_equal(np.asarray(back), a)
    write_image(tmp_path / "b.jpg", img)  # JPEG has no alpha: dropped, not an error
    assert PILImage.open(tmp_path / "b.jpg").mode == "RGB"


def test_gray8_and_gray_alpha(tmp_path):
    g = rand((10, 12))
    PILImage.fromarray(g).save(tmp_path / "g.png")
    img = read_image(tmp_path / "g.png")
    assert img.gray and img.bit_depth == 8 and img.source_mode == "L" and img.rgb.shape == (10, 12, 3)
    for c in range(3):
        np.testing.assert_array_equal(img.rgb[..., c], g)
    write_image(tmp_path / "g2.png", img)
    back = PILImage.open(tmp_path / "g2.png")
    assert back.mode == "L"
    np.testing.assert_array_equal(np.asarray(back), g)

    la = rand((6, 7, 2))
    PILImage.fromarray(la).save(tmp_path / "la.png")
    img = read_image(tmp_path / "la.png")
    assert img.gray
    np.testing.assert_array_equal(img.rgb[..., 1], la[..., 0])
    np.testing.assert_array_equal(img.alpha, la[..., 1])
    write_image(tmp_path / "la2.png", img)
    back = PILImage.open(tmp_path / "la2.png")
    assert back.mode == "LA"
    np.testing.assert_array_equal(np.asarray(back), la)


def test_gray_write_uses_mean_of_channels(tmp_path):
    rgb = np.zeros((2, 2, 3), np.uint8)
    rgb[..., 0], rgb[..., 1], rgb[..., 2] = 10, 11, 13  # mean 11.33 -> 11
    write_image(tmp_path / "g.png", Image(rgb, None, 8, True, None, None, "L"))
    assert np.asarray(PILImage.open(tmp_path / "g.png")).tolist() == [[11, 11], [11, 11]]


@pytest.mark.parametrize("ext", [".png", ".tif"])
def test_gray16_kept(tmp_path, ext):
    g = rand((8, 9), np.uint16)
    g[0, 0], g[0, 1] = 1, 65535  # values no 8-bit path could keep
    PILImage.fromarray(g).save(tmp_path / f"g{ext}")
    img = read_image(tmp_path / f"g{ext}")
    assert img.bit_depth == 16 and img.gray and img.rgb.dtype == np.uint16
    np.testing.assert_array_equal(img.rgb[..., 2], g)
    write_image(tmp_path / f"out{ext}", img)
    back = PILImage.open(tmp_path / f"out{ext}")
    assert back.mode.startswith("I;16")
    np.testing.assert_array_equal(np.asarray(back).astype(np.uint16), g)


def test_gray16_big_endian_and_float_tiff(tmp_path):
    tifffile = pytest.importorskip("tifffile")
    g = rand((5, 6), np.uint16)
    tifffile.imwrite(tmp_path / "be.tif", g, byteorder=">")
    img = read_image(tmp_path / "be.tif")
    assert img.rgb.dtype == np.uint16 and img.rgb.dtype.byteorder in ("=", "|", "<")
    np.testing.assert_array_equal(img.rgb[..., 0], g)

    f = np.array([[0.0, 0.5], [1.0, 0.25]], np.float32)
    tifffile.imwrite(tmp_path / "f.tif", f)
    img = read_image(tmp_path / "f.tif")
    assert img.gray and img.bit_depth == 16 and img.source_mode == "F"
    np.testing.assert_array_equal(img.rgb[..., 0], np.rint(f * 65535).astype(np.uint16))


def filtered_png16(arr: np.ndarray, seed: int = 0) -> bytes:
    """A 16-bit PNG whose rows use all five PNG filters (None, Sub, Up, Average, Paeth) at random."""
    h, w, c = arr.shape
    raw = arr.astype(">u2").reshape(h, w * c).view(np.uint8).astype(np.int32)
    bpp, rng, rows = 2 * c, np.random.default_rng(seed), []
    for y in range(h):
        x, up = raw[y], (raw[y - 1] if y else np.zeros_like(raw[y]))
        left = np.concatenate([np.zeros(bpp, np.int32), x[:-bpp]])
        ul = np.concatenate([np.zeros(bpp, np.int32), up[:-bpp]])
        p = left + up - ul
        pa, pb, pc = abs(p - left), abs(p - up), abs(p - ul)
        paeth = np.where((pa <= pb) & (pa <= pc), left, np.where(pb <= pc, up, ul))
        f = int(rng.integers(0, 5))
        pred = [0 * x, left, up, (left + up) // 2, paeth][f]
        rows.append(bytes([f]) + ((x - pred) % 256).astype(np.uint8).tobytes())

    def chunk(t, d):
        return struct.pack(">I", len(d)) + t + d + struct.pack(">I", zlib.crc32(t + d))
    ihdr = struct.pack(">IIBBBBB", w, h, 16, {3: 2, 4: 6}[c], 0, 0, 0)
    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"".join(rows)))
            + chunk(b"IEND", b""))


def test_16bit_colour_png_and_tiff_keep_16_bits(tmp_path):
    """Pillow 13 keeps only the high byte of 16-bit colour; read_image decodes the low byte too."""
    a = rand((9, 11, 3), np.uint16)
    (tmp_path / "c.png").write_bytes(png_bytes(a, 2, 16))
    img = read_image(tmp_path / "c.png")
    assert img.bit_depth == 16 and not img.gray and img.rgb.dtype == np.uint16
    np.testing.assert_array_equal(img.rgb, a)

    rgba = rand((13, 7, 4), np.uint16)
    (tmp_path / "f.png").write_bytes(filtered_png16(rgba))
    img = read_image(tmp_path / "f.png")
    np.testing.assert_array_equal(img.rgb, rgba[..., :3])
    np.testing.assert_array_equal(img.alpha, rgba[..., 3])
    write_image(tmp_path / "back.png", img)
    np.testing.assert_array_equal(decode_png16((tmp_path / "back.png").read_bytes()), rgba)

    tifffile = pytest.importorskip("tifffile")
    for name, kw in (("le", {}), ("be", {"byteorder": ">"}), ("zip", {"compression": "zlib"})):
        tifffile.imwrite(tmp_path / f"c_{name}.tif", a, photometric="rgb", **kw)
        img = read_image(tmp_path / f"c_{name}.tif")
        assert img.bit_depth == 16, name
        np.testing.assert_array_equal(img.rgb, a)


def test_16bit_gray_alpha_keeps_16_bits_and_frames_warn(tmp_path):
    """Pillow decodes 16-bit gray+alpha PNG to 8 bits; cadyq reads all 16 (also through PNG row filters)."""
    import warnings as w

    from cadyq.errors import ContentWarning

    la = rand((4, 5, 2), np.uint16)
    (tmp_path / "la.png").write_bytes(png_bytes(la, 4, 16))
    # the same pixels with every row Sub-filtered (4 bytes a pixel back): Pillow's unfiltering must apply
    raw = la.astype(">u2").view(np.uint8).reshape(4, 20).astype(np.int16)
    sub = raw.copy()
    sub[:, 4:] = (raw[:, 4:] - raw[:, :-4]) % 256
    body = b"".join(b"\x01" + sub[y].astype(np.uint8).tobytes() for y in range(4))

    def chunk(t, d):
        return struct.pack(">I", len(d)) + t + d + struct.pack(">I", zlib.crc32(t + d))
    (tmp_path / "la_sub.png").write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", 5, 4, 16, 4, 0, 0, 0))
                                          + chunk(b"IDAT", zlib.compress(body)) + chunk(b"IEND", b""))
    for name in ("la.png", "la_sub.png"):
        with w.catch_warnings():
            w.simplefilter("error", ContentWarning)
            img = read_image(tmp_path / name)
        assert img.gray and img.bit_depth == 16 and img.rgb.dtype == np.uint16, name
        np.testing.assert_array_equal(img.rgb, np.repeat(la[..., :1], 3, axis=2))
        np.testing.assert_array_equal(img.alpha, la[..., 1])

    frames = [PILImage.fromarray(rand((6, 8, 3))) for _ in range(3)]
    frames[0].save(tmp_path / "anim.gif", save_all=True, append_images=frames[1:])
    frames[0].save(tmp_path / "pages.tif", save_all=True, append_images=frames[1:])
    for name in ("anim.gif", "pages.tif"):
        with pytest.warns(ContentWarning, match="3 frames.*only the first"):
            assert read_image(tmp_path / name).size == (6, 8)


def test_write_16bit_colour_png(tmp_path):
    a = rand((7, 6, 3), np.uint16)
    al = rand((7, 6), np.uint16)
    write_image(tmp_path / "c.png", Image(a, al, 16, False, srgb_icc(), None, "RGBA"))
    data = (tmp_path / "c.png").read_bytes()
    np.testing.assert_array_equal(decode_png16(data), np.dstack([a, al]))
    back = PILImage.open(tmp_path / "c.png")  # a valid PNG to another decoder as well
    assert back.mode == "RGBA" and back.info.get("icc_profile") == srgb_icc()
    np.testing.assert_array_equal(np.asarray(back), (np.dstack([a, al]) >> 8).astype(np.uint8))

    g = Image(np.repeat(a[..., :1], 3, axis=2), al, 16, True, None, None, "LA")
    write_image(tmp_path / "ga.png", g)
    np.testing.assert_array_equal(decode_png16((tmp_path / "ga.png").read_bytes()),
                                  np.dstack([a[..., 0], al]))

    with pytest.raises(ImageError, match=r"\.png"):
        write_image(tmp_path / "c.tif", Image(a, None, 16, False, None, None, "RGB"))
    from cadyq.errors import ContentWarning

    with pytest.warns(ContentWarning, match="rounded to 8 bits"):
        write_image(tmp_path / "c.jpg", Image(a, None, 16, False, None, None, "RGB"))
    assert PILImage.open(tmp_path / "c.jpg").mode == "RGB"


def test_palette_and_transparency(tmp_path):
    p = PILImage.new("P", (4, 3))
    p.putpalette([255, 0, 0, 0, 255, 0] + [0] * 762)
    p.putpixel((1, 1), 1)
    p.save(tmp_path / "p.png")
    img = read_image(tmp_path / "p.png")
    assert img.source_mode == "P" and img.alpha is None and not img.gray
    assert img.rgb[0, 0].tolist() == [255, 0, 0] and img.rgb[1, 1].tolist() == [0, 255, 0]

    p.save(tmp_path / "pt.png", transparency=1)
    img = read_image(tmp_path / "pt.png")
    assert img.alpha is not None and img.alpha[1, 1] == 0 and img.alpha[0, 0] == 255


def test_cmyk_becomes_rgb(tmp_path):
    rgb = PILImage.new("RGB", (8, 8), (200, 100, 50))
    rgb.convert("CMYK").save(tmp_path / "c.jpg", quality=100)
    img = read_image(tmp_path / "c.jpg")
    assert img.source_mode == "CMYK" and img.rgb.shape == (8, 8, 3) and img.icc_profile is None
    assert np.abs(img.rgb.astype(int) - [200, 100, 50]).max() <= 4


def test_exif_orientation_applied_and_dropped(tmp_path):
    a = rand((4, 6, 3))  # H=4, W=6
    exif = PILImage.Exif()
    exif[274], exif[271] = 6, "cadyq-test"  # 6: rotate 90 degrees clockwise to display
    PILImage.fromarray(a).save(tmp_path / "o.png", exif=exif.tobytes())
    img = read_image(tmp_path / "o.png")
    np.testing.assert_array_equal(img.rgb, np.rot90(a, k=-1))
    kept = PILImage.Exif()
    kept.load(img.exif)
    assert 274 not in kept and kept[271] == "cadyq-test"
    for ext in (".jpg", ".png"):
        write_image(tmp_path / f"w{ext}", img)
        ex = PILImage.open(tmp_path / f"w{ext}").getexif()
        assert ex.get(271) == "cadyq-test" and 274 not in ex
    assert read_image(tmp_path / "w.png").rgb.shape == (6, 4, 3)


def test_icc_profile_kept_when_it_matches(tmp_path):
    icc = srgb_icc()
    a = rand((5, 5, 3))
    PILImage.fromarray(a).save(tmp_path / "i.png", icc_profile=icc)
    img = read_image(tmp_path / "i.png")
    assert img.icc_profile == icc
    for ext in (".png", ".jpg", ".webp", ".tif"):
        write_image(tmp_path / f"o{ext}", img)
        assert PILImage.open(tmp_path / f"o{ext}").info.get("icc_profile") == icc, ext
    # an RGB profile does not describe a grayscale file: not written
    write_image(tmp_path / "g.png", Image(img.rgb, None, 8, True, icc, None, "L"))
    assert PILImage.open(tmp_path / "g.png").info.get("icc_profile") is None


# ---------------------------------------------------------------- bad files


def test_missing_empty_junk(tmp_path):
    with pytest.raises(ImageError, match="nope.png"):
        read_image(tmp_path / "nope.png")
    (tmp_path / "empty.png").write_bytes(b"")
    with pytest.raises(ImageError, match="empty"):
        read_image(tmp_path / "empty.png")
    (tmp_path / "junk.png").write_text("not an image")
    with pytest.raises(ImageError, match="junk.png"):
        read_image(tmp_path / "junk.png")
    assert issubclass(ImageError, CadyqError)


@pytest.mark.parametrize("fmt", ["png", "jpg"])
def test_truncated(tmp_path, fmt):
    p = tmp_path / f"t.{fmt}"
    PILImage.fromarray(rand((64, 64, 3))).save(p)
    data = p.read_bytes()
    p.write_bytes(data[: len(data) // 2])
    with pytest.raises(ImageError, match=rf"t\.{fmt}.*(corrupt|truncated)"):
        read_image(p)


def test_zero_size(tmp_path):
    (tmp_path / "z.png").write_bytes(png_bytes(np.zeros((0, 0), np.uint8), 0, 8, size=(0, 5)))
    with pytest.raises(ImageError, match="z.png"):
        read_image(tmp_path / "z.png")


def test_pixel_limit_checked_before_decoding(tmp_path):
    # Header claims 12000x12000 (144 Mpx); the data is a few bytes: must fail on size, not decode.
    (tmp_path / "big.png").write_bytes(png_bytes(np.zeros((1, 1), np.uint8), 0, 8, size=(12000, 12000)))
    with pytest.raises(ImageError, match=r"12000x12000.*max_pixels"):
        read_image(tmp_path / "big.png")
    (tmp_path / "small.png").write_bytes(png_bytes(np.zeros((1, 1), np.uint8), 0, 8, size=(100, 100)))
    with pytest.raises(ImageError, match=r"max_pixels"):
        read_image(tmp_path / "small.png", max_pixels=5000)


def test_pillow_bomb_error_and_warning(tmp_path):
    # 30000x30000 is past Pillow's own hard limit: Image.open raises before we see the size.
    (tmp_path / "bomb.png").write_bytes(png_bytes(np.zeros((1, 1), np.uint8), 0, 8, size=(30000, 30000)))
    with pytest.raises(ImageError, match="MAX_IMAGE_PIXELS"):
        read_image(tmp_path / "bomb.png", max_pixels=10**10)
    # 10000x10000 is within our limit but above Pillow's warning threshold: no bomb error, even with
    # warnings as errors; it then fails as truncated (the data is missing).
    (tmp_path / "w.png").write_bytes(png_bytes(np.zeros((1, 1), np.uint8), 0, 8, size=(10000, 10000)))
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        with pytest.raises(ImageError, match="corrupt or truncated"):
            read_image(tmp_path / "w.png")


# ---------------------------------------------------------------- writing


def test_write_errors_and_atomicity(tmp_path, monkeypatch):
    img = Image(rand((4, 4, 3)), None, 8, False, None, None, "RGB")
    with pytest.raises(ImageError, match=r"\.gif"):
        write_image(tmp_path / "a.gif", img)
    with pytest.raises(ImageError, match="does not exist"):
        write_image(tmp_path / "no" / "a.png", img)

    target = tmp_path / "keep.png"
    write_image(target, img)
    before = target.read_bytes()

    def broken_save(self, fp, *a, **k):
        fp.write(b"partial")
        raise OSError("disk full")
    monkeypatch.setattr(PILImage.Image, "save", broken_save)
    with pytest.raises(ImageError, match="disk full"):
        write_image(target, Image(rand((4, 4, 3)), None, 8, False, None, None, "RGB"))
    assert target.read_bytes() == before  # old file untouched
    assert sorted(p.name for p in tmp_path.iterdir()) == ["keep.png"]  # no temp file left


def test_write_rejects_inconsistent_image(tmp_path):
    with pytest.raises(ValueError):
        write_image(tmp_path / "a.png", Image(rand((4, 4, 3)), None, 16, False, None, None, "RGB"))
    with pytest.raises(ValueError):
        write_image(tmp_path / "a.png", Image(rand((4, 4, 3)), rand((3, 4)), 8, False, None, None, "RGBA"))


# ---------------------------------------------------------------- tensors


def test_tensor_roundtrip_uint8_and_uint16():
    a = rand((5, 7, 3))
    t = to_tensor(a)
    assert t.dtype == torch.float32 and t.shape == (3, 5, 7)
    assert t[1, 2, 3].item() == float(a[2, 3, 1])
    np.testing.assert_array_equal(from_tensor(t), a)

    b = rand((5, 7, 3), np.uint16)
    b[0, 0] = [0, 65535, 257]
    t = to_tensor(b)
    assert t.max() <= 255.0 and t[:, 0, 0].tolist() == pytest.approx([0.0, 255.0, 1.0], abs=1e-4)
    out = from_tensor(t, bit_depth=16)
    assert out.dtype == np.uint16
    np.testing.assert_array_equal(out, b)


def test_from_tensor_rounds_and_clamps():
    t = torch.tensor([[[-5.0, 1.4, 1.6, 254.6, 300.0]]])
    assert from_tensor(t)[0, :, 0].tolist() == [0, 1, 2, 255, 255]
    assert from_tensor(t, 16)[0, :, 0].tolist() == [0, 360, 411, 65432, 65535]
    with pytest.raises(ValueError):
        from_tensor(t[0])
    with pytest.raises(ValueError):
        to_tensor(np.zeros((2, 2, 3), np.float32))


# ---------------------------------------------------------------- listing


def test_list_images(tmp_path):
    for n in ["b.png", "a.JPG", "c.txt", ".hidden.png", "d.webp"]:
        (tmp_path / n).write_bytes(b"x")
    (tmp_path / "sub").mkdir()
    (tmp_path / "sub" / "e.png").write_bytes(b"x")
    other = tmp_path / "sub" / "e.png"
    got = list_images([tmp_path, other, tmp_path / "b.png"])
    assert [p.name for p in got] == ["a.JPG", "b.png", "d.webp", "e.png"]
    with pytest.raises(ImageError, match="missing"):
        list_images([tmp_path / "missing"])
