import math
import signal

import numpy as np
import pytest
import torch

# A suite started in the background of a non-interactive shell (`make test &`) inherits SIGINT ignored, and so would
# every process it starts; the Ctrl-C tests (tests/test_signals.py, the trainer's, the server client's) need it
# delivered as at a terminal.
if signal.getsignal(signal.SIGINT) is signal.SIG_IGN:
    signal.signal(signal.SIGINT, signal.default_int_handler)


@pytest.fixture(scope="session")
def photo() -> np.ndarray:
    """A real photo (scikit-image's astronaut), HxWx3 uint8."""
    from skimage import data

    return data.astronaut()


@pytest.fixture(scope="session")
def photo_tiles(photo) -> torch.Tensor:
    """Sixteen 24x24 tiles of varied content from the photo, float [0,255]."""
    t = torch.from_numpy(photo).permute(2, 0, 1).float()
    ys, xs = [10, 100, 200, 300], [20, 150, 260, 400]
    return torch.stack([t[:, y : y + 24, x : x + 24] for y in ys for x in xs])


def tiny(name: str, scale: int = 2):
    """Small versions of each backbone, for fast tests."""
    from cadyq import create_model

    kw = {"edsr": dict(n_resblocks=2, n_feats=16), "srresnet": dict(n_resblocks=2, n_feats=16),
          "carn": dict(n_feats=16), "idn": dict(n_feats=16, d=4, n_blocks=1)}[name]
    torch.manual_seed(0)
    return create_model(name, scale=scale, **kw)


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory, photo_tiles):
    """A small CADyQ EDSR x2 checkpoint with calibrated clip values."""
    from cadyq import save
    from cadyq.quant import observe, quantize

    m = quantize(tiny("edsr"), "cadyq")
    with torch.no_grad(), observe(m):
        m(photo_tiles)
    path = tmp_path_factory.mktemp("ckpt") / "edsr_cadyq.safetensors"
    save(m, path)
    return path


@pytest.fixture(scope="module")
def one_torch_thread():
    """Small tensors on 2 shared cores: one torch thread is ~10x faster than oversubscribed ones."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


def have_trt_builder() -> bool:
    """TensorRT or TensorRT-RTX bindings importable here (CI installs TensorRT-RTX)."""
    from cadyq.errors import EngineError
    from cadyq.trt_plugins import trt_module

    try:
        trt_module()
        return True
    except EngineError:
        return False


needs_trt_builder = pytest.mark.skipif(not have_trt_builder(), reason="no TensorRT / TensorRT-RTX bindings (pip "
                                                                      "install tensorrt-rtx-cu13-bindings tensorrt-rtx-cu13-libs)")


def boundary_tile_batch(rng, shape, a_k, s_k):
    """Random x in [-1.5a, 1.5a] with, in every tile, ±a/2, ±a, ±2a and every rounding boundary
    (m + 1/2) / s * a of a (a, s) quantizer, each also one float step above and below."""
    a_k, s_k = np.float32(a_k), np.float32(s_k)
    x = (a_k * rng.uniform(-1.5, 1.5, shape)).astype(np.float32)
    x[:, 0, 0, :6] = np.float32([a_k / 2, -a_k / 2, a_k, -a_k, 2 * a_k, -2 * a_k])
    m = np.arange(-int(s_k), int(s_k)).astype(np.float32)
    bnd = ((m + np.float32(0.5)) / s_k * a_k).astype(np.float32)
    bnd = np.stack([bnd, np.nextafter(bnd, np.float32(np.inf)), np.nextafter(bnd, np.float32(-np.inf))], 1).ravel()
    flat = x.reshape(shape[0], -1)
    flat[:, 6:6 + bnd.size] = bnd[:flat.shape[1] - 6]
    return flat.reshape(shape)


def _levels(bits):
    return np.float32(2.0) ** (np.asarray(bits, np.float32) - np.float32(1.0)) - np.float32(1.0)


def _top(bits) -> int:
    from cadyq.export.op import top_candidate

    return top_candidate(bits)


def select_tie_case(bits, rng, N=4, C=3, H=16, W_=16):
    """(x, g, W, b, a) of a CADyQSelect over 3 candidates `bits`: selector rows 1 and 2 tie and dominate row 0 (every
    tile picks candidate 1, the first of the tied maxima). Clip values put a step of candidate 1 at exactly two steps
    of the top grid, so half the top grid's values land exactly on candidate 1's rounding boundaries; x holds every
    rounding boundary of the top grid (x = ±a_T/2 lands exactly on ±s_T/2), each also one float step above and below."""
    K = len(bits)
    Wsel = (0.1 * rng.standard_normal((K, C + 2))).astype(np.float32)
    Wsel[2] = Wsel[1]
    b = np.array([0.0, 50.0, 50.0][:K], np.float32)
    s, top = _levels(bits), _top(bits)
    unit = np.float32(2.0 ** -(bits[top] - 1))                      # the top step, about a_T / s_T
    a = np.ones(K, np.float32)
    a[top], a[1] = s[top] * unit, 2 * s[1] * unit
    x = boundary_tile_batch(rng, (N, C, H, W_), a[top], s[top])
    return x, rng.standard_normal((N, 2)).astype(np.float32), Wsel, b, a


def select_ties(x, a, bits) -> tuple[int, int]:
    """How many elements of x lie exactly on a .5 rounding boundary of the top grid, and how many of the values on
    the top grid exactly on one of candidate 1's (the roundings that must go half to even)."""
    s, top = _levels(bits), _top(bits)
    u = np.maximum(np.minimum(x, a[top]), -a[top]) / a[top] * s[top]
    x_top = np.round(u) / s[top] * a[top]
    u1 = np.maximum(np.minimum(x_top, a[1]), -a[1]) / a[1] * s[1]
    return int(((u - np.floor(u)) == 0.5).sum()), int(((u1 - np.floor(u1)) == 0.5).sum())


