"""README's quick start, copied verbatim: its Python and shell blocks run in order in an empty folder (the `cadyq`
command is this checkout's), and the picture it writes is sharper than bicubic, not the grey of a model that was
never trained."""
from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

REPO = Path(__file__).resolve().parents[1]


def _quick_start_blocks() -> list[tuple[str, str]]:
    text = (REPO / "README.md").read_text()
    section = text[text.index("## Quick start"):]
    section = section[:section.index("\n## ", 1)]
    return re.findall(r"```(python|bash)\n(.*?)```", section, re.S)


@pytest.mark.slow
def test_quick_start_verbatim_writes_a_sharp_picture(tmp_path):
    from skimage import data

    from cadyq.metrics import psnr

    shim = tmp_path / "bin"
    shim.mkdir()
    (shim / "cadyq").write_text(f'#!/bin/sh\nexec "{sys.executable}" -m cadyq "$@"\n')
    (shim / "cadyq").chmod(0o755)
    work = tmp_path / "work"
    work.mkdir()
    env = {**os.environ, "PATH": f"{shim}{os.pathsep}{os.environ['PATH']}",
           "PYTHONPATH": os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")])}
    blocks = _quick_start_blocks()
    assert [lang for lang, _ in blocks] == ["python", "bash", "python"]
    outputs = []
    for lang, code in blocks:
        cmd = [sys.executable, "-c", code] if lang == "python" else ["bash", "-euc", code]
        p = subprocess.run(cmd, cwd=work, env=env, capture_output=True, text=True, timeout=600)
        assert p.returncode == 0, p.stderr
        outputs.append(p.stdout + p.stderr)

    hr = data.astronaut()
    sr = np.asarray(Image.open(work / "photo_x4.png"))
    bicubic = np.asarray(Image.open(work / "photo.png").resize((512, 512), Image.BICUBIC))
    assert sr.shape == hr.shape
    assert psnr(sr, hr, 4) > psnr(bicubic, hr, 4) + 1.0  # 28.5 dB against 26.8 when this was written
    assert np.array_equal(np.asarray(Image.open(work / "out" / "photo_x4.png")), sr)  # the command = the Python
    assert (work / "bits" / "photo_x4_bits.png").is_file() and (work / "bits" / "report.json").is_file()
    assert "never trained" not in "".join(outputs)
    assert re.search(r"^training\s+trained$", outputs[1], re.M)

    info = subprocess.run(["cadyq", "info", "untrained_cadyq_x4.safetensors"], cwd=work, env=env,
                          capture_output=True, text=True, timeout=300)
    assert "never trained" in info.stdout
