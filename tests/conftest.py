import numpy as np
import pytest
import torch


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
