"""Small building blocks shared by the architectures."""
from __future__ import annotations

import math

import torch
import torch.nn as nn
import torch.nn.functional as F


def conv_bn_act(cin: int, cout: int, k: int = 3, stride: int = 1) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(cin, cout, k, stride, k // 2, bias=False), nn.BatchNorm2d(cout), nn.ReLU(inplace=True)
    )


def gaussian_1d(radius: int, sigma: float) -> torch.Tensor:
    """Normalised 1-D Gaussian of 2 * radius + 1 taps."""
    x = torch.arange(-radius, radius + 1, dtype=torch.float32)
    k = torch.exp(-0.5 * (x / sigma) ** 2)
    return k / k.sum()


class GaussianBlur(nn.Module):
    """Fixed separable Gaussian as two depthwise convolutions: exports to ONNX as plain Conv."""

    def __init__(self, sigma: float, channels: int = 1):
        super().__init__()
        radius = max(1, int(math.ceil(4 * sigma)))
        k = gaussian_1d(radius, sigma).repeat(channels, 1, 1, 1)
        self.register_buffer("kx", k.view(channels, 1, 1, -1), persistent=False)
        self.register_buffer("ky", k.view(channels, 1, -1, 1), persistent=False)
        self.radius, self.channels = radius, channels

    def forward(self, x):
        r = self.radius
        x = F.conv2d(F.pad(x, (r, r, 0, 0), mode="reflect"), self.kx, groups=self.channels)
        return F.conv2d(F.pad(x, (0, 0, r, r), mode="reflect"), self.ky, groups=self.channels)


def cosine_distance(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """1 - cos over channels, N x 1 x H x W."""
    return 1 - F.cosine_similarity(a, b, dim=1, eps=1e-6).unsqueeze(1)


def dilate_mask(mask: torch.Tensor, k: int) -> torch.Tensor:
    """Binary dilation by a k x k square as two 1-D max-pools: 10x cheaper than one k x k pool."""
    mask = F.max_pool2d(mask, (1, k), 1, (0, k // 2))
    return F.max_pool2d(mask, (k, 1), 1, (k // 2, 0))
