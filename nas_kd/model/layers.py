"""Small, single-purpose blocks that students are built from.

Every block takes typed keyword arguments; optional parts are ``nn.Identity``; whether a block
has a skip connection is decided once, in ``__init__``.
"""

from __future__ import annotations

import torch
from torch import nn

ACTIVATIONS: dict[str, type[nn.Module]] = {
    "relu": nn.ReLU,
    "relu6": nn.ReLU6,
    "hardswish": nn.Hardswish,
    "silu": nn.SiLU,
}


class ConvBnAct(nn.Sequential):
    """k×k conv (optionally grouped) → batch norm → activation (or none)."""

    def __init__(
        self, cin: int, cout: int, *, kernel: int = 1, stride: int = 1, groups: int = 1,
        act: str | None = "relu",
    ) -> None:
        super().__init__(
            nn.Conv2d(cin, cout, kernel, stride, kernel // 2, groups=groups, bias=False),
            nn.BatchNorm2d(cout),
            ACTIVATIONS[act]() if act else nn.Identity(),
        )


class LowRankConv1x1(nn.Module):
    """A 1×1 conv W (out×in) factorised as U·V through ``rank`` channels: (in + out)·rank MACs."""

    def __init__(self, cin: int, cout: int, *, rank: int) -> None:
        super().__init__()
        self.reduce = nn.Conv2d(cin, rank, 1, bias=False)
        self.expand = nn.Conv2d(rank, cout, 1, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.expand(self.reduce(x))


class LowRankLinear(nn.Module):
    """A linear layer factorised through ``rank`` features (Ba & Caruana's linear bottleneck)."""

    def __init__(self, n_in: int, n_out: int, *, rank: int) -> None:
        super().__init__()
        self.reduce = nn.Linear(n_in, rank, bias=False)
        self.expand = nn.Linear(rank, n_out)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.expand(self.reduce(x))


class PointwiseBn(nn.Sequential):
    """1×1 conv (full or low rank) → batch norm → activation (or none)."""

    def __init__(self, cin: int, cout: int, *, rank: int | None, act: str | None) -> None:
        conv = nn.Conv2d(cin, cout, 1, bias=False) if rank is None else LowRankConv1x1(cin, cout, rank=rank)
        super().__init__(conv, nn.BatchNorm2d(cout), ACTIVATIONS[act]() if act else nn.Identity())


class DepthwiseSeparable(nn.Module):
    """MobileNet's block: k×k depthwise → BN → act → 1×1 pointwise → BN → act (+ skip)."""

    def __init__(
        self, cin: int, cout: int, *, kernel: int, stride: int, act: str, pw_rank: int | None = None
    ) -> None:
        super().__init__()
        self.dw = ConvBnAct(cin, cin, kernel=kernel, stride=stride, groups=cin, act=act)
        self.pw = PointwiseBn(cin, cout, rank=pw_rank, act=act)
        self.has_skip = stride == 1 and cin == cout

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.pw(self.dw(x))
        return out + x if self.has_skip else out


class InvertedResidual(nn.Module):
    """MobileNetV2's block: 1×1 expand → k×k depthwise → 1×1 linear projection (+ skip)."""

    def __init__(
        self, cin: int, cout: int, *, kernel: int, stride: int, expansion: int, act: str,
        pw_rank: int | None = None, expand_rank: int | None = None,
    ) -> None:
        super().__init__()
        mid = cin * expansion
        self.expand = PointwiseBn(cin, mid, rank=expand_rank, act=act) if expansion != 1 else nn.Identity()
        self.dw = ConvBnAct(mid, mid, kernel=kernel, stride=stride, groups=mid, act=act)
        self.project = PointwiseBn(mid, cout, rank=pw_rank, act=None)
        self.has_skip = stride == 1 and cin == cout

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.project(self.dw(self.expand(x)))
        return out + x if self.has_skip else out
