"""The real photographs of cadyq's zoo, from Debian packages and scikit-image, as plain data: what it trains on, what
decides, and what is only reported.

Three sets, kept apart:

- **train** (`split="train"`): the photos the zoo trains on. `apt-get install mate-backgrounds lomiri-wallpapers-16.04
  lomiri-wallpapers-20.04` (scikit-image comes with the `dev` extra; its Middlebury motorcycle is left out for its
  terms).
- **decision** (`split="decision"`, `DECISION`): photographs no model trains on, on which every choice is made: which
  run and which iteration ships, which anneal is kept, where selectors are cut, which model is the default. The zoo's
  5 original held-out photos (chosen before any training, as the most detailed of the training packages) and 17
  photographs of packages the zoo does not train on: `apt-get install lxqt-themes palapeli-data sddm-theme-maldives`.
- **report** (`REPORT`): the photographs among KDE's plasma-workspace-wallpapers (`apt-get install
  plasma-workspace-wallpapers`). They are only ever reported: no training, validation, selection, cut or default
  reads them (`refuse_report` refuses them; tests/test_photo_sets.py checks the decision code paths).

Only photographs are listed; renders and abstract art are left out (umang, analogpattern, every ukui-wallpapers,
gnome-backgrounds, sway-backgrounds and lomiri 20.04 wallpaper but Kleiber, LXQt's origami/triangles/waves/plasma
drawings, the Maldives screenshot). The photos are read from where the packages install them, never copied into the
repository.

`prepare(out)` lays out `out/train/` (links to the training photos, PNG copies of the scikit-image ones),
`out/decision/` (a fixed centre crop of each decision photo, PNG) and `out/manifest.json` (every file, its package,
author and licence). `prepare_report(out)` lays out the report set the same way in a folder of its own, marked as
the report set (`REPORT_MARKER`).
"""
from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from ..errors import DataError

MATE = "/usr/share/backgrounds/mate/nature"
LOMIRI = "/usr/share/backgrounds"
LXQT = "/usr/share/lxqt/wallpapers"
PALAPELI = "/usr/share/palapeli/collection"
KDE = "/usr/share/wallpapers"
VAL_CROP = (768, 1024)  # HR height, width of the decision and report crops (LR 192x256 at x4)
DECISION_DIR = "/work/data/zoo/decision"  # where `prepare("/work/data/zoo")` puts the decision set
REPORT_DIR = "/work/data/report"  # where `prepare_report()` puts the report set
REPORT_MARKER = "REPORT_SET"  # a file in a prepared report folder: decision code refuses such a folder


@dataclass(frozen=True)
class Photo:
    name: str
    package: str  # Debian package, or "scikit-image"
    path: str  # file path, or the scikit-image data name
    author: str
    licence: str
    split: str  # "train" | "decision" | "report"


def _mate(name, author, split="train"):
    return Photo(name, "mate-backgrounds", f"{MATE}/{name}.jpg", author, "GPL-2+", split)


def _lomiri(name, pkg, author, licence, split="train"):
    return Photo(name, pkg, f"{LOMIRI}/{name}.jpg", author, licence, split)


def _skimage(name, author, licence):
    return Photo(name, "scikit-image", name, author, licence, "train")


def _lxqt(file, author):
    return Photo(file.rsplit(".", 1)[0], "lxqt-themes", f"{LXQT}/{file}", author, "CC-BY-SA-3.0", "decision")


def _palapeli(name, author, licence):
    return Photo(name, "palapeli-data", f"{PALAPELI}/{name}.jpg", author, licence, "decision")


def _kde(name, author):
    return Photo(name, "plasma-workspace-wallpapers", f"{KDE}/{name}/contents/images/2560x1600.jpg", author, "LGPL-3",
                 "report")


