import math

import numpy as np
import pytest
import torch
from scipy.ndimage import correlate

from conftest import smooth_disp
from ofg_lib.metrics import count_folds, dice, epe, fold_fraction, jacobian_det, sdlogj
from ofg_lib.transform import identity_grid


def test_jacobian_of_a_linear_field_is_det_of_i_plus_a():
    A = torch.tensor([[0.1, 0.2, -0.1], [0.0, -0.3, 0.05], [0.2, 0.1, 0.4]], dtype=torch.float64)
    x = identity_grid((6, 7, 8), dtype=torch.float64)
    disp = torch.einsum("ij,bjdhw->bidhw", A, x)
    det = jacobian_det(disp)
    expected = float(torch.linalg.det(torch.eye(3, dtype=torch.float64) + A))
    torch.testing.assert_close(det, torch.full_like(det, expected))


def test_jacobian_of_a_quadratic_field_inside():
    x = identity_grid((9, 8, 7), dtype=torch.float64)
    disp = torch.zeros(1, 3, 9, 8, 7, dtype=torch.float64)
    disp[:, 0] = 0.02 * x[:, 0] ** 2 + 0.1 * x[:, 1]           # d u0/dx0 = 0.04 x0, d u0/dx1 = 0.1
    disp[:, 1] = 0.05 * x[:, 2]                                 # d u1/dx2 = 0.05
    det = jacobian_det(disp)
    # det [[1+0.04 x0, 0.1, 0], [0, 1, 0.05], [0, 0, 1]] = 1 + 0.04 x0
    expected = 1 + 0.04 * x[0, 0]
    torch.testing.assert_close(det[0, 1:-1], expected[1:-1])


def numpy_jacobian_det(disp):
    """det(I + grad u) of a (1, 3, D, H, W) field by np.gradient and np.linalg.det, shape (D, H, W)."""
    u = disp[0].numpy()
    J = np.empty((3, 3, *u.shape[1:]))
    for i in range(3):
        for j, g in enumerate(np.gradient(u[i])):
            J[i, j] = g + (i == j)
    return np.linalg.det(np.moveaxis(J, (0, 1), (-2, -1)))


def test_jacobian_matches_numpy_gradient():
    disp = smooth_disp((7, 8, 9), 2.0)
    np.testing.assert_allclose(jacobian_det(disp)[0].numpy(), numpy_jacobian_det(disp), atol=1e-12)


def test_fold_fraction():
    x = identity_grid((6, 6, 6), dtype=torch.float64)
    mirror = torch.zeros(1, 3, 6, 6, 6, dtype=torch.float64)
    mirror[:, 0] = -2 * x[:, 0]                                 # x0 -> -x0: det -1 everywhere
    assert fold_fraction(mirror) == 1.0
    assert fold_fraction(torch.zeros_like(mirror)) == 0.0
    mask = torch.zeros(1, 6, 6, 6, dtype=torch.bool)
    mask[..., :3] = True
    half = torch.where(x[:, 2:3] < 3, mirror, torch.zeros_like(mirror))
    assert fold_fraction(half, mask) == 1.0
    with pytest.raises(ValueError, match="empty"):
        fold_fraction(half, torch.zeros_like(mask))


def test_count_folds_counts_where_an_independent_determinant_is_not_positive():
    disp = smooth_disp((8, 9, 10), 2.0)                         # folds in about a quarter of the voxels
    folded = numpy_jacobian_det(disp) <= 0
    assert 0 < folded.sum() < folded.size
    det = jacobian_det(disp)
    count, share = count_folds(det)
    assert count == int(folded.sum()) and share == pytest.approx(folded.mean(), abs=1e-15)
    mask = torch.zeros(1, 8, 9, 10, dtype=torch.bool)
    mask[..., :4] = True
    inside = folded[mask[0].numpy()]
    count, share = count_folds(det, mask)
    assert count == int(inside.sum()) and share == pytest.approx(inside.mean(), abs=1e-15)
    assert fold_fraction(disp, mask) == share                   # the share is fold_fraction's
    with pytest.raises(ValueError, match="one value per voxel"):
        count_folds(det, mask[..., :5])
    with pytest.raises(ValueError, match="empty"):
        count_folds(det, torch.zeros_like(mask))


def l2r_sdlogj(disp):
    """Learn2Reg's evaluation: correlate with [-0.5, 0, 0.5], identity, crop 2, log(det + 3) clipped, std."""
    k = np.array([-0.5, 0, 0.5])
    grads = []
    for axis in range(3):
        shape = [1, 1, 1]
        shape[axis] = 3
        grads.append([correlate(disp[c], k.reshape(shape), mode="constant", cval=0.0) for c in range(3)])
    J = np.array([[grads[j][i] for j in range(3)] for i in range(3)]) + np.eye(3).reshape(3, 3, 1, 1, 1)
    J = J[:, :, 2:-2, 2:-2, 2:-2]
    det = np.linalg.det(np.moveaxis(J, (0, 1), (-2, -1)))
    return np.log((det + 3).clip(1e-9, 1e9)).std()


def test_sdlogj_matches_learn2reg():
    disp = smooth_disp((10, 11, 12), 3.0)
    assert abs(sdlogj(disp) - l2r_sdlogj(disp[0].numpy())) < 1e-12
    assert sdlogj(torch.zeros(1, 3, 8, 8, 8)) == 0.0


def test_dice_per_label():
    a = torch.tensor([[0, 1, 1, 2, 2, 2]])
    b = torch.tensor([[0, 1, 2, 2, 2, 3]])
    d = dice(a, b, [1, 2, 3, 4])
    assert d[0] == pytest.approx(2 * 1 / 3)
    assert d[1] == pytest.approx(2 * 2 / 6)
    assert d[2] == 0.0
    assert math.isnan(d[3])
    with pytest.raises(ValueError, match="shape"):
        dice(a, b[:, :5], [1])
    with pytest.raises(TypeError, match="integer"):
        dice(a.float(), b, [1])


def test_epe():
    a = torch.zeros(1, 3, 4, 4, 4)
    b = torch.zeros(1, 3, 4, 4, 4)
    b[:, 0] = 3.0
    b[:, 1] = 4.0
    assert epe(a, b) == pytest.approx(5.0)


def test_time_ms_measures_and_checks():
    from ofg_lib.metrics import time_ms
    import time
    assert time_ms(lambda: time.sleep(0.01), repeats=3) >= 9.0
    with pytest.raises(ValueError, match="repeats"):
        time_ms(lambda: None, repeats=0)
