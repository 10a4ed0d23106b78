"""Bad and odd inputs to every `cadyq` subcommand, generated here: broken images and checkpoints, bad
options, paths that are not files, outputs that collide or cannot be written, and interrupts.

Each case asserts the exit code, one message line (no traceback), that no temporary or partial file is
left, and that no file that existed before was changed (outputs go to a fresh folder per case).
Cases run in-process through `cadyq.cli.main`; only the Ctrl-C-at-start-up case needs a real process.
"""
from __future__ import annotations

import errno
import hashlib
import json
import os
import pickle
import re
import shutil
import signal
import struct
import subprocess
import sys
import time
import zlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np
import pytest
import torch
from PIL import Image as PILImage

from cadyq.cli import main

X2 = "edsr-tiny-cadyq-x2-cpu"


# ---- the world: every input the cases use, made once ------------------------------------------------------

class Evil:
    """A pickle that would create a file if loading ran it."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def _png(w: int, h: int, body: bytes = b"", depth: int = 8, ctype: int = 2) -> bytes:
    def chunk(t, d):
        return struct.pack(">I", len(d)) + t + d + struct.pack(">I", zlib.crc32(t + d))
    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", w, h, depth, ctype, 0, 0, 0))
            + chunk(b"IDAT", zlib.compress(body)) + chunk(b"IEND", b""))


def _safetensors(path: Path, tensors: dict, meta_text: str | None) -> None:
    from safetensors.torch import save_file

    save_file(tensors, str(path), metadata=None if meta_text is None else {"cadyq": meta_text})


@pytest.fixture(scope="module")
def world(tmp_path_factory, one_torch_thread):
    from skimage import data

    from cadyq.checkpoint import load_model, metadata
    from cadyq.data.io import _png16
    from cadyq.export import export_onnx

    w = tmp_path_factory.mktemp("world")
    photo = data.astronaut()
    crop = np.ascontiguousarray(photo[100:140, 200:240])
    img = w / "img"
    img.mkdir()
    PILImage.fromarray(crop).save(img / "a.png")
    PILImage.fromarray(crop).save(img / "b.jpg", quality=90)
    good_png = (img / "a.png").read_bytes()
    good_jpg = (img / "b.jpg").read_bytes()

    bad = w / "bad"
    bad.mkdir()
    (bad / "truncated.png").write_bytes(good_png[: len(good_png) // 2])
    (bad / "empty.png").write_bytes(b"")
    (bad / "text.png").write_text("this is not an image\n")
    (bad / "zero_width.png").write_bytes(_png(0, 10))
    (bad / "bomb.png").write_bytes(_png(30000, 30000, b"\0" * 100))
    (bad / "junk.jpg").write_bytes(b"\xff\xd8\xff\xe0" + os.urandom(300))
    (bad / "truncated.jpg").write_bytes(good_jpg[: len(good_jpg) // 2])

    odd = w / "odd"
    odd.mkdir()
    frames = [PILImage.fromarray(np.ascontiguousarray(photo[i * 40:(i + 1) * 40, :40])) for i in range(3)]
    frames[0].save(odd / "anim.gif", save_all=True, append_images=frames[1:], duration=100, loop=0)
    frames[0].save(odd / "pages.tif", save_all=True, append_images=frames[1:])
    rgb16 = (crop[:24, :24].astype(np.uint16) * 257 + np.arange(24, dtype=np.uint16)[None, :, None]).astype(np.uint16)
    with open(odd / "rgb16.png", "wb") as f:
        _png16(f, rgb16, None, None)
    la16 = np.dstack([rgb16[..., 0], np.full((24, 24), 65535, np.uint16)])
    with open(odd / "la16.png", "wb") as f:
        _png16(f, la16, None, None)
    PILImage.fromarray(crop[:1, :1]).save(odd / "one_pixel.png")
    PILImage.fromarray(np.ascontiguousarray(photo[:100, :130])).save(odd / "wide.png")

    paths = w / "paths"
    paths.mkdir()
    os.mkfifo(paths / "fifo.png")
    os.symlink("loop.png", paths / "loop.png")
    os.symlink("nowhere.png", paths / "broken.png")
    (paths / "dir.png").mkdir()
    (paths / "empty_dir").mkdir()
    (paths / "no_images").mkdir()
    (paths / "no_images" / "readme.txt").write_text("hi")
    (paths / "plainfile").write_text("a file, not a folder")
    mixed = paths / "mixed"
    mixed.mkdir()
    (mixed / "good.png").write_bytes(good_png)
    (mixed / "bad.png").write_bytes(good_png[:100])
    withfifo = paths / "withfifo"
    withfifo.mkdir()
    (withfifo / "good.png").write_bytes(good_png)
    os.mkfifo(withfifo / "pipe.png")

    pair = w / "pair"  # same stem, two formats
    pair.mkdir()
    (pair / "photo.png").write_bytes(good_png)
    (pair / "photo.jpg").write_bytes(good_jpg)
    for d in ("d1", "d2"):  # same name in two folders
        (w / d).mkdir()
        (w / d / "p.png").write_bytes(good_png)
    prev = w / "prev"  # a folder that holds an input and what upscaling the other would write
    prev.mkdir()
    (prev / "q.png").write_bytes(good_png)
    (prev / "q_x2.png").write_bytes(good_png)

    hr = w / "hr"  # a folder of HR images for eval
    hr.mkdir()
    PILImage.fromarray(np.ascontiguousarray(photo[:48, :48])).save(hr / "h.png")

    m = w / "m"
    m.mkdir()
    model = load_model(X2)
    state = {k: v.contiguous() for k, v in model.state_dict().items()}
    meta = metadata(model)
    _safetensors(m / "x2.safetensors", state, json.dumps(meta))
    variants = {
        "not_json": "{not json", "list": "[1, 2]", "scale_string": {**meta, "scale": "two"},
        "bits_int": {**meta, "bits": 5}, "bits_strings": {**meta, "bits": ["a", "b"]}, "arch_list": {**meta, "arch": []},
        "format_string": {**meta, "format": "1"}, "no_backbone": {k: v for k, v in meta.items() if k != "backbone"},
        "unknown_backbone": {**meta, "backbone": "vgg"}, "bad_arch_key": {**meta, "arch": {**meta["arch"], "bogus": 1}},
        "newer": {**meta, "format": 99}, "bogus_method": {**meta, "method": "int3"},
        "scale_zero": {**meta, "scale": 0}, "scale_bool": {**meta, "scale": True},
    }
    for name, v in variants.items():
        _safetensors(m / f"meta_{name}.safetensors", state, v if isinstance(v, str) else json.dumps(v))
    x4 = load_model("edsr-tiny-cadyq-x4-cpu").state_dict()
    _safetensors(m / "mismatch.safetensors", {k: v.contiguous() for k, v in x4.items()}, json.dumps(meta))
    full = (m / "x2.safetensors").read_bytes()
    (m / "truncated.safetensors").write_bytes(full[: len(full) // 2])
    (m / "random.safetensors").write_bytes(os.urandom(256))
    (m / "empty.safetensors").write_bytes(b"")
    _safetensors(m / "foreign_names.safetensors", {"conv1.weight": torch.zeros(4, 3, 3, 3)}, None)
    marker = w / "PWNED"
    (m / "evil.pt").write_bytes(pickle.dumps({"state_dict": Evil(marker)}))
    (m / "evil2.pt").write_bytes(pickle.dumps({"state_dict": Evil(marker)}, protocol=2))
    torch.save({"a": Evil(marker)}, m / "evil_zip.pt")
    torch.save({"a": np.zeros(3)}, m / "numpy.pt")
    (m / "random.pt").write_bytes(os.urandom(256).replace(b"\x80", b"\x00").replace(b"PK", b"pk"))
    (m / "empty.pt").write_bytes(b"")
    torch.save({"w": torch.zeros(3)}, m / "whole.pt")
    whole = (m / "whole.pt").read_bytes()
    (m / "truncated.pt").write_bytes(whole[: len(whole) // 2])
    torch.save([torch.zeros(2)], m / "list.pt")
    torch.save({"epoch": 3, "weight": torch.zeros(2)}, m / "not_state.pt")
    torch.save({"conv1.weight": torch.zeros(4, 3, 7, 7), "fc.weight": torch.zeros(10, 4)}, m / "resnet.pt")
    torch.save(load_model("edsr-tiny-fp32-x4-cpu").state_dict(), m / "edsr_foreign.pt")  # an EDSR-PyTorch-style file
    (m / "dir.safetensors").mkdir()
    os.mkfifo(m / "fifo.pt")
    (m / "garbage.onnx").write_bytes(os.urandom(128))
    (m / "garbage.engine").write_bytes(os.urandom(128))
    export_onnx(model, m / "good.onnx", tile=24)
    return w


# ---- running a case and checking what it left -----------------------------------------------------------

def _snapshot(root: Path) -> dict[str, tuple]:
    out = {}
    for dirpath, dirnames, filenames in os.walk(root):
        for name in dirnames + filenames:
            p = Path(dirpath) / name
            st = p.lstat()
            digest = hashlib.sha1(p.read_bytes()).hexdigest() if p.is_file() and not p.is_symlink() else None
            out[str(p.relative_to(root))] = (st.st_mode, st.st_size, st.st_mtime_ns, digest)
    return out


def _leftovers(*roots: Path) -> list[str]:
    """Temporary files (the atomic writers' `.name.*.tmp`, engine build folders) anywhere under roots."""
    found = []
    for root in roots:
        for dirpath, dirnames, filenames in os.walk(root):
            found += [n for n in dirnames + filenames if re.match(r"^\..*\.tmp$", n) or n.startswith(".cadyq-")]
    return found


@dataclass
class Case:
    id: str
    argv: list[str]        # {w}: the world, {o}: a fresh, empty output folder of this case
    rc: int
    expect: str            # regex on the message line (error, warning or interruption)
    writes: tuple = ()     # what {o} holds afterwards; None: not checked
    setup: Callable | None = field(default=None, repr=False)  # (world, out, monkeypatch) -> None
    check: Callable | None = field(default=None, repr=False)  # (world, out) -> None, more assertions


def _run(case: Case, world: Path, out: Path, capsys, monkeypatch):
    if case.setup is not None:
        case.setup(world, out, monkeypatch)
    before = _snapshot(world)
    out_before = _snapshot(out)
    argv = [a.format(w=world, o=out) for a in case.argv]
    rc = main(argv)
    monkeypatch.undo()
    err = capsys.readouterr().err
    assert "Traceback" not in err, err
    assert rc == case.rc, err
    lines = [line for line in re.split(r"[\r\n]+", err) if line.strip()]  # progress bars redraw with \r
    if case.rc == 0:
        picked = [line for line in lines if line.startswith("warning:")] if case.expect else []
    elif case.rc == 1:  # some images failed: one line each, and a summary
        picked = [line for line in lines if line.startswith("error:")]
        assert re.match(r"\d+ of \d+ images failed", lines[-1]), err
        named = [m.group(1) for line in picked for m in [re.match(r"error: (\S+?):", line)] if m]
        assert len(named) == len(set(named)) == int(lines[-1].split()[0]), err  # one line per bad file
    else:
        picked = [line for line in lines if line.startswith("cadyq")]  # "cadyq: error:", "cadyq upscale: error:"
        assert len(picked) == 1 and lines[-1] == picked[0], err  # one line, and the last one
    if case.expect:
        assert picked and any(re.search(case.expect, line) for line in picked), err
    assert not _leftovers(world, out), _leftovers(world, out)
    after = _snapshot(world)
    assert after == before, {k for k in set(before) | set(after) if before.get(k) != after.get(k)}
    if case.writes is not None:
        new = sorted(set(_snapshot(out)) - set(out_before))
        assert new == sorted(case.writes), new
        for name in case.writes:
            if name.endswith(".png") and (out / name).is_file():
                PILImage.open(out / name).load()  # complete files only
    if case.check is not None:
        case.check(world, out)
    assert not (world / "PWNED").exists()  # nothing in a checkpoint was executed


def up(src: str, *extra: str) -> list[str]:
    """`cadyq upscale SRC -o {o}/out.png --model X2` (with extra options)."""
    return ["upscale", src, "-o", "{o}/out.png", "--model", X2, "--device", "cpu", *extra]


# ---- the cases ----------------------------------------------------------------------------------------------

def _bit_depth_16(world, out):
    from cadyq.data.io import read_image

    img = read_image(out / "out.png")
    assert img.bit_depth == 16 and img.rgb.shape == (48, 48, 3)


def _report_names_model_and_clamped_tile(world, out):
    rep = json.loads((out / "r.json").read_text())
    assert rep["model"] == X2 and [(i["tile"], i["tiles"]) for i in rep["images"]] == [(96, [1, 1]), (130, [1, 1])]


def _default_model_named(world, out):
    from cadyq import zoo

    assert json.loads((out / "r.json").read_text())["model"] == zoo.default_name()


IMAGES = [
    Case("img-truncated-png", up("{w}/bad/truncated.png"), 1, r"truncated\.png: the file is corrupt or truncated"),
    Case("img-empty-file", up("{w}/bad/empty.png"), 1, r"empty\.png: the file is empty"),
    Case("img-text-named-png", up("{w}/bad/text.png"), 1, r"text\.png: not a readable image"),
    Case("img-zero-width-header", up("{w}/bad/zero_width.png"), 1, r"zero_width\.png: (not a readable image|the image is empty)"),
    Case("img-decompression-bomb", up("{w}/bad/bomb.png"), 1, r"bomb\.png: .*(limit|MAX_IMAGE_PIXELS)"),
    Case("img-junk-jpeg", up("{w}/bad/junk.jpg"), 1, r"junk\.jpg: .*(corrupt|not a readable)"),
    Case("img-truncated-jpeg", up("{w}/bad/truncated.jpg"), 1, r"truncated\.jpg: the file is corrupt or truncated"),
    Case("img-animated-gif", up("{w}/odd/anim.gif"), 0, r"anim\.gif: 3 frames .*only the first is used", ("out.png",)),
    Case("img-multipage-tiff", up("{w}/odd/pages.tif"), 0, r"pages\.tif: 3 frames .*only the first", ("out.png",)),
    Case("img-16bit-rgb-kept", up("{w}/odd/rgb16.png"), 0, "", ("out.png",), check=_bit_depth_16),
    Case("img-16bit-rgb-to-jpeg-warns", ["upscale", "{w}/odd/rgb16.png", "-o", "{o}/out.jpg", "-m", X2], 0,
         r"out\.jpg: JPEG holds 8 bits per channel, so the 16-bit image is rounded", ("out.jpg",)),
    Case("img-16bit-gray-alpha-kept", up("{w}/odd/la16.png"), 0, "", ("out.png",), check=_bit_depth_16),
    Case("img-one-pixel", up("{w}/odd/one_pixel.png"), 0, "", ("out.png",)),
    Case("img-tile-far-larger-than-image-is-clamped",  # to the image, and never below the default 96
         ["upscale", "{w}/img/a.png", "{w}/odd/wide.png", "-o", "{o}", "-m", X2, "--tile", "100000", "--json", "{o}/r.json"],
         0, "", ("a_x2.png", "wide_x2.png", "r.json"), check=_report_names_model_and_clamped_tile),
    Case("img-folder-with-a-bad-file", ["upscale", "{w}/paths/mixed", "-o", "{o}", "-m", X2], 1,
         r"bad\.png: the file is corrupt", ("good_x2.png",)),
    Case("img-fifo-in-a-folder", ["upscale", "{w}/paths/withfifo", "-o", "{o}", "-m", X2], 1,
         r"pipe\.png: a FIFO \(named pipe\), not a file", ("good_x2.png",)),
    Case("img-fifo", up("{w}/paths/fifo.png"), 2, r"fifo\.png: a FIFO \(named pipe\), not a file"),
    Case("img-link-loop", up("{w}/paths/loop.png"), 2, r"loop\.png: a symbolic link loop"),
    Case("img-broken-link", up("{w}/paths/broken.png"), 2, r"broken\.png: a broken symbolic link \(to nowhere\.png"),
    Case("img-missing", up("{w}/nope.png"), 2, r"nope\.png: no such file or folder"),
    Case("img-empty-folder", up("{w}/paths/empty_dir"), 2, r"no images .* found in"),
    Case("img-folder-without-images", up("{w}/paths/no_images"), 2, r"no images .* found in"),
    Case("img-folder-named-like-an-image", up("{w}/paths/dir.png"), 2, r"no images .* found in .*dir\.png"),
]

MODELS = [
    Case("ckpt-random-safetensors", ["info", "{w}/m/random.safetensors"], 2, r"not a readable safetensors file"),
    Case("ckpt-empty-safetensors", ["info", "{w}/m/empty.safetensors"], 2, r"not a readable safetensors file"),
    Case("ckpt-truncated-safetensors", ["info", "{w}/m/truncated.safetensors"], 2, r"truncated\.safetensors: .*(not a readable|truncated)"),
    Case("ckpt-meta-not-json", ["info", "{w}/m/meta_not_json.safetensors"], 2, r"cadyq metadata is damaged \(not JSON"),
    Case("ckpt-meta-json-list", ["info", "{w}/m/meta_list.safetensors"], 2, r"damaged \(a JSON list instead of an object"),
    Case("ckpt-meta-scale-string", ["info", "{w}/m/meta_scale_string.safetensors"], 2, r"'scale' is \"two\", not a JSON integer"),
    Case("ckpt-meta-scale-zero", ["info", "{w}/m/meta_scale_zero.safetensors"], 2, r"'scale' is 0"),
    Case("ckpt-meta-scale-bool", ["info", "{w}/m/meta_scale_bool.safetensors"], 2, r"'scale' is true, not a JSON integer"),
    Case("ckpt-meta-bits-int", ["info", "{w}/m/meta_bits_int.safetensors"], 2, r"'bits' is 5, not a JSON list"),
    Case("ckpt-meta-bits-strings", ["info", "{w}/m/meta_bits_strings.safetensors"], 2, r"'bits' is \[\"a\", \"b\"\]"),
    Case("ckpt-meta-arch-list", ["info", "{w}/m/meta_arch_list.safetensors"], 2, r"'arch' is \[\], not a JSON object"),
    Case("ckpt-meta-format-string", ["info", "{w}/m/meta_format_string.safetensors"], 2, r"'format' is \"1\""),
    Case("ckpt-meta-no-backbone", ["info", "{w}/m/meta_no_backbone.safetensors"], 2, r"no 'backbone' field"),
    Case("ckpt-meta-unknown-backbone", ["info", "{w}/m/meta_unknown_backbone.safetensors"], 2,
         r"meta_unknown_backbone\.safetensors: .*vgg"),
    Case("ckpt-meta-bad-arch-key", ["info", "{w}/m/meta_bad_arch_key.safetensors"], 2,
         r"meta_bad_arch_key\.safetensors: .*(bogus|invalid)"),
    Case("ckpt-meta-newer-format", ["info", "{w}/m/meta_newer.safetensors"], 2, r"written by a newer cadyq"),
    Case("ckpt-meta-bogus-method", ["info", "{w}/m/meta_bogus_method.safetensors"], 2, r"meta_bogus_method\.safetensors: .*int3"),
    Case("ckpt-tensors-do-not-fit-metadata", ["info", "{w}/m/mismatch.safetensors"], 2,
         r"do not fit its own metadata: the file was edited or damaged"),
    Case("ckpt-plain-safetensors-unknown-names", ["info", "{w}/m/foreign_names.safetensors"], 2,
         r"cannot tell the backbone from the tensor names \(conv1\.weight"),
    Case("ckpt-pickle-with-code", ["info", "{w}/m/evil.pt"], 2, r"evil\.pt: refused: a plain pickle.*tensors only"),
    Case("ckpt-protocol-2-pickle-with-code", ["info", "{w}/m/evil2.pt"], 2, r"evil2\.pt: refused: .*system"),
    Case("ckpt-torch-zip-with-code", ["info", "{w}/m/evil_zip.pt"], 2, r"evil_zip\.pt: refused: .*system"),
    Case("ckpt-torch-file-with-numpy", ["info", "{w}/m/numpy.pt"], 2, r"numpy\.pt: refused: .*numpy"),
    Case("ckpt-random-bytes-pt", ["info", "{w}/m/random.pt"], 2, r"neither a torch\.save archive nor a pickle"),
    Case("ckpt-empty-pt", ["info", "{w}/m/empty.pt"], 2, r"empty\.pt: the file is empty"),
    Case("ckpt-truncated-torch-zip", ["info", "{w}/m/truncated.pt"], 2, r"damaged or truncated archive"),
    Case("ckpt-torch-list", ["info", "{w}/m/list.pt"], 2, r"holds a list, not a state_dict"),
    Case("ckpt-torch-dict-not-tensors", ["info", "{w}/m/not_state.pt"], 2, r"not a state_dict .*'epoch' is 'int', not a tensor"),
    Case("ckpt-resnet-state-dict", ["info", "{w}/m/resnet.pt"], 2, r"cannot tell the backbone .*pass --backbone"),
    Case("ckpt-resnet-with-backbone", ["info", "{w}/m/resnet.pt", "--backbone", "edsr", "--scale", "2"], 2,
         r"none of its tensor names \(conv1\.weight, fc\.weight, \.\.\.\) is one of edsr's.*cannot make it one"),
    Case("ckpt-foreign-keys-contradict-backbone", ["info", "{w}/m/edsr_foreign.pt", "--backbone", "carn"], 2,
         r"edsr_foreign\.pt: its tensor names are EDSR's, not CARN's \(--backbone carn\); drop --backbone, or pass "
         r"--backbone edsr"),
    Case("ckpt-folder", ["info", "{w}/m/dir.safetensors"], 2, r"dir\.safetensors: a folder, not a file"),
    Case("ckpt-fifo", ["info", "{w}/m/fifo.pt"], 2, r"fifo\.pt: a FIFO \(named pipe\), not a file"),
    Case("ckpt-missing", ["info", "{w}/m/nope.safetensors"], 2, r"no such checkpoint file"),
    Case("ckpt-unknown-zoo-name", ["info", "edsr-huge"], 2, r"no shipped weights named 'edsr-huge'"),
    Case("ckpt-onnx-to-info", ["info", "{w}/m/good.onnx"], 2, r"`cadyq info` reads checkpoints"),
    Case("model-garbage-onnx", up("{w}/img/a.png", "--model", "{w}/m/garbage.onnx"), 2, r"not a readable ONNX file"),
    Case("model-missing-onnx", up("{w}/img/a.png", "--model", "{w}/m/nope.onnx"), 2, r"nope\.onnx: no such model file"),
    Case("model-engine-without-sidecar", ["check", "{w}/m/garbage.engine"], 2, r"sidecar is missing"),
    Case("model-pickle-with-code-upscale", up("{w}/img/a.png", "--model", "{w}/m/evil.pt"), 2, r"refused"),
    Case("model-pickle-with-code-export", ["export", "-m", "{w}/m/evil.pt", "-o", "{o}/m.onnx"], 2, r"refused"),
    Case("model-damaged-check-against", ["check", "{w}/m/good.onnx", "--against", "{w}/m/meta_list.safetensors"], 2,
         r"metadata is damaged"),
    Case("model-scale-contradicts-checkpoint", up("{w}/img/a.png", "--scale", "4"), 2,
         r"is a edsr x2 cadyq model, but --scale 4 asks for another; drop --scale"),
    Case("model-backbone-contradicts-checkpoint", ["info", "{w}/m/x2.safetensors", "--backbone", "carn"], 2,
         r"x2\.safetensors is a edsr x2 cadyq model, but --backbone carn"),
    Case("model-method-contradicts-zoo-model", ["export", "-m", X2, "--method", "pams8", "-o", "{o}/m.onnx"], 2,
         r"--method pams8 asks for another"),
    Case("model-backbone-with-onnx", up("{w}/img/a.png", "--model", "{w}/m/good.onnx", "--backbone", "edsr"), 2,
         r"--backbone describes foreign checkpoints"),
    Case("model-onnx-tile-mismatch", up("{w}/img/a.png", "--model", "{w}/m/good.onnx"), 2,
         r"this model takes \(24, 24\) tiles, not 96x96; pass --tile"),
    Case("model-scale-contradicts-onnx", up("{w}/img/a.png", "--model", "{w}/m/good.onnx", "--scale", "4", "--tile", "24"), 2,
         r"is a x2 model, but --scale asks for x4"),
]

OPTIONS = [
    Case("opt-device-gpu", up("{w}/img/a.png", "--device", "gpu"), 2, r"--device 'gpu' is not a device"),
    Case("opt-device-cuda-x", up("{w}/img/a.png", "--device", "cuda:x"), 2, r"not a device"),
    Case("opt-tile-zero", up("{w}/img/a.png", "--tile", "0"), 2, r"tile size must be a positive integer"),
    Case("opt-tile-negative", up("{w}/img/a.png", "--tile", "-4"), 2, r"tile size must be a positive integer"),
    Case("opt-tile-not-a-number", up("{w}/img/a.png", "--tile", "big"), 2, r"argument --tile: invalid int value: 'big'"),
    Case("opt-overlap-not-below-tile", up("{w}/img/a.png", "--overlap", "96"), 2, r"overlap must be an integer in \[0, tile=96\)"),
    Case("opt-batch-zero", up("{w}/img/a.png", "--batch", "0"), 2, r"batch must be at least 1"),
    Case("opt-protocol-unknown", up("{w}/img/a.png", "--protocol", "wavy"), 2, r"argument --protocol: invalid choice"),
    Case("opt-backend-unknown", up("{w}/img/a.png", "--backend", "gpu"), 2, r"unknown backend 'gpu'"),
    Case("opt-float-precision-needs-native", up("{w}/img/a.png", "--backend", "torch", "--float-precision", "fp32"), 2,
         r"--float-precision is an option of --backend native"),
    Case("opt-png-compression-out-of-range", up("{w}/img/a.png", "--png-compression", "11"), 2, r"zlib level from 0"),
    Case("opt-unknown-flag", up("{w}/img/a.png", "--sharpen"), 2, r"unrecognized arguments: --sharpen"),
    Case("opt-missing-output", ["upscale", "{w}/img/a.png"], 2, r"required: -o/--output"),
    Case("opt-no-subcommand", [], 2, r"required: command"),
    Case("opt-unknown-subcommand", ["enhance"], 2, r"invalid choice: 'enhance'"),
    Case("opt-eval-device-gpu", ["eval", "-m", X2, "--data", "{w}/hr", "--device", "gpu"], 2, r"not a device"),
    Case("opt-bench-device-gpu", ["bench", "-m", X2, "--device", "gpu"], 2, r"not a device"),
    Case("opt-bench-zero-iterations", ["bench", "-m", X2, "--iterations", "0"], 2, r"iterations"),
    Case("opt-train-device-gpu", ["train", "--data", "{w}/hr", "--device", "gpu", "--out", "{o}/run"], 2, r"not a device"),
    Case("opt-engine-nothing-to-build", ["engine"], 2, r"give the exported graph"),
    Case("opt-engine-model-without-make", ["engine", "{w}/m/good.onnx", "--model", X2], 2, r"--model goes with --make"),
    Case("opt-engine-output-name", ["engine", "{w}/m/good.onnx", "-o", "{o}/m.trt"], 2, r"name the engine file \*\.engine"),
    Case("opt-engine-batch-order", ["engine", "{w}/m/good.onnx", "-o", "{o}/m.engine", "--batch", "64:16:1"], 2,
         r"MIN:OPT:MAX"),
    Case("opt-check-zero-tiles", ["check", "{w}/m/good.onnx", "--against", X2, "--tiles", "0"], 2, r"--tiles must be at least 1"),
    Case("opt-eval-scale-contradicts", ["eval", "-m", X2, "--data", "{w}/hr", "--scale", "3"], 2, r"--scale 3 asks for another"),
]


def _full_disk(world, out, monkeypatch):
    def save(self, fp, *a, **k):
        fp.write(b"partial")
        raise OSError(errno.ENOSPC, "No space left on device")
    monkeypatch.setattr(PILImage.Image, "save", save)


def _existing_output(world, out, monkeypatch):
    (out / "out.png").write_bytes(b"precious")


def _full_disk_on_existing(world, out, monkeypatch):
    _existing_output(world, out, monkeypatch)
    _full_disk(world, out, monkeypatch)


def _json_write_fails(world, out, monkeypatch):
    def write_text(self, *a, **k):
        raise OSError(errno.EIO, "Input/output error")
    monkeypatch.setattr(Path, "write_text", write_text)


def _rename_fails(world, out, monkeypatch):
    def replace(src, dst):
        raise OSError(errno.EXDEV, "Invalid cross-device link")
    monkeypatch.setattr(os, "replace", replace)


def _onnx_disk_full(world, out, monkeypatch):
    import onnx

    def save_model(proto, f, *a, **k):
        Path(f).write_bytes(b"half a graph")
        raise OSError(errno.ENOSPC, "No space left on device")
    monkeypatch.setattr(onnx, "save_model", save_model)


def _unchanged_precious(world, out):
    assert (out / "out.png").read_bytes() == b"precious"


def _replaced(world, out):
    assert PILImage.open(out / "out.png").size == (80, 80)


def _link_to_missing(world, out, monkeypatch):
    os.symlink("real.png", out / "link.png")


def _link_kept(world, out):
    assert os.readlink(out / "link.png") == "real.png" and PILImage.open(out / "real.png").size == (80, 80)


def _needs_sysfs(world, out, monkeypatch):
    if not Path("/sys/kernel").is_dir():
        pytest.skip("no sysfs here")


def _dev_null_intact(world, out):
    import stat

    assert stat.S_ISCHR(os.stat("/dev/null").st_mode)


def _both_pair_outputs(world, out):
    assert sorted(p.name for p in out.iterdir()) == ["photo_jpg_x2.png", "photo_png_x2.png"]


LONG = "x" * 300
OUTPUTS = [
    Case("out-same-stem-resolved", ["upscale", "{w}/pair", "-o", "{o}", "-m", X2], 0, "",
         ("photo_jpg_x2.png", "photo_png_x2.png"), check=_both_pair_outputs),
    Case("out-same-name-two-folders-refused", ["upscale", "{w}/d1/p.png", "{w}/d2/p.png", "-o", "{o}", "-m", X2], 2,
         r"p_png_x2\.png would be written twice"),
    Case("out-equals-input", ["upscale", "{w}/img/a.png", "-o", "{w}/img/a.png", "-m", X2], 2,
         r"would replace the input .*a\.png"),
    Case("out-equals-input-overwrite-still-refused",
         ["upscale", "{w}/img/a.png", "-o", "{w}/img/a.png", "-m", X2, "--overwrite"], 2, r"would replace the input"),
    Case("out-is-a-hard-link-of-the-input", ["upscale", "{w}/img/a.png", "-o", "{o}/alias.png", "-m", X2, "--overwrite"], 2,
         r"alias\.png: the output of .*a\.png would replace the input", None,
         setup=lambda w, o, mp: os.link(w / "img" / "a.png", o / "alias.png")),
    Case("out-folder-name-is-another-input", ["upscale", "{w}/prev", "-o", "{w}/prev", "-m", X2, "--overwrite"], 2,
         r"q_x2\.png: the output of .*q\.png would replace the input"),
    Case("out-one-file-several-inputs", ["upscale", "{w}/img/a.png", "{w}/img/b.jpg", "-o", "{o}/out.png", "-m", X2], 2,
         r"-o .*out\.png names one image file, but 2 images were given"),
    Case("out-gif-extension", ["upscale", "{w}/img/a.png", "-o", "{o}/out.gif", "-m", X2], 2,
         r"\.gif is not an image format cadyq writes"),
    Case("out-existing-file-where-a-folder-is-needed",
         ["upscale", "{w}/img/a.png", "{w}/img/b.jpg", "-o", "{w}/paths/plainfile", "-m", X2], 2,
         r"plainfile: exists and is not a folder"),
    Case("out-folder-under-a-file", ["upscale", "{w}/img/a.png", "-o", "{w}/paths/plainfile/sub", "-m", X2], 2,
         r"cannot create this folder: .*plainfile is a file"),
    Case("out-exists-no-overwrite", up("{w}/img/a.png"), 2, r"out\.png: exists; pass --overwrite", None,
         setup=_existing_output, check=_unchanged_precious),
    Case("out-exists-overwrite", up("{w}/img/a.png", "--overwrite"), 0, "", None, setup=_existing_output,
         check=_replaced),
    Case("out-bitmap-exists-no-overwrite", up("{w}/img/a.png", "--bitmap"), 2, r"out_bits\.png: exists", None,
         setup=lambda w, o, mp: (o / "out_bits.png").write_bytes(b"old")),
    Case("out-json-is-a-folder", up("{w}/img/a.png", "--json", "{w}/img"), 2, r"the --json report .* is a folder"),
    Case("out-json-is-an-input", up("{w}/img/a.png", "--json", "{w}/img/a.png"), 2, r"--json report would replace the input"),
    Case("out-json-under-a-file", up("{w}/img/a.png", "--json", "{w}/paths/plainfile/r.json"), 2, r"plainfile is a file"),
    Case("out-name-too-long", ["upscale", "{w}/img/a.png", "-o", "{o}/" + LONG + ".png", "-m", X2], 2,
         r"\.png: cannot write there \(File name too long\)"),
    Case("out-disk-full-image", up("{w}/img/a.png", "--overwrite"), 2, r"out\.png: cannot write \(No space left on device\)",
         None, setup=_full_disk_on_existing, check=_unchanged_precious),
    Case("out-json-write-fails", up("{w}/img/a.png", "--json", "{o}/r.json"), 2, r"r\.json: cannot write \(Input/output error\)",
         ("out.png",), setup=_json_write_fails),
    Case("out-rename-fails", up("{w}/img/a.png", "--json", "{o}/r.json"), 2, r"out\.png: cannot write \(Invalid cross-device",
         (), setup=_rename_fails),
    Case("out-is-a-fifo", ["upscale", "{w}/img/a.png", "-o", "{w}/paths/fifo.png", "-m", X2, "--overwrite"], 2,
         r"fifo\.png: is not a regular file"),
    Case("out-symlink-keeps-pointing-at-the-new-image", ["upscale", "{w}/img/a.png", "-o", "{o}/link.png", "-m", X2,
                                                         "--overwrite"], 0, "", ("real.png",),
         setup=_link_to_missing, check=_link_kept),
    Case("out-json-in-a-read-only-place", up("{w}/img/a.png", "--json", "/sys/cadyq-report.json"), 2,
         r"/sys: cannot write there", (), setup=_needs_sysfs),
    Case("export-output-is-dev-null", ["export", "-m", X2, "-o", "/dev/null"], 2,
         r"/dev/null: is not a regular file", check=_dev_null_intact),
    Case("export-output-under-a-file", ["export", "-m", X2, "-o", "{w}/paths/plainfile/m.onnx"], 2, r"plainfile is a file"),
    Case("export-output-is-the-model", ["export", "-m", "{w}/m/x2.safetensors", "-o", "{w}/m/x2.safetensors"], 2,
         r"--output is also an input"),
    Case("export-output-is-a-folder", ["export", "-m", X2, "-o", "{o}"], 2, r"--output is a folder"),
    Case("export-disk-full", ["export", "-m", X2, "-o", "{o}/m.onnx", "--tile", "16"], 2,
         r"m\.onnx: cannot write \(No space left on device\)", (), setup=_onnx_disk_full),
    Case("check-json-is-a-folder", ["check", "{w}/m/good.onnx", "--json", "{w}/img"], 2, r"--json is a folder"),
    Case("check-json-is-the-graph", ["check", "{w}/m/good.onnx", "--json", "{w}/m/good.onnx"], 2, r"--json is also an input"),
    Case("check-image-is-a-folder", ["check", "{w}/m/good.onnx", "--against", X2, "--image", "{w}/img"], 2,
         r"--image .*img: a folder, not a file"),
    Case("check-image-is-a-fifo", ["check", "{w}/m/good.onnx", "--against", X2, "--image", "{w}/paths/fifo.png"], 2,
         r"a FIFO \(named pipe\), not a file"),
    Case("check-garbage-graph", ["check", "{w}/m/garbage.onnx"], 2, r"not a readable ONNX file"),
    Case("check-graph-is-a-folder", ["check", "{w}/img"], 2, r"MODEL .*img: a folder, not a file"),
    Case("engine-output-under-a-file", ["engine", "{w}/m/good.onnx", "-o", "{w}/paths/plainfile/m.engine"], 2,
         r"plainfile is a file"),
    Case("engine-json-is-a-folder", ["engine", "{w}/m/good.onnx", "-o", "{o}/m.engine", "--json", "{w}/img"], 2,
         r"--json is a folder"),
    Case("engine-garbage-graph", ["engine", "{w}/m/garbage.onnx", "-o", "{o}/m.engine"], 2, r"not a readable ONNX file"),
    Case("engine-out-dir-is-a-file", ["engine", "--make", "--out-dir", "{w}/paths/plainfile"], 2,
         r"--out-dir .*plainfile: a file, not a folder"),
    Case("bench-json-is-a-folder", ["bench", "-m", X2, "--json", "{w}/img"], 2, r"--json is a folder"),
    Case("bench-json-under-a-file", ["bench", "-m", X2, "--json", "{w}/paths/plainfile/b.json"], 2, r"plainfile is a file"),
    Case("bench-image-is-a-folder", ["bench", "-m", X2, "--image", "{w}/img"], 2, r"--image .*: a folder, not a file"),
    Case("bench-model-with-code", ["bench", "-m", "{w}/m/evil.pt", "--iterations", "1"], 2, r"refused"),
    Case("eval-data-missing", ["eval", "-m", X2, "--data", "{w}/nope"], 2, r"nope: no such folder"),
    Case("eval-data-is-a-file", ["eval", "-m", X2, "--data", "{w}/img/a.png"], 2, r"--data .*a\.png: a file, not a folder"),
    Case("eval-data-without-images", ["eval", "-m", X2, "--data", "{w}/paths/no_images"], 2, r"no images"),
    Case("eval-json-is-a-folder", ["eval", "-m", X2, "--data", "{w}/hr", "--json", "{w}/img"], 2, r"--json is a folder"),
    Case("eval-json-is-an-input-image", ["eval", "-m", X2, "--data", "{w}/hr", "--json", "{w}/m/x2.safetensors",
                                         "--model", "{w}/m/x2.safetensors"], 2, r"--json is also an input"),
    Case("train-data-is-a-fifo", ["train", "--data", "{w}/paths/fifo.png", "--out", "{o}/run"], 2,
         r"--data .*fifo\.png: a FIFO \(named pipe\), not a folder"),
    Case("train-out-is-a-file", ["train", "--data", "{w}/hr", "--out", "{w}/paths/plainfile"], 2,
         r"--out .*plainfile: a file, not a folder"),
    Case("train-init-with-code", ["train", "--data", "{w}/hr", "--init", "{w}/m/evil.pt", "--out", "{o}/run"], 2,
         r"refused"),
]


def _interrupt(target: str, attr: str, after: int = 0):
    """Raise KeyboardInterrupt from target.attr (on its call number `after` + 1)."""
    def setup(world, out, monkeypatch):
        import importlib

        obj = importlib.import_module(target)
        real, calls = getattr(obj, attr), []

        def fake(*a, **k):
            calls.append(1)
            if len(calls) > after:
                raise KeyboardInterrupt
            return real(*a, **k)
        monkeypatch.setattr(obj, attr, fake)
    return setup


def _interrupt_import(world, out, monkeypatch):
    import builtins

    real = builtins.__import__

    def fake(name, *a, **k):
        if name in ("safetensors", "safetensors.torch") or name.startswith("tqdm"):
            raise KeyboardInterrupt
        return real(name, *a, **k)
    monkeypatch.setattr(builtins, "__import__", fake)


def _interrupt_image_write(world, out, monkeypatch):
    _existing_output(world, out, monkeypatch)

    def save(self, fp, *a, **k):
        fp.write(b"half an image")
        raise KeyboardInterrupt
    monkeypatch.setattr(PILImage.Image, "save", save)


def _interrupt_json_write(world, out, monkeypatch):
    (out / "r.json").write_text("{}")

    def write_text(self, *a, **k):
        Path(self).open("w").write('{"half": ')
        raise KeyboardInterrupt
    monkeypatch.setattr(Path, "write_text", write_text)


def _old_report_kept(world, out):
    assert (out / "r.json").read_text() == "{}"


def _interrupt_onnx_write(world, out, monkeypatch):
    import onnx

    def save_model(proto, f, *a, **k):
        Path(f).write_bytes(b"half a graph")
        raise KeyboardInterrupt
    monkeypatch.setattr(onnx, "save_model", save_model)


def _interrupt_upscale(n: int):
    """KeyboardInterrupt from the n-th image's inference."""
    def setup(world, out, monkeypatch):
        from cadyq.runtime import upscaler

        real, calls = upscaler.Upscaler.upscale, []

        def upscale(self, *a, **k):
            calls.append(1)
            if len(calls) == n:
                raise KeyboardInterrupt
            return real(self, *a, **k)
        monkeypatch.setattr(upscaler.Upscaler, "upscale", upscale)
    return setup


def _first_of_two_written(world, out):
    assert PILImage.open(out / "a_x2.png").size == (80, 80)
    rep = json.loads((out / "r.json").read_text())  # the report of what was done before the interrupt
    assert rep["interrupted"] is True and [i["output"] for i in rep["images"]] == [str(out / "a_x2.png")]
    assert rep["not_done"] == [str(world / "img" / "b.jpg")] and rep["failed"] == []


def _report_of_nothing_done(world, out):
    rep = json.loads((out / "r.json").read_text())
    assert rep["interrupted"] is True and rep["images"] == [] and rep["not_done"] == [str(world / "img" / "a.png")]


INTERRUPTS = [
    Case("int-while-building-the-parser", ["info", X2], 130, r"^cadyq: interrupted$", (),
         setup=_interrupt("cadyq.cli", "build_parser")),
    Case("int-while-importing-subsystems", ["info", X2], 130, r"^cadyq: interrupted$", (),
         setup=_interrupt("importlib", "import_module")),
    Case("int-while-importing-the-checkpoint-reader", up("{w}/img/a.png"), 130, r"^cadyq: interrupted$", (),
         setup=_interrupt_import),
    Case("int-while-loading-the-model", up("{w}/img/a.png"), 130, r"^cadyq: interrupted$", (),
         setup=_interrupt("cadyq.checkpoint", "load_model")),
    Case("int-during-inference", up("{w}/img/a.png", "--json", "{o}/r.json"), 130, r"^cadyq: interrupted$", ("r.json",),
         setup=_interrupt_upscale(1), check=_report_of_nothing_done),
    Case("int-during-second-image", ["upscale", "{w}/img/a.png", "{w}/img/b.jpg", "-o", "{o}", "-m", X2, "--json",
                                     "{o}/r.json"], 130, r"^cadyq: interrupted$", ("a_x2.png", "r.json"),
         setup=_interrupt_upscale(2), check=_first_of_two_written),
    Case("int-during-image-write", up("{w}/img/a.png", "--overwrite"), 130, r"^cadyq: interrupted$", None,
         setup=_interrupt_image_write, check=_unchanged_precious),
    Case("int-during-json-write", up("{w}/img/a.png", "--json", "{o}/r.json", "--overwrite"), 130, r"^cadyq: interrupted$",
         None, setup=_interrupt_json_write, check=_old_report_kept),
    Case("int-during-onnx-write", ["export", "-m", X2, "-o", "{o}/m.onnx", "--tile", "16"], 130, r"^cadyq: interrupted$",
         (), setup=_interrupt_onnx_write),
]

CASES = IMAGES + MODELS + OPTIONS + OUTPUTS + INTERRUPTS


@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
def test_bad_input(case, world, tmp_path, capsys, monkeypatch):
    _run(case, world, tmp_path, capsys, monkeypatch)


def test_corpus_size():
    assert len(CASES) >= 80 and len({c.id for c in CASES}) == len(CASES)


def test_default_model_is_named_in_the_report(world, tmp_path, capsys):
    assert main(["upscale", str(world / "img" / "a.png"), "-o", str(tmp_path / "o.png"), "--json",
                 str(tmp_path / "r.json"), "--device", "cpu"]) == 0
    _default_model_named(world, tmp_path)


def test_bit_map_has_a_legend(world, tmp_path, capsys):
    assert main([a.format(w=world, o=tmp_path) for a in up("{w}/img/a.png", "--bitmap")]) == 0
    pic = np.asarray(PILImage.open(tmp_path / "out_bits.png"))
    assert pic.shape[0] > 80 and pic.shape[1] >= 80  # the 80x80 map, then the legend strip
    legend = pic[80:]
    assert (legend == 24).all(-1).mean() > 0.5  # the strip's background
    assert (np.abs(legend.astype(int) - [40, 80, 230]).sum(-1) < 30).any()  # the ramp's 4-bit blue
    assert (np.abs(legend.astype(int) - [230, 50, 40]).sum(-1) < 30).any()  # and its 8-bit red


@pytest.mark.skipif(not Path("/proc/self/maps").exists(), reason="needs /proc to see when torch is loading")
def test_ctrl_c_while_torch_loads_in_a_real_process(tmp_path):
    """SIGINT while the `cadyq` process is still importing torch: one line, exit code 130."""
    exe = shutil.which("cadyq")
    cmd = [exe] if exe else [sys.executable, "-m", "cadyq"]
    p = subprocess.Popen([*cmd, "info", X2], stdout=subprocess.PIPE, stderr=subprocess.PIPE, cwd=tmp_path)
    deadline = time.monotonic() + 60
    try:
        while time.monotonic() < deadline and p.poll() is None:
            try:
                if "libtorch" in Path(f"/proc/{p.pid}/maps").read_text():
                    break  # torch's library is mapped: the process is inside main, importing torch
            except OSError:
                pass
            time.sleep(0.002)
        p.send_signal(signal.SIGINT)
        out, err = p.communicate(timeout=60)
    finally:
        if p.poll() is None:
            p.kill()
    err = err.decode()
    assert p.returncode == 130, err
    assert "Traceback" not in err and err.strip().splitlines()[-1] == "cadyq: interrupted", err
    assert list(tmp_path.iterdir()) == []


def test_debug_shows_the_traceback_and_still_ends_with_one_line(world, capsys):
    assert main(["--debug", "info", str(world / "m" / "meta_list.safetensors")]) == 2
    err = capsys.readouterr().err
    assert "Traceback" in err and err.strip().splitlines()[-1].startswith("cadyq: error:")


def test_a_bug_is_one_line_with_its_own_exit_code(monkeypatch, capsys):
    import cadyq.cli

    monkeypatch.setattr(cadyq.cli, "cmd_info", lambda args: 1 / 0)
    assert main(["info", X2]) == 3
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("cadyq: internal error: ZeroDivisionError") and "--debug" in err[0]


def test_help_and_version_exit_zero(capsys):
    assert main(["--version"]) == 0 and "cadyq" in capsys.readouterr().out
    assert main(["upscale", "--help"]) == 0 and "--overwrite" in capsys.readouterr().out
