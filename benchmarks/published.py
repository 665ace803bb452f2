"""The published code path of LNCC (`NCC_vxm` of the OFG / VoxelMorph code): five dense window^3
convolutions with autograd's backward. Not part of the library (its LNCC is `ofg_lib.losses.lncc`, a box filter
with a hand-written backward): the reference the tests check `lncc` against and the baseline the benchmarks
(bench_lncc.py, bench_gpu.py) and notebook 03's speed section time it against.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from ofg_lib.losses import _check_pair

__all__ = ["lncc_conv3d"]


def lncc_conv3d(fixed: torch.Tensor, warped: torch.Tensor, window: int = 9, eps: float = 1e-5) -> torch.Tensor:
    """The published code path (`NCC_vxm`): five dense window^3 convolutions, autograd backward.

    The reference of the tests and the baseline of the speed comparisons (notebook 03, benchmarks/).
    """
    _check_pair(fixed, warped, window, False)
    if fixed.dim() != 5 or fixed.shape[1] != 1:
        raise ValueError(f"lncc_conv3d takes single-channel volumes (B, 1, D, H, W), got {tuple(fixed.shape)}")
    filt = torch.ones(1, 1, window, window, window, device=fixed.device, dtype=fixed.dtype)
    i, j = fixed, warped
    i_sum, j_sum, i2_sum, j2_sum, ij_sum = (F.conv3d(x, filt, padding=window // 2)
                                            for x in (i, j, i * i, j * j, i * j))
    win = float(window ** 3)
    u_i, u_j = i_sum / win, j_sum / win
    cross = ij_sum - u_j * i_sum - u_i * j_sum + u_i * u_j * win
    i_var = i2_sum - 2 * u_i * i_sum + u_i * u_i * win
    j_var = j2_sum - 2 * u_j * j_sum + u_j * u_j * win
    return -torch.mean(cross * cross / (i_var * j_var + eps))
