"""TransMorph (Chen et al. 2022) with the hyper-parameters of its published IXI configuration.

A 3-D Swin transformer encoder: patch size 4 (Conv3d + LayerNorm), embed dim 96, depths (2, 2, 4, 2), heads
(4, 4, 8, 8), windows (5, 6, 7) ((5, 6, 5) for 160x192x160), MLP ratio 4, no qkv bias, stochastic depth up
to 0.3, relative position bias, patch merging Linear(8C -> 2C); a decoder fed by the four stages and two
convolutional skips (from the input and an AvgPool(3, 2, 1) copy), each block x2 trilinear upsampling, skip
concatenation and two conv-InstanceNorm-LeakyReLU(0.01); a 16-channel registration head. 46,771,251
parameters at 160x192x224. Sides must be multiples of 32. `checkpoint=True` recomputes the Swin blocks in
the backward pass (activation checkpointing) to save memory on large inputs.
"""
from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F
import torch.utils.checkpoint as cp

from . import register
from .layers import DropPath, flow_head


def _windows(x, w):
    """(B, D, H, W, C) -> (B * n_windows, w0 * w1 * w2, C)."""
    b, d, h, wd, c = x.shape
    x = x.view(b, d // w[0], w[0], h // w[1], w[1], wd // w[2], w[2], c)
    return x.permute(0, 1, 3, 5, 2, 4, 6, 7).reshape(-1, w[0] * w[1] * w[2], c)


def _unwindows(x, w, b, d, h, wd):
    x = x.view(b, d // w[0], h // w[1], wd // w[2], w[0], w[1], w[2], -1)
    return x.permute(0, 1, 4, 2, 5, 3, 6, 7).reshape(b, d, h, wd, -1)


class _WindowAttention(nn.Module):
    def __init__(self, dim, window, heads, qkv_bias):
        super().__init__()
        self.heads, self.scale = heads, (dim // heads) ** -0.5
        w = window
        self.relative_position_bias_table = nn.Parameter(torch.zeros((2 * w[0] - 1) * (2 * w[1] - 1) * (2 * w[2] - 1), heads))
        nn.init.trunc_normal_(self.relative_position_bias_table, std=0.02)
        coords = torch.stack(torch.meshgrid(*[torch.arange(s) for s in w], indexing="ij")).flatten(1)
        rel = (coords[:, :, None] - coords[:, None, :]).permute(1, 2, 0) + torch.tensor([w[0] - 1, w[1] - 1, w[2] - 1])
        index = rel[..., 0] * (2 * w[1] - 1) * (2 * w[2] - 1) + rel[..., 1] * (2 * w[2] - 1) + rel[..., 2]
        self.register_buffer("relative_position_index", index, persistent=False)
        self.qkv = nn.Linear(dim, 3 * dim, bias=qkv_bias)
        self.proj = nn.Linear(dim, dim)

    def forward(self, x, mask=None):
        bw, n, c = x.shape
        q, k, v = self.qkv(x).reshape(bw, n, 3, self.heads, c // self.heads).permute(2, 0, 3, 1, 4)
        attn = (q * self.scale) @ k.transpose(-2, -1)
        bias = self.relative_position_bias_table[self.relative_position_index.reshape(-1)].view(n, n, -1)
        attn = attn + bias.permute(2, 0, 1).unsqueeze(0)
        if mask is not None:
            nw = mask.shape[0]
            attn = (attn.view(bw // nw, nw, self.heads, n, n) + mask[None, :, None]).view(-1, self.heads, n, n)
        return self.proj((attn.softmax(-1) @ v).transpose(1, 2).reshape(bw, n, c))


class _SwinBlock(nn.Module):
    def __init__(self, dim, heads, window, shift, mlp_ratio, qkv_bias, drop_path):
        super().__init__()
        self.window, self.shift = window, shift
        self.norm1, self.norm2 = nn.LayerNorm(dim), nn.LayerNorm(dim)
        self.attn = _WindowAttention(dim, window, heads, qkv_bias)
        self.mlp = nn.Sequential(nn.Linear(dim, int(dim * mlp_ratio)), nn.GELU(), nn.Linear(int(dim * mlp_ratio), dim))
        self.drop_path = DropPath(drop_path)

    def forward(self, x, size, mask):
        b, _, c = x.shape
        d, h, w = size
        y = self.norm1(x).view(b, d, h, w, c)
        pads = [(win - s % win) % win for s, win in zip(size, self.window)]
        y = F.pad(y, (0, 0, 0, pads[2], 0, pads[1], 0, pads[0]))
        dp, hp, wp = y.shape[1:4]
        if any(self.shift):
            y = torch.roll(y, shifts=[-s for s in self.shift], dims=(1, 2, 3))
        y = _unwindows(self.attn(_windows(y, self.window), mask if any(self.shift) else None), self.window, b, dp, hp, wp)
        if any(self.shift):
            y = torch.roll(y, shifts=list(self.shift), dims=(1, 2, 3))
        y = y[:, :d, :h, :w].reshape(b, d * h * w, c)
        x = x + self.drop_path(y)
        return x + self.drop_path(self.mlp(self.norm2(x)))


def _shift_mask(size, window, shift, device):
    """The attention mask of shifted windows (0 within a region, -100 across regions), as in Swin."""
    padded = [-(-s // w) * w for s, w in zip(size, window)]
    img = torch.zeros(1, *padded, 1, device=device)
    count = 0
    spans = [(slice(0, -w), slice(-w, -s), slice(-s, None)) for w, s in zip(window, shift)]
    for a in spans[0]:
        for b in spans[1]:
            for c in spans[2]:
                img[:, a, b, c] = count
                count += 1
    m = _windows(img, window).squeeze(-1)
    diff = m[:, None, :] - m[:, :, None]
    return diff.masked_fill(diff != 0, -100.0).masked_fill(diff == 0, 0.0)


class _Stage(nn.Module):
    def __init__(self, dim, depth, heads, window, mlp_ratio, qkv_bias, drop_paths, merge, checkpoint):
        super().__init__()
        self.window, self.shift, self.checkpoint = window, tuple(w // 2 for w in window), checkpoint
        self.blocks = nn.ModuleList(
            _SwinBlock(dim, heads, window, (0, 0, 0) if i % 2 == 0 else self.shift, mlp_ratio, qkv_bias, drop_paths[i])
            for i in range(depth))
        self.downsample = _PatchMerging(dim) if merge else None

    def forward(self, x, size):
        mask = _shift_mask(size, self.window, self.shift, x.device).to(x.dtype)
        for blk in self.blocks:
            x = cp.checkpoint(blk, x, size, mask, use_reentrant=False) if self.checkpoint and x.requires_grad \
                else blk(x, size, mask)
        if self.downsample is None:
            return x, x, size
        return x, self.downsample(x, size), tuple((s + 1) // 2 for s in size)


class _PatchMerging(nn.Module):
    def __init__(self, dim):
        super().__init__()
        self.norm = nn.LayerNorm(8 * dim)
        self.reduction = nn.Linear(8 * dim, 2 * dim, bias=False)

    def forward(self, x, size):
        b, _, c = x.shape
        x = x.view(b, *size, c)
        x = F.pad(x, (0, 0, 0, size[2] % 2, 0, size[1] % 2, 0, size[0] % 2))
        parts = [x[:, i::2, j::2, k::2] for i, j, k in
                 ((0, 0, 0), (1, 0, 0), (0, 1, 0), (0, 0, 1), (1, 1, 0), (0, 1, 1), (1, 0, 1), (1, 1, 1))]
        return self.reduction(self.norm(torch.cat(parts, -1).view(b, -1, 8 * c)))


def _conv_in_lrelu(cin, cout):
    return nn.Sequential(nn.Conv3d(cin, cout, 3, padding=1, bias=False), nn.InstanceNorm3d(cout), nn.LeakyReLU(0.01))


class _DecoderBlock(nn.Module):
    def __init__(self, cin, cout, skip):
        super().__init__()
        self.conv1, self.conv2 = _conv_in_lrelu(cin + skip, cout), _conv_in_lrelu(cout, cout)

    def forward(self, x, skip):
        x = F.interpolate(x, scale_factor=2, mode="trilinear", align_corners=False)
        return self.conv2(self.conv1(torch.cat([x, skip], 1)))


class TransMorph(nn.Module):
    def __init__(self, img_size, embed_dim=96, depths=(2, 2, 4, 2), heads=(4, 4, 8, 8), window=None, mlp_ratio=4.0,
                 qkv_bias=False, drop_path=0.3, patch=4, reg_head=16, in_channels=2, checkpoint=False):
        super().__init__()
        if window is None:  # the published choices: (5, 6, 7) for 160x192x224, (5, 6, 5) for 160x192x160
            window = tuple(max(1, s // 32) for s in img_size)
        self.window = tuple(window)
        self.patch_embed = nn.Conv3d(in_channels, embed_dim, kernel_size=patch, stride=patch)
        self.patch_norm = nn.LayerNorm(embed_dim)
        n_blocks = sum(depths)
        rates = [drop_path * i / max(1, n_blocks - 1) for i in range(n_blocks)]  # stochastic depth, 0 -> max
        dims = [embed_dim * 2 ** i for i in range(len(depths))]
        self.stages = nn.ModuleList(
            _Stage(dims[i], depths[i], heads[i], self.window, mlp_ratio, qkv_bias,
                   rates[sum(depths[:i]):sum(depths[:i + 1])], i < len(depths) - 1, checkpoint)
            for i in range(len(depths)))
        self.norms = nn.ModuleList(nn.LayerNorm(d) for d in dims)
        e = embed_dim
        self.up0, self.up1 = _DecoderBlock(8 * e, 4 * e, 4 * e), _DecoderBlock(4 * e, 2 * e, 2 * e)
        self.up2, self.up3 = _DecoderBlock(2 * e, e, e), _DecoderBlock(e, e // 2, e // 2)
        self.up4 = _DecoderBlock(e // 2, reg_head, reg_head)
        self.c1, self.c2 = _conv_in_lrelu(in_channels, e // 2), _conv_in_lrelu(in_channels, reg_head)
        self.flow = flow_head(reg_head)

    def forward(self, x):
        f5 = self.c2(x)
        f4 = self.c1(F.avg_pool3d(x, 3, stride=2, padding=1))
        t = self.patch_embed(x)
        size = tuple(t.shape[2:])
        t = self.patch_norm(t.flatten(2).transpose(1, 2))
        feats = []
        for stage, norm in zip(self.stages, self.norms):
            out, t, new_size = stage(t, size)
            feats.append(norm(out).transpose(1, 2).reshape(x.shape[0], -1, *size))
            size = new_size
        y = self.up0(feats[3], feats[2])
        y = self.up1(y, feats[1])
        y = self.up2(y, feats[0])
        y = self.up3(y, f4)
        y = self.up4(y, f5)
        return self.flow(y)


register("transmorph", lambda img_size, **kw: TransMorph(img_size, **kw), divisor=32)
register("transmorph-tiny", lambda img_size, **kw: TransMorph(img_size, **{
    "embed_dim": 16, "depths": (2, 2, 2, 2), "heads": (2, 2, 4, 4), "window": (2, 2, 2), "drop_path": 0.1,
    "reg_head": 8, **kw}),
    divisor=32)
