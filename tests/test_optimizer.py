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
    out = refine_with_history(start, moving, fixed, inner_steps=30, inner_lr=0.1, final_energy=True)
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
    phi_opt = refine(phi_pred, moving, fixed, inner_steps=3)
    assert torch.equal(phi_pred.detach(), before)
    assert not phi_opt.requires_grad and phi_opt.grad_fn is None
    assert all(p.grad is None for p in net.parameters())
    assert not torch.equal(phi_opt, before)


def test_refine_works_under_no_grad_and_with_sgd(pair):
    moving, fixed, _ = pair
    start = torch.zeros(1, 3, *SHAPE)
    with torch.no_grad():
        a = refine(start, moving, fixed, inner_steps=2)
    assert not torch.equal(a, start)
    # SGD's step is lr * gradient, and LNCC's gradient per voxel is O(1 / n_voxels): it needs a large lr.
    sgd = refine_with_history(start, moving, fixed, inner_steps=5, inner_lr=1e3, optimizer="sgd", final_energy=True)
    assert sgd.final_energy < sgd.energies[0] - 0.05
    assert torch.equal(refine(start, moving, fixed, inner_steps=0), start)


def test_refine_stops_at_the_last_finite_field(pair):
    moving, fixed, _ = pair
    start = torch.zeros(1, 3, *SHAPE)
    with pytest.warns(RuntimeWarning, match="non-finite"):
        out = refine_with_history(start, moving, fixed, inner_steps=10, inner_lr=1e30)
    assert not out.finite and out.steps_taken < 10
    assert torch.isfinite(out.disp).all()


@pytest.mark.parametrize("change, error, message", [
    ({"fixed": torch.zeros(1, 1, 8, 8, 8)}, ValueError, "shape"),
    ({"disp": torch.zeros(1, 3, 8, 8, 8)}, ValueError, "disp must have shape"),
    ({"moving": torch.full((1, 1, *SHAPE), float("inf"))}, ValueError, "moving has .* non-finite"),
    ({"inner_steps": -1}, ValueError, "inner_steps must be"),
    ({"inner_lr": float("nan")}, ValueError, "inner_lr must be"),
    ({"window": 4}, ValueError, "odd"),
    ({"optimizer": "lbfgs"}, ValueError, "optimizer must be"),
    ({"disp": torch.zeros(1, 3, *SHAPE, dtype=torch.float64)}, TypeError, "dtype"),
])
def test_refine_bad_input(pair, change, error, message):
    moving, fixed, _ = pair
    args = {"disp": torch.zeros(1, 3, *SHAPE), "moving": moving, "fixed": fixed, **change}
    with pytest.raises(error, match=message):
        refine(**args)


# ---- the fused CPU kernels (issue 21, ofg_lib/_refine_cpu.py) against PyTorch's path ----------------------------

kernels = pytest.importorskip("ofg_lib._refine_cpu")
needs_numba = pytest.mark.skipif(not kernels.AVAILABLE, reason="numba is not installed")


def _problem(shape, batch=1, amplitude=4.0, dtype=torch.float64, seed=0):
    """Moving and fixed images and a start field large enough that samples leave the volume at the borders."""
    nd = len(shape)
    moving = torch.cat([smooth_volume(shape, seed=seed + b, coarse=3, noise=0.05, dtype=dtype) for b in range(batch)])
    fixed = torch.cat([smooth_volume(shape, seed=seed + 10 + b, coarse=3, noise=0.05, dtype=dtype)
                       for b in range(batch)])
    fixed[..., :2] = 0.0                                  # flat regions (zero local variance)
    disp = torch.cat([smooth_disp(shape, amplitude=amplitude, seed=seed + 20 + b, dtype=dtype) for b in range(batch)])
    assert disp.shape[1] == nd
    return moving, fixed, disp


def _both(disp, moving, fixed, **kw):
    from ofg_lib.optimizer import cpu_kernels_set
    out = {}
    for on in (False, True):
        with cpu_kernels_set(on):
            out[on] = refine_with_history(disp, moving, fixed, final_energy=True, **kw)
    return out[False], out[True]


