import pytest
import torch
import torch.nn as nn

from conftest import smooth_disp, smooth_volume
from ofg_lib import models
from ofg_lib.losses import unsupervised_loss
from ofg_lib.transform import warp

PUBLISHED = {"voxelmorph-1": 274_387, "voxelmorph-2": 301_411, "vit-v-net": 31_560_079, "transmorph": 46_771_251}
TINY_SIZE = {"voxelmorph-1-tiny": (32, 32, 48), "voxelmorph-2-tiny": (32, 32, 48), "vit-v-net-tiny": (64, 64, 64),
             "transmorph-tiny": (32, 32, 96)}  # last stage 1x1x3 tokens: shifted regions hold several


@pytest.mark.parametrize("name, count", PUBLISHED.items())
def test_published_parameter_counts_at_full_size(name, count):
    with torch.device("meta"):                      # no memory, no forward pass
        model = models.build(name, (160, 192, 224))
    assert models.count_parameters(model) == count


def test_transmorph_picks_the_published_windows():
    with torch.device("meta"):
        assert models.build("transmorph", (160, 192, 224)).window == (5, 6, 7)
        assert models.build("transmorph", (160, 192, 160)).window == (5, 6, 5)


def pair(size):
    moving = smooth_volume(size, seed=0, noise=0.02, dtype=torch.float32)
    fixed = warp(moving, smooth_disp(size, 1.5, dtype=torch.float32))
    return torch.cat([moving, fixed], 1), moving, fixed


@pytest.mark.parametrize("name", TINY_SIZE)
def test_tiny_models_forward_start_near_zero_and_reach_every_parameter(name):
    torch.manual_seed(0)
    size = TINY_SIZE[name]
    model = models.build(name, size).eval()   # eval: dropout and stochastic depth would silence branches
    x, moving, fixed = pair(size)
    disp = model(x)
    assert disp.shape == (1, 3, *size)
    assert float(disp.detach().abs().max()) < 0.05                       # flow head drawn from N(0, 1e-5)
    unsupervised_loss(fixed, warp(moving, disp), disp).backward()
    missing = [n for n, p in model.named_parameters() if p.grad is None or not torch.isfinite(p.grad).all()]
    assert not missing
    silent = [n for n, p in model.named_parameters() if float(p.grad.abs().max()) == 0]
    assert not silent, silent


@pytest.mark.parametrize("name", TINY_SIZE)
def test_tiny_models_train_a_few_steps(name):
    torch.manual_seed(0)
    size = TINY_SIZE[name]
    model = models.build(name, size)
    x, moving, fixed = pair(size)
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    losses = []
    for _ in range(8):
        opt.zero_grad()
        disp = model(x)
        loss = unsupervised_loss(fixed, warp(moving, disp), disp)
        loss.backward()
        opt.step()
        losses.append(float(loss.detach()))
    assert losses[-1] < losses[0], losses


def test_transmorph_checkpointing_changes_memory_not_results():
    torch.manual_seed(0)
    size = TINY_SIZE["transmorph-tiny"]
    plain = models.build("transmorph-tiny", size).eval()
    saver = models.build("transmorph-tiny", size, checkpoint=True).eval()
    saver.load_state_dict(plain.state_dict())
    x = pair(size)[0]
    a, b = plain(x), saver(x)
    torch.testing.assert_close(a, b)
    a.sum().backward()
    b.sum().backward()
    for (n, p), q in zip(plain.named_parameters(), saver.parameters()):
        torch.testing.assert_close(p.grad, q.grad, msg=n)


def test_size_checks_say_what_is_accepted():
    with pytest.raises(ValueError, match="multiple of 32.*nearest accepted size: \\(160, 192, 224\\)"):
        models.build("transmorph", (160, 190, 224))
    with pytest.raises(ValueError, match="multiple of 16"):
        models.build("voxelmorph-1", (40, 48, 50))
    with pytest.raises(ValueError, match="three positive sides.*or two"):
        models.build("voxelmorph-1", (32,))
    with pytest.raises(ValueError, match="transmorph is a 3-D model"):
        models.build("transmorph", (32, 32))
    with pytest.raises(ValueError, match="unknown model 'voxelmorph'.*voxelmorph-1"):
        models.build("voxelmorph", (32, 32, 32))


def test_state_dicts_hold_no_index_buffers():
    model = models.build("transmorph-tiny", (32, 32, 64))
    assert not any("relative_position_index" in k for k in model.state_dict())


