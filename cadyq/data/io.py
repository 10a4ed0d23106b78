"""Image files in and out: 8/16-bit, grayscale, alpha, ICC profile and EXIF kept; atomic writes.

Pillow 13 decodes 48/64-bit colour PNG and TIFF (16 bits per colour channel) to 8 bits per
channel: its unpacker keeps the high byte of each sample. Here such files are decoded twice, the
second time with the unpacker of the opposite byte order, which picks the low byte; the two make
the 16-bit samples (`bit_depth=16`). 16-bit *grayscale* PNG/TIFF keep all 16 bits through Pillow.
16-bit gray+alpha PNG, which Pillow decodes to the low byte of each sample, is read by handing Pillow
the same scanlines labelled as 8-bit RGBA (4 bytes a pixel either way) and joining the bytes. A
`ContentWarning` says when the frames after the first of an animation or a multi-page file are dropped. Writing
16-bit colour PNG is done here (Pillow cannot), so 16-bit colour data is written losslessly.
"""
from __future__ import annotations

import io
import os
import struct
import sys
import uuid
import warnings
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np
import torch
from PIL import Image as PILImage
from PIL import ImageOps, UnidentifiedImageError

from cadyq.errors import ContentWarning, ImageError, ImageWriteError, OutputError
from cadyq.outputs import writable_target
from cadyq.paths import not_a_file

IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".webp", ".tif", ".tiff", ".bmp")
_FORMATS = {".png": "PNG", ".jpg": "JPEG", ".jpeg": "JPEG", ".webp": "WEBP", ".tif": "TIFF",
            ".tiff": "TIFF", ".bmp": "BMP"}
_GRAY16 = ("I;16", "I;16L", "I;16B", "I;16N")
# zlib level of PNG writes: 1 writes a 2048x3072 photo ~4x faster than Pillow's default 6, for ~25 % larger
# files (benchmarks/png_write.md); PNG stays lossless at every level.
PNG_COMPRESS_LEVEL = 1


@dataclass
class Image:
    rgb: np.ndarray            # HxWx3, uint8 or uint16 (C-contiguous)
    alpha: np.ndarray | None   # HxW, same dtype, or None
    bit_depth: int             # 8 or 16
    gray: bool                 # source had one colour channel (write back as grayscale)
    icc_profile: bytes | None
    exif: bytes | None
    source_mode: str           # PIL mode of the file

    @property
    def size(self) -> tuple[int, int]:
        """(height, width)."""
        return self.rgb.shape[0], self.rgb.shape[1]


def _too_large(path, w: int, h: int, max_pixels: int) -> ImageError:
    return ImageError(
        f"{path}: {w}x{h} = {w * h} pixels is more than the limit of {max_pixels}; if the file "
        f"is genuine, raise the limit (max_pixels), otherwise it may be a decompression bomb")


