"""ResNet-18 / Wide-ResNet-50-2 trunks in plain torch.nn (torchvision-compatible
parameter names), for users who have those ImageNet weights on disk.

No weights ship with pip here, so `weights_path` is required: a torchvision
state dict file (e.g. resnet18-f37072fd.pth). Features at strides 4, 8, 16 come
from layer1..layer3, as in RD4AD.
"""
from __future__ import annotations


import torch.nn as nn

from .registry import load_trunk_weights, register_encoder


class BasicBlock(nn.Module):
    expansion = 1

    def __init__(self, cin, planes, stride=1, width=64):
        super().__init__()
        self.conv1 = nn.Conv2d(cin, planes, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.relu = nn.ReLU(inplace=True)
        self.downsample = _downsample(cin, planes, stride, self.expansion)

    def forward(self, x):
        idt = x if self.downsample is None else self.downsample(x)
        y = self.relu(self.bn1(self.conv1(x)))
        return self.relu(self.bn2(self.conv2(y)) + idt)


class Bottleneck(nn.Module):
    expansion = 4

    def __init__(self, cin, planes, stride=1, width=64):
        super().__init__()
        mid = int(planes * (width / 64.0))
        self.conv1 = nn.Conv2d(cin, mid, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(mid)
        self.conv2 = nn.Conv2d(mid, mid, 3, stride, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(mid)
        self.conv3 = nn.Conv2d(mid, planes * 4, 1, bias=False)
        self.bn3 = nn.BatchNorm2d(planes * 4)
        self.relu = nn.ReLU(inplace=True)
        self.downsample = _downsample(cin, planes, stride, self.expansion)

    def forward(self, x):
        idt = x if self.downsample is None else self.downsample(x)
        y = self.relu(self.bn1(self.conv1(x)))
        y = self.relu(self.bn2(self.conv2(y)))
        return self.relu(self.bn3(self.conv3(y)) + idt)


def _downsample(cin, planes, stride, expansion):
    if stride == 1 and cin == planes * expansion:
        return None
    return nn.Sequential(nn.Conv2d(cin, planes * expansion, 1, stride, bias=False), nn.BatchNorm2d(planes * expansion))


class ResNetFeatures(nn.Module):
    def __init__(self, block, layers, width=64, weights_path=None, pretrained=True):
        super().__init__()
        self.conv1 = nn.Conv2d(3, 64, 7, 2, 3, bias=False)
        self.bn1 = nn.BatchNorm2d(64)
        self.relu = nn.ReLU(inplace=True)
        self.maxpool = nn.MaxPool2d(3, 2, 1)
        cin, stages = 64, []
        for i, (planes, n) in enumerate(zip((64, 128, 256), layers)):
            blocks = []
            for j in range(n):
                blocks.append(block(cin, planes, 2 if (i > 0 and j == 0) else 1, width))
                cin = planes * block.expansion
            stages.append(nn.Sequential(*blocks))
        self.layer1, self.layer2, self.layer3 = stages
        self.channels = [64 * block.expansion, 128 * block.expansion, 256 * block.expansion]
        self.strides = [4, 8, 16]
        if pretrained:
            if weights_path is None:
                raise ValueError(
                    "ResNet encoders need weights_path= a torchvision state-dict file: none ship offline here"
                )
            load_trunk_weights(self, weights_path)
        self.requires_grad_(False)
        self.eval()

    def train(self, mode: bool = True):
        return super().train(False)

    def forward(self, x):
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
        f1 = self.layer1(x)
        f2 = self.layer2(f1)
        return [f1, f2, self.layer3(f2)]


@register_encoder("resnet18")
def resnet18(weights_path=None, pretrained=True):
    return ResNetFeatures(BasicBlock, (2, 2, 2), weights_path=weights_path, pretrained=pretrained)


@register_encoder("wide_resnet50_2")
def wide_resnet50_2(weights_path=None, pretrained=True):
    return ResNetFeatures(Bottleneck, (3, 4, 6), width=128, weights_path=weights_path, pretrained=pretrained)
