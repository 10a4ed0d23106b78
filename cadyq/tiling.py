"""Cut an LR image into tiles and stitch the SR tiles back; the one implementation every backend uses.

Two protocols (the same tile interior, they differ only at the bottom/right border):

- ``shift`` (default): every tile is ``tile x tile``. Origins are 0, step, 2*step, ... with
  ``step = tile - overlap``; the last tile of a row/column is moved back so it ends exactly at the
  border. A dimension smaller than a tile is reflect-padded (at its end) up to the tile size. All
  tiles share one shape, so a static-shape engine runs every tile.
- ``official``: the CADyQ ``--test_patch`` geometry. Origins ``arange(0, max(size-tile, 0)+1, step)``;
  the last row/column tile runs to the border (``tile .. tile+step-1`` px), a dimension smaller than
  a tile is one tile of its own size.

Stitching keeps each tile's centre; every HR pixel comes from exactly one tile, nothing is averaged.
Along one dimension tile ``i`` owns HR ``[b_i, b_{i+1})`` with ``b_0 = 0`` and ``b_n = size*scale``:

- ``official``: ``b_i = o_i*scale + (overlap*scale)//2`` (the reference ``combine``).
- ``shift``: ``b_i = ((o_{i-1} + tile + o_i) * scale) // 2``, the middle of the actual overlap of
  tiles ``i-1`` and ``i``. For regular neighbours this equals the official boundary, i.e. interior
  sides drop ``overlap/2*scale`` HR px; the shifted last tile overlaps more, and the cut sits in
  the middle of that larger overlap. Equivalently, each HR pixel belongs to the tile whose centre
  is nearest (ties go to the later tile).

Odd overlaps are allowed: the boundary is then floored in HR pixels, so one side of a cut drops
half an HR pixel row more than the other when ``overlap*scale`` is odd.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Iterator

import torch

from .errors import ImageError, ModelError, TilingError
from .sizes import size_text

PROTOCOLS = ("shift", "official")


def _origins(size: int, tile: int, step: int, protocol: str) -> tuple[int, ...]:
    if protocol == "official":
        return tuple(range(0, max(size - tile, 0) + 1, step))
    size = max(size, tile)  # padded size
    return tuple(range(0, size - tile, step)) + (size - tile,)


def _extent(size: int, tile: int, protocol: str, shrink: bool) -> int:
    """The tile's extent along a dimension: `tile`, or the image's size where it is smaller and `shrink` is on."""
    return min(tile, size) if shrink and protocol == "shift" else tile


@dataclass(frozen=True)
class TileGrid:
    height: int  # LR image size
    width: int
    tile: int
    overlap: int
    protocol: str  # "shift" | "official"
    ys: tuple[int, ...]  # tile origins (in padded coordinates for shift)
    xs: tuple[int, ...]
    tile_h: int = 0  # the tile's height and width (0: `tile`); smaller than `tile` only for a shrunk strip
    tile_w: int = 0

    @property
    def extents(self) -> tuple[int, int]:
        return self.tile_h or self.tile, self.tile_w or self.tile

    @property
    def step(self) -> int:
        return self.tile - self.overlap

    @property
    def rows(self) -> int:
        return len(self.ys)

    @property
    def cols(self) -> int:
        return len(self.xs)

    @property
    def n_tiles(self) -> int:
        return self.rows * self.cols

    @property
    def padded_size(self) -> tuple[int, int]:
        if self.protocol == "shift":
            th, tw = self.extents
            return max(self.height, th), max(self.width, tw)
        return self.height, self.width

    def _sizes(self, origins: tuple[int, ...], size: int, extent: int) -> list[int]:
        if self.protocol == "shift":
            return [extent] * len(origins)
        return [self.tile] * (len(origins) - 1) + [size - origins[-1]]

    @property
    def tile_heights(self) -> list[int]:
        return self._sizes(self.ys, self.height, self.extents[0])

    @property
    def tile_widths(self) -> list[int]:
        return self._sizes(self.xs, self.width, self.extents[1])

    @property
    def boxes(self) -> list[tuple[int, int, int, int]]:
        """(y0, x0, th, tw) per tile, row-major."""
        hs, ws = self.tile_heights, self.tile_widths
        return [(y, x, h, w) for y, h in zip(self.ys, hs) for x, w in zip(self.xs, ws)]

    def tile_shape(self, i: int) -> tuple[int, int]:
        if not 0 <= i < self.n_tiles:
            raise IndexError(f"tile {i} out of range for a grid of {self.n_tiles} tiles")
        return self.tile_heights[i // self.cols], self.tile_widths[i % self.cols]

    def bounds(self, scale: int) -> tuple[list[int], list[int]]:
        """HR ownership boundaries per dimension: tile row r owns rows [by[r], by[r+1]), same for x."""
        th, tw = self.extents
        return (self._bounds(self.ys, self.height, scale, th), self._bounds(self.xs, self.width, scale, tw))

    def _bounds(self, origins: tuple[int, ...], size: int, scale: int, extent: int) -> list[int]:
        if self.protocol == "official":
            inner = [o * scale + self.overlap * scale // 2 for o in origins[1:]]
        else:
            inner = [(a + extent + b) * scale // 2 for a, b in zip(origins, origins[1:])]
        return [0] + inner + [size * scale]


def plan_tiles(height: int, width: int, tile: int = 96, overlap: int = 6, protocol: str = "shift",
               shrink: bool = False) -> TileGrid:
    """Plan the tiles of an LR image of ``height x width``; see the module docstring. shrink (shift protocol): a
    dimension smaller than the tile is not padded up to it; the tiles take the image's extent there (a 16-px
    strip runs as 16 x tile tiles, in proportion to its pixels)."""
    if protocol not in PROTOCOLS:
        raise TilingError(f"unknown tiling protocol {protocol!r}; use one of {', '.join(PROTOCOLS)}")
    if isinstance(tile, bool) or not isinstance(tile, int) or tile < 1:
        raise TilingError(f"tile size must be a positive integer, got {tile!r}; use e.g. --tile 96")
    if isinstance(overlap, bool) or not isinstance(overlap, int) or not 0 <= overlap < tile:
        raise TilingError(f"overlap must be an integer in [0, tile={tile}), got {overlap!r}; use e.g. "
                          f"--overlap {suggested_overlap(tile)}")
    if height < 1 or width < 1:
        raise ImageError(f"the image is empty ({size_text(height, width)}); pass an image of at least 1x1 pixels")
    step = tile - overlap
    th, tw = _extent(int(height), tile, protocol, shrink), _extent(int(width), tile, protocol, shrink)
    return TileGrid(int(height), int(width), tile, overlap, protocol, _origins(int(height), th, step, protocol),
                    _origins(int(width), tw, step, protocol), th if th != tile else 0, tw if tw != tile else 0)


def suggested_overlap(tile: int) -> int:
    """The default overlap (6 px), or as much of it as the step floor of `check_step` allows for this tile."""
    return min(6, max(tile, 0) // 2)


def check_step(tile: int, overlap: int) -> None:
    """Refuse an overlap of more than half the tile, for running (the geometry itself allows any overlap below the
    tile): each LR pixel then runs through more than 4 tiles, and a small tile with a large overlap (--tile 8
    --overlap 6: a step of 2 px, every pixel 16 times, tens of thousands of tiles a photo) runs for hours."""
    if 2 * overlap > tile:
        step = tile - overlap
        raise TilingError(f"--tile {tile} with --overlap {overlap} starts a tile every {step} px, so each LR pixel "
                          f"runs through about {round((tile / step) ** 2)} tiles; the overlap can be at most half the "
                          f"tile: use --overlap {suggested_overlap(tile)} or less"
                          + ("" if tile >= 12 else " (or a larger --tile: the default 96 with --overlap 6)"))


def _reflect_index(size: int, n: int, device) -> torch.Tensor:
    """Indices [0, n) reflected into [0, size) (no edge repeat); repeats the reflection when n > 2*size-1."""
    i = torch.arange(n, device=device)
    if size == 1:
        return torch.zeros_like(i)
    period = 2 * (size - 1)
    m = i % period
    return torch.where(m < size, m, period - m)


def _pad(image: torch.Tensor, grid: TileGrid) -> torch.Tensor:
    ph, pw = grid.padded_size
    if (ph, pw) == (grid.height, grid.width):
        return image
    # Indexing instead of F.pad: works for any dtype and for pads larger than the image (1x1 input).
    if ph != grid.height:
        image = image.index_select(-2, _reflect_index(grid.height, ph, image.device))
    if pw != grid.width:
        image = image.index_select(-1, _reflect_index(grid.width, pw, image.device))
    return image


def iter_batches(image: torch.Tensor, grid: TileGrid, batch: int) -> Iterator[tuple[list[int], torch.Tensor]]:
    """Yield ``(tile indices, tiles [n, C, th, tw])``, at most ``batch`` tiles of one shape each.

    Tiles are sliced per batch, so memory stays bounded by one batch. The official protocol groups
    tiles by shape (groups in order of first appearance, row-major order within a group).
    """
    if image.dim() != 3:
        raise ImageError(f"expected an image tensor [C, H, W], got shape {tuple(image.shape)}")
    if tuple(image.shape[-2:]) != (grid.height, grid.width):
        raise ImageError(f"the image is {size_text(*image.shape[-2:])} but the tile grid was planned "
                         f"for {size_text(grid.height, grid.width)}; plan the grid from this image's size")
    if batch < 1:
        raise TilingError(f"batch must be >= 1, got {batch}")
    src = _pad(image, grid)
    boxes = grid.boxes
    groups: dict[tuple[int, int], list[int]] = {}
    for i, (_, _, h, w) in enumerate(boxes):
        groups.setdefault((h, w), []).append(i)
    for idx in groups.values():
        for k in range(0, len(idx), batch):
            chunk = idx[k:k + batch]
            tiles = torch.stack([src[:, y:y + h, x:x + w] for y, x, h, w in (boxes[i] for i in chunk)])
            yield chunk, tiles


class Stitcher:
    """Collects SR tiles into the SR image, keeping each tile's owned centre region."""

    def __init__(self, grid: TileGrid, scale: int, channels: int = 3, dtype=torch.float32, device="cpu"):
        if isinstance(scale, bool) or not isinstance(scale, int) or scale < 1:
            raise TilingError(f"scale must be a positive integer, got {scale!r}")
        self.grid, self.scale = grid, scale
        self.out = torch.zeros(channels, grid.height * scale, grid.width * scale, dtype=dtype, device=device)
        self.done = torch.zeros(grid.n_tiles, dtype=torch.bool)
        by, bx = grid.bounds(scale)
        # (dst_lo, dst_hi, src_lo) per row / column
        self._ry = [(by[r], by[r + 1], by[r] - o * scale) for r, o in enumerate(grid.ys)]
        self._rx = [(bx[c], bx[c + 1], bx[c] - o * scale) for c, o in enumerate(grid.xs)]

    def add(self, indices: list[int], sr_tiles: torch.Tensor) -> None:
        """Place SR tiles ``[n, C, th*s, tw*s]`` (any device/dtype) for the tiles ``indices``."""
        g, s = self.grid, self.scale
        if sr_tiles.dim() != 4 or sr_tiles.shape[0] != len(indices):
            raise ModelError(f"expected SR tiles [{len(indices)}, C, H, W] for {len(indices)} tile indices, "
                             f"got shape {tuple(sr_tiles.shape)}")
        sr_tiles = sr_tiles.to(device=self.out.device, dtype=self.out.dtype)
        for k, i in enumerate(indices):
            th, tw = g.tile_shape(i)
            want = (self.out.shape[0], th * s, tw * s)
            if tuple(sr_tiles.shape[1:]) != want:
                raise ModelError(f"SR tile {i} has shape {tuple(sr_tiles.shape[1:])}, expected {want} "
                                 f"(LR tile {size_text(th, tw)} at x{s}); check that the model's scale matches --scale")
            if self.done[i]:
                raise RuntimeError(f"tile {i} was added twice")
            (y0, y1, sy), (x0, x1, sx) = self._ry[i // g.cols], self._rx[i % g.cols]
            self.out[:, y0:y1, x0:x1] = sr_tiles[k, :, sy:sy + y1 - y0, sx:sx + x1 - x0]
            self.done[i] = True

    def result(self) -> torch.Tensor:
        """The SR image [C, H*s, W*s]; raises if some tile was never added."""
        if not bool(self.done.all()):
            missing = (~self.done).nonzero().flatten().tolist()
            raise RuntimeError(f"{len(missing)} of {self.grid.n_tiles} tiles were never added (first: {missing[:8]})")
        return self.out


def tile_map(grid: TileGrid, values: torch.Tensor) -> torch.Tensor:
    """Per-tile values [n_tiles, ...] (row-major tile order) -> [rows, cols, ...]."""
    if values.shape[0] != grid.n_tiles:
        raise ValueError(f"expected {grid.n_tiles} per-tile values, got {values.shape[0]}")
    return values.reshape(grid.rows, grid.cols, *values.shape[1:])
