import numpy as np
import pytest
import torch
from scipy.ndimage import map_coordinates

from conftest import smooth_disp, smooth_volume
from ofg_lib.transform import compose, identity_grid, resize_disp, warp


def scipy_warp(image, disp, order):
    """Reference: sample image at identity + disp with scipy (zero outside, interpolating toward it)."""
    img = image[0, 0].numpy()
    coords = identity_grid(img.shape, dtype=torch.float64)[0].numpy() + disp[0].numpy()
    return map_coordinates(img, coords, order=order, mode="grid-constant", cval=0.0)


@pytest.mark.parametrize("shape", [(9, 10, 11), (12, 13)])
def test_warp_bilinear_matches_scipy(shape):
    image = smooth_volume(shape)
    disp = smooth_disp(shape, amplitude=2.5)   # pushes some samples outside the volume: tests zero padding
    out = warp(image, disp)
    np.testing.assert_allclose(out[0, 0].numpy(), scipy_warp(image, disp, 1), atol=1e-10)


def test_warp_nearest_matches_scipy_on_labels():
    shape = (9, 10, 11)
    labels = torch.randint(0, 5, (1, 1, *shape))
    disp = smooth_disp(shape, amplitude=2.0) + 0.013  # keep away from exact .5 ties
    out = warp(labels, disp, mode="nearest")
    assert out.dtype == torch.int64
    np.testing.assert_array_equal(out[0, 0].numpy(), scipy_warp(labels.double(), disp, 0).round().astype(np.int64))


def test_zero_displacement_is_identity_and_float32_works():
    image = smooth_volume((8, 9, 10), dtype=torch.float32)
    out = warp(image, torch.zeros(1, 3, 8, 9, 10))
    torch.testing.assert_close(out, image, atol=1e-6, rtol=0)


def test_integer_shift_moves_content():
    image = smooth_volume((8, 9, 10))
    disp = torch.zeros(1, 3, 8, 9, 10, dtype=torch.float64)
    disp[:, 2] = 2.0                                  # out(p) = image(p + 2 along W)
    out = warp(image, disp)
    torch.testing.assert_close(out[..., :-2], image[..., 2:])
    assert torch.all(out[..., -2:] == 0)


def test_warp_gradcheck():
    image = smooth_volume((4, 5, 6)).requires_grad_(True)
    disp = (smooth_disp((4, 5, 6), 0.7) + 0.123).requires_grad_(True)
    assert torch.autograd.gradcheck(warp, (image, disp))


def test_compose_matches_sequential_warps_inside():
    shape = (16, 17, 18)
    image = smooth_volume(shape, noise=0.0, coarse=8)
    a, b = smooth_disp(shape, 1.0, seed=2), smooth_disp(shape, 1.0, seed=3)
    once = warp(image, compose(a, b))
    twice = warp(warp(image, a), b)
    inner = (slice(None), slice(None)) + (slice(3, -3),) * 3
    assert (once - twice)[inner].abs().max() < 1e-3


def test_resize_disp_rescales_voxel_units():
    disp = torch.full((1, 3, 5, 6, 7), 2.0, dtype=torch.float64)
    out = resize_disp(disp, (9, 11, 13))
    torch.testing.assert_close(out, torch.full((1, 3, 9, 11, 13), 4.0, dtype=torch.float64))


@pytest.mark.parametrize("image, disp, message", [
    (torch.zeros(1, 1, 8, 8, 8), torch.zeros(1, 3, 8, 8, 7), "disp must have shape"),
    (torch.zeros(1, 1, 8, 8, 8), torch.zeros(1, 2, 8, 8, 8), "disp must have shape"),
    (torch.zeros(1, 8, 8, 8), torch.zeros(1, 3, 8, 8, 8), "image has shape"),
    (torch.zeros(8, 8, 8), torch.zeros(8, 8, 8), "must be 4-D"),
])
def test_warp_bad_input(image, disp, message):
    with pytest.raises(ValueError, match=message):
        warp(image, disp)


def test_warp_labels_need_nearest_and_mode_is_checked():
    with pytest.raises(ValueError, match="nearest"):
        warp(torch.zeros(1, 1, 4, 4, 4, dtype=torch.int64), torch.zeros(1, 3, 4, 4, 4))
    with pytest.raises(ValueError, match="mode must be"):
        warp(torch.zeros(1, 1, 4, 4, 4), torch.zeros(1, 3, 4, 4, 4), mode="bicubic")