L16, L20 = "lomiri-wallpapers-16.04", "lomiri-wallpapers-20.04"
PHOTOS: tuple[Photo, ...] = (
    _mate("Aqua", "Charles Barbin"), _mate("Blinds", "Lennart Poettering"),
    _mate("Dune", "Marco Cogoni", "decision"), _mate("FreshFlower", "Jens Ansorg"), _mate("Garden", "Charles Barbin"),
    _mate("GreenMeadow", "Timothy Schellhase", "decision"), _mate("LadyBird", "Charles Barbin"),
    _mate("RainDrops", "blackcombwhistler07"), _mate("Storm", "Sergey Nazarov"),
    _mate("TwoWings", "Charles Barbin"), _mate("Wood", "Jean-François Fortin Tam"),
    _mate("YellowFlower", "Charles Barbin"),
    _lomiri("Bridge_by_Sander_Klootwijk", L16, "Sander Klootwijk", "CC-BY-SA-4.0"),
    _lomiri("Dragonfly_by_Bolly", L16, "Bolly", "CC-BY-SA-4.0"),
    _lomiri("Picture_0B_by_freespace", L16, 'Trevor "Freespace"', "CC-BY-4.0"),
    _lomiri("Picture_1A_by_freespace", L16, 'Trevor "Freespace"', "CC-BY-4.0", "decision"),
    _lomiri("Wine_by_Jakkub_Mede", L16, "Jakub Mede", "CC-BY-4.0"),
    _lomiri("aitzgorri_by_Aitzol_Berasategi", L16, "Aitzol Berasategi", "CC-BY-4.0"),
    _lomiri("free_by_Peter_Nerlich", L16, "Peter Nerlich", "CC-BY-SA-4.0"),
    _lomiri("friends_by_Aitzol_Berasategi", L16, "Aitzol Berasategi", "CC-BY-4.0"),
    _lomiri("greentock_by_Peter_Nerlich", L16, "Peter Nerlich", "CC-BY-SA-4.0"),
    _lomiri("life_by_Aitzol_Berasategi", L16, "Aitzol Berasategi", "CC-BY-4.0", "decision"),
    _lomiri("picosdeeuropa_by_Aitzol_Berasategi", L16, "Aitzol Berasategi", "CC-BY-4.0", "decision"),
    _lomiri("seeding_by_Clements_Engelhardt", L16, "Clemens Engelhardt", "CC0-1.0"),
    _lomiri("sunset_by_Aitzol_Berasategi", L16, "Aitzol Berasategi", "CC-BY-4.0"),
    _lomiri("Kleiber_by_Lukas_Baubkus", L20, "Lukas Baubkus", "CC-BY-SA-3.0"),
    _skimage("chelsea", "Stefan van der Walt", "CC0"), _skimage("coffee", "Rachel Michetti", "CC0"),
    _skimage("rocket", "SpaceX", "public domain"),
    # decision photos from packages the zoo does not train on
    _lxqt("Butterfly-Kenneth-Wimer.jpg", "Kenneth Wimer"), _lxqt("Valendas.png", "LXQt Project Team"),
    _lxqt("after-the-rain.jpg", "stefonarch"), _lxqt("appleflower.png", "stefonarch"),
    _lxqt("beam.png", "stefonarch"), _lxqt("butterfly.png", "stefonarch"), _lxqt("cloud.png", "LXQt Project Team"),
    _lxqt("drop.png", "stefonarch"), _lxqt("flowers.png", "stefonarch"), _lxqt("fog.jpg", "stefonarch"),
    _lxqt("this-is-not-windows.jpg", "stefonarch"),
    _palapeli("castle-maintenon", "Eric Pouhier", "GFDL"), _palapeli("cincinnati-bridge", "Derek Jensen", "public domain"),
    _palapeli("citrus-fruits", "US Department of Agriculture", "public domain"),
    _palapeli("european-honey-bee", "John Severns", "public domain"),
    _palapeli("panther-chameleon-female", "B. Navez and others", "GFDL"),
    Photo("maldives", "sddm-theme-maldives", "/usr/share/sddm/themes/maldives/background.jpg", "Nevit Dilmen",
          "CC-BY-3.0", "decision"),
)

