"""The instance optimizer's inner loop as fused CPU kernels (issue 21; numba, compiled on first use and cached).

`refine` (optimizer.py) calls `run` for CPU float tensors at full resolution; it computes exactly what the
PyTorch path computes (warp, LNCC with window^n box sums, grad_l2, Adam with amsgrad or SGD), with the
arithmetic arranged for memory traffic instead of generality:
- the warp samples the moving image once per voxel and keeps the derivative of the (tri)linear interpolant with
  respect to the displacement from the same corner values (what `grid_sample`'s backward recomputes; only the
  displacement needs a gradient, never the image), and writes the moments J, J^2, IJ the box sums need;
- the box sums slide a window (add the entering slice, subtract the leaving one) with float64 accumulators,
  two passes over memory per filter instead of 2 x window shifted additions per axis;
- the LNCC coefficients of `losses._LNCC` (derived in notebook 03) are one elementwise kernel that also sums cc;
- the gradient (LNCC term times the interpolant's derivative, plus grad_l2's) and the energy's regulariser sums
  are one pass, the optimizer update another (Adam's first step starts its moments at zero without a zeroing
  pass); the full-size arrays are kept between calls in one thread (`Scratch`), so a training step's refinement
  allocates nothing full-size and pays no page faults after the first.

For the same field the two paths give the same energy and gradient to float64 rounding, and on textured images
their fields after ten float64 steps agree to 1e-7 voxels (tests/test_optimizer.py). They do not agree to 1e-4
voxels in general, for reasons of rounding, not formula: in float32, flat regions have rounding-noise gradients
that Adam turns into lr-sized steps; and a field component on a kink of the interpolant (an identity start on a
flat background) takes one or the other one-sided slope by a rounding-sized difference. Against float64 the
kernels are no further than PyTorch's path (benchmarks/bench_cpu.py). Images are single-channel; anything else
takes PyTorch's path.
"""
from __future__ import annotations

import math
import threading

import numpy as np
import torch

from .transform import _base_and_scale

try:
    import numba
    from numba import njit, prange
    AVAILABLE = True
except ImportError:  # the PyTorch path serves everything without numba
    numba = None
    AVAILABLE = False

    def njit(*args, **kwargs):
        return (lambda f: f) if not args or not callable(args[0]) else args[0]

    prange = range

_TORCH_DTYPE = {np.float32: torch.float32, np.float64: torch.float64}
BETA1, BETA2, EPS = 0.9, 0.999, 1e-8   # torch.optim.Adam's defaults, which refine uses
_FAST = {"contract", "arcp", "nsz", "afn", "reassoc"}   # fastmath without "no NaN / no Inf": the checks rely on both
_JIT = dict(parallel=True, cache=True, nogil=True, fastmath=_FAST)


# The warps compute each sample's coordinate as PyTorch does, rounding included: the normalised grid
# fma(disp, scale, base) (`transform.normalised_grid`'s addcmul), then grid_sample's unnormalisation
# ((g + 1) / 2) * (n - 1) in 3-D (its scalar kernel) or (g + 1) * ((n - 1) / 2) in 2-D (its vectorised one), all in
# the images' dtype. A sample meant to fall on a voxel centre (an identity start) may land a rounding error below
# it, where the interpolant has a kink; the same coordinate gives the same one-sided slope as PyTorch's path.
@njit(inline="always", fastmath={"contract"})   # contract: a * b + c as one fma, like addcmul; nothing reordered
def _coord3(base, disp, scale, one, half, n_1):
    return ((base + disp * scale + one) * half) * n_1


@njit(inline="always", fastmath={"contract"})
def _coord2(base, disp, scale, one, half_n_1):
    return (base + disp * scale + one) * half_n_1


@njit(inline="always")
def _floor(c):
    """floor(c) as an integer, for -1 <= c < n (checked by the caller): truncation, one less below an integer
    (faster than math.floor, a library call here)."""
    i = int(c)
    return i - 1 if i > c else i


