"""Spec → ``nn.Module``: the only place that knows how a spec becomes a network."""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import nn

from nas_kd.model.layers import ConvBnAct, DepthwiseSeparable, InvertedResidual, LowRankLinear
from nas_kd.model.spec import ArchSpec, StageSpec, low_rank


def _ds(cin: int, stage: StageSpec, stride: int, act: str) -> nn.Module:
    rank = low_rank(stage.pointwise_rank, cin, stage.channels)
    return DepthwiseSeparable(cin, stage.channels, kernel=stage.kernel, stride=stride, act=act, pw_rank=rank)


def _ir(cin: int, stage: StageSpec, stride: int, act: str) -> nn.Module:
    mid = cin * stage.expansion
    return InvertedResidual(
        cin, stage.channels, kernel=stage.kernel, stride=stride, expansion=stage.expansion, act=act,
        pw_rank=low_rank(stage.pointwise_rank, mid, stage.channels),
        expand_rank=low_rank(stage.pointwise_rank, cin, mid),
    )


BLOCK_BUILDERS: dict[str, Callable[[int, StageSpec, int, str], nn.Module]] = {"ds": _ds, "ir": _ir}


class Student(nn.Module):
    """stem → stages → optional 1×1 head → global average pool → classifier."""

    def __init__(self, spec: ArchSpec) -> None:
        super().__init__()
        self.spec = spec
        act = spec.activation
        self.stem = ConvBnAct(spec.in_channels, spec.stem_channels, kernel=3, stride=spec.stem_stride, act=act)
        cin, stages = spec.stem_channels, []
        for stage in spec.stages:
            blocks = []
            for i in range(stage.depth):
                blocks.append(BLOCK_BUILDERS[stage.block](cin, stage, stage.stride if i == 0 else 1, act))
                cin = stage.channels
            stages.append(nn.Sequential(*blocks))
        self.stages = nn.ModuleList(stages)
        self.head = ConvBnAct(cin, spec.head_channels, act=act) if spec.head_channels else nn.Identity()
        n_features = spec.head_channels or cin
        rank = low_rank(spec.classifier_rank, n_features, spec.num_classes)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.classifier = (
            nn.Linear(n_features, spec.num_classes)
            if rank is None
            else LowRankLinear(n_features, spec.num_classes, rank=rank)
        )

    def forward_features(self, x: torch.Tensor) -> list[torch.Tensor]:
        """The output of every stage (for feature-based distillation)."""
        feats, x = [], self.stem(x)
        for stage in self.stages:
            x = stage(x)
            feats.append(x)
        return feats

    def classify(self, last_feature: torch.Tensor) -> torch.Tensor:
        return self.classifier(torch.flatten(self.pool(self.head(last_feature)), 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.stem(x)
        for stage in self.stages:
            x = stage(x)
        return self.classify(x)


def build_student(spec: ArchSpec) -> Student:
    """Build the network a spec describes (fresh weights, seeded by the caller)."""
    return Student(spec)
