import numpy as np
import pytest
import torch

from conftest import smooth_disp, smooth_volume
from ofg_lib.gradients import cosine, network_gradients
from ofg_lib.landscape import (convex_fraction, energy_and_dice, mean_dice, ofg_training_loss, random_directions, rise,
                               sharpness, surface, unsupervised_energy)
from ofg_lib.losses import lncc
from ofg_lib.metrics import dice
from ofg_lib.optimizer import refine
from ofg_lib.transform import warp


class Tiny(torch.nn.Module):
    """Conv3d, BatchNorm (running-stat buffers), Linear and a registered buffer; forward is a real network."""

    def __init__(self):
        super().__init__()
        self.conv = torch.nn.Conv3d(2, 4, 3, padding=1)
        self.bn = torch.nn.BatchNorm3d(4)
        self.lin = torch.nn.Linear(4, 3)
        self.register_buffer("offset", torch.tensor(0.25))

    def forward(self, x):
        h = self.bn(self.conv(x)).mean((2, 3, 4))
        return self.lin(h) + self.offset


class Quadratic(torch.nn.Module):
    """One parameter vector w; loss 0.5 w^T A w (A a buffer), float64."""

    def __init__(self, a, w):
        super().__init__()
        self.w = torch.nn.Parameter(torch.as_tensor(w, dtype=torch.float64))
        self.register_buffer("a", torch.as_tensor(a, dtype=torch.float64))

    def loss(self):
        return 0.5 * self.w @ self.a @ self.w


def tiny_input():
    return torch.randn(2, 2, 4, 4, 4, generator=torch.Generator().manual_seed(3))


@torch.no_grad()
def tiny_loss(model):
    return float(model(tiny_input()).square().mean())


def state(model):
    return {k: v.clone() for k, v in model.state_dict().items()}


def assert_same_state(model, before):
    after = model.state_dict()
    assert after.keys() == before.keys()
    for k in before:
        assert torch.equal(after[k], before[k]), k


def test_filter_normalised_directions_match_the_weights_filter_by_filter_and_skip_biases_and_buffers():
    model = Tiny()
    dirs = random_directions(model, n=2, seed=0)
    params = dict(model.named_parameters())
    assert len(dirs) == 2
    for d in dirs:
        assert set(d) == set(params)                         # parameters only: no running stats, no `offset`
        for name, p in params.items():
            assert d[name].shape == p.shape and d[name].dtype == p.dtype and not d[name].requires_grad
            if p.dim() <= 1:
                assert not d[name].any(), name               # biases and BatchNorm weights are zero
                continue
            for f in range(p.shape[0]):                      # filter f: one output channel / one output row
                want = torch.linalg.norm(p[f].detach().double().flatten())
                got = torch.linalg.norm(d[name][f].double().flatten())
                assert abs(float(got / want) - 1) < 1e-6, (name, f)
    assert not torch.equal(dirs[0]["conv.weight"], dirs[1]["conv.weight"])


def test_directions_are_reproducible_from_the_seed():
    model = Tiny()
    a, b, c = (random_directions(model, seed=s) for s in (7, 7, 8))
    for k in a[0]:
        assert torch.equal(a[0][k], b[0][k]) and torch.equal(a[1][k], b[1][k])
    assert not torch.equal(a[0]["conv.weight"], c[0]["conv.weight"])


def test_raw_directions_are_plain_gaussians_and_include_the_biases():
    model = Tiny()
    raw, filt = random_directions(model, n=1, normalize=None)[0], random_directions(model, n=1)[0]
    gen = torch.Generator().manual_seed(0)                   # draw order: direction, then parameter in order
    assert torch.equal(raw["conv.weight"], torch.randn(4, 2, 3, 3, 3, generator=gen))
    assert torch.equal(raw["conv.bias"], torch.randn(4, generator=gen))
    assert raw["conv.bias"].abs().min() > 0 and raw["bn.weight"].abs().min() > 0
    assert not torch.equal(raw["conv.weight"], filt["conv.weight"])
    # the same draws before rescaling: each filter of the filter-normalised direction is a multiple of the raw one
    cos = torch.nn.functional.cosine_similarity(raw["conv.weight"].flatten(1), filt["conv.weight"].flatten(1))
    assert torch.allclose(cos, torch.ones(4), atol=1e-5)


def test_include_1d_gives_each_bias_the_norm_of_the_bias():
    model = Tiny()
    with torch.no_grad():
        model.bn.bias.normal_()                              # zero at initialisation: give it a norm
    d = random_directions(model, n=1, include_1d=True)[0]
    for name in ("conv.bias", "bn.weight", "bn.bias", "lin.bias"):
        p = dict(model.named_parameters())[name].detach()
        assert d[name].abs().min() > 0
        assert abs(float(d[name].norm() / p.norm()) - 1) < 1e-6, name


@pytest.mark.parametrize("kwargs, message", [
    ({"normalize": "layer"}, "normalize must be one of"),
    ({"n": 0}, "n must be an integer >= 1"),
    ({"n": 1.5}, "n must be an integer >= 1"),
])
def test_random_directions_rejects_bad_arguments(kwargs, message):
    with pytest.raises(ValueError, match=message):
        random_directions(Tiny(), **kwargs)