_WARP = _JIT


@njit(**_WARP)
def _warp3(mov, fix, phi, out, dw, mom, bz, by, bx, scale, k):
    """out = mov(p + phi(p)) trilinear, zeros outside; dw[c] = d out / d phi[c] (the interpolant's slope);
    mom = (J, J^2, I J) with J = out, I = fix (each product rounded to the images' dtype, as numpy's).
    bz, by, bx: the identity's normalised coordinates along D, H, W and scale (x, y, z order), as in
    `transform._base_and_scale`; k = (1, 1/2, D-1, H-1, W-1) (halving is exact: x / 2 == x * 0.5)."""
    D, H, W = mov.shape
    flat = mov.reshape(-1)
    HW = H * W
    sx, sy, sz, one, half, kz, ky, kx = scale[0], scale[1], scale[2], k[0], k[1], k[2], k[3], k[4]
    for d in prange(D):
        cz = bz[d]
        for h in range(H):
            cy = by[h]
            for w in range(W):
                z = _coord3(cz, phi[0, d, h, w], sz, one, half, kz)
                y = _coord3(cy, phi[1, d, h, w], sy, one, half, ky)
                x = _coord3(bx[w], phi[2, d, h, w], sx, one, half, kx)
                if not (z >= -1.0 and z < D and y >= -1.0 and y < H and x >= -1.0 and x < W):
                    out[d, h, w] = 0.0
                    dw[0, d, h, w] = 0.0
                    dw[1, d, h, w] = 0.0
                    dw[2, d, h, w] = 0.0
                    mom[0, d, h, w] = 0.0
                    mom[1, d, h, w] = 0.0
                    mom[2, d, h, w] = 0.0
                    continue
                z0 = _floor(z)
                y0 = _floor(y)
                x0 = _floor(x)
                fz = z - z0
                fy = y - y0
                fx = x - x0
                gz = 1.0 - fz
                gy = 1.0 - fy
                gx = 1.0 - fx
                if z0 >= 0 and y0 >= 0 and x0 >= 0 and z0 + 1 < D and y0 + 1 < H and x0 + 1 < W:
                    i = (z0 * H + y0) * W + x0            # one flat index for the eight corners
                    c000 = flat[i]
                    c001 = flat[i + 1]
                    c010 = flat[i + W]
                    c011 = flat[i + W + 1]
                    c100 = flat[i + HW]
                    c101 = flat[i + HW + 1]
                    c110 = flat[i + HW + W]
                    c111 = flat[i + HW + W + 1]
                else:
                    zi0 = 0 <= z0 < D
                    zi1 = 0 <= z0 + 1 < D
                    yi0 = 0 <= y0 < H
                    yi1 = 0 <= y0 + 1 < H
                    xi0 = 0 <= x0 < W
                    xi1 = 0 <= x0 + 1 < W
                    c000 = mov[z0, y0, x0] if zi0 and yi0 and xi0 else 0.0
                    c001 = mov[z0, y0, x0 + 1] if zi0 and yi0 and xi1 else 0.0
                    c010 = mov[z0, y0 + 1, x0] if zi0 and yi1 and xi0 else 0.0
                    c011 = mov[z0, y0 + 1, x0 + 1] if zi0 and yi1 and xi1 else 0.0
                    c100 = mov[z0 + 1, y0, x0] if zi1 and yi0 and xi0 else 0.0
                    c101 = mov[z0 + 1, y0, x0 + 1] if zi1 and yi0 and xi1 else 0.0
                    c110 = mov[z0 + 1, y0 + 1, x0] if zi1 and yi1 and xi0 else 0.0
                    c111 = mov[z0 + 1, y0 + 1, x0 + 1] if zi1 and yi1 and xi1 else 0.0
                # bilinear in (y, x) on the two z planes, and their x / y slopes
                p0 = gy * (gx * c000 + fx * c001) + fy * (gx * c010 + fx * c011)
                p1 = gy * (gx * c100 + fx * c101) + fy * (gx * c110 + fx * c111)
                out[d, h, w] = gz * p0 + fz * p1
                j = out[d, h, w]                         # rounded to the images' dtype
                mom[0, d, h, w] = j
                mom[1, d, h, w] = j * j
                mom[2, d, h, w] = fix[d, h, w] * j
                dw[0, d, h, w] = p1 - p0
                dw[1, d, h, w] = gz * (gx * (c010 - c000) + fx * (c011 - c001)) + \
                    fz * (gx * (c110 - c100) + fx * (c111 - c101))
                dw[2, d, h, w] = gz * (gy * (c001 - c000) + fy * (c011 - c010)) + \
                    fz * (gy * (c101 - c100) + fy * (c111 - c110))


