"""Swin Transformer blocks for DBRN's reconstruction branches, written for a static graph.

Tokens are kept as N x H x W x C and every shape is a Python int, so the exported ONNX graph is
static and TensorRT 10.3 parses it: window partitions are reshape/permute, the shift is
torch.roll, the relative-position bias is a learned table gathered with a precomputed index
buffer, and the shifted-window attention mask is a buffer (Liu et al., "Swin Transformer").
"""
from __future__ import annotations

import torch
import torch.nn as nn


def window_partition(x: torch.Tensor, w: int) -> torch.Tensor:
    _, h, wd, c = x.shape
    x = x.reshape(-1, h // w, w, wd // w, w, c).permute(0, 1, 3, 2, 4, 5)
    return x.reshape(-1, w * w, c)


def window_reverse(x: torch.Tensor, w: int, h: int, wd: int) -> torch.Tensor:
    c = x.shape[-1]
    x = x.reshape(-1, h // w, wd // w, w, w, c).permute(0, 1, 3, 2, 4, 5)
    return x.reshape(-1, h, wd, c)


def relative_position_index(w: int) -> torch.Tensor:
    coords = torch.stack(torch.meshgrid(torch.arange(w), torch.arange(w), indexing="ij")).flatten(1)  # 2 x L
    rel = (coords[:, :, None] - coords[:, None, :]).permute(1, 2, 0) + (w - 1)  # L x L x 2
    return (rel[..., 0] * (2 * w - 1) + rel[..., 1]).flatten()  # L*L


def shifted_window_mask(res: int, w: int, shift: int) -> torch.Tensor:
    img = torch.zeros(1, res, res, 1)
    cnt = 0
    for hs in (slice(0, -w), slice(-w, -shift), slice(-shift, None)):
        for ws in (slice(0, -w), slice(-w, -shift), slice(-shift, None)):
            img[:, hs, ws, :] = cnt
            cnt += 1
    win = window_partition(img, w).squeeze(-1)  # nW x L
    diff = win[:, None, :] - win[:, :, None]
    return torch.where(diff != 0, torch.tensor(-100.0), torch.tensor(0.0))  # nW x L x L


class WindowAttention(nn.Module):
    def __init__(self, dim: int, heads: int, w: int):
        super().__init__()
        self.heads, self.w, self.hd = heads, w, dim // heads
        self.scale = self.hd ** -0.5
        self.qkv = nn.Linear(dim, 3 * dim)
        self.proj = nn.Linear(dim, dim)
        self.bias_table = nn.Parameter(torch.zeros((2 * w - 1) ** 2, heads))
        nn.init.trunc_normal_(self.bias_table, std=0.02)
        self.register_buffer("bias_index", relative_position_index(w), persistent=False)

    def forward(self, x, mask: torch.Tensor | None):
        L, h, hd = x.shape[1], self.heads, self.hd
        qkv = self.qkv(x).reshape(-1, L, 3, h, hd).permute(2, 0, 3, 1, 4)
        q, k, v = qkv[0], qkv[1], qkv[2]
        attn = (q * self.scale) @ k.transpose(-2, -1)  # B*nW x h x L x L
        bias = self.bias_table[self.bias_index].reshape(L, L, h).permute(2, 0, 1)
        attn = attn + bias.unsqueeze(0)
        if mask is not None:
            nw = mask.shape[0]
            attn = (attn.reshape(-1, nw, h, L, L) + mask.reshape(1, nw, 1, L, L)).reshape(-1, h, L, L)
        attn = attn.softmax(-1)
        out = (attn @ v).transpose(1, 2).reshape(-1, L, h * hd)
        return self.proj(out)


class SwinBlock(nn.Module):
    def __init__(self, dim: int, heads: int, res: int, window: int, shift: bool, mlp_ratio: float):
        super().__init__()
        self.w = min(window, res)
        self.shift = self.w // 2 if (shift and res > window) else 0
        self.res = res
        self.norm1 = nn.LayerNorm(dim)
        self.attn = WindowAttention(dim, heads, self.w)
        self.norm2 = nn.LayerNorm(dim)
        hidden = int(dim * mlp_ratio)
        self.mlp = nn.Sequential(nn.Linear(dim, hidden), nn.GELU(), nn.Linear(hidden, dim))
        if self.shift:
            self.register_buffer("attn_mask", shifted_window_mask(res, self.w, self.shift), persistent=False)
        else:
            self.attn_mask = None

    def forward(self, x):  # N x H x W x C
        r, w, s = self.res, self.w, self.shift
        y = self.norm1(x)
        if s:
            y = torch.roll(y, shifts=(-s, -s), dims=(1, 2))
        y = window_reverse(self.attn(window_partition(y, w), self.attn_mask), w, r, r)
        if s:
            y = torch.roll(y, shifts=(s, s), dims=(1, 2))
        x = x + y
        return x + self.mlp(self.norm2(x))


class SwinStage(nn.Sequential):
    def __init__(self, dim, depth, heads, res, window, mlp_ratio):
        super().__init__(*[SwinBlock(dim, heads, res, window, i % 2 == 1, mlp_ratio) for i in range(depth)])


class PatchMerging(nn.Module):
    """N x H x W x C -> N x H/2 x W/2 x 2C."""

    def __init__(self, dim: int):
        super().__init__()
        self.norm = nn.LayerNorm(4 * dim)
        self.reduction = nn.Linear(4 * dim, 2 * dim, bias=False)

    def forward(self, x):
        _, h, w, c = x.shape
        x = x.reshape(-1, h // 2, 2, w // 2, 2, c).permute(0, 1, 3, 4, 2, 5).reshape(-1, h // 2, w // 2, 4 * c)
        return self.reduction(self.norm(x))


class PatchExpand(nn.Module):
    """N x H x W x C -> N x fH x fW x C_out (linear + pixel shuffle by reshape, then LayerNorm)."""

    def __init__(self, dim: int, factor: int, out_dim: int):
        super().__init__()
        self.f, self.out_dim = factor, out_dim
        self.expand = nn.Linear(dim, factor * factor * out_dim, bias=False)
        self.norm = nn.LayerNorm(out_dim)

    def forward(self, x):
        _, h, w, _ = x.shape
        f, c = self.f, self.out_dim
        x = self.expand(x).reshape(-1, h, w, f, f, c).permute(0, 1, 3, 2, 4, 5).reshape(-1, h * f, w * f, c)
        return self.norm(x)
