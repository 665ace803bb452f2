"""Layers shared by the models.

**The CPU convolution path (issue 21).** On the CPU, PyTorch sends a float32 convolution to oneDNN (mkldnn) only
when a heuristic says it pays (`use_mkldnn` in ATen's ConvUtils.h, for input and backward alike): a batch of one
with 3^n kernels needs N*C*D*H > 20480 elements in the leading dimensions, whatever the memory format. Below it,
ATen's generic `slow_conv3d` (im2col + GEMM) runs: at 48x64x64 every VoxelMorph-1 convolution below full
resolution, and the small networks' full-resolution 4-channel layers. Measured forward and backward, slow_conv3d
against oneDNN: 172 against 24 ms for one 4->4 layer at 48x64x64, 31 against 8 ms for 64->32 at 12x16x16, 9.3
against 8.0 ms for the strided 2->16 input layer. So `Conv2d` and `Conv3d` here (VoxelMorph's; TransMorph
and ViT-V-Net keep PyTorch's classes), on the CPU in float32:
- convolve a channels-last copy of their input and weight (oneDNN's channels-last path; the weight copy is a few
  hundred kB, and a previous layer's output is already channels-last, so most inputs need no copy);
- in 3-D, when the heuristic would refuse oneDNN for a batch of one, convolve the two halves of the volume along
  D as a batch of two (each with the rows its kernel reaches, so the sums are the same; an odd output depth
  computes its middle row twice and keeps one), which oneDNN takes (batch > 1).
Everything else is left alone: the parameters keep their layout (checkpoints, DDP and optimizers see what they
saw before), and CUDA, other dtypes and `set_cpu_channels_last(False)` (or `OFG_CPU_CHANNELS_LAST=0`) take
PyTorch's own path, the one measured as the baseline in `benchmarks/bench_cpu.py`. The results agree with
PyTorch's path to float32 rounding (tests/test_models.py checks outputs and gradients against float64).
"""
from __future__ import annotations

import contextlib
import os

import torch
import torch.nn as nn
import torch.nn.functional as F

_CPU_CHANNELS_LAST = os.environ.get("OFG_CPU_CHANNELS_LAST", "1") != "0"


def set_cpu_channels_last(on: bool) -> bool:
    """Turn the channels-last CPU convolution path on or off for the whole process; returns the old setting."""
    global _CPU_CHANNELS_LAST
    old, _CPU_CHANNELS_LAST = _CPU_CHANNELS_LAST, bool(on)
    return old


@contextlib.contextmanager
def cpu_channels_last_set(on: bool):
    """`with cpu_channels_last_set(False): ...` runs the block with the switch set, and restores it after."""
    old = set_cpu_channels_last(on)
    try:
        yield
    finally:
        set_cpu_channels_last(old)


def cpu_channels_last() -> bool:
    """Whether `Conv2d`/`Conv3d` take the channels-last oneDNN path on the CPU (module docstring)."""
    return _CPU_CHANNELS_LAST


def _fast(x: torch.Tensor) -> bool:
    return _CPU_CHANNELS_LAST and x.device.type == "cpu" and x.dtype == torch.float32


class _ChannelsLastOnCPU:
    """Mixed into nn.Conv2d / nn.Conv3d: convolve channels-last copies on the CPU (module docstring)."""

    layout: torch.memory_format

    def forward(self, x):
        if _fast(x):
            x = x.contiguous(memory_format=self.layout)
            weight = self.weight.contiguous(memory_format=self.layout)
            if self._as_halves(x):
                return self._halves(x, weight)
            return self._conv_forward(x, weight, self.bias)
        return super().forward(x)

    def _as_halves(self, x) -> bool:
        """Whether ATen would send this 3-D convolution to slow_conv3d (its oneDNN heuristic: batch 1 and
        N*C*D*H <= 20480) and the batch-of-halves form applies (zero padding given as numbers, no dilation or
        groups, an output at least 2 deep)."""
        if x.dim() != 5 or x.shape[0] != 1 or x.shape[1] * x.shape[2] * x.shape[3] > 20480:
            return False
        if self.padding_mode != "zeros" or isinstance(self.padding, str) or self.groups != 1 or \
                any(d != 1 for d in self.dilation):
            return False
        return (x.shape[2] + 2 * self.padding[0] - self.kernel_size[0]) // self.stride[0] + 1 >= 2

    def _halves(self, x, weight):
        """The convolution of x (1, C, D, H, W) as its two halves along D in one batch (module docstring)."""
        k, s, p = self.kernel_size[0], self.stride[0], self.padding[0]
        xp = F.pad(x, (0, 0, 0, 0, p, p)) if p else x
        d_out = (xp.shape[2] - k) // s + 1
        n = (d_out + 1) // 2                     # output rows per half; the halves overlap by one if d_out is odd
        span, second = (n - 1) * s + k, (d_out - n) * s      # input rows of a half; where the second one starts
        both = torch.cat([xp[:, :, :span], xp[:, :, second:second + span]]).contiguous(memory_format=self.layout)
        y = F.conv3d(both, weight, self.bias, self.stride, (0, *self.padding[1:]))
        return torch.cat([y[:1], y[1:, :, 2 * n - d_out:]], 2)


class Conv2d(_ChannelsLastOnCPU, nn.Conv2d):
    """nn.Conv2d that convolves in channels-last layout on the CPU; same parameters."""
    layout = torch.channels_last


class Conv3d(_ChannelsLastOnCPU, nn.Conv3d):
    """nn.Conv3d that convolves in channels-last layout on the CPU; same parameters."""
    layout = torch.channels_last_3d


def conv(ndim: int):
    """`Conv2d` or `Conv3d` (this module's) for a 2-D or 3-D model."""
    if ndim not in (2, 3):
        raise ValueError(f"models are 2-D or 3-D, got {ndim} spatial dimensions")
    return Conv2d if ndim == 2 else Conv3d


def flow_head(in_channels: int, ndim: int = 3, channels_last_cpu: bool = False) -> nn.Module:
    """The 3^n convolution to a displacement: weights from N(0, 1e-5), zero bias, so the first field is ~0.

    `channels_last_cpu`: this module's `Conv2d`/`Conv3d` (VoxelMorph, whose forward returns a contiguous field);
    otherwise PyTorch's own class, as the rest of TransMorph and ViT-V-Net."""
    cls = conv(ndim) if channels_last_cpu else (nn.Conv2d if ndim == 2 else nn.Conv3d)
    layer = cls(in_channels, ndim, kernel_size=3, padding=1)
    nn.init.normal_(layer.weight, 0.0, 1e-5)
    nn.init.zeros_(layer.bias)
    return layer


class DropPath(nn.Module):
    """Stochastic depth: drop the whole residual branch of a sample with probability p (training only)."""

    def __init__(self, p: float = 0.0):
        super().__init__()
        self.p = float(p)

    def forward(self, x):
        if self.p == 0.0 or not self.training:
            return x
        keep = 1.0 - self.p
        mask = x.new_empty((x.shape[0],) + (1,) * (x.dim() - 1)).bernoulli_(keep)
        return x * mask / keep