# The report set: KDE's photographs (its renders and drawings left out), 2560x1600 JPEG. Only ever reported.
REPORT: tuple[Photo, ...] = (
    _kde("BytheWater", "Maciej Wiklo"), _kde("ColdRipple", "Risto Saukonpää"), _kde("ColorfulCups", "Dmitri Popov"),
    _kde("EveningGlow", "Ian Hex"), _kde("FallenLeaf", "Martin Klapetek"), _kde("Grey", "Sigi Sagi"),
    _kde("OneStandsOut", "Risto Saukonpää"), _kde("Path", "Risto Saukonpää"),
)
DECISION: tuple[Photo, ...] = tuple(p for p in PHOTOS if p.split == "decision")


def photos(split: str | None = None) -> list[Photo]:
    """The photos of one split ("train", "decision", "report"), or of the zoo (train and decision) with None."""
    if split == "report":
        return list(REPORT)
    return [p for p in PHOTOS if split is None or p.split == split]


def is_report(path) -> bool:
    """Whether `path` (a file or a folder) is, or holds, the report set: a folder that `prepare_report` marked, a file
    in one, a file of KDE's wallpapers, or a folder holding half or more of the report photos by name (an older
    layout, such as benchmarks/eval_independent.sh's before issue 37)."""
    path = Path(path).resolve()
    folder = path if path.is_dir() else path.parent
    if (folder / REPORT_MARKER).exists() or Path(KDE).resolve() in (path, *path.parents):
        return True
    if not folder.is_dir():
        return False
    names = {p.name for p in REPORT}
    return 2 * sum(f.stem in names for f in folder.iterdir()) >= len(names)


def refuse_report(*paths, use: str = "decide on") -> None:
    """Refuse the report set where it would train, tune or decide (training data, validation that picks a run,
    calibration, cuts, defaults): one DataError naming the decision set to use instead."""
    for path in paths:
        if path is not None and is_report(path):
            raise DataError(f"{path}: this is the report set (KDE's photos), which is only ever reported, never used "
                            f"to {use.replace(' on', '')}; use the decision set ({DECISION_DIR}, laid out by "
                            f"`cadyq.data.photos.prepare`) or photos of your own")


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


def _crop(src: Path, dst: Path) -> None:
    from .io import Image, read_image, write_image

    if not dst.exists():
        write_image(dst, Image(np.ascontiguousarray(centre_crop(read_image(src).rgb)), None, 8, False, None, None, "RGB"))


def prepare(out) -> Path:
    """Lay out the zoo data set (train and decision) under `out` (see the module docstring); idempotent."""
    out = Path(out)
    (out / "train").mkdir(parents=True, exist_ok=True)
    (out / "decision").mkdir(parents=True, exist_ok=True)
    for p in PHOTOS:
        src = _source(p)
        if p.split == "decision":
            _crop(src, out / "decision" / f"{p.name}.png")
        elif p.package == "scikit-image":
            dst = out / "train" / f"{p.name}.png"
            if not dst.exists():
                dst.write_bytes(src.read_bytes())
        else:
            dst = out / "train" / src.name
            if not dst.exists():
                dst.symlink_to(src)
    manifest = {"crop_hw": list(VAL_CROP), "photos": [asdict(p) for p in PHOTOS]}
    (out / "manifest.json").write_text(json.dumps(manifest, indent=2))
    return out


def prepare_report(out=REPORT_DIR) -> Path:
    """Lay out the report set in `out`: a centre crop of each KDE photograph (PNG), its manifest, and the marker that
    makes decision code refuse the folder; idempotent."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    (out / REPORT_MARKER).write_text("cadyq's report set: only ever reported, never used to train, tune or decide.\n")
    for p in REPORT:
        _crop(_source(p), out / f"{p.name}.png")
    (out / "manifest.json").write_text(json.dumps({"crop_hw": list(VAL_CROP), "photos": [asdict(p) for p in REPORT]},
                                                  indent=2))
    return out