class MyNet(nn.Module):
    def __init__(self, img_size, width=4):
        super().__init__()
        self.body = nn.Sequential(nn.Conv3d(2, width, 3, padding=1), nn.ReLU(), nn.Conv3d(width, 3, 3, padding=1))

    def forward(self, x):
        return self.body(x)


def test_register_your_own_model():
    models.register("test-my-net", lambda img_size, **kw: MyNet(img_size, **kw), overwrite=True)
    assert "test-my-net" in models.names()
    net = models.build("test-my-net", (8, 8, 8), width=6)
    assert net(torch.zeros(1, 2, 8, 8, 8)).shape == (1, 3, 8, 8, 8)
    with pytest.raises(ValueError, match="registered already"):
        models.register("test-my-net", MyNet)
    with pytest.raises(TypeError, match="callable"):
        models.register("test-other", 3)


@pytest.mark.parametrize("size", [(32, 32, 48), (48, 64)])
def test_the_channels_last_cpu_path_agrees_with_pytorchs_and_float64(size):
    """layers.Conv2d/Conv3d on the CPU (issue 21): outputs and gradients of VoxelMorph-1 with the channels-last
    oneDNN path equal PyTorch's own path to float32 rounding, both measured against a float64 copy; the
    parameters keep their layout; switched off, the path is PyTorch's bit for bit."""
    from ofg_lib.models.layers import Conv2d, Conv3d, cpu_channels_last, cpu_channels_last_set
    torch.manual_seed(0)
    model = models.build("voxelmorph-1", size)
    assert all(isinstance(m, (Conv2d, Conv3d)) for m in model.modules() if isinstance(m, (nn.Conv2d, nn.Conv3d)))
    with torch.no_grad():
        for p in model.parameters():          # trained-like weights, not the near-zero flow initialisation
            p.normal_(0, 0.05)
    x = torch.rand(1, 2, *size, generator=torch.Generator().manual_seed(1))
    target = torch.randn(1, len(size), *size, generator=torch.Generator().manual_seed(2))

    def run(net, inp):
        net.zero_grad(set_to_none=True)
        out = net(inp)
        (out - target.to(out.dtype)).square().mean().backward()
        return out.detach().double(), torch.cat([p.grad.flatten().double() for p in net.parameters()])

    ref = models.build("voxelmorph-1", size)
    ref.load_state_dict(model.state_dict())
    o64, g64 = run(ref.double(), x.double())
    with cpu_channels_last_set(False):
        o_pt, g_pt = run(model, x)
        plain = nn.Conv3d if len(size) == 3 else nn.Conv2d
        layer = next(m for m in model.modules() if isinstance(m, (Conv2d, Conv3d)))
        same = plain(layer.in_channels, layer.out_channels, 3, layer.stride, 1)
        same.load_state_dict(layer.state_dict())
        probe = torch.rand(1, layer.in_channels, *size)
        assert torch.equal(layer(probe), same(probe))           # off: exactly PyTorch's convolution
    with cpu_channels_last_set(True):
        assert cpu_channels_last()
        o_cl, g_cl = run(model, x)
    # Outputs within 1e-5 of the largest value, of float64 and of each other. Gradients sum over every voxel, so
    # float32 rounding reaches ~sqrt(n) eps (1.5e-5 of the largest entry at 32x32x48 was seen for PyTorch's own
    # path with 2 threads): the new path must be as accurate as PyTorch's (within 3x its error against
    # float64, plus 1e-6) and both well inside float32's reach (1e-4).
    scale_o, scale_g = o64.abs().max(), g64.abs().max()
    for o in (o_pt, o_cl):
        assert (o - o64).abs().max() / scale_o < 1e-5
    err_pt, err_cl = ((g - g64).abs().max() / scale_g for g in (g_pt, g_cl))
    assert err_pt < 1e-4 and err_cl < 1e-4 and err_cl <= 3 * err_pt + 1e-6
    assert (o_cl - o_pt).abs().max() / scale_o < 1e-5
    if torch.backends.mkldnn.is_available():    # the other path really ran (a different summation order)
        assert not torch.equal(g_cl, g_pt)
    assert all(p.is_contiguous() for p in model.parameters())


@pytest.mark.parametrize("cin, cout, depth, stride, padding", [
    (4, 4, 48, 1, 1), (4, 3, 17, 1, 1), (2, 16, 48, 2, 1), (8, 8, 7, 2, 1), (6, 5, 9, 1, 0), (3, 4, 2, 1, 1)])
