import itertools
import re

import numpy as np
import pytest
import torch

from cadyq.errors import CadyqError, ImageError, ModelError, TilingError
from cadyq.tiling import Stitcher, TileGrid, check_step, iter_batches, plan_tiles, tile_map

SIZES = [(1, 1), (5, 7), (1, 200), (95, 96), (96, 96), (97, 200), (185, 186), (186, 97), (300, 451)]


def nearest(tiles, s):
    return tiles.repeat_interleave(s, -1).repeat_interleave(s, -2)


def run_tiled(img, grid, scale, batch, model, dtype=torch.float32):
    st = Stitcher(grid, scale, channels=img.shape[0], dtype=dtype)
    for idx, tiles in iter_batches(img, grid, batch):
        assert len(idx) <= batch
        st.add(idx, model(tiles, idx))
    return st.result()


def index_model(scale):
    """A 'model' whose output pixels all hold the tile's index."""
    def f(tiles, idx):
        n, c, h, w = tiles.shape
        return torch.tensor(idx, dtype=torch.float32).view(n, 1, 1, 1).expand(n, c, h * scale, w * scale)
    return f


@pytest.mark.parametrize("protocol", ["shift", "official"])
@pytest.mark.parametrize("scale", [2, 3, 4])
def test_nearest_model_is_exact(protocol, scale):
    g = torch.Generator().manual_seed(scale)
    for (h, w), batch in zip(SIZES, itertools.cycle([1, 3, 7, 64])):
        img = torch.randint(0, 256, (3, h, w), generator=g, dtype=torch.uint8)
        grid = plan_tiles(h, w, protocol=protocol)
        out = run_tiled(img, grid, scale, batch, lambda t, _: nearest(t, scale), dtype=torch.uint8)
        assert out.shape == (3, h * scale, w * scale)
        assert torch.equal(out, nearest(img, scale)), (h, w, batch)


@pytest.mark.parametrize("tile,overlap", [(96, 6), (32, 0), (16, 5), (17, 4), (8, 7)])
def test_nearest_model_other_tilings(tile, overlap):
    img = torch.rand(2, 61, 47, generator=torch.Generator().manual_seed(tile))
    for protocol, scale in itertools.product(["shift", "official"], [1, 3]):
        grid = plan_tiles(61, 47, tile, overlap, protocol)
        out = run_tiled(img, grid, scale, 5, lambda t, _: nearest(t, scale))
        assert torch.equal(out, nearest(img, scale)), (protocol, scale)


def nearest_centre_owner(origins, tile, n_hr, scale):
    # Independent oracle for `shift`: HR pixel belongs to the tile whose centre is nearest (ties -> later).
    centres = (np.asarray(origins) + tile / 2) * scale
    d = np.abs(np.arange(n_hr)[:, None] + 0.5 - centres[None, :])
    return len(origins) - 1 - np.argmin(d[:, ::-1], axis=1)


@pytest.mark.parametrize("scale", [2, 3, 4])
@pytest.mark.parametrize("size", [(300, 451), (97, 200), (185, 186), (40, 250)])
def test_shift_ownership(size, scale):
    h, w = size
    grid = plan_tiles(h, w)
    out = run_tiled(torch.zeros(1, h, w), grid, scale, 4, index_model(scale))[0].long().numpy()
    ry = nearest_centre_owner(grid.ys, grid.tile, h * scale, scale)
    rx = nearest_centre_owner(grid.xs, grid.tile, w * scale, scale)
    np.testing.assert_array_equal(out, ry[:, None] * grid.cols + rx[None, :])
    # regular interior cuts drop exactly overlap/2*s HR px on each side
    by, bx = grid.bounds(scale)
    for origins, b in ((grid.ys, by), (grid.xs, bx)):
        for i in range(1, len(origins)):
            if origins[i] - origins[i - 1] == grid.step:
                assert b[i] == (origins[i - 1] + grid.tile) * scale - 3 * scale
                assert b[i] == origins[i] * scale + 3 * scale