@njit(**_WARP)
def _warp2(mov, fix, phi, out, dw, mom, by, bx, scale, k):
    """The 2-D warp (mov, fix and out (1, H, W), phi and dw (2, 1, H, W), mom (3, 1, H, W)): bilinear, zeros
    outside, its slopes and the moments, as `_warp3`. by, bx, scale as there; k = (1, (H-1)/2, (W-1)/2)."""
    _, H, W = mov.shape
    sx, sy, one, ky, kx = scale[0], scale[1], k[0], k[1], k[2]
    for h in prange(H):
        cy = by[h]
        for w in range(W):
            y = _coord2(cy, phi[0, 0, h, w], sy, one, ky)
            x = _coord2(bx[w], phi[1, 0, h, w], sx, one, kx)
            if not (y >= -1.0 and y < H and x >= -1.0 and x < W):
                out[0, h, w] = 0.0
                dw[0, 0, h, w] = 0.0
                dw[1, 0, h, w] = 0.0
                mom[0, 0, h, w] = 0.0
                mom[1, 0, h, w] = 0.0
                mom[2, 0, h, w] = 0.0
                continue
            y0 = _floor(y)
            x0 = _floor(x)
            fy = y - y0
            fx = x - x0
            gy = 1.0 - fy
            gx = 1.0 - fx
            yi0 = 0 <= y0 < H
            yi1 = 0 <= y0 + 1 < H
            xi0 = 0 <= x0 < W
            xi1 = 0 <= x0 + 1 < W
            c00 = mov[0, y0, x0] if yi0 and xi0 else 0.0
            c01 = mov[0, y0, x0 + 1] if yi0 and xi1 else 0.0
            c10 = mov[0, y0 + 1, x0] if yi1 and xi0 else 0.0
            c11 = mov[0, y0 + 1, x0 + 1] if yi1 and xi1 else 0.0
            out[0, h, w] = gy * (gx * c00 + fx * c01) + fy * (gx * c10 + fx * c11)
            j = out[0, h, w]
            mom[0, 0, h, w] = j
            mom[1, 0, h, w] = j * j
            mom[2, 0, h, w] = fix[0, h, w] * j
            dw[0, 0, h, w] = gx * (c10 - c00) + fx * (c11 - c01)
            dw[1, 0, h, w] = gy * (c01 - c00) + fy * (c11 - c10)


@njit(**_JIT)
def _box_hw(src, dst, r):
    """dst[k, d] = the (2r+1)^2 box sum of src[k, d] over (H, W), zero padding; one plane at a time."""
    K, D, H, W = src.shape
    for kd in prange(K * D):
        k = kd // D
        d = kd - k * D
        rows = np.empty((H, W), np.float64)
        for h in range(H):            # along W: a sliding sum per row
            acc = 0.0
            for w in range(min(r, W - 1) + 1):
                acc += src[k, d, h, w]
            rows[h, 0] = acc
            for w in range(1, W):
                if w + r < W:
                    acc += src[k, d, h, w + r]
                if w - r - 1 >= 0:
                    acc -= src[k, d, h, w - r - 1]
                rows[h, w] = acc
        acc_row = np.zeros(W, np.float64)   # along H: a sliding sum of rows
        for h in range(min(r, H - 1) + 1):
            for w in range(W):
                acc_row[w] += rows[h, w]
        for w in range(W):
            dst[k, d, 0, w] = acc_row[w]
        for h in range(1, H):
            if h + r < H:
                for w in range(W):
                    acc_row[w] += rows[h + r, w]
            if h - r - 1 >= 0:
                for w in range(W):
                    acc_row[w] -= rows[h - r - 1, w]
            for w in range(W):
                dst[k, d, h, w] = acc_row[w]