@needs_numba
@pytest.mark.parametrize("shape, batch, kw", [
    ((12, 14, 16), 1, {}),
    ((12, 14, 16), 2, {"optimizer": "sgd", "inner_lr": 300.0, "inner_reg": 0.5}),
    ((6, 10, 12), 1, {"window": 9}),             # a window wider than an axis
    ((20, 24), 2, {}),
    ((20, 24), 1, {"window": 5, "inner_reg": 2.0}),
])
def test_the_cpu_kernels_compute_what_pytorchs_path_computes_in_float64(shape, batch, kw):
    moving, fixed, disp = _problem(shape, batch)
    torch_path, fused = _both(disp, moving, fixed, inner_steps=10, **kw)
    assert fused.steps_taken == torch_path.steps_taken == 10 and fused.finite
    assert (fused.disp - torch_path.disp).abs().max() < 1e-7     # rounding only (a wrong term moves it >1e-3)
    assert max(abs(a - b) for a, b in zip(fused.energies, torch_path.energies)) < 1e-10
    assert abs(fused.final_energy - torch_path.final_energy) < 1e-10
    assert fused.energies[-1] < fused.energies[0]           # it optimised something


@needs_numba
@pytest.mark.parametrize("shape", [(16, 20, 24), (40, 48)])
def test_in_float32_the_kernels_are_no_further_from_exact_arithmetic_than_pytorchs_path(shape):
    # In float32 neither path stays within 1e-4 voxels of the other over ten Adam steps: where the energy is flat
    # (here a zero region of the fixed image) the gradient is rounding noise, Adam divides it by its own size, and
    # each voxel there takes lr-sized steps in a direction the rounding picks. So both paths are measured against
    # the float64 result, and the kernels must be no further from it (first energy: same field, tighter).
    moving, fixed, disp = _problem(shape, dtype=torch.float64)
    exact, _ = _both(disp, moving, fixed, inner_steps=10)
    torch32, fused32 = _both(disp.float(), moving.float(), fixed.float(), inner_steps=10)

    def errors(r):
        return (float((r.disp.double() - exact.disp).abs().max()),
                max(abs(a - b) for a, b in zip(r.energies, exact.energies)), abs(r.energies[0] - exact.energies[0]))
    (field_t, energy_t, first_t), (field_f, energy_f, first_f) = errors(torch32), errors(fused32)
    assert field_f <= 1.5 * field_t + 1e-5, (field_f, field_t)
    assert energy_f <= 1.5 * energy_t + 1e-6, (energy_f, energy_t)
    assert first_f < 1e-7 and first_t < 1e-6
    assert fused32.disp.dtype == torch.float32


@needs_numba
@pytest.mark.parametrize("shape", [(10, 12, 14), (18, 20)])
def test_the_kernels_gradient_is_autograds_gradient_of_the_energy(shape):
    """One energy and gradient evaluation against autograd through grid_sample, in float64, with samples that
    leave the volume (zeros outside). (At exactly integer sample positions, the interpolant's kinks, the two take
    different one-sided slopes: grid_sample's coordinates pass through the normalised grid and may land a
    rounding error below the integer.)"""
    import torch.nn.functional as F
    from ofg_lib.transform import normalised_grid
    moving, fixed, disp = _problem(shape, batch=2, amplitude=5.0)
    phi = disp.clone().requires_grad_(True)
    warped = F.grid_sample(moving, normalised_grid(phi), mode="bilinear", padding_mode="zeros", align_corners=True)
    expected = lncc(fixed, warped) + 0.7 * grad_l2(phi)
    expected.backward()
    prob = kernels.Problem(moving.numpy(), fixed.numpy(), 0.7, 9)
    energy, grad_sum = prob.energy_and_gradient(disp.numpy().copy())
    assert abs(energy - float(expected.detach())) < 1e-12
    assert (torch.from_numpy(prob.grad).reshape(disp.shape) - phi.grad).abs().max() < 1e-14 * phi.grad.abs().max()
    assert abs(grad_sum - float(phi.grad.sum())) < 1e-12


@needs_numba
def test_the_kernels_stop_where_pytorchs_path_stops_and_the_switch_restores():
    from ofg_lib.optimizer import cpu_kernels, cpu_kernels_set
    moving, fixed, disp = _problem((10, 12, 14), dtype=torch.float32)
    before = cpu_kernels()
    with pytest.warns(RuntimeWarning, match="non-finite"):
        torch_path, fused = _both(disp, moving, fixed, inner_steps=10, inner_lr=1e30)
    assert cpu_kernels() == before
    assert not fused.finite and fused.steps_taken == torch_path.steps_taken < 10
    assert fused.final_energy is None and torch.isfinite(fused.disp).all()
    with cpu_kernels_set(False):
        assert not cpu_kernels()
    assert cpu_kernels() == before