def test_shift_geometry():
    g = plan_tiles(510, 339)
    assert g.ys == (0, 90, 180, 270, 360, 414) and g.xs == (0, 90, 180, 243)
    assert (g.rows, g.cols, g.n_tiles, g.padded_size) == (6, 4, 24, (510, 339))
    assert all(b[2:] == (96, 96) for b in g.boxes)
    g = plan_tiles(186, 96)
    assert g.ys == (0, 90) and g.xs == (0,)
    g = plan_tiles(1, 97)
    assert g.ys == (0,) and g.xs == (0, 1) and g.padded_size == (96, 97)
    # the shifted last tile overlaps 95 px; the cut is in its middle: (0 + 96 + 1) * s // 2
    assert g.bounds(4)[1] == [0, 194, 388]


def test_shift_interior_tile_keeps_centre():
    # Interior tile drops 3s HR px on each side; border tiles keep their border side.
    s = 4
    grid = plan_tiles(276, 276)  # origins 0, 90, 180: no shifted tile
    assert grid.ys == (0, 90, 180)
    out = run_tiled(torch.zeros(1, 276, 276), grid, s, 9, index_model(s))[0]
    rows = (out[:, 0] == 0).sum().item(), (out[:, 0] == 3).sum().item(), (out[:, 0] == 6).sum().item()
    assert rows == ((96 - 3) * s, 90 * s, (96 - 3) * s)
    centre = (out == 4).nonzero()
    assert centre[:, 0].min() == (90 + 3) * s and centre[:, 0].max() == (186 - 3) * s - 1


def reference_combine(sr_tiles, grid, scale):
    """Transliteration of the official CADyQ `combine` (per dimension), with a coverage count."""
    s = int((grid.tile - grid.step) / 2 * scale)
    H, W = grid.height * scale, grid.width * scale
    canvas, count = torch.zeros(sr_tiles[0].shape[0], H, W), torch.zeros(H, W)

    def spans(n, size):
        for i in range(n):
            x0 = i * grid.step * scale
            if n == 1:
                yield slice(0, size), slice(None)
            elif i == 0:
                yield slice(x0, x0 + s + grid.step * scale), slice(None, s + grid.step * scale)
            elif i == n - 1:
                yield slice(x0 + s, size), slice(s, None)
            else:
                yield slice(x0 + s, x0 + s + grid.step * scale), slice(s, s + grid.step * scale)

    k = 0
    for dy, sy in spans(grid.rows, H):
        for dx, sx in spans(grid.cols, W):
            canvas[:, dy, dx] += sr_tiles[k][:, sy, sx]
            count[dy, dx] += 1
            k += 1
    assert torch.all(count == 1)
    return canvas


@pytest.mark.parametrize("size", [(510, 339), (96, 300), (40, 50), (275, 186)])
def test_official_matches_reference_combine(size):
    h, w, s = *size, 2
    grid = plan_tiles(h, w, protocol="official")
    sr = {}
    def model(t, idx):
        return sr.setdefault(tuple(idx), torch.rand(t.shape[0], 3, t.shape[2] * s, t.shape[3] * s))

    ours = run_tiled(torch.zeros(3, h, w), grid, s, 3, model)
    tiles = [None] * grid.n_tiles
    for idx, t in sr.items():
        for i, ti in zip(idx, t):
            tiles[i] = ti
    assert torch.equal(ours, reference_combine(tiles, grid, s))


def test_official_geometry():
    g = plan_tiles(510, 339, protocol="official")
    assert g.ys == (0, 90, 180, 270, 360) and g.xs == (0, 90, 180)
    assert (g.rows, g.cols, g.n_tiles) == (5, 3, 15)
    assert g.tile_shape(0) == (96, 96) and g.tile_shape(2) == (96, 159) and g.tile_shape(14) == (150, 159)
    assert g.padded_size == (510, 339)
    for n in range(96, 500):
        g = plan_tiles(n, 50, protocol="official")
        assert 96 <= g.tile_heights[-1] <= 185 and g.ys[-1] + g.tile_heights[-1] == n
        assert g.tile_widths == [50]
    assert plan_tiles(185, 185, protocol="official").n_tiles == 1
    assert plan_tiles(186, 186, protocol="official").n_tiles == 4