@njit(**_JIT)
def _box_d(src, dst, r):
    """dst = the (2r+1) box sum of src along D (axis 1), zero padding."""
    K, D, H, W = src.shape
    for kh in prange(K * H):
        k = kh // H
        h = kh - k * H
        acc = np.zeros(W, np.float64)
        for d in range(min(r, D - 1) + 1):
            for w in range(W):
                acc[w] += src[k, d, h, w]
        for w in range(W):
            dst[k, 0, h, w] = acc[w]
        for d in range(1, D):
            if d + r < D:
                for w in range(W):
                    acc[w] += src[k, d + r, h, w]
            if d - r - 1 >= 0:
                for w in range(W):
                    acc[w] -= src[k, d - r - 1, h, w]
            for w in range(W):
                dst[k, d, h, w] = acc[w]


def box_sum(x, r, tmp):
    """The window^n box sum of every map in x (K, D, H, W), zero padding; returns x or tmp (x's shape), which
    holds it (the other one is overwritten)."""
    _box_hw(x, tmp, r)
    if x.shape[1] == 1:          # a 2-D image is one plane
        return tmp
    _box_d(tmp, x, r)
    return x


@njit(**_JIT)
def _coefficients(mom, mean_i, var_i, n, eps):
    """From the box sums mom = (S_J, S_JJ, S_IJ): the halved dcc/dS coefficients in place, and sum(cc).

    The formulas of `losses._LNCC.forward`, one voxel at a time: cross = S_IJ - mean_I S_J,
    var_J = S_JJ - S_J^2 / n, den = var_I var_J + eps, cc = cross^2 / den, A = cross / den, B = cc var_I / den,
    coefficients (B S_J / n - A mean_I, -B / 2, A).
    """
    _, D, H, W = mom.shape
    total = 0.0
    for d in prange(D):
        part = 0.0
        for h in range(H):
            for w in range(W):
                s_j = mom[0, d, h, w]
                cross = mom[2, d, h, w] - mean_i[d, h, w] * s_j
                var_j = mom[1, d, h, w] - s_j * s_j / n
                den = var_i[d, h, w] * var_j + eps
                cc = cross * cross / den
                part += cc
                a = cross / den
                b = cc / den * var_i[d, h, w]
                mom[0, d, h, w] = b * s_j / n - a * mean_i[d, h, w]
                mom[1, d, h, w] = -0.5 * b
                mom[2, d, h, w] = a
        total += part
    return total


