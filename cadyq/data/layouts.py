"""Evaluation folders: find HR/LR pairs in the layouts of DIV2K, the benchmark sets and Test2K/4K/8K.

Recognised (root may be the set folder itself):
  <set>/HR + <set>/LR_bicubic/X<s>/<stem>[x<s>].png       Set5, Set14, B100, Urban100 (EDSR)
  <set>/HR + <set>/LR/X<s>/<stem>[x<s>].png               Test2K/4K/8K
  DIV2K_valid_HR + DIV2K_valid_LR_bicubic/X<s>/<stem>x<s>.png  (also _train_; root may be the
                                                          DIV2K folder or DIV2K_valid_HR itself)
  <set>/HR alone, or a plain folder of HR images          LR made by `bicubic_downscale`
"""
from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from cadyq.data.io import IMAGE_EXTENSIONS, Image, list_images, read_image
from cadyq.data.resize import bicubic_downscale, mod_crop
from cadyq.errors import DataError

EXPECTED_LAYOUTS = (
    "expected one of: <set>/HR + <set>/LR_bicubic/X<s> (Set5, Set14, B100, Urban100); "
    "<set>/HR + <set>/LR/X<s> (Test2K/4K/8K); DIV2K_valid_HR + DIV2K_valid_LR_bicubic/X<s> "
    "(or _train_); <set>/HR alone or a plain folder of HR images (LR made by bicubic downscaling)")


@dataclass(frozen=True)
class Pair:
    name: str
    hr: Path
    lr: Path | None  # None: make LR by bicubic_downscale


def _layout(root: Path) -> tuple[Path, Path | None]:
    """(HR folder, LR root holding X<s> folders, or None when LR is to be generated)."""
    for split in ("valid", "train"):  # evaluation data first when a DIV2K folder has both
        hr = root / f"DIV2K_{split}_HR"
        if hr.is_dir():
            lr = root / f"DIV2K_{split}_LR_bicubic"
            return hr, lr if lr.is_dir() else None
    m = re.fullmatch(r"(.+)_HR", root.name)
    if m and (root.parent / f"{m[1]}_LR_bicubic").is_dir():
        return root, root.parent / f"{m[1]}_LR_bicubic"
    if (root / "HR").is_dir():
        lr = next((root / n for n in ("LR_bicubic", "LR") if (root / n).is_dir()), None)
        return root / "HR", lr
    return root, None


def find_pairs(root, scale: int) -> list[Pair]:
    """HR images (sorted by name) with their LR files for x`scale`; see the module docstring."""
    root = Path(root)
    if int(scale) != scale or scale < 1:
        raise DataError(f"scale must be a positive integer, got {scale}")
    if not root.is_dir():
        raise DataError(f"{root}: no such folder; {EXPECTED_LAYOUTS}")
    hr_dir, lr_root = _layout(root)
    hrs = list_images([hr_dir])
    if not hrs:
        sets = sorted(d.name for d in hr_dir.iterdir() if d.is_dir() and (d / "HR").is_dir())
        hint = f"; it holds set folders ({', '.join(sets)}): pass one of them" if sets else ""
        raise DataError(f"{hr_dir}: no images ({' '.join(IMAGE_EXTENSIONS)}){hint}; {EXPECTED_LAYOUTS}")
    if lr_root is None:
        return [Pair(p.stem, p, None) for p in hrs]
    lr_dir = lr_root / f"X{scale}"
    if not lr_dir.is_dir():
        have = sorted(d.name for d in lr_root.iterdir() if d.is_dir()) or ["none"]
        raise DataError(f"{lr_dir}: no LR folder for x{scale} (found: {', '.join(have)}); add it, or "
                        f"pass {hr_dir} to make the LR images by bicubic downscaling")
    pairs = []
    for p in hrs:
        names = [f"{p.stem}x{scale}.png", f"{p.stem}.png"]
        if p.suffix.lower() != ".png":
            names += [f"{p.stem}x{scale}{p.suffix}", f"{p.stem}{p.suffix}"]
        lr = next((lr_dir / n for n in names if (lr_dir / n).is_file()), None)
        if lr is None:
            raise DataError(f"{p}: no LR image for it in {lr_dir} (looked for {', '.join(names)}); add "
                            f"it, remove the HR image, or pass {hr_dir} to make all LR images by "
                            f"bicubic downscaling")
        pairs.append(Pair(p.stem, p, lr))
    return pairs


def _rgb8(img: Image) -> np.ndarray:
    """Colour uint8 HxWx3: alpha dropped, grayscale already replicated, 16-bit rounded to 8."""
    return img.rgb if img.bit_depth == 8 else np.rint(img.rgb / 257.0).astype(np.uint8)


def load_pair(pair: Pair, scale: int) -> tuple[np.ndarray, np.ndarray]:
    """(LR uint8 HxWx3, HR uint8 HxWx3 cropped to multiples of `scale`). LR is made with MATLAB-style
    bicubic downscaling of the cropped HR when `pair.lr` is None."""
    hr = _rgb8(read_image(pair.hr))
    if hr.shape[0] < scale or hr.shape[1] < scale:
        raise DataError(f"{pair.hr}: {hr.shape[1]}x{hr.shape[0]} is smaller than the scale x{scale}")
    hr = np.ascontiguousarray(mod_crop(hr, scale))
    if pair.lr is None:
        return bicubic_downscale(hr, scale), hr
    lr = _rgb8(read_image(pair.lr))
    if (lr.shape[0] * scale, lr.shape[1] * scale) != hr.shape[:2]:
        raise DataError(
            f"{pair.lr}: LR is {lr.shape[1]}x{lr.shape[0]}, but HR {pair.hr} cropped to multiples of "
            f"{scale} is {hr.shape[1]}x{hr.shape[0]}, so LR should be {hr.shape[1] // scale}x"
            f"{hr.shape[0] // scale}; check that the files belong together and the scale is right")
    return lr, hr
