import numpy as np
import pytest
import torch
import torch.nn.functional as F


def smooth_volume(shape, seed=0, coarse=4, noise=0.05, dtype=torch.float64):
    """A textured, smooth random volume (B=1, C=1): coarse noise upsampled plus a little fine noise."""
    g = torch.Generator().manual_seed(seed)
    c = torch.rand(1, 1, *[max(2, s // coarse) for s in shape], generator=g, dtype=dtype)
    mode = "trilinear" if len(shape) == 3 else "bilinear"
    v = F.interpolate(c, size=shape, mode=mode, align_corners=True)
    return v + noise * torch.rand(1, 1, *shape, generator=g, dtype=dtype)


def smooth_disp(shape, amplitude, seed=1, dtype=torch.float64):
    g = torch.Generator().manual_seed(seed)
    nsp = len(shape)
    c = torch.randn(1, nsp, *([3] * nsp), generator=g, dtype=dtype)
    mode = "trilinear" if nsp == 3 else "bilinear"
    return F.interpolate(c, size=shape, mode=mode, align_corners=True) * amplitude


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)
    np.random.seed(0)


@pytest.fixture
def cohort_cache(tmp_path_factory, monkeypatch):
    """The embedded cohort cached in this session's temporary folder (shared by the tests that train)."""
    monkeypatch.setenv("OFG_DATA_DIR", str(tmp_path_factory.getbasetemp() / "cohort"))