def read_image(path, max_pixels: int = 8192 * 8192 * 2) -> Image:
    """Decode a PNG/JPEG/WebP/TIFF/BMP file to upright pixels (EXIF orientation applied).

    Grayscale (1, L, I;16, I, F) is replicated to 3 channels with `gray=True`; 16-bit grayscale stays
    uint16, `I` is clipped to [0, 65535], `F` is taken as [0, 1] when its maximum is <= 1 (else
    clipped to [0, 65535]). Palette, CMYK, YCbCr and LAB become RGB (CMYK through its embedded ICC
    profile when there is one, and that profile is then dropped); any transparency becomes `alpha`.
    See the module docstring for 16-bit colour. EXIF is kept for JPEG/PNG/WebP, without the
    orientation tag; TIFF tags are not carried over.
    """
    path = Path(path)
    why = not_a_file(path)
    if why is not None:
        raise ImageError(f"{path}: {why}; pass an image file")
    if path.stat().st_size == 0:
        raise ImageError(f"{path}: the file is empty; re-export or remove it")
    try:
        with warnings.catch_warnings():
            # Pillow warns above MAX_IMAGE_PIXELS (89 Mpx), below our default limit: our check counts.
            warnings.simplefilter("ignore", PILImage.DecompressionBombWarning)
            with PILImage.open(path) as im:
                w, h = im.size
                if w * h == 0:
                    raise ImageError(f"{path}: the image is empty ({w}x{h} pixels)")
                if w * h > max_pixels:
                    raise _too_large(path, w, h, max_pixels)
                tiles = list(im.tile)
                rawmode = _rawmode(tiles[0]) if tiles else None
                source_mode = im.mode
                frames = getattr(im, "n_frames", 1)
                im.load()  # a truncated or corrupt file fails here, not later
                low = _low_bytes(path, tiles) if _is_colour16(source_mode, rawmode) else None
                la16 = None
                if rawmode and rawmode.startswith("LA;16"):
                    la16 = _gray_alpha16_png(path, im.getexif().get(0x0112, 1))
                ImageOps.exif_transpose(im, in_place=True)
                if frames > 1:
                    warnings.warn(f"{path}: {frames} frames (an animation or a multi-page file); only the first is "
                                  "used", ContentWarning, stacklevel=2)
                if la16 is not None:
                    g, a = la16
                    return Image(np.ascontiguousarray(np.repeat(g[..., None], 3, axis=2)), a, 16, True,
                                 im.info.get("icc_profile") or None, im.info.get("exif") or None, source_mode)
                if rawmode and rawmode.startswith("LA;16"):
                    warnings.warn(f"{path}: 16-bit gray+alpha is read as 8 bits (this decoder cannot read all 16)",
                                  ContentWarning, stacklevel=2)
                return _from_pil(im, source_mode, rawmode, low)
    except ImageError:
        raise
    except PILImage.DecompressionBombError as e:
        raise ImageError(
            f"{path}: {str(e).rstrip('.')}; if the file is genuine, raise Pillow's limit "
            f"(PIL.Image.MAX_IMAGE_PIXELS = None) and pass max_pixels to read_image") from e
    except UnidentifiedImageError as e:
        raise ImageError(f"{path}: not a readable image (unknown format, or a broken header such as a "
                         f"zero width); supported: {' '.join(IMAGE_EXTENSIONS)}") from e
    except (OSError, SyntaxError, ValueError, EOFError, struct.error) as e:
        raise ImageError(f"{path}: the file is corrupt or truncated ({e}); re-export or remove it") from e


_PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
_ORIENT = {2: lambda a: a[:, ::-1], 3: lambda a: a[::-1, ::-1], 4: lambda a: a[::-1], 5: lambda a: a.swapaxes(0, 1),
           6: lambda a: np.rot90(a, -1), 7: lambda a: a[::-1, ::-1].swapaxes(0, 1), 8: lambda a: np.rot90(a, 1)}


def _gray_alpha16_png(path: Path, orientation: int = 1) -> tuple[np.ndarray, np.ndarray] | None:
    """(gray, alpha) uint16 of a 16-bit gray+alpha PNG, upright; None when the file is not one.

    Pillow decodes these to 8 bits and keeps the low byte of each sample (noise for gray). Their scanlines
    have 4 bytes per pixel, as 8-bit RGBA: with the header saying so (and the ancillary chunks dropped),
    Pillow's own unfiltering and de-interlacing give the bytes as (gray hi, gray lo, alpha hi, alpha lo)."""
    data = path.read_bytes()
    if not data.startswith(_PNG_SIGNATURE):
        return None
    out, pos = [_PNG_SIGNATURE], len(_PNG_SIGNATURE)
    while pos + 12 <= len(data):
        (n,), kind = struct.unpack(">I", data[pos:pos + 4]), data[pos + 4:pos + 8]
        body, pos = data[pos + 8:pos + 8 + n], pos + 12 + n
        if kind == b"IHDR":
            w, h, depth, ctype, comp, filt, lace = struct.unpack(">IIBBBBB", body)
            if (depth, ctype) != (16, 4):
                return None
            body = struct.pack(">IIBBBBB", w, h, 8, 6, comp, filt, lace)
        elif kind not in (b"IDAT", b"IEND"):
            continue
        out.append(struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body) & 0xFFFFFFFF))
        if kind == b"IEND":
            break
    with PILImage.open(io.BytesIO(b"".join(out))) as im:
        b = np.asarray(im.convert("RGBA") if im.mode != "RGBA" else im).astype(np.uint16)
    g, a = (b[..., 0] << 8) | b[..., 1], (b[..., 2] << 8) | b[..., 3]
    turn = _ORIENT.get(orientation)
    if turn is not None:
        g, a = turn(g), turn(a)
    return np.ascontiguousarray(g), np.ascontiguousarray(a)


def _rawmode(tile) -> str | None:
    args = tile.args
    raw = args if isinstance(args, str) else (args[0] if isinstance(args, tuple) and args else None)
    return raw if isinstance(raw, str) else None