@njit(nogil=True, cache=True, fastmath=_FAST)
def _gradient_plane(boxed, warped, fixed, dw, phi, grad, scale, reg, nd, d, out):
    """`_gradient` for the plane d, a row at a time (branch-free inner loops); out = (sum diff^2 along D, H, W,
    sum of the gradient)."""
    _, D, H, W = phi.shape
    s0 = 0.0
    s1 = 0.0
    s2 = 0.0
    g_sum = 0.0
    # neighbours along D and H as clamped indices with 0/1 weights (no branch in the loop over W)
    fdm = 1.0 if nd == 3 and d > 0 else 0.0
    fdp = 1.0 if nd == 3 and d + 1 < D else 0.0
    dm = max(d - 1, 0)
    dp = min(d + 1, D - 1)
    c0 = reg[0]
    c1 = reg[1]
    c2 = reg[2]
    for h in range(H):
        fhm = 1.0 if h > 0 else 0.0
        fhp = 1.0 if h + 1 < H else 0.0
        hm = max(h - 1, 0)
        hp = min(h + 1, H - 1)
        for k in range(nd):
            row = grad[k, d, h]
            p_row = phi[k, d, h]
            for w in range(W):
                lg = scale * (boxed[0, d, h, w] + 2.0 * warped[0, d, h, w] * boxed[1, d, h, w]
                              + fixed[d, h, w] * boxed[2, d, h, w])
                p = p_row[w]
                diff_d = phi[k, dp, h, w] - p
                diff_h = phi[k, d, hp, w] - p
                s0 += fdp * diff_d * diff_d
                s1 += fhp * diff_h * diff_h
                row[w] = (lg * dw[k, d, h, w]
                          + c0 * (fdm * (p - phi[k, dm, h, w]) - fdp * diff_d)
                          + c1 * (fhm * (p - phi[k, d, hm, w]) - fhp * diff_h))
            for w in range(W - 1):                 # along W: forward differences
                diff = p_row[w + 1] - p_row[w]
                s2 += diff * diff
                row[w] -= c2 * diff
            for w in range(1, W):
                row[w] += c2 * (p_row[w] - p_row[w - 1])
            for w in range(W):
                g_sum += row[w]
    out[0] = s0
    out[1] = s1
    out[2] = s2
    out[3] = g_sum


@njit(**_JIT)
def _gradient(boxed, warped, fixed, dw, phi, grad, scale, reg, nd):
    """grad[k] = d(energy)/d phi[k]: the LNCC term scale (box(c0) + 2 J box(c1) + I box(c2)) times the warp's
    slope, plus grad_l2's gradient (its per-axis weights, reg_weight included, in `reg`). Returns the squared
    forward differences summed per spatial axis (for grad_l2's value) and the sum of the gradient (for the finite
    check). nd: 3 (phi (3, D, H, W)) or 2 (phi (2, 1, H, W)); channel k moves along spatial axis k of the image.
    """
    D = phi.shape[1]
    parts = np.zeros((D, 4))
    for d in prange(D):
        _gradient_plane(boxed, warped, fixed, dw, phi, grad, scale, reg, nd, d, parts[d])
    return parts[:, 0].sum(), parts[:, 1].sum(), parts[:, 2].sum(), parts[:, 3].sum()


@njit(**_JIT)
def _adam(phi, grad, m, v, vmax, step_size, bc2_sqrt, first):
    """One torch.optim.Adam(amsgrad=True) step, in place (lr and bias corrections folded by the caller). The
    first step starts the moments at zero (m, v, vmax may then hold anything: no separate zeroing pass)."""
    flat_p = phi.reshape(-1)
    flat_g = grad.reshape(-1)
    fm = m.reshape(-1)
    fv = v.reshape(-1)
    fx = vmax.reshape(-1)
    for i in prange(flat_p.size):
        g = flat_g[i]
        if first:
            fm[i] = 0.0
            fv[i] = 0.0
            fx[i] = 0.0
        fm[i] = fm[i] + (1.0 - BETA1) * (g - fm[i])          # lerp, as torch's Adam
        fv[i] = BETA2 * fv[i] + (1.0 - BETA2) * g * g
        if fv[i] > fx[i]:
            fx[i] = fv[i]
        flat_p[i] -= step_size * fm[i] / (math.sqrt(fx[i]) / bc2_sqrt + EPS)


@njit(**_JIT)
def _sgd(phi, grad, lr):
    flat_p = phi.reshape(-1)
    flat_g = grad.reshape(-1)
    for i in prange(flat_p.size):
        flat_p[i] -= lr * flat_g[i]


@njit(parallel=True, cache=True, nogil=True)   # no fastmath: the products and differences rounded as numpy's
def _fixed_stats(s, mean_i, var_i, n):
    """mean_I = S_I / n and var_I = S_II - S_I mean_I from the box sums s = (S_I, S_II), in the images' dtype
    (n of that dtype), as `losses.FixedLNCC` computes them."""
    flat_s = s[0].reshape(-1)
    flat_ss = s[1].reshape(-1)
    flat_m = mean_i.reshape(-1)
    flat_v = var_i.reshape(-1)
    for i in prange(flat_s.size):
        mean = flat_s[i] / n
        flat_m[i] = mean
        flat_v[i] = flat_ss[i] - flat_s[i] * mean