@pytest.mark.parametrize("train", [True, False])
def test_surface_at_the_origin_is_the_loss_and_leaves_parameters_buffers_and_mode_untouched(train):
    model = Tiny().train(train)                     # in train mode every forward updates BatchNorm's running stats
    dirs = random_directions(model, n=2, seed=1, include_1d=True)
    before = state(model)
    out = surface(model, tiny_loss, dirs, [np.linspace(-1, 1, 3), [0.0, 0.5]], progress=False)
    assert out.shape == (3, 2) and out.dtype == np.float64
    assert model.training == train
    assert_same_state(model, before)
    assert out[1, 0] == tiny_loss(model)                    # the origin: exactly the weights
    assert len(set(out.ravel().tolist())) == 6


def test_surface_restores_the_model_when_the_loss_raises():
    model = Tiny().train()
    dirs = random_directions(model, n=1, normalize=None)
    before = state(model)
    calls = []

    def failing(m):
        calls.append(tiny_loss(m))                          # moves the weights' running stats first
        if len(calls) == 3:
            raise RuntimeError("loss exploded")
        return calls[-1]

    with pytest.raises(RuntimeError, match="loss exploded"):
        surface(model, failing, dirs, [np.linspace(-1, 1, 5)], progress=False)
    assert len(calls) == 3
    assert_same_state(model, before)


def test_surface_of_a_quadratic_is_the_analytic_one():
    rng = np.random.default_rng(0)
    m = rng.standard_normal((4, 4))
    a, w, d1, d2 = m @ m.T, rng.standard_normal(4), rng.standard_normal(4), rng.standard_normal(4)
    model = Quadratic(a, w)
    alphas, betas = np.linspace(-1, 1, 5), np.linspace(-2, 0.5, 4)
    dirs = [{"w": torch.from_numpy(d1)}, {"w": torch.from_numpy(d2)}]
    out = surface(model, lambda mod: float(mod.loss()), dirs, [alphas, betas], progress=False)
    want = np.array([[0.5 * (w + x * d1 + y * d2) @ a @ (w + x * d1 + y * d2) for y in betas] for x in alphas])
    np.testing.assert_allclose(out, want, rtol=0, atol=1e-10)
    assert torch.equal(model.w.detach(), torch.from_numpy(w))


@pytest.mark.parametrize("coords, directions, message", [
    ([[0.0]], 2, "one 1-D array per direction"),
    ([[[0.0, 1.0]], [0.0]], 2, "one 1-D array per direction"),
    ([[0.0]], {"v": torch.zeros(4)}, "not a parameter"),
    ([[0.0]], {"w": torch.zeros(3)}, "shape"),
])
def test_surface_rejects_coords_and_directions_that_do_not_fit(coords, directions, message):
    model = Quadratic(np.eye(4), np.ones(4))
    dirs = [{"w": torch.ones(4)}] * directions if isinstance(directions, int) else [directions]
    with pytest.raises(ValueError, match=message):
        surface(model, lambda mod: float(mod.loss()), dirs, coords, progress=False)


@pytest.mark.parametrize("method", ["fd", "autograd"])
@pytest.mark.parametrize("eigenvalues, top", [([5.0, 2.0, 1.0, 0.5], 5.0), ([1.0, -4.0, 2.0, 0.5], -4.0)])
def test_sharpness_finds_the_top_eigenvalue_of_a_quadratic(method, eigenvalues, top):
    q, _ = np.linalg.qr(np.random.default_rng(1).standard_normal((4, 4)))   # rotate: A is not diagonal
    model = Quadratic(q @ np.diag(eigenvalues) @ q.T, [0.3, -1.0, 2.0, 0.7])
    before = state(model)
    got = sharpness(model, lambda mod: mod.loss(), iters=30, method=method)
    assert got == pytest.approx(top, rel=1e-3)
    assert_same_state(model, before)


def test_sharpness_rejects_an_unknown_method():
    with pytest.raises(ValueError, match="method must be"):
        sharpness(Quadratic(np.eye(2), np.ones(2)), lambda mod: mod.loss(), method="lanczos")


SHAPE = (16, 16, 16)


@pytest.fixture(scope="module")
def pairs():
    moving = smooth_volume(SHAPE, seed=0, dtype=torch.float32)
    fixed = warp(moving, smooth_disp(SHAPE, amplitude=1.5, dtype=torch.float32))
    seg = lambda x: (x * 3 / x.max()).long().clamp(0, 2)     # three labels from intensity
    return [{"moving": moving, "fixed": fixed, "moving_seg": seg(moving), "fixed_seg": seg(fixed)}]


def zero_net():
    net = torch.nn.Conv3d(2, 3, 3, padding=1)
    torch.nn.init.zeros_(net.weight)
    torch.nn.init.zeros_(net.bias)
    return net                                               # predicts phi = 0, the identity


