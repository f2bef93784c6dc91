"""Feature distillation's parts: which student stage learns from which teacher stage, and FitNets' regressor."""

from __future__ import annotations

import torch
from torch import nn

from nas_kd.distill.losses import needs_adapter

Shape = tuple[int, ...]


def pair_features(student_shapes: list[Shape], teacher_shapes: list[Shape]) -> list[tuple[int, int]]:
    """Which student stage output distils from which teacher stage output: for every teacher stage,
    the last student stage of the same spatial size; with no size in common, last with last."""
    pairs = []
    for j, t in enumerate(teacher_shapes):
        same = [i for i, s in enumerate(student_shapes) if s[-2:] == t[-2:]]
        if same:
            pairs.append((same[-1], j))
    return pairs or [(len(student_shapes) - 1, len(teacher_shapes) - 1)]


class Regressor(nn.Module):
    """FitNets' regressor: a 1×1 conv to the teacher's channels, resized to its spatial size."""

    def __init__(self, cin: int, cout: int, size: tuple[int, int]) -> None:
        super().__init__()
        self.conv, self.size = nn.Conv2d(cin, cout, 1, bias=False), size

    def forward(self, f: torch.Tensor) -> torch.Tensor:
        f = self.conv(f)
        return f if f.shape[-2:] == self.size else nn.functional.interpolate(f, size=self.size, mode="bilinear")


def feature_adapters(model: nn.Module, teacher: nn.Module, sample: torch.Tensor, loss: str,
                     device: torch.device) -> tuple[list[tuple[int, int]], nn.ModuleList]:
    """Stage pairs for ``sample``'s shapes, and per pair a new regressor where ``loss`` uses one
    (an identity otherwise); the regressors train with the student."""
    was_training = model.training
    with torch.no_grad():
        s_shapes = [tuple(f.shape[1:]) for f in model.eval().forward_features(sample)]
        t_shapes = [tuple(f.shape[1:]) for f in teacher.forward_features(sample)]
    model.train(was_training)
    pairs = pair_features(s_shapes, t_shapes)
    adapters = nn.ModuleList(
        Regressor(s_shapes[i][0], t_shapes[j][0], t_shapes[j][-2:]) if needs_adapter(loss) else nn.Identity()
        for i, j in pairs
    ).to(device)
    return pairs, adapters
