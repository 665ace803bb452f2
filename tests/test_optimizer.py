import pytest
import torch

from conftest import smooth_disp, smooth_volume
from ofg_lib.losses import grad_l2, lncc
from ofg_lib.metrics import epe
from ofg_lib.optimizer import refine, refine_with_history
from ofg_lib.transform import warp

SHAPE = (24, 28, 32)


@pytest.fixture(scope="module")
def pair():
    moving = smooth_volume(SHAPE, seed=0, coarse=4, noise=0.02, dtype=torch.float32)
    disp_true = smooth_disp(SHAPE, amplitude=1.5, dtype=torch.float32)
    fixed = warp(moving, disp_true)
    return moving, fixed, disp_true


def energy(disp, moving, fixed):
    return float(lncc(fixed, warp(moving, disp)) + grad_l2(disp))


def test_refine_lowers_energy_and_moves_toward_the_truth(pair):
    moving, fixed, disp_true = pair
    start = torch.zeros(1, 3, *SHAPE)
    out = refine_with_history(start, moving, fixed, steps=30, lr=0.1, final_energy=True)
    assert out.finite and out.steps_taken == 30 and len(out.energies) == 30
    assert out.final_energy < out.energies[0] - 0.1
    assert abs(out.final_energy - energy(out.disp, moving, fixed)) < 1e-5
    inner = (slice(None), slice(None)) + (slice(4, -4),) * 3
    before, after = epe(start[inner], disp_true[inner]), epe(out.disp[inner], disp_true[inner])
    assert after < 0.7 * before, (before, after)


def test_refine_never_changes_its_input_and_builds_no_graph(pair):
    moving, fixed, _ = pair
    net = torch.nn.Conv3d(2, 3, 3, padding=1)
    phi_pred = net(torch.cat([moving, fixed], 1))          # a prediction attached to a network
    before = phi_pred.detach().clone()
    phi_opt = refine(phi_pred, moving, fixed, steps=3)
    assert torch.equal(phi_pred.detach(), before)
    assert not phi_opt.requires_grad and phi_opt.grad_fn is None
    assert all(p.grad is None for p in net.parameters())
    assert not torch.equal(phi_opt, before)


def test_refine_works_under_no_grad_and_with_sgd(pair):
    moving, fixed, _ = pair
    start = torch.zeros(1, 3, *SHAPE)
    with torch.no_grad():
        a = refine(start, moving, fixed, steps=2)
    assert not torch.equal(a, start)
    # SGD's step is lr * gradient, and LNCC's gradient per voxel is O(1 / n_voxels): it needs a large lr.
    sgd = refine_with_history(start, moving, fixed, steps=5, lr=1e3, optimizer="sgd", final_energy=True)
    assert sgd.final_energy < sgd.energies[0] - 0.05
    assert torch.equal(refine(start, moving, fixed, steps=0), start)


def test_refine_stops_at_the_last_finite_field(pair):
    moving, fixed, _ = pair
    start = torch.zeros(1, 3, *SHAPE)
    with pytest.warns(RuntimeWarning, match="non-finite"):
        out = refine_with_history(start, moving, fixed, steps=10, lr=1e30)
    assert not out.finite and out.steps_taken < 10
    assert torch.isfinite(out.disp).all()


@pytest.mark.parametrize("change, error, message", [
    ({"fixed": torch.zeros(1, 1, 8, 8, 8)}, ValueError, "shape"),
    ({"disp": torch.zeros(1, 3, 8, 8, 8)}, ValueError, "disp must have shape"),
    ({"moving": torch.full((1, 1, *SHAPE), float("inf"))}, ValueError, "moving has .* non-finite"),
    ({"steps": -1}, ValueError, "steps"),
    ({"lr": float("nan")}, ValueError, "lr"),
    ({"window": 4}, ValueError, "odd"),
    ({"optimizer": "lbfgs"}, ValueError, "optimizer must be"),
    ({"disp": torch.zeros(1, 3, *SHAPE, dtype=torch.float64)}, TypeError, "dtype"),
])
def test_refine_bad_input(pair, change, error, message):
    moving, fixed, _ = pair
    args = {"disp": torch.zeros(1, 3, *SHAPE), "moving": moving, "fixed": fixed, **change}
    with pytest.raises(error, match=message):
        refine(**args)
