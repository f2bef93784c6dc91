"""Teacher architectures, described (like students) by plain data: ``{"arch": "resnet", ...}``."""

from __future__ import annotations

import itertools

import torch
from torch import nn


class BasicBlock(nn.Module):
    """ResNet's two 3×3 convs with an identity (or 1×1 projection) shortcut."""

    def __init__(self, cin: int, cout: int, *, stride: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(cout)
        self.conv2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(cout)
        self.shortcut = (
            nn.Identity()
            if stride == 1 and cin == cout
            else nn.Sequential(nn.Conv2d(cin, cout, 1, stride, bias=False), nn.BatchNorm2d(cout))
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = torch.relu(self.bn1(self.conv1(x)))
        return torch.relu(self.bn2(self.conv2(out)) + self.shortcut(x))


class ResNet(nn.Module):
    """A CIFAR-style ResNet: 3×3 stem, stages of width w·2^i (first stage unstrided), pool, linear."""

    def __init__(self, in_channels: int, num_classes: int, *, width: int, blocks: list[int]) -> None:
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(in_channels, width, 3, 1, 1, bias=False), nn.BatchNorm2d(width), nn.ReLU())
        stages, cin = [], width
        for i, n in enumerate(blocks):
            cout = width * 2**i
            blocks_ = [BasicBlock(cin if j == 0 else cout, cout, stride=2 if i and not j else 1) for j in range(n)]
            stages.append(nn.Sequential(*blocks_))
            cin = cout
        self.stages = nn.ModuleList(stages)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(cin, num_classes)

    def forward_features(self, x: torch.Tensor) -> list[torch.Tensor]:
        """The output of every stage (what feature losses distil from)."""
        outputs = itertools.accumulate(self.stages, lambda h, stage: stage(h), initial=self.stem(x))
        return list(outputs)[1:]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(torch.flatten(self.pool(self.forward_features(x)[-1]), 1))


TEACHER_ARCHS = {"resnet": ResNet}


def build_teacher(arch: dict, in_channels: int, num_classes: int) -> nn.Module:
    """Build a teacher from ``{"arch": name, **kwargs}``."""
    kwargs = {k: v for k, v in arch.items() if k != "arch"}
    return TEACHER_ARCHS[arch["arch"]](in_channels, num_classes, **kwargs)
