"""Self-distillation (Be Your Own Teacher, Zhang et al. 2019) and the early exits it trains.

``ExitStudent`` is a student with a small classifier after every stage but the last; the last stage
keeps the student's own head and classifier. Trained by its own loss step, the final exit learns as
the student would (from the teacher, or the labels), and every earlier exit learns from the labels
and from the final exit's soft outputs (and the teacher's, when there is one). Kept at export
(``--exits``), the exits give dynamic computation: ``predict`` answers an image at the first exit
confident enough, so an easy image pays only the FLOPs up to there.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from nas_kd.distill.losses import KDBatch, KDSettings, get_kd_loss, soft_kl
from nas_kd.model.builder import Student
from nas_kd.model.layers import ConvBnAct
from nas_kd.train.batches import Batch
from nas_kd.train.steps import LossStep, StepInputs, register_step, teacher_target

SELF_STEP = "self-distill"
EXITS_FILE = "exits.json"  # in an export folder: the student was shipped with its early exits
MIN_EXIT_WIDTH = 64  # an exit's 1x1 conv widens thin early stages to at least this many channels
# An exit first pools its stage to at most EXIT_GRID x EXIT_GRID. With the 1x1 conv at a 14x14 stage's full
# resolution, the 1-MFLOP student's exits cost 53% of its FLOPs and early exits saved nothing.
EXIT_GRID = 4
SELF_ALPHA = 0.5  # weight of the soft targets of an auxiliary exit when the study has no teacher


def exit_width(channels: int) -> int:
    return max(channels, MIN_EXIT_WIDTH)


class GridPool(nn.Module):
    """Average pooling to at most ``grid`` x ``grid`` (windows of ceil(size / grid), the last one partial)."""

    def __init__(self, grid: int) -> None:
        super().__init__()
        self.grid = grid

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        k = -(-max(x.shape[-2:]) // self.grid)
        return F.avg_pool2d(x, k, ceil_mode=True) if k > 1 else x


class ExitHead(nn.Sequential):
    """An auxiliary classifier: average pool to at most ``grid`` x ``grid``, 1x1 conv (widened), global
    average pool, linear. ``grid=None`` is the head of exports made before the pooling (full resolution)."""

    def __init__(self, channels: int, num_classes: int, act: str, grid: int | None = EXIT_GRID) -> None:
        width = exit_width(channels)
        pool = [GridPool(grid)] if grid else []
        super().__init__(*pool, ConvBnAct(channels, width, act=act), nn.AdaptiveAvgPool2d(1), nn.Flatten(),
                         nn.Linear(width, num_classes))


class ExitStudent(nn.Module):
    """``student`` with an exit after each of its stages but the last. ``forward`` gives every exit's
    logits, [batch, exits, classes], the student's own classifier last (what ONNX exports)."""

    loss_step = SELF_STEP

    def __init__(self, student: Student, grid: int | None = EXIT_GRID) -> None:
        super().__init__()
        spec = student.spec
        if len(spec.stages) < 2:
            raise ValueError("an early-exit student needs at least two stages")
        self.student, self.grid = student, grid
        self.exits = nn.ModuleList(ExitHead(s.channels, spec.num_classes, spec.activation, grid)
                                   for s in spec.stages[:-1])

    @property
    def n_exits(self) -> int:
        return len(self.exits) + 1

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out, x = [], self.student.stem(x)
        for i, stage in enumerate(self.student.stages):
            x = stage(x)
            out.append(self.exits[i](x) if i < len(self.exits) else self.student.classify(x))
        return torch.stack(out, dim=1)

    @torch.no_grad()
    def predict(self, x: torch.Tensor, threshold: float) -> tuple[torch.Tensor, torch.Tensor]:
        """(logits [batch, classes], exit [batch]): each image answered by the first exit whose top
        softmax probability exceeds ``threshold``, else by the last. Threshold 1.0 never exits early
        (a probability cannot exceed 1); threshold 0 answers every image at the first exit. Images
        that have answered are not computed further."""
        n, x = len(x), self.student.stem(x)
        logits = torch.zeros(n, self.student.spec.num_classes, dtype=x.dtype, device=x.device)
        answered_by = torch.full((n,), self.n_exits - 1, dtype=torch.long, device=x.device)
        left = torch.arange(n, device=x.device)
        for i, stage in enumerate(self.student.stages):
            x = stage(x)
            if i == len(self.exits):
                logits[left] = self.student.classify(x)
                break
            here = self.exits[i](x)
            done = here.softmax(1).amax(1) > threshold
            logits[left[done]], answered_by[left[done]] = here[done], i
            left, x = left[~done], x[~done]
            if len(left) == 0:
                break
        return logits, answered_by


class ExitPrefix(nn.Module):
    """What an image answered at exit ``k`` has cost: the stem, stages 0..k and exits 0..k (each one
    tried); holds only those layers, so fvcore counts it for the card's mean FLOPs per image."""

    def __init__(self, model: ExitStudent, k: int) -> None:
        super().__init__()
        s = model.student
        self.stem, self.stages = s.stem, nn.ModuleList(s.stages[: k + 1])
        self.exits = nn.ModuleList(model.exits[: k + 1])
        self.last = nn.ModuleList([s.head, s.classifier]) if k == len(model.exits) else None
        self.pool = s.pool

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        outs, x = [], self.stem(x)
        for i, stage in enumerate(self.stages):
            x = stage(x)
            if i < len(self.exits):
                outs.append(self.exits[i](x))
            else:
                head, classifier = self.last
                outs.append(classifier(torch.flatten(self.pool(head(x)), 1)))
        return torch.stack(outs, dim=1)


def self_distill_loss(logits: torch.Tensor, labels: torch.Tensor, kd: KDSettings,
                      teacher_logits: torch.Tensor | None = None) -> torch.Tensor:
    """The final exit's loss as a plain student's (the study's KD loss, or cross-entropy without a
    teacher), plus for each earlier exit ``(1 - a)·CE + a·T²·KL(target_T ‖ exit_T)``, where the target
    is the final exit's soft output (held fixed), averaged with the teacher's when there is one, and
    ``a`` is the study's alpha (``SELF_ALPHA`` without a teacher)."""
    final = logits[:, -1]
    teacher = teacher_logits is not None and kd.uses_teacher
    total = (get_kd_loss(kd.loss)(KDBatch(final, labels, teacher_logits=teacher_logits), kd) if teacher
             else F.cross_entropy(final, labels))
    a, t = (kd.alpha if teacher else SELF_ALPHA), kd.temperature
    for i in range(logits.shape[1] - 1):
        aux = logits[:, i]
        soft = soft_kl(aux, final.detach(), t)
        if teacher:
            soft = 0.5 * (soft + soft_kl(aux, teacher_logits, t))
        total = total + (1 - a) * F.cross_entropy(aux, labels) + a * soft
    return total


@register_step(SELF_STEP)
def self_distill_step(run: StepInputs) -> LossStep:
    """``self_distill_loss`` against the batch's cached teacher logits, a live teacher, or none."""
    def loss(b: Batch) -> torch.Tensor:
        return self_distill_loss(run.model(b.images), b.labels, run.kd, teacher_target(b, run))

    return LossStep(loss)
