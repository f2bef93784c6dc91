"""Training the supernet by the sandwich rule, and ranking its members by inherited weights.

``Sandwich`` makes the supernet one trainee of the ordinary training loop (``train_model``): its
registered loss step trains, on every batch, the largest and the smallest member of a pool and
``draws`` members drawn from it (BigNAS's sandwich rule), each against the same targets as a
search trial (the teacher's cached logits, or the labels). Checkpointing, resume and the schedule
are the loop's. The draws depend on (seed, step) alone, so a resumed run draws what it would have.
"""

from __future__ import annotations

from collections.abc import Sequence

import optuna
import torch
import torch.nn.functional as F
from torch import nn

from nas_kd.distill.losses import KDBatch, get_kd_loss
from nas_kd.model.cost import analytic_flops
from nas_kd.model.spec import ArchSpec
from nas_kd.search.space import SearchSpace
from nas_kd.supernet.net import Supernet, recalibrate_bn
from nas_kd.train import accuracy
from nas_kd.train.batches import Batch
from nas_kd.train.steps import LossStep, StepInputs, register_step, teacher_target

SANDWICH_STEP = "sandwich"


def member_pool(space: SearchSpace, net: Supernet, input_shape: tuple[int, int, int], budget_flops: int,
                size: int, seed: int = 0, max_draws: int = 200_000) -> list[ArchSpec]:
    """Up to ``size`` distinct members of ``space`` that ``net`` holds and that fit ``budget_flops``
    (fewer when ``max_draws`` random draws find fewer), drawn at random (seeded), cheapest first."""
    verbosity = optuna.logging.get_verbosity()
    optuna.logging.set_verbosity(optuna.logging.WARNING)  # a scratch study: its creation is not news
    try:
        study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=seed))
    finally:
        optuna.logging.set_verbosity(verbosity)
    found: dict[str, tuple[int, ArchSpec]] = {}
    for _ in range(max_draws):
        if len(found) == size:
            break
        spec = space.sample(study.ask(), input_shape, net.shape.num_classes)
        try:
            net.check(spec)
        except ValueError:
            continue
        flops = analytic_flops(spec, input_shape)
        if flops <= budget_flops:
            found.setdefault(spec.to_json(), (flops, spec))
    return [spec for _, spec in sorted(found.values(), key=lambda fs: fs[0])]


class Sandwich(nn.Module):
    """The supernet as a trainee: ``loss_step`` trains ``members[-1]`` (largest), ``members[0]``
    (smallest) and ``draws`` others each step; ``forward`` runs the largest."""

    loss_step = SANDWICH_STEP

    def __init__(self, net: Supernet, members: Sequence[ArchSpec], draws: int = 2, seed: int = 0) -> None:
        super().__init__()
        self.net, self.members, self.draws, self.seed = net, list(members), draws, seed
        self.register_buffer("steps_done", torch.zeros((), dtype=torch.long))  # checkpointed with the weights

    def step_members(self) -> list[ArchSpec]:
        g = torch.Generator().manual_seed(self.seed * 1_000_003 + int(self.steps_done))
        picks = torch.randint(0, len(self.members), (self.draws,), generator=g).tolist()
        return [self.members[-1], self.members[0], *(self.members[i] for i in picks)]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x, self.members[-1])


@register_step(SANDWICH_STEP)
def sandwich_step(run: StepInputs) -> LossStep:
    """The sum over the step's members of the loss a search trial trains with."""
    model: Sandwich = run.model
    kd, kd_loss = run.kd, get_kd_loss(run.kd.loss)

    def loss(b: Batch) -> torch.Tensor:
        target = teacher_target(b, run)
        total = torch.zeros((), device=b.images.device)
        for spec in model.step_members():
            logits = model.net(b.images, spec)
            total = total + (kd_loss(KDBatch(logits, b.labels, teacher_logits=target), kd) if target is not None
                             else F.cross_entropy(logits, b.labels))
        model.steps_done += 1
        return total

    return LossStep(loss)


def inherited_accuracy(net: Supernet, spec: ArchSpec, x_calib: torch.Tensor, x_val: torch.Tensor,
                       y_val: torch.Tensor, batch_size: int = 256) -> float:
    """``spec``'s validation accuracy with the supernet's weights, its batch norm statistics
    re-estimated on ``x_calib`` (training images)."""
    student = net.extract(spec)
    recalibrate_bn(student, x_calib.split(batch_size))
    return accuracy(student, x_val, y_val)
