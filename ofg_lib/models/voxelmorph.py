"""VoxelMorph-1 and -2 as in the OFG and TransMorph code (Balakrishnan et al. 2019, TMI).

A U-Net of stride-2 3^3 convolutions with LeakyReLU(0.2); the decoder convolves, upsamples x2 (nearest) and
concatenates the matching encoder output, the last skip being the 2-channel input itself; extra convolutions
at full resolution; a flow convolution initialised near zero. VoxelMorph-1: encoder (8, 32, 32, 32), decoder
(32, 32, 32, 32), full resolution (32, 8, 8): 274,387 parameters. VoxelMorph-2: encoder (16, 32, 32, 32),
full resolution (32, 16, 16): 301,411 parameters. Any input whose sides are multiples of 16.
A 2-D `img_size` (H, W) builds the same design with 3^2 convolutions and a 2-channel field (the 2-D track).

Which VoxelMorph-1: this is the TransMorph repository's VXM-1 (`VxmDense_1`), the model the OFG code trains
and its Table 1 reports, with 274,387 parameters at 160x192x224. The original VoxelMorph paper's VoxelMorph-1
(Balakrishnan et al. 2019) has about 259,675: the same encoder, a different decoder. Numbers from either paper's
VoxelMorph-1 row are therefore not for the same network.
"""
from __future__ import annotations

import torch
import torch.nn as nn

from . import register
from .layers import conv, flow_head


def _block(cin: int, cout: int, stride: int = 1, ndim: int = 3) -> nn.Sequential:
    return nn.Sequential(conv(ndim)(cin, cout, 3, stride, 1), nn.LeakyReLU(0.2))


class VoxelMorph(nn.Module):
    def __init__(self, img_size=None, enc=(8, 32, 32, 32), dec=(32, 32, 32, 32), full=(32, 8, 8), in_channels=2):
        super().__init__()
        ndim = 3 if img_size is None else len(img_size)
        if len(dec) != len(enc):
            raise ValueError(f"the decoder needs one convolution per encoder level: enc {enc}, dec {dec}")
        self.down = nn.ModuleList()
        prev = in_channels
        for nf in enc:
            self.down.append(_block(prev, nf, stride=2, ndim=ndim))
            prev = nf
        skips = list(reversed(enc))          # channels concatenated after each decoder convolution
        self.up = nn.ModuleList()
        for i, nf in enumerate(dec):
            self.up.append(_block(prev + (skips[i] if i > 0 else 0), nf, ndim=ndim))
            prev = nf
        prev += in_channels                  # the last skip is the input
        self.full = nn.ModuleList()
        for nf in full:
            self.full.append(_block(prev, nf, ndim=ndim))
            prev = nf
        self.flow = flow_head(prev, ndim, channels_last_cpu=True)
        self.upsample = nn.Upsample(scale_factor=2, mode="nearest")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        history = [x]
        for layer in self.down:
            history.append(layer(history[-1]))
        x = history.pop()
        for layer in self.up:
            x = torch.cat([self.upsample(layer(x)), history.pop()], 1)
        for layer in self.full:
            x = layer(x)
        return self.flow(x).contiguous()     # the CPU path computes channels-last (layers.py); callers get NCDHW


def _vm(enc, dec, full):
    return lambda img_size, **kw: VoxelMorph(img_size, **{"enc": enc, "dec": dec, "full": full, **kw})


for _name, _args in {"voxelmorph-1": ((8, 32, 32, 32), (32, 32, 32, 32), (32, 8, 8)),
                     "voxelmorph-2": ((16, 32, 32, 32), (32, 32, 32, 32), (32, 16, 16)),
                     "voxelmorph-1-tiny": ((4, 8, 8, 8), (8, 8, 8, 8), (8, 4, 4)),
                     "voxelmorph-2-tiny": ((8, 16, 16, 16), (16, 16, 16, 16), (16, 8, 8))}.items():
    register(_name, _vm(*_args), divisor=16, dims=(2, 3))