def test_official_batches_group_by_shape():
    g = plan_tiles(300, 200, protocol="official")  # 3x2 tiles: heights 96,96,120; widths 96,110
    got = [(idx, tuple(t.shape[2:])) for idx, t in iter_batches(torch.zeros(3, 300, 200), g, 3)]
    assert got == [([0, 2], (96, 96)), ([1, 3], (96, 110)), ([4], (120, 96)), ([5], (120, 110))]
    got = [idx for idx, _ in iter_batches(torch.zeros(3, 300, 200), g, 1)]
    assert got == [[0], [2], [1], [3], [4], [5]]


def test_batches_content_and_bounds():
    img = torch.arange(3 * 200 * 250, dtype=torch.int32).view(3, 200, 250)
    g = plan_tiles(200, 250)
    seen = []
    for idx, tiles in iter_batches(img, g, 4):
        assert 1 <= len(idx) <= 4 and tiles.shape == (len(idx), 3, 96, 96) and tiles.dtype == torch.int32
        for i, t in zip(idx, tiles):
            y, x, h, w = g.boxes[i]
            assert torch.equal(t, img[:, y:y + h, x:x + w])
        seen += idx
    assert seen == list(range(g.n_tiles))


def test_small_image_reflect_padding():
    img = torch.arange(5 * 7, dtype=torch.float32).view(1, 5, 7)
    (idx, tiles), = iter_batches(img, plan_tiles(5, 7), 8)
    assert idx == [0] and tiles.shape == (1, 1, 96, 96)
    want = torch.nn.functional.pad(img[None], (0, 6, 0, 4), mode="reflect")[0]
    assert torch.equal(tiles[0, :, :9, :13], want)
    assert torch.equal(tiles[0, 0, :, 0], torch.tensor([0, 7, 14, 21, 28, 21, 14, 7] * 12, dtype=torch.float32))
    (_, one), = iter_batches(torch.full((3, 1, 1), 7, dtype=torch.uint8), plan_tiles(1, 1), 1)
    assert one.shape == (1, 3, 96, 96) and bool((one == 7).all())


def test_stitcher_device_dtype_and_errors():
    g = plan_tiles(100, 100)
    st = Stitcher(g, 2, dtype=torch.float64)
    idx, tiles = next(iter_batches(torch.rand(3, 100, 100), g, 2))
    st.add(idx, nearest(tiles, 2).half())
    assert st.out.dtype == torch.float64
    with pytest.raises(RuntimeError, match="twice"):
        st.add(idx[:1], nearest(tiles[:1], 2))
    with pytest.raises(RuntimeError, match="never added"):
        st.result()
    with pytest.raises(ModelError, match="scale"):
        st.add([2], nearest(tiles[:1], 3))
    with pytest.raises(ModelError):
        st.add([2, 3], nearest(tiles[:1], 2))


def test_validation():
    for kw in [dict(tile=0), dict(overlap=-1), dict(overlap=96), dict(tile=8, overlap=9),
               dict(protocol="tiles"), dict(tile=96.0)]:
        with pytest.raises(CadyqError):
            plan_tiles(100, 100, **kw)
        with pytest.raises(ValueError):
            plan_tiles(100, 100, **kw)
    with pytest.raises(ImageError, match="empty"):
        plan_tiles(0, 10)
    g = plan_tiles(50, 60)
    with pytest.raises(ImageError, match="planned"):
        next(iter_batches(torch.zeros(3, 60, 50), g, 1))
    with pytest.raises(ImageError):
        next(iter_batches(torch.zeros(1, 3, 50, 60), g, 1))
    with pytest.raises(CadyqError):
        next(iter_batches(torch.zeros(3, 50, 60), g, 0))
    with pytest.raises(CadyqError):
        Stitcher(g, 0)
    with pytest.raises(IndexError):
        g.tile_shape(g.n_tiles)