def _is_colour16(mode: str, rawmode: str | None) -> bool:
    return (mode in ("RGB", "RGBA") and bool(rawmode) and not rawmode.startswith("LA")
            and rawmode[:-1].endswith(";16") and rawmode[-1] in "BLN")


def _low_bytes(path: Path, tiles) -> np.ndarray | None:
    """The low bytes of a 16-bit colour file, upright: decoded again with the unpacker of the other byte
    order. None (with a warning) when this decoder cannot."""
    native = "L" if sys.byteorder == "little" else "B"
    swapped = []
    for t in tiles:
        raw = _rawmode(t)
        if raw is None or not raw[:-1].endswith(";16"):
            swapped = None
            break
        other = raw[:-1] + {"B": "L", "L": "B"}[native if raw[-1] == "N" else raw[-1]]
        swapped.append(t._replace(args=other if isinstance(t.args, str) else (other, *t.args[1:])))
    try:
        if swapped:
            with PILImage.open(path) as im:
                im.tile = swapped
                im.load()
                ImageOps.exif_transpose(im, in_place=True)
                return np.asarray(im)
    except (OSError, ValueError, KeyError) as e:
        detail = f" ({e})"
    else:
        detail = ""
    warnings.warn(f"{path}: 16-bit colour is read as 8 bits{detail}: the decoder keeps only the high byte",
                  ContentWarning, stacklevel=3)
    return None


def _from_pil(im: PILImage.Image, source_mode: str, rawmode, low: np.ndarray | None = None) -> Image:
    icc, exif = im.info.get("icc_profile") or None, im.info.get("exif") or None
    if im.mode in ("CMYK", "LAB"):
        im, icc = _to_srgb(im, icc)
    mode, alpha = im.mode, None
    if mode in _GRAY16 or mode in ("I", "F"):
        g = np.asarray(im)
        if mode == "F":
            g = np.nan_to_num(g.astype(np.float64))
            g = np.rint(g * (65535.0 if g.max() <= 1.0 else 1.0))
        g, gray, depth = np.clip(g, 0, 65535).astype(np.uint16), True, 16
    elif mode in ("1", "L", "LA", "La"):
        if mode != "L" or "transparency" in im.info:
            im = im.convert("LA" if mode != "1" else "L")
        a = np.asarray(im)
        g, gray, depth = (a[..., 0] if a.ndim == 3 else a), True, 8
        if a.ndim == 3:
            alpha = np.ascontiguousarray(a[..., 1])
    else:
        want = "RGBA" if ("A" in mode or "a" in mode or "transparency" in im.info) else "RGB"
        a = np.asarray(im if mode == want else im.convert(want))
        depth = 8
        if low is not None and mode == want and low.shape == a.shape:
            a, depth = (a.astype(np.uint16) << 8) | low, 16
        elif low is not None:
            warnings.warn(f"16-bit {mode} with a transparent colour is read as 8 bits", ContentWarning, stacklevel=3)
        if want == "RGBA":
            alpha = np.ascontiguousarray(a[..., 3])
        # A 16-bit gray+alpha PNG arrives as 8-bit RGBA: the file still had one colour channel.
        gray = isinstance(rawmode, str) and rawmode.startswith("LA")
        return Image(np.ascontiguousarray(a[..., :3]), alpha, depth, gray, icc, exif, source_mode)
    rgb = np.ascontiguousarray(np.repeat(g[..., None], 3, axis=2))
    return Image(rgb, alpha, depth, gray, icc, exif, source_mode)


def _to_srgb(im: PILImage.Image, icc: bytes | None) -> tuple[PILImage.Image, bytes | None]:
    """CMYK (through its embedded profile if any) or LAB -> sRGB; the old profile no longer applies."""
    from PIL import ImageCms
    try:
        srgb = ImageCms.createProfile("sRGB")
        if im.mode == "LAB":
            t = ImageCms.buildTransform(ImageCms.createProfile("LAB"), srgb, "LAB", "RGB")
            return ImageCms.applyTransform(im, t), None
        if icc:
            src = ImageCms.ImageCmsProfile(io.BytesIO(icc))
            return ImageCms.profileToProfile(im, src, srgb, outputMode="RGB"), None
    except (ImageCms.PyCMSError, OSError, ValueError):
        pass
    return im.convert("RGB"), None


