"""ViT-V-Net (Chen et al. 2021) with the hyper-parameters of its published configuration.

A CNN encoder (DoubleConv 2 -> 16, then max-pool + DoubleConv to 32 and 32; ReLU) gives a quarter-resolution
map; a Conv3d with kernel and stride 8 turns it into tokens (5x6x7 = 210 at 160x192x224) with learned position
embeddings; 12 pre-norm transformer layers (hidden 252, 12 heads, MLP 3072, GELU, dropout 0.1); a decoder
(first conv to 512 channels, then blocks of x2 trilinear upsampling, skip concatenation and two
conv-BatchNorm-ReLU, channels (96, 48, 32, 32, 16), skips (32, 32, 32, 32, 16)); a 3^3 flow head. 31,560,079
parameters at 160x192x224. The position embeddings fix the input size: sides must be multiples of 32.
"""
from __future__ import annotations

import math

import torch
import torch.nn as nn
import torch.nn.functional as F

from . import register
from .layers import flow_head


def _double_conv(cin, cout):
    return nn.Sequential(nn.Conv3d(cin, cout, 3, padding=1), nn.ReLU(inplace=True),
                         nn.Conv3d(cout, cout, 3, padding=1), nn.ReLU(inplace=True))


def _conv_bn_relu(cin, cout):
    return nn.Sequential(nn.Conv3d(cin, cout, 3, padding=1, bias=False), nn.BatchNorm3d(cout), nn.ReLU(inplace=True))


class _Attention(nn.Module):
    def __init__(self, hidden, heads, attn_drop):
        super().__init__()
        if hidden % heads:
            raise ValueError(f"hidden size {hidden} is not divisible by {heads} heads")
        self.heads, self.head_dim = heads, hidden // heads
        self.query, self.key, self.value, self.out = (nn.Linear(hidden, hidden) for _ in range(4))
        self.attn_drop, self.proj_drop = nn.Dropout(attn_drop), nn.Dropout(attn_drop)

    def forward(self, x):
        b, n, c = x.shape
        q, k, v = (f(x).view(b, n, self.heads, self.head_dim).transpose(1, 2) for f in (self.query, self.key, self.value))
        attn = self.attn_drop(torch.softmax(q @ k.transpose(-1, -2) / math.sqrt(self.head_dim), dim=-1))
        return self.proj_drop(self.out((attn @ v).transpose(1, 2).reshape(b, n, c)))


class _Block(nn.Module):
    def __init__(self, hidden, heads, mlp, dropout, attn_drop):
        super().__init__()
        self.attention_norm, self.ffn_norm = nn.LayerNorm(hidden, eps=1e-6), nn.LayerNorm(hidden, eps=1e-6)
        self.attn = _Attention(hidden, heads, attn_drop)
        self.fc1, self.fc2 = nn.Linear(hidden, mlp), nn.Linear(mlp, hidden)
        for fc in (self.fc1, self.fc2):
            nn.init.xavier_uniform_(fc.weight)
            nn.init.normal_(fc.bias, std=1e-6)
        self.drop = nn.Dropout(dropout)

    def forward(self, x):
        x = x + self.attn(self.attention_norm(x))
        h = self.drop(F.gelu(self.fc1(self.ffn_norm(x))))
        return x + self.drop(self.fc2(h))


class _DecoderBlock(nn.Module):
    def __init__(self, cin, cout, skip):
        super().__init__()
        self.conv1, self.conv2 = _conv_bn_relu(cin + skip, cout), _conv_bn_relu(cout, cout)

    def forward(self, x, skip=None):
        x = F.interpolate(x, scale_factor=2, mode="trilinear", align_corners=False)
        if skip is not None:
            x = torch.cat([x, skip], 1)
        return self.conv2(self.conv1(x))


class ViTVNet(nn.Module):
    def __init__(self, img_size, hidden=252, layers=12, heads=12, mlp=3072, dropout=0.1, attn_dropout=0.0,
                 patch=8, encoder_channels=(16, 32, 32), first_channel=512,
                 decoder_channels=(96, 48, 32, 32, 16), skip_channels=(32, 32, 32, 32, 16), in_channels=2):
        super().__init__()
        self.grid = tuple(s // 4 // patch for s in img_size)          # tokens per axis (down factor 4)
        e0, e1, e2 = encoder_channels
        self.inc, self.down1, self.down2 = _double_conv(in_channels, e0), _double_conv(e0, e1), _double_conv(e1, e2)
        self.patch_embeddings = nn.Conv3d(e2, hidden, kernel_size=patch, stride=patch)
        self.position_embeddings = nn.Parameter(torch.zeros(1, math.prod(self.grid), hidden))
        self.dropout = nn.Dropout(dropout)
        self.blocks = nn.ModuleList(_Block(hidden, heads, mlp, dropout, attn_dropout) for _ in range(layers))
        self.encoder_norm = nn.LayerNorm(hidden, eps=1e-6)
        self.conv_more = _conv_bn_relu(hidden, first_channel)
        ins = [first_channel] + list(decoder_channels[:-1])
        self.decoder = nn.ModuleList(_DecoderBlock(i, o, s) for i, o, s in zip(ins, decoder_channels, skip_channels))
        self.flow = flow_head(decoder_channels[-1])

    def forward(self, x):
        x1 = self.inc(x)
        x2 = self.down1(F.max_pool3d(x1, 2))
        x3 = self.down2(F.max_pool3d(x2, 2))
        x4 = F.max_pool3d(x3, 2)
        skips = [F.max_pool3d(x4, 2), x4, x3, x2, x1]                  # 1/16, 1/8, 1/4, 1/2, 1
        tokens = self.patch_embeddings(x3).flatten(2).transpose(1, 2)
        if tokens.shape[1] != self.position_embeddings.shape[1]:
            raise ValueError(f"ViT-V-Net was built for {self.grid} tokens per axis; this input gives "
                             f"{tuple(s // 4 // 8 for s in x.shape[2:])}: build it for the input's size")
        h = self.dropout(tokens + self.position_embeddings)
        for block in self.blocks:
            h = block(h)
        h = self.encoder_norm(h)
        y = self.conv_more(h.transpose(1, 2).reshape(x.shape[0], -1, *self.grid))
        for block, skip in zip(self.decoder, skips):
            y = block(y, skip)
        return self.flow(y)


register("vit-v-net", lambda img_size, **kw: ViTVNet(img_size, **kw), divisor=32)
register("vit-v-net-tiny", lambda img_size, **kw: ViTVNet(img_size, **{
    "hidden": 32, "layers": 2, "heads": 4, "mlp": 64, "encoder_channels": (8, 16, 16), "first_channel": 32,
    "decoder_channels": (16, 16, 8, 8, 8), "skip_channels": (16, 16, 16, 16, 8), **kw}), divisor=32)
