"""Training data: random LR/HR patch pairs from DIV2K or from a plain folder of HR images.

Layouts (see `cadyq.data.layouts`): `DIV2K/DIV2K_train_HR` + `DIV2K_train_LR_bicubic/X<s>/NNNNx<s>.png`
(the root may be the DIV2K folder or DIV2K_train_HR itself), any other layout `find_pairs` knows,
or a plain folder of HR images whose LR is made by MATLAB-compatible bicubic downscaling.

Sampling is a pure function of (seed, sample index): sample i draws its image, crop position and
flips from `np.random.default_rng([seed, i])`. So batches do not depend on the number of worker
processes or on where a run was resumed, and rank r of a world of W takes samples
`k*B + r*B/W ... k*B + (r+1)*B/W - 1` of the global batch k of size B (DistributedSampler-style
sharding of the same stream one process would see).

Decoded images are cached so epochs do not re-decode files: "memory" (decoded once, shared with
forked workers), "npy" (decoded once into a cache folder of .npy files, memory-mapped) or "none"
(decoded per sample; generated LR is then made from the HR crop plus a margin, which gives the same
pixels as downscaling the whole image)."""
from __future__ import annotations

import hashlib
import os
import signal
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterator

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset, Sampler

from ..errors import DataError
from .io import read_image
from .layouts import Pair, find_pairs, load_pair
from .resize import bicubic_downscale, mod_crop

CACHES = ("memory", "npy", "none")


@dataclass(frozen=True)
class TrainDataConfig:
    root: str
    scale: int = 4
    patch: int = 48  # LR patch; the HR patch is patch * scale
    augment: bool = True  # hflip, vflip, transpose, each with p = 0.5
    cache: str = "memory"  # "memory" | "npy" | "none"
    cache_dir: str | None = None  # for cache="npy" (default: <root>/.cadyq_cache)
    seed: int = 0


def find_train_pairs(root, scale: int) -> list[Pair]:
    """HR/LR pairs for training. A DIV2K folder gives its training split (DIV2K_train_HR)."""
    root = Path(root)
    if (root / "DIV2K_train_HR").is_dir():
        root = root / "DIV2K_train_HR"
    return find_pairs(root, scale)


def _rgb8(rgb: np.ndarray) -> np.ndarray:
    return rgb if rgb.dtype == np.uint8 else np.rint(rgb / 257.0).astype(np.uint8)


def _cache_key(pair: Pair, scale: int) -> str:
    h = hashlib.sha1()
    for p in (pair.hr, pair.lr):
        if p is not None:
            st = Path(p).stat()
            h.update(f"{Path(p).resolve()}|{st.st_size}|{st.st_mtime_ns}|".encode())
    h.update(f"x{scale}".encode())
    return f"{pair.name}-{h.hexdigest()[:16]}"


def _save_npy(path: Path, a: np.ndarray) -> None:
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    with open(tmp, "wb") as f:
        np.save(f, a)
    os.replace(tmp, path)


def augment(lr: np.ndarray, hr: np.ndarray, flags) -> tuple[np.ndarray, np.ndarray]:
    """Apply (hflip, vflip, transpose) to HxWxC arrays."""
    hflip, vflip, transpose = flags
    if hflip:
        lr, hr = lr[:, ::-1], hr[:, ::-1]
    if vflip:
        lr, hr = lr[::-1], hr[::-1]
    if transpose:
        lr, hr = lr.transpose(1, 0, 2), hr.transpose(1, 0, 2)
    return lr, hr