@njit(**_JIT)
def _square(f, mom):
    """mom = (f, f^2) (each rounded to f's dtype)."""
    a = f.reshape(-1)
    m0 = mom[0].reshape(-1)
    m1 = mom[1].reshape(-1)
    for i in prange(a.size):
        x = a[i]
        m0[i] = x
        m1[i] = x * x


class Scratch:
    """The full-size arrays of one refinement's shapes (reused across calls of `run` in one thread: a fresh set
    costs page faults on every first touch, a tenth of a step at 80x96x112)."""

    def __init__(self, b, nd, vol, dtype):
        self.key = (b, nd, vol, np.dtype(dtype))
        self.mom = np.empty((3, *vol), dtype)
        self.tmp = np.empty_like(self.mom)
        self.warped = np.empty((1, *vol), dtype)
        self.dw = np.empty((nd, *vol), dtype)
        self.grad = np.empty((b, nd, *vol), dtype)
        self.mean_i = np.empty((b, *vol), dtype)
        self.var_i = np.empty((b, *vol), dtype)
        self.adam = np.empty((3, b, nd, *vol), dtype)   # m, v, vmax


_LOCAL = threading.local()


def _scratch(b, nd, vol, dtype) -> Scratch:
    """This thread's scratch arrays for these shapes (only the last shapes' are kept)."""
    key = (b, nd, vol, np.dtype(dtype))
    held = getattr(_LOCAL, "scratch", None)
    if held is None or held.key != key:
        _LOCAL.scratch = held = None          # let the old arrays go before the new ones are made
        _LOCAL.scratch = held = Scratch(*key)
    return held


