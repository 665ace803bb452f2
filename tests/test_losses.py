import numpy as np
import pytest
import torch

from conftest import smooth_disp, smooth_volume
from helpers import load_module
from ofg_lib.losses import FixedLNCC, box_sum, grad_l2, lncc, ofg_loss, unsupervised_loss

lncc_conv3d = load_module("benchmarks/published.py", "published").lncc_conv3d


def np_box(x, window):
    """Reference box sum with zero padding, by cumulative sums along each axis (float64)."""
    r = window // 2
    for axis in range(x.ndim):
        pad = [(0, 0)] * x.ndim
        pad[axis] = (r + 1, r)
        c = np.cumsum(np.pad(x, pad), axis=axis)
        n = x.shape[axis]
        x = np.take(c, np.arange(2 * r + 1, 2 * r + 1 + n), axis) - np.take(c, np.arange(n), axis)
    return x


def np_lncc(fixed, warped, window, eps=1e-5):
    """Reference Eq. 6 as the published NCC_vxm computes it, in float64 numpy."""
    i, j = fixed.astype(np.float64), warped.astype(np.float64)
    n = window ** i.ndim
    si, sj, sii, sjj, sij = (np_box(x, window) for x in (i, j, i * i, j * j, i * j))
    ui, uj = si / n, sj / n
    cross = sij - uj * si - ui * sj + ui * uj * n
    vi = sii - 2 * ui * si + ui * ui * n
    vj = sjj - 2 * uj * sj + uj * uj * n
    return -np.mean(cross * cross / (vi * vj + eps))