def _chw(a: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(np.array(a.transpose(2, 0, 1), order="C"))  # a writable copy (caches are read-only)


class SRTrainDataset(Dataset):
    """Map-style dataset over the infinite stream of random patches: item i is sample i.

    Items are (lr uint8 [3, p, p], hr uint8 [3, p*s, p*s]) tensors."""

    def __init__(self, config: TrainDataConfig, pairs: list[Pair] | None = None,
                 progress: Callable[[Iterator], Iterator] | None = None):
        if config.cache not in CACHES:
            raise DataError(f"unknown cache {config.cache!r}; choose one of {', '.join(CACHES)}")
        if config.patch < 1 or config.scale < 1:
            raise DataError(f"patch ({config.patch}) and scale ({config.scale}) must be positive")
        self.config = config
        if pairs is None:
            from .photos import refuse_report

            refuse_report(config.root, use="train on")
        self.pairs = list(pairs) if pairs is not None else find_train_pairs(config.root, config.scale)
        if not self.pairs:
            raise DataError(f"{config.root}: no training images")
        self._images: list[tuple[np.ndarray, np.ndarray]] | None = None
        if config.cache != "none":
            it = iter(self.pairs)
            self._images = [self._cached(p) for p in (progress(it) if progress else it)]
            for p, (lr, _) in zip(self.pairs, self._images):
                self._check_size(p, lr.shape)

    def __len__(self) -> int:
        """The number of images (the sample stream itself is unbounded)."""
        return len(self.pairs)

    def _check_size(self, pair: Pair, lr_shape) -> None:
        p = self.config.patch
        if lr_shape[0] < p or lr_shape[1] < p:
            raise DataError(f"{pair.hr}: its LR image is {lr_shape[1]}x{lr_shape[0]}, smaller than the {p}-px "
                            f"training patch; remove it or pass a smaller --patch")

    def _cached(self, pair: Pair) -> tuple[np.ndarray, np.ndarray]:
        s = self.config.scale
        if self.config.cache == "memory":
            return load_pair(pair, s)
        cache_dir = Path(self.config.cache_dir or Path(self.config.root) / ".cadyq_cache")
        cache_dir.mkdir(parents=True, exist_ok=True)
        key = _cache_key(pair, s)
        f_lr, f_hr = cache_dir / f"{key}_lr.npy", cache_dir / f"{key}_hr.npy"
        if not (f_lr.is_file() and f_hr.is_file()):
            lr, hr = load_pair(pair, s)
            _save_npy(f_hr, hr)
            _save_npy(f_lr, lr)
        return np.load(f_lr, mmap_mode="r"), np.load(f_hr, mmap_mode="r")

    def sample_params(self, index: int, sizes: Callable[[int], tuple[int, int]]):
        """(image, y, x, flags) of sample `index`; `sizes(image)` gives the LR (h, w)."""
        rng = np.random.default_rng([self.config.seed, int(index)])
        img = int(rng.integers(len(self.pairs)))
        h, w = sizes(img)
        p = self.config.patch
        y, x = int(rng.integers(h - p + 1)), int(rng.integers(w - p + 1))
        flags = tuple(bool(f) for f in rng.random(3) < 0.5) if self.config.augment else (False,) * 3
        return img, y, x, flags

    def __getitem__(self, index: int) -> tuple[torch.Tensor, torch.Tensor]:
        s, p = self.config.scale, self.config.patch
        if self._images is not None:
            img, y, x, flags = self.sample_params(index, lambda i: self._images[i][0].shape[:2])
            lr_full, hr_full = self._images[img]
            lr = lr_full[y:y + p, x:x + p]
            hr = hr_full[y * s:(y + p) * s, x * s:(x + p) * s]
        else:
            lr, hr, flags = self._uncached(index)
        lr, hr = augment(np.asarray(lr), np.asarray(hr), flags)
        return _chw(lr), _chw(hr)

    def _uncached(self, index: int):
        s, p = self.config.scale, self.config.patch
        decoded: dict[int, np.ndarray] = {}

        def sizes(i):
            pair = self.pairs[i]
            decoded[i] = np.ascontiguousarray(mod_crop(_rgb8(read_image(pair.hr).rgb), s))
            hh, ww = decoded[i].shape[0] // s, decoded[i].shape[1] // s
            self._check_size(pair, (hh, ww))
            return hh, ww

        img, y, x, flags = self.sample_params(index, sizes)
        pair, hr_full = self.pairs[img], decoded[img]
        hr = hr_full[y * s:(y + p) * s, x * s:(x + p) * s]
        if pair.lr is not None:
            lr_full = _rgb8(read_image(pair.lr).rgb)
            if lr_full.shape[:2] != (hr_full.shape[0] // s, hr_full.shape[1] // s):
                lr_full = load_pair(pair, s)[0]  # raises the layout module's explanation
            lr = lr_full[y:y + p, x:x + p]
        else:
            lr = downscale_crop(hr_full, s, y, x, p)
        return lr, hr, flags


def downscale_crop(hr: np.ndarray, scale: int, y: int, x: int, patch: int) -> np.ndarray:
    """`bicubic_downscale(hr, scale)[y:y+patch, x:x+patch]` computed from an HR crop with a margin
    of 3*scale px (the bicubic kernel reaches 2*scale + 1 px), so the result is the same pixels."""
    m = 3 * scale
    h, w = hr.shape[:2]
    y0, x0 = max(y * scale - m, 0), max(x * scale - m, 0)
    y1, x1 = min((y + patch) * scale + m, h), min((x + patch) * scale + m, w)
    lr = bicubic_downscale(np.ascontiguousarray(hr[y0:y1, x0:x1]), scale)
    oy, ox = y - y0 // scale, x - x0 // scale
    return lr[oy:oy + patch, ox:ox + patch]


class StreamBatchSampler(Sampler[list[int]]):
    """Batches of sample indices for iterations [start, stop): this rank's share of each global batch."""

    def __init__(self, batch: int, start: int, stop: int, rank: int = 0, world: int = 1):
        if batch % world:
            raise DataError(f"the batch ({batch}) must be divisible by the number of processes ({world})")
        self.batch, self.start, self.stop, self.rank, self.world = batch, start, stop, rank, world
        self.local = batch // world

    def __iter__(self) -> Iterator[list[int]]:
        for k in range(self.start, self.stop):
            first = k * self.batch + self.rank * self.local
            yield list(range(first, first + self.local))

    def __len__(self) -> int:
        return max(self.stop - self.start, 0)


def _worker_init(_):
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C is handled by the main process
    torch.set_num_threads(1)


def make_loader(dataset: SRTrainDataset, batch: int, start: int, stop: int, rank: int = 0, world: int = 1,
                workers: int = 0, pin_memory: bool = False) -> DataLoader:
    """DataLoader of iterations [start, stop) (resume = start at the saved iteration)."""
    return DataLoader(dataset, batch_sampler=StreamBatchSampler(batch, start, stop, rank, world),
                      num_workers=workers, pin_memory=pin_memory, worker_init_fn=_worker_init if workers else None,
                      persistent_workers=False, prefetch_factor=4 if workers else None)