def _check(img: Image) -> None:
    dt = {8: np.uint8, 16: np.uint16}.get(img.bit_depth)
    if dt is None:
        raise ValueError(f"bit_depth must be 8 or 16, got {img.bit_depth}")
    if img.rgb.ndim != 3 or img.rgb.shape[2] != 3 or img.rgb.dtype != dt:
        raise ValueError(f"rgb must be HxWx3 {np.dtype(dt)}, got {img.rgb.shape} {img.rgb.dtype}")
    if img.alpha is not None and (img.alpha.shape != img.rgb.shape[:2] or img.alpha.dtype != dt):
        raise ValueError(f"alpha must be HxW {np.dtype(dt)}, got {img.alpha.shape} {img.alpha.dtype}")
    if img.rgb.shape[0] * img.rgb.shape[1] == 0:
        raise ImageError("cannot write an empty (0-pixel) image")


def _icc_space(icc: bytes | None) -> bytes | None:
    return icc[16:20] if icc and len(icc) >= 20 else None


def _png_chunk(tag: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + tag + data + struct.pack(">I", zlib.crc32(tag + data))


def _png16(f, a: np.ndarray, icc: bytes | None, exif: bytes | None, level: int = PNG_COMPRESS_LEVEL) -> None:
    """16-bit PNG (colour type 0/4/2/6 by channel count) with the Up filter on every row."""
    h, w, c = a.shape
    rows = a.astype(">u2").reshape(h, w * c).view(np.uint8)
    filt = np.empty((h, rows.shape[1] + 1), np.uint8)
    filt[:, 0] = 2
    filt[0, 1:] = rows[0]
    filt[1:, 1:] = rows[1:] - rows[:-1]  # uint8 arithmetic wraps mod 256 as PNG requires
    out = [b"\x89PNG\r\n\x1a\n",
           _png_chunk(b"IHDR", struct.pack(">IIBBBBB", w, h, 16, {1: 0, 2: 4, 3: 2, 4: 6}[c], 0, 0, 0))]
    if icc:
        out.append(_png_chunk(b"iCCP", b"ICC profile\0\0" + zlib.compress(icc)))
    if exif:
        out.append(_png_chunk(b"eXIf", exif[6:] if exif.startswith(b"Exif\0\0") else exif))
    out += [_png_chunk(b"IDAT", zlib.compress(filt.tobytes(), level)), _png_chunk(b"IEND", b"")]
    f.write(b"".join(out))


def _to8(a: np.ndarray) -> np.ndarray:
    return a if a.dtype == np.uint8 else np.rint(a / 257.0).astype(np.uint8)


def write_image(path, img: Image, png_compress_level: int = PNG_COMPRESS_LEVEL) -> None:
    """Encode by extension (.png .jpg/.jpeg .webp .tif/.tiff .bmp), atomically (temp name + rename).

    Keeps alpha (dropped for JPEG and BMP), 16 bits (PNG; TIFF for grayscale only), grayscale
    (`gray=True` writes one channel: the rounded mean of the three), ICC profile (when its colour
    space matches what is written) and EXIF. JPEG is written at quality 95 with 4:4:4 chroma,
    WebP lossless. 16-bit data going to an 8-bit-only format is rounded to 8 bits. PNG is written at
    zlib level `png_compress_level` (0-9). Failures raise ImageWriteError (an OutputError).
    """
    path = Path(path)
    fmt = _FORMATS.get(path.suffix.lower())
    if fmt is None:
        raise ImageError(f"{path}: unknown image extension {path.suffix!r}; use one of "
                         f"{' '.join(IMAGE_EXTENSIONS)}")
    if not path.parent.is_dir():
        raise ImageWriteError(f"{path}: folder {path.parent} does not exist; create it first")
    try:
        path = writable_target(path)  # a symbolic link keeps pointing at the new image; /dev/null stays a device
    except OutputError as e:
        raise ImageWriteError(str(e)) from None
    _check(img)
    rgb, alpha, sixteen = img.rgb, img.alpha, img.bit_depth == 16
    if fmt in ("JPEG", "BMP"):
        alpha = None
    if sixteen and fmt not in ("PNG", "TIFF"):
        warnings.warn(f"{path}: {fmt} holds 8 bits per channel, so the 16-bit image is rounded to 8 bits; write a "
                      ".png to keep 16", ContentWarning, stacklevel=2)
        rgb, alpha, sixteen = _to8(rgb), None if alpha is None else _to8(alpha), False
    if img.gray:
        wide = rgb.astype(np.uint32)
        chans = [((wide[..., 0] + wide[..., 1] + wide[..., 2] + 1) // 3).astype(rgb.dtype)]
    else:
        chans = [rgb[..., i] for i in range(3)]
    if alpha is not None:
        chans.append(alpha)
    a = np.ascontiguousarray(np.stack(chans, axis=2))
    want_space = b"GRAY" if img.gray else b"RGB "
    icc = img.icc_profile if _icc_space(img.icc_profile) == want_space else None
    exif = img.exif

    pil = None  # Pillow infers L/LA/RGB/RGBA (uint8) and I;16 (2-D uint16) from the array
    if not sixteen or a.shape[2] == 1:
        pil = PILImage.fromarray(a[..., 0] if a.shape[2] == 1 else a)
    elif fmt == "TIFF":
        raise ImageError(f"{path}: Pillow cannot write 16-bit colour or gray+alpha TIFF; write a "
                         f".png (keeps 16 bits) or convert the image to 8 bits")
    kw: dict = {}
    if icc and fmt != "BMP":
        kw["icc_profile"] = icc
    if exif and fmt in ("JPEG", "PNG", "WEBP", "TIFF"):
        kw["exif"] = exif
    if fmt == "JPEG":
        kw.update(quality=95, subsampling=0)
    elif fmt == "WEBP":
        kw.update(lossless=True)
    elif fmt == "PNG":
        kw.update(compress_level=png_compress_level)

    tmp = path.with_name(f".{path.name[:180]}.{uuid.uuid4().hex[:12]}.tmp")
    try:
        with open(tmp, "xb") as f:
            if pil is None:
                _png16(f, a, icc, exif, png_compress_level)
            else:
                pil.save(f, format=fmt, **kw)
        os.replace(tmp, path)
    except OSError as e:
        raise ImageWriteError(f"{path}: cannot write ({e.strerror or e}); check free space and permissions") from e
    finally:
        if tmp.exists():
            tmp.unlink()


def to_tensor(x: np.ndarray) -> torch.Tensor:
    """HxWxC (or HxW) uint8/uint16 -> float32 [C,H,W] in [0, 255] (uint16 scaled by 255/65535)."""
    if x.dtype not in (np.uint8, np.uint16) or x.ndim not in (2, 3):
        raise ValueError(f"expected an HxW or HxWxC uint8/uint16 array, got {x.shape} {x.dtype}")
    if x.ndim == 2:
        x = x[..., None]
    if x.dtype == np.uint8:
        return torch.from_numpy(x.astype(np.float32)).permute(2, 0, 1).contiguous()
    t = torch.from_numpy(x.astype(np.float32)).permute(2, 0, 1).contiguous()
    return t.mul_(255.0 / 65535.0)


def from_tensor(t: torch.Tensor, bit_depth: int = 8) -> np.ndarray:
    """[C,H,W] float in [0, 255] -> HxWxC uint8 (bit_depth 8) or uint16 (16), rounded and clamped."""
    if t.ndim != 3:
        raise ValueError(f"expected a [C,H,W] tensor, got shape {tuple(t.shape)}")
    if bit_depth not in (8, 16):
        raise ValueError(f"bit_depth must be 8 or 16, got {bit_depth}")
    t = t.detach().float()
    hi = 255.0 if bit_depth == 8 else 65535.0
    if bit_depth == 16:
        t = t * (65535.0 / 255.0)
    q = t.round().clamp_(0.0, hi).permute(1, 2, 0).cpu().numpy()
    return np.ascontiguousarray(q.astype(np.uint8 if bit_depth == 8 else np.uint16))


def list_images(paths: Sequence[str | Path], extensions: Sequence[str] = IMAGE_EXTENSIONS) -> list[Path]:
    """Files as given, plus each folder's image files (files with one of `extensions`: non-recursive, sorted by
    name, hidden files skipped). Duplicates are dropped, order kept. A folder entry with such an extension
    that is not a readable file (a broken link, a FIFO) is listed too, so reading it reports what it is."""
    if isinstance(paths, (str, Path)):
        paths = [paths]
    out: dict[Path, None] = {}
    for p in map(Path, paths):
        if p.is_dir():
            try:
                entries = sorted(p.iterdir(), key=lambda q: q.name)
            except OSError as e:
                raise ImageError(f"{p}: cannot list this folder ({e.strerror or e})") from e
            for f in entries:
                if f.suffix.lower() in extensions and not f.name.startswith(".") and not f.is_dir():
                    out[f] = None
        elif p.is_file():
            out[p] = None
        else:
            why = not_a_file(p)
            raise ImageError(f"{p}: {why}; pass image files or folders" if why != "no such file or folder"
                             else f"{p}: no such file or folder; check the path")
    return list(out)