def test_tile_map():
    g = plan_tiles(300, 451)
    bits = torch.arange(g.n_tiles * 2).view(g.n_tiles, 2)
    m = tile_map(g, bits)
    assert m.shape == (g.rows, g.cols, 2) and m[1, 2].tolist() == bits[g.cols + 2].tolist()
    with pytest.raises(ValueError):
        tile_map(g, bits[:-1])


def test_grid_is_frozen_dataclass():
    g = plan_tiles(10, 10)
    assert isinstance(g, TileGrid)
    with pytest.raises(Exception):
        g.tile = 3


def test_8k_image_is_sliced_lazily():
    # An expanded tensor takes no memory; a padded or materialised copy of it would take 100 MB.
    img = torch.zeros(3, 1, 1, dtype=torch.uint8).expand(3, 4320, 7680)
    g = plan_tiles(4320, 7680)
    assert (g.rows, g.cols) == (48, 86) and g.ys[-1] == 4320 - 96 and g.xs[-1] == 7680 - 96
    it = iter_batches(img, g, 16)
    idx, tiles = next(it)
    assert idx == list(range(16)) and tiles.shape == (16, 3, 96, 96)


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_tiles_into_cpu_canvas():
    img = torch.rand(3, 150, 200, device="cuda")
    g = plan_tiles(150, 200)
    st = Stitcher(g, 2)
    for idx, tiles in iter_batches(img, g, 4):
        assert tiles.is_cuda
        st.add(idx, nearest(tiles, 2))
    assert torch.equal(st.result(), nearest(img, 2).cpu())


def test_shrunk_strip_tiles_take_the_image_extent_and_stitch_exactly():
    """shrink: a 16-px strip runs as 16 x 96 tiles (not padded to 96 x 96); stitching identity tiles gives the image."""
    img = torch.arange(3 * 16 * 300, dtype=torch.float32).reshape(3, 16, 300)
    grid = plan_tiles(16, 300, 96, 6, shrink=True)
    assert grid.padded_size == (16, 300) and {b[2:] for b in grid.boxes} == {(16, 96)}
    assert plan_tiles(16, 300, 96, 6).padded_size == (96, 300)  # the default pads
    assert plan_tiles(300, 16, 96, 6, shrink=True).tile_widths == [16]
    assert plan_tiles(200, 300, 96, 6, shrink=True) == plan_tiles(200, 300, 96, 6)  # nothing to shrink
    for scale in (1, 3):
        st = Stitcher(grid, scale)
        for idx, tiles in iter_batches(img, grid, 3):
            st.add(idx, torch.nn.functional.interpolate(tiles, scale_factor=scale, mode="nearest"))
        want = torch.nn.functional.interpolate(img[None], scale_factor=scale, mode="nearest")[0]
        assert torch.equal(st.result(), want)


def test_a_rejected_overlap_is_answered_with_one_that_works():
    for tile in (1, 4, 8, 13, 96):
        with pytest.raises(TilingError) as e:
            plan_tiles(100, 100, tile, tile)
        suggested = int(re.search(r"--overlap (\d+)", str(e.value))[1])
        plan_tiles(100, 100, tile, suggested)
        check_step(tile, suggested)


def test_a_step_below_half_the_tile_is_refused_for_running():
    """--tile 8 with the default overlap 6 starts a tile every 2 px (every pixel runs 16 times): refused, with an
    overlap that works; the geometry itself (plan_tiles, which the C++ mirrors) still takes it."""
    with pytest.raises(TilingError, match=r"every 2 px.*about 16 tiles.*--overlap 4 or less"):
        check_step(8, 6)
    plan_tiles(100, 100, 8, 6)
    check_step(8, 4)
    check_step(96, 6)
    with pytest.raises(TilingError):
        check_step(96, 49)