@pytest.mark.parametrize("window", [1, 3, 9])
def test_box_sum_matches_reference(window):
    x = torch.rand(2, 3, 7, 12, 10, dtype=torch.float64)
    ref = np.stack([np.stack([np_box(x[b, c].numpy(), window) for c in range(3)]) for b in range(2)])
    np.testing.assert_allclose(box_sum(x, window).numpy(), ref, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("shape, window", [((12, 14, 16), 9), ((10, 11, 12), 5), ((20, 24), 9)])
@pytest.mark.parametrize("dtype, tol", [(torch.float64, 1e-10), (torch.float32, 2e-5)])
def test_lncc_matches_float64_numpy(shape, window, dtype, tol):
    fixed, moving = smooth_volume(shape, seed=0), smooth_volume(shape, seed=5)
    ours = lncc(fixed.to(dtype), moving.to(dtype), window=window)
    ref = np_lncc(fixed[0, 0].numpy(), moving[0, 0].numpy(), window)
    assert abs(float(ours) - ref) < tol * max(1.0, abs(ref))


def test_lncc_agrees_with_monai_where_definitions_agree():
    """MONAI clamps each variance at smooth_dr and adds smooth_nr to the numerator; the paper adds eps to the
    product of the variances. With smooth_nr=0 on textured images (variances far from 0) they agree."""
    monai = pytest.importorskip("monai.losses")
    fixed, moving = smooth_volume((16, 18, 20), seed=0, noise=0.3), smooth_volume((16, 18, 20), seed=7, noise=0.3)
    ref = monai.LocalNormalizedCrossCorrelationLoss(spatial_dims=3, kernel_size=9, kernel_type="rectangular",
                                                    smooth_nr=0.0, smooth_dr=1e-5)(moving, fixed)
    assert abs(float(lncc(fixed, moving)) - float(ref)) < 1e-6


def test_lncc_range_and_perfect_match():
    x = smooth_volume((12, 12, 12), noise=0.2)
    assert float(lncc(x, x)) < -0.999
    assert float(lncc(x, 3 * x)) < -0.999                         # invariant to intensity scaling
    # ...but not quite to an offset: zero padding makes the border windows see the step from 0 to the offset.
    assert float(lncc(x, x)) < float(lncc(x, x + 1)) < -0.95
    # zero-mean noise: positive images would correlate through the shared step to the zero padding at borders
    unrelated = lncc(torch.randn(1, 1, 24, 24, 24, dtype=torch.float64),
                     torch.randn(1, 1, 24, 24, 24, dtype=torch.float64))
    assert -0.01 < float(unrelated) <= 0


def test_lncc_gradcheck_both_inputs():
    a = smooth_volume((5, 6, 7), seed=1, noise=0.5).requires_grad_(True)
    b = smooth_volume((5, 6, 7), seed=2, noise=0.5).requires_grad_(True)
    assert torch.autograd.gradcheck(lambda f, w: lncc(f, w, window=3), (a, b))
    assert torch.autograd.gradcheck(lambda w: lncc(a.detach(), w, window=5), (b,))
    assert torch.autograd.gradcheck(lambda f: lncc(f, b.detach(), window=5), (a,))


def test_fixed_lncc_equals_lncc_and_gradchecks():
    a = smooth_volume((5, 6, 7), seed=1, noise=0.5)
    b = smooth_volume((5, 6, 7), seed=2, noise=0.5).requires_grad_(True)
    f = FixedLNCC(a, window=3)
    torch.testing.assert_close(f(b), lncc(a, b, window=3))
    assert torch.autograd.gradcheck(f, (b,))


@pytest.mark.parametrize("kwargs, error, message", [
    ({"window": 8}, ValueError, "odd"),
    ({"window": 0}, ValueError, "odd"),
    ({"warped": torch.zeros(1, 1, 8, 8, 9)}, ValueError, "shape"),
    ({"warped": torch.zeros(8, 8, 8), "fixed": torch.zeros(8, 8, 8)}, ValueError, "must be 4-D"),
    ({"fixed": torch.zeros(1, 1, 8, 8, 8, dtype=torch.int64)}, TypeError, "floating-point"),
    ({"warped": torch.full((1, 1, 8, 8, 8), float("nan"))}, ValueError, "non-finite"),
])
def test_lncc_bad_input(kwargs, error, message):
    args = {"fixed": torch.zeros(1, 1, 8, 8, 8), "warped": torch.zeros(1, 1, 8, 8, 8), **kwargs}
    with pytest.raises(error, match=message):
        lncc(**args)


def test_grad_l2_matches_numpy_and_gradchecks():
    d = smooth_disp((6, 7, 8), 1.0) + 0.1 * torch.rand(1, 3, 6, 7, 8, dtype=torch.float64)
    x = d.numpy()
    ref = np.mean([np.mean(np.diff(x, axis=a) ** 2) for a in (2, 3, 4)])
    assert abs(float(grad_l2(d)) - ref) < 1e-12
    assert torch.autograd.gradcheck(grad_l2, (d.clone().requires_grad_(True),))
    assert float(grad_l2(torch.full((1, 3, 4, 4, 4), 3.0))) == 0.0


def test_grad_l2_of_a_linear_field():
    x = torch.arange(6, dtype=torch.float64).view(1, 1, 6, 1, 1).expand(1, 3, 6, 5, 4)
    assert abs(float(grad_l2(0.5 * x)) - 0.25 / 3) < 1e-12    # slope 0.5 along one of three axes


def test_ofg_loss_is_eq3_and_stops_gradient_to_the_target():
    phi_pred = smooth_disp((6, 7, 8), 1.0).requires_grad_(True)
    phi_opt = smooth_disp((6, 7, 8), 1.0, seed=9).requires_grad_(True)
    loss = ofg_loss(phi_pred, phi_opt)
    expected = ((phi_pred - phi_opt) ** 2).mean() + 0.02 * grad_l2(phi_pred)
    torch.testing.assert_close(loss, expected)
    loss.backward()
    assert phi_opt.grad is None and phi_pred.grad is not None


def test_unsupervised_loss_is_lncc_plus_reg():
    f, w = smooth_volume((10, 10, 10)), smooth_volume((10, 10, 10), seed=3)
    d = smooth_disp((10, 10, 10), 1.0)
    torch.testing.assert_close(unsupervised_loss(f, w, d, unsup_reg=0.5), lncc(f, w) + 0.5 * grad_l2(d))


def test_dense_conv3d_reference_and_the_per_voxel_loss_agree_with_lncc():
    fixed, moving = smooth_volume((12, 13, 14), seed=0), smooth_volume((12, 13, 14), seed=5)
    ref = np_lncc(fixed[0, 0].numpy(), moving[0, 0].numpy(), 9)
    assert abs(float(lncc_conv3d(fixed, moving)) - ref) < 1e-10
    per_voxel = lncc(fixed, moving, reduction="none")          # -cc, cc in [0, 1]; its mean is the loss
    assert per_voxel.shape == fixed.shape and float(per_voxel.max()) <= 0 and float(per_voxel.min()) >= -1
    assert abs(float(per_voxel.mean()) - ref) < 1e-10
    # its autograd gradient is the hand-written backward's
    w1, w2 = moving.clone().requires_grad_(True), moving.clone().requires_grad_(True)
    lncc(fixed, w1, reduction="none").mean().backward()
    lncc(fixed, w2).backward()
    torch.testing.assert_close(w1.grad, w2.grad, rtol=1e-6, atol=1e-12)
    with pytest.raises(ValueError, match="reduction must be one of mean, none, got 'sum'"):
        lncc(fixed, moving, reduction="sum")