def test_small_batch_one_convolutions_run_as_two_halves_on_onednn(cin, cout, depth, stride, padding):
    """Where ATen would send a batch-one 3-D convolution to slow_conv3d, layers.Conv3d convolves the two halves
    of the volume along D as a batch of two on oneDNN: output and gradients equal a float64 convolution to float32
    rounding (even and odd output depths, strides 1 and 2, with and without padding), and no slow_conv3d runs."""
    from ofg_lib.models.layers import Conv3d, cpu_channels_last_set
    torch.manual_seed(0)
    layer = Conv3d(cin, cout, 3, stride=stride, padding=padding)
    ref = nn.Conv3d(cin, cout, 3, stride=stride, padding=padding).double()
    ref.load_state_dict(layer.state_dict())
    x = torch.randn(1, cin, depth, 20, 24)
    assert layer._as_halves(x)
    target = torch.randn_like(ref(x.double()))

    def run(net, inp):
        inp = inp.clone().requires_grad_(True)
        net.zero_grad(set_to_none=True)
        out = net(inp)
        (out * target.to(out.dtype)).sum().backward()
        return [t.detach().double() for t in (out, inp.grad, net.weight.grad, net.bias.grad)]

    with cpu_channels_last_set(True), torch.autograd.profiler.profile() as prof:
        got = run(layer, x)
    want = run(ref, x.double())
    for g, w in zip(got, want):
        assert g.shape == w.shape and (g - w).abs().max() <= 1e-5 * w.abs().max()
    ops = {e.key for e in prof.key_averages()}
    assert not any("slow_conv3d" in op for op in ops) and "aten::mkldnn_convolution" in ops
    assert got[0].shape[2] == (depth + 2 * padding - 3) // stride + 1
    assert not layer._as_halves(torch.randn(2, cin, depth, 20, 24))      # a batch of two is oneDNN's already
    assert not layer._as_halves(torch.randn(1, cin, 200, 64, 24))        # above the heuristic's threshold


@pytest.mark.parametrize("name", ["voxelmorph-1-tiny", "transmorph-tiny", "vit-v-net-tiny"])
def test_every_model_returns_a_contiguous_field_on_the_cpu(name):
    """The channels-last CPU path is internal: callers get the usual NCDHW layout from every model."""
    size = (64, 64, 64)
    net = models.build(name, size).eval()
    with torch.no_grad():
        assert net(torch.rand(1, 2, *size)).is_contiguous()


def test_predict_is_the_one_input_convention():
    """models.predict(model, moving, fixed) feeds the pair moving-first along channels, as every caller did."""
    seen = []

    class Probe(torch.nn.Module):
        def forward(self, x):
            seen.append(x)
            return x[:, :1].repeat(1, 3, 1, 1, 1) * 2

    moving, fixed = torch.rand(2, 1, 4, 5, 6), torch.rand(2, 1, 4, 5, 6)
    out = models.predict(Probe(), moving, fixed)
    assert torch.equal(seen[0], torch.cat([moving, fixed], 1)) and torch.equal(out, moving.repeat(1, 3, 1, 1, 1) * 2)
    assert torch.equal(models.pair_input(moving, fixed)[:, 1:], fixed)
    net = models.build("voxelmorph-1-tiny", (16, 16, 16))
    m, f = torch.rand(1, 1, 16, 16, 16), torch.rand(1, 1, 16, 16, 16)
    assert torch.equal(models.predict(net, m, f), net(torch.cat([m, f], 1)))


def test_the_cpu_paths_are_no_ops_off_the_cpu_and_off_float32():
    """Issue 21's CPU paths cannot touch CUDA: both switches test the tensor's device (a meta tensor stands in
    for a GPU one here), and a float64 layer is PyTorch's own convolution bit for bit."""
    from ofg_lib.models.layers import Conv3d, _fast
    from ofg_lib.optimizer import _kernels_apply, cpu_kernels
    for device in ("meta", "cpu"):
        x = torch.empty(1, 4, 8, 8, 8, device=device)
        assert _fast(x) == (device == "cpu")
        assert _kernels_apply(torch.empty(1, 3, 8, 8, 8, device=device), x[:, :1], 1) == (device == "cpu"
                                                                                           and cpu_kernels())
    torch.manual_seed(0)
    layer = Conv3d(4, 4, 3, padding=1).double()
    x = torch.randn(1, 4, 8, 8, 8, dtype=torch.float64)
    assert not _fast(x)
    assert torch.equal(layer(x), torch.nn.functional.conv3d(x, layer.weight, layer.bias, 1, 1))