def photo_crops(n: int, size: int, seed: int = 0) -> torch.Tensor:
    """n random crops of size x size from scikit-image's astronaut, chelsea and coffee photos."""
    from skimage import data

    images = [data.astronaut(), data.chelsea(), data.coffee()]
    rng = np.random.default_rng(seed)
    out = []
    for i in range(n):
        im = images[i % 3]
        y, x = rng.integers(0, im.shape[0] - size), rng.integers(0, im.shape[1] - size)
        out.append(torch.from_numpy(np.ascontiguousarray(im[y:y + size, x:x + size])).permute(2, 0, 1).float())
    return torch.stack(out)


@torch.no_grad()
def randomize_selectors(model, tiles, seed: int = 1) -> None:
    """Calibrate clip values (observe), then give every selector random weights over standardized
    features, centred on these tiles: logits spread ~1, so all of 4/6/8 get chosen."""
    from cadyq.quant import BitSelector, observe

    with observe(model):
        model(tiles)
    sels = [q for q in model.modules() if isinstance(q, BitSelector)]
    feats = {}
    hooks = [q.register_forward_pre_hook(
        lambda q, a: feats.__setitem__(id(q), torch.cat([q.state.grad, a[0].std(dim=(2, 3))], 1))) for q in sels]
    model(tiles)
    for h in hooks:
        h.remove()
    gen = torch.Generator().manual_seed(seed)
    for q in sels:
        f = feats[id(q)]
        mu, sd = f.mean(0), f.std(0) + 1e-6
        w = torch.randn(q.net.weight.shape, generator=gen) / sd / math.sqrt(f.shape[1])
        q.net.weight.copy_(w)
        q.net.bias.copy_(-(w @ mu) + 0.3 * torch.randn(q.net.bias.shape, generator=gen))


@torch.no_grad()
def spread_gdq(model, tiles, seed: int = 1) -> None:
    """Calibrate a gdq model (observe), then give its controller random weights over standardized granularity
    features of these tiles, so that all three of its classes get chosen (and E2B refines the top one)."""
    from cadyq.quant import observe, plan_for
    from cadyq.quant.gdq import granularity_features

    with observe(model):
        model(tiles)
    feats = {}
    h = model.get_submodule(plan_for(model).head).register_forward_hook(
        lambda m, a, o: feats.__setitem__("f", granularity_features(o)))
    model(tiles)
    h.remove()
    f = feats["f"]
    mu, sd = f.mean(0), f.std(0) + 1e-6
    g = torch.Generator().manual_seed(seed)
    w = torch.randn(model.gdq.gbc.weight.shape, generator=g) / sd / math.sqrt(f.shape[1])
    model.gdq.gbc.weight.copy_(w)
    model.gdq.gbc.bias.copy_(-(w @ mu) + 0.3 * torch.randn(3, generator=g))