def test_the_pair_losses_of_an_identity_network_match_direct_computations(pairs):
    net, p = zero_net(), pairs[0]
    energy = unsupervised_energy(pairs, reg_weight=1.0)(net)
    assert isinstance(energy, float)
    assert energy == pytest.approx(float(lncc(p["fixed"], p["moving"])), abs=1e-6)
    score = mean_dice(pairs, labels=[1, 2])(net)
    assert score == pytest.approx(float(dice(p["moving_seg"], p["fixed_seg"], [1, 2]).nanmean()), abs=1e-12)
    ofg = ofg_training_loss(pairs, inner_steps=2)(net)
    phi_opt = refine(torch.zeros(1, 3, *SHAPE), p["moving"], p["fixed"], inner_steps=2)
    assert ofg == pytest.approx(float(phi_opt.square().mean()), rel=1e-5)      # mse(0, phi_opt) + 0.02 * 0


def test_a_small_landscape_and_sharpness_run_on_a_registration_network(pairs):
    torch.manual_seed(0)
    net = torch.nn.Conv3d(2, 3, 3, padding=1)
    before = state(net)
    dirs = random_directions(net, n=2, seed=0)
    out = surface(net, unsupervised_energy(pairs), dirs, [[-0.5, 0.0, 0.5], [0.0, 1.0]], progress=False)
    assert np.isfinite(out).all() and out[1, 0] == pytest.approx(unsupervised_energy(pairs)(net), abs=1e-12)
    loss = unsupervised_energy(pairs, differentiable=True)(net)
    assert loss.requires_grad and loss.item() == pytest.approx(out[1, 0], abs=1e-12)
    assert np.isfinite(sharpness(net, unsupervised_energy(pairs, differentiable=True), iters=3))
    with pytest.raises(ValueError, match="no \\['moving_seg', 'fixed_seg'\\]"):
        mean_dice([{"moving": pairs[0]["moving"], "fixed": pairs[0]["fixed"]}], labels=[1])
    assert_same_state(net, before)


def test_with_one_sgd_inner_step_ofg_gives_the_network_the_unsupervised_gradient_scaled_by_2lr_over_n(pairs):
    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Conv3d(2, 4, 3, padding=1), torch.nn.Tanh(), torch.nn.Conv3d(4, 3, 3, padding=1))
    lr = 0.5
    g = network_gradients(net, pairs[0], inner_steps=1, inner_lr=lr, inner_optimizer="sgd")
    assert cosine(g["ofg_data"], g["unsupervised"]) > 0.999
    n = g["phi_pred"].numel()
    expected = (2 * lr / n) * g["unsupervised"]
    # float32 fields: phi_pred - phi_opt cancels, so entries near 0 carry noise of ~1e-3 of their own size (seen
    # here: 2.5e-3 on an entry of 1e-9); the identity holds to float32 precision relative to the whole gradient
    assert float((g["ofg_data"] - expected).norm() / expected.norm()) < 1e-4
    assert torch.allclose(g["ofg_data"], expected, rtol=1e-2, atol=1e-6 * float(expected.abs().max()))
    # the field moved by exactly lr * dE/dphi
    assert torch.allclose(g["phi_pred"] - g["phi_opt"], lr * g["field_grad"], atol=1e-6)
    # with Adam the first step moves every voxel by about lr, whatever the size of its gradient
    a = network_gradients(net, pairs[0], inner_steps=1, inner_lr=0.1)
    moved = (a["phi_opt"] - a["phi_pred"]).abs()
    big = a["field_grad"].abs() > 1e-6
    assert torch.allclose(moved[big], torch.full_like(moved[big], 0.1), rtol=1e-2)


def test_energy_and_dice_agree_with_the_separate_functions_and_surface_stacks_them(pairs):
    torch.manual_seed(0)
    net = torch.nn.Conv3d(2, 3, 3, padding=1)
    both = energy_and_dice(pairs, labels=[1, 2])(net)
    assert both[0] == pytest.approx(unsupervised_energy(pairs)(net), abs=1e-9)
    assert both[1] == pytest.approx(mean_dice(pairs, [1, 2])(net), abs=1e-12)
    out = surface(net, energy_and_dice(pairs, [1, 2]), random_directions(net, 1), [[-0.1, 0.0, 0.1]], progress=False)
    assert out.shape == (3, 2) and out[1] == pytest.approx(both)


def test_rise_and_convex_fraction_on_analytic_surfaces():
    a = np.linspace(-1, 1, 11)
    bowl = a[:, None] ** 2 + 2 * a[None, :] ** 2
    saddle = a[:, None] ** 2 - a[None, :] ** 2
    assert convex_fraction(bowl) == 1.0 and convex_fraction(saddle) == 0.0
    assert convex_fraction(-bowl) == 0.0
    border = np.ones((11, 11), bool)
    border[1:-1, 1:-1] = False
    assert rise(bowl) == pytest.approx(bowl[border].mean())
    assert rise(a ** 2) == pytest.approx(1.0)
    with pytest.raises(ValueError, match="at least 3x3"):
        convex_fraction(a)