def test_the_kernels_are_not_used_where_they_do_not_apply(monkeypatch):
    """Two-channel images, the downsampled design and the switch off take PyTorch's path."""
    from ofg_lib import optimizer

    def boom(*a, **k):
        raise AssertionError("the kernels ran")
    monkeypatch.setattr(optimizer._refine_cpu, "run", boom)
    moving, fixed, disp = _problem((8, 10, 12), dtype=torch.float32)
    refine_with_history(disp, moving, fixed, inner_steps=1, downsample=2)
    two = torch.cat([moving, moving], 1), torch.cat([fixed, fixed], 1)
    refine_with_history(disp, *two, inner_steps=1)
    with optimizer.cpu_kernels_set(False):
        refine_with_history(disp, moving, fixed, inner_steps=1)
    if optimizer._refine_cpu.AVAILABLE:
        with pytest.raises(AssertionError, match="the kernels ran"):
            refine_with_history(disp, moving, fixed, inner_steps=1)


@needs_numba
def test_reused_scratch_arrays_carry_nothing_from_one_refinement_to_the_next():
    """`run` keeps its full-size arrays between calls (same shapes: same arrays; Adam's first step ignores what
    its moments hold); each refinement must still equal one in fresh arrays, after another pair and after SGD."""
    from ofg_lib.optimizer import cpu_kernels_set
    a = _problem((10, 12, 14), batch=2, dtype=torch.float32, seed=0)
    b = _problem((10, 12, 14), batch=2, dtype=torch.float32, seed=5)
    with cpu_kernels_set(True):
        refine_with_history(a[2], a[0], a[1], optimizer="sgd", inner_lr=50.0)
        held = kernels._LOCAL.scratch
        first = refine_with_history(a[2], a[0], a[1], final_energy=True)
        refine_with_history(b[2], b[0], b[1])
        again = refine_with_history(a[2], a[0], a[1], final_energy=True)
        assert kernels._LOCAL.scratch is held               # the same arrays served every call
        kernels._LOCAL.scratch = None                         # fresh arrays
        fresh = refine_with_history(a[2], a[0], a[1], final_energy=True)
    for r in (first, again):
        assert torch.equal(r.disp, fresh.disp) and r.energies == fresh.energies
        assert r.final_energy == fresh.final_energy
    assert first.energies[-1] < first.energies[0]


@needs_numba
def test_the_kernels_use_as_many_threads_as_pytorch_may():
    import numba
    moving, fixed, disp = _problem((8, 10, 12), dtype=torch.float32)
    before = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        refine(disp, moving, fixed, inner_steps=1)
        assert numba.get_num_threads() == 1
        torch.set_num_threads(2)
        refine(disp, moving, fixed, inner_steps=1)
        assert numba.get_num_threads() == min(2, numba.config.NUMBA_NUM_THREADS)
    finally:
        torch.set_num_threads(before)


def test_old_keyword_names_are_refused_with_the_new_one(pair):
    """refine / ofg_loss / unsupervised_loss take the config keys' names; the old ones say what replaced them."""
    from ofg_lib.losses import ofg_loss, unsupervised_loss
    moving, fixed, _ = pair
    start = torch.zeros(1, 3, *moving.shape[2:])
    for old, new in (("steps", "inner_steps"), ("lr", "inner_lr"), ("reg_weight", "inner_reg")):
        with pytest.raises(TypeError, match=f"refine\\(\\): {old}= is now {new}="):
            refine(start, moving, fixed, **{old: 1})
        with pytest.raises(TypeError, match=f"refine_with_history\\(\\): {old}= is now {new}="):
            refine_with_history(start, moving, fixed, **{old: 1})
    with pytest.raises(TypeError, match="ofg_loss\\(\\): reg_weight= is now ofg_reg="):
        ofg_loss(start, start, reg_weight=0.02)
    with pytest.raises(TypeError, match="unsupervised_loss\\(\\): reg_weight= is now unsup_reg="):
        unsupervised_loss(fixed, moving, start, reg_weight=1.0)
    with pytest.raises(TypeError, match="unexpected keyword argument 'step'"):
        refine(start, moving, fixed, step=1)
    # the new names are the same computation as positional arguments
    torch.testing.assert_close(refine(start, moving, fixed, inner_steps=2, inner_lr=0.05, inner_reg=0.5),
                               refine(start, moving, fixed, 2, 0.05, 0.5))