class Problem:
    """One refinement: per batch item, the moving image, the fixed image's statistics and the scratch buffers.

    `energy_and_gradient(phi)` writes d(energy)/d(phi) into `self.grad` and returns (energy, sum of gradient),
    rounded to the images' dtype as the PyTorch path's are. phi: (B, nd, *spatial) numpy, float32 or float64.
    `reuse`: work in this thread's kept arrays (`_scratch`, what `run` does) instead of new ones.
    """

    def __init__(self, moving, fixed, reg_weight, window, eps=1e-5, reuse=False):
        self.nd = moving.ndim - 2
        self.dtype = moving.dtype
        b = moving.shape[0]
        spatial = moving.shape[2:]
        vol = (1, *spatial) if self.nd == 2 else tuple(spatial)            # every image as (D, H, W)
        self.moving = [np.ascontiguousarray(moving[i, 0]).reshape(vol) for i in range(b)]
        self.fixed = [np.ascontiguousarray(fixed[i, 0]).reshape(vol) for i in range(b)]
        self.r, self.n, self.eps = window // 2, float(window ** self.nd), eps
        self.reg_weight = float(reg_weight)
        self.M = float(fixed.size)
        self.scale = -2.0 / self.M                                          # d(loss)/d(cc) times the halving
        # grad_l2 = sum over axes of sum(diff^2) / numel(diff), / nd; its gradient weights 2 / (numel nd)
        numel = int(np.prod(moving.shape[2:])) * b * self.nd
        self.reg = np.zeros(3)
        self.n_diff = np.ones(3)
        for i, s in enumerate(spatial):
            a = i + 3 - self.nd
            self.n_diff[a] = numel // s * (s - 1)
            self.reg[a] = self.reg_weight * 2.0 / (self.n_diff[a] * self.nd)
        base, scale = _base_and_scale(tuple(spatial), torch.device("cpu"), _TORCH_DTYPE[self.dtype.type])
        t = self.dtype.type
        k = [1, 0.5, *(s - 1 for s in spatial)] if self.nd == 3 else [1, *(t(s - 1) / t(2) for s in spatial)]
        g = base[0].numpy()              # (*spatial, nd), x first; coordinate c depends on its own axis only
        axes = [g[:, 0, 0, 2], g[0, :, 0, 1], g[0, 0, :, 0]] if self.nd == 3 else [g[:, 0, 1], g[0, :, 0]]
        self.grid = (*(np.ascontiguousarray(a) for a in axes), scale.numpy(), np.array(k, self.dtype))
        self.scratch = sc = (_scratch if reuse else Scratch)(b, self.nd, vol, self.dtype)
        self.mom, self.tmp, self.warped, self.dw, self.grad = sc.mom, sc.tmp, sc.warped, sc.dw, sc.grad
        self.stats = []
        for i, f in enumerate(self.fixed):                                  # losses.FixedLNCC's statistics, once
            _square(f, sc.mom[:2])
            s = box_sum(sc.mom[:2], self.r, sc.tmp[:2])
            _fixed_stats(s, sc.mean_i[i], sc.var_i[i], self.dtype.type(self.n))
            self.stats.append((sc.mean_i[i], sc.var_i[i]))

    def energy_and_gradient(self, phi):
        cc_sum, sq, gsum = 0.0, np.zeros(3), 0.0
        for i, (mov, fix, (mean_i, var_i)) in enumerate(zip(self.moving, self.fixed, self.stats)):
            p = phi[i].reshape(self.grad.shape[1:])
            (_warp3 if self.nd == 3 else _warp2)(mov, fix, p, self.warped[0], self.dw, self.mom, *self.grid)
            boxed = box_sum(self.mom, self.r, self.tmp)
            cc_sum += _coefficients(boxed, mean_i, var_i, self.n, self.eps)
            boxed = box_sum(boxed, self.r, self.tmp if boxed is self.mom else self.mom)
            s0, s1, s2, g = _gradient(boxed, self.warped, fix, self.dw, p, self.grad[i], self.scale, self.reg,
                                      self.nd)
            sq += (s0, s1, s2)
            gsum += g
        reg_value = float(sum(sq[a] / self.n_diff[a] for a in range(3 - self.nd, 3))) / self.nd
        energy = self.dtype.type(-cc_sum / self.M + self.reg_weight * reg_value)   # rounded as torch's would be
        return float(energy), float(self.dtype.type(gsum))


def run(disp, moving, fixed, steps, lr, reg_weight, optimizer, window, on_energy, final_energy):
    """Refine `disp` (numpy, B x nd x spatial, modified in place) with `steps` updates; see optimizer.refine.

    `on_energy(energy, gradient_sum)` is called before each update and returns False to stop (the non-finite
    check of the PyTorch path). Returns the energy at the end when `final_energy` and no step stopped, else
    None. (An energy-only final pass, without the second box sum and the gradient, measured slower: numpy's
    single-threaded differences cost more than the fused kernel they replace.)
    """
    # as many threads as PyTorch may use (a run's `threads`, torch.set_num_threads), at most numba's pool
    numba.set_num_threads(max(1, min(torch.get_num_threads(), numba.config.NUMBA_NUM_THREADS)))
    prob = Problem(moving, fixed, reg_weight, window, reuse=True)
    phi = disp.reshape(prob.grad.shape)
    m, v, vmax = prob.scratch.adam
    for t in range(1, steps + 1):
        energy, gsum = prob.energy_and_gradient(phi)
        if not on_energy(energy, gsum):
            return None                  # stopped at a non-finite energy: no final energy, as PyTorch's path
        if optimizer == "adam":
            _adam(phi, prob.grad, m, v, vmax, lr / (1.0 - BETA1 ** t), math.sqrt(1.0 - BETA2 ** t), t == 1)
        else:
            _sgd(phi, prob.grad, lr)
    if final_energy:
        return prob.energy_and_gradient(phi)[0]
    return None
