"""The real photographs cadyq trains its zoo on, from Debian packages and scikit-image, as plain data.

Install the packages with `apt-get install mate-backgrounds lomiri-wallpapers-16.04 lomiri-wallpapers-20.04`
(scikit-image comes with the `dev` extra; its Middlebury motorcycle is left out for its terms). Only photographs are listed; the renders and abstract
art of these packages are left out (umang, analogpattern, and every ukui/gnome/20.04 wallpaper but
Kleiber). KDE's plasma-workspace-wallpapers are kept for independent evaluation and never used here.

`prepare(out)` lays out `out/train/` (links to the training photos, PNG copies of the scikit-image
ones), `out/val/` (a fixed centre crop of each held-out photo, PNG) and `out/manifest.json` (every
file, its package, author and licence). The held-out photos were chosen before any training, as
the most detailed photographs of the set; none of them is used for training or tuning.
"""
from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from ..errors import DataError

MATE = "/usr/share/backgrounds/mate/nature"
LOMIRI = "/usr/share/backgrounds"
VAL_CROP = (768, 1024)  # HR height, width of the validation crops (LR 192x256 at x4)


@dataclass(frozen=True)
class Photo:
    name: str
    package: str  # Debian package, or "scikit-image"
    path: str  # file path, or the scikit-image data name
    author: str
    licence: str
    split: str  # "train" | "val"


def _mate(name, author, split="train"):
    return Photo(name, "mate-backgrounds", f"{MATE}/{name}.jpg", author, "GPL-2+", split)


def _lomiri(name, pkg, author, licence, split="train"):
    return Photo(name, pkg, f"{LOMIRI}/{name}.jpg", author, licence, split)


def _skimage(name, author, licence):
    return Photo(name, "scikit-image", name, author, licence, "train")


L16, L20 = "lomiri-wallpapers-16.04", "lomiri-wallpapers-20.04"
PHOTOS: tuple[Photo, ...] = (
    _mate("Aqua", "Charles Barbin"), _mate("Blinds", "Lennart Poettering"),
    _mate("Dune", "Marco Cogoni", "val"), _mate("FreshFlower", "Jens Ansorg"), _mate("Garden", "Charles Barbin"),
    _mate("GreenMeadow", "Timothy Schellhase", "val"), _mate("LadyBird", "Charles Barbin"),
    _mate("RainDrops", "blackcombwhistler07"), _mate("Storm", "Sergey Nazarov"),
    _mate("TwoWings", "Charles Barbin"), _mate("Wood", "Jean-François Fortin Tam"),
    _mate("YellowFlower", "Charles Barbin"),
    _lomiri("Bridge_by_Sander_Klootwijk", L16, "Sander Klootwijk", "CC-BY-SA-4.0"),
    _lomiri("Dragonfly_by_Bolly", L16, "Bolly", "CC-BY-SA-4.0"),
    _lomiri("Picture_0B_by_freespace", L16, 'Trevor "Freespace"', "CC-BY-4.0"),
    _lomiri("Picture_1A_by_freespace", L16, 'Trevor "Freespace"', "CC-BY-4.0", "val"),
    _lomiri("Wine_by_Jakkub_Mede", L16, "Jakub Mede", "CC-BY-4.0"),
    _lomiri("aitzgorri_by_Aitzol_Berasategi", L16, "Aitzol Berasategi", "CC-BY-4.0"),
    _lomiri("free_by_Peter_Nerlich", L16, "Peter Nerlich", "CC-BY-SA-4.0"),
    _lomiri("friends_by_Aitzol_Berasategi", L16, "Aitzol Berasategi", "CC-BY-4.0"),
    _lomiri("greentock_by_Peter_Nerlich", L16, "Peter Nerlich", "CC-BY-SA-4.0"),
    _lomiri("life_by_Aitzol_Berasategi", L16, "Aitzol Berasategi", "CC-BY-4.0", "val"),
    _lomiri("picosdeeuropa_by_Aitzol_Berasategi", L16, "Aitzol Berasategi", "CC-BY-4.0", "val"),
    _lomiri("seeding_by_Clements_Engelhardt", L16, "Clemens Engelhardt", "CC0-1.0"),
    _lomiri("sunset_by_Aitzol_Berasategi", L16, "Aitzol Berasategi", "CC-BY-4.0"),
    _lomiri("Kleiber_by_Lukas_Baubkus", L20, "Lukas Baubkus", "CC-BY-SA-3.0"),
    _skimage("chelsea", "Stefan van der Walt", "CC0"), _skimage("coffee", "Rachel Michetti", "CC0"),
    _skimage("rocket", "SpaceX", "public domain"),
)


def photos(split: str | None = None) -> list[Photo]:
    return [p for p in PHOTOS if split is None or p.split == split]


def _skimage_path(name: str) -> Path:
    import skimage

    return Path(skimage.__file__).parent / "data" / f"{name}.{'jpg' if name == 'rocket' else 'png'}"


def _source(p: Photo) -> Path:
    path = _skimage_path(p.path) if p.package == "scikit-image" else Path(p.path)
    if not path.is_file():
        hint = "pip install scikit-image" if p.package == "scikit-image" else f"apt-get install {p.package}"
        raise DataError(f"{path}: missing photo {p.name}; {hint}")
    return path


def centre_crop(rgb: np.ndarray, size=VAL_CROP) -> np.ndarray:
    h, w = min(size[0], rgb.shape[0]), min(size[1], rgb.shape[1])
    y, x = (rgb.shape[0] - h) // 2, (rgb.shape[1] - w) // 2
    return rgb[y:y + h, x:x + w]


def prepare(out) -> Path:
    """Lay out the zoo data set under `out` (see the module docstring); idempotent."""
    from .io import Image, read_image, write_image

    out = Path(out)
    (out / "train").mkdir(parents=True, exist_ok=True)
    (out / "val").mkdir(parents=True, exist_ok=True)
    for p in PHOTOS:
        src = _source(p)
        if p.split == "val":
            dst = out / "val" / f"{p.name}.png"
            if not dst.exists():
                write_image(dst, Image(np.ascontiguousarray(centre_crop(read_image(src).rgb)), None, 8, False, None, None, "RGB"))
        elif p.package == "scikit-image":
            dst = out / "train" / f"{p.name}.png"
            if not dst.exists():
                dst.write_bytes(src.read_bytes())
        else:
            dst = out / "train" / src.name
            if not dst.exists():
                dst.symlink_to(src)
    manifest = {"val_crop_hw": list(VAL_CROP), "photos": [asdict(p) for p in PHOTOS]}
    (out / "manifest.json").write_text(json.dumps(manifest, indent=2))
    return out
