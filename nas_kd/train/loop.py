"""One training run on one screen: set up, then batch -> loss step -> backward -> step -> checkpoint."""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from pathlib import Path

import torch
from torch import nn

from nas_kd import interrupts
from nas_kd.distill.losses import KDSettings
from nas_kd.errors import TrialFailed
from nas_kd.train.batches import batch_source
from nas_kd.train.checkpoint import resume, save_checkpoint
from nas_kd.train.device import device_for
from nas_kd.train.settings import TrainResult, TrainSettings, steps_per_epoch, total_steps
from nas_kd.train.steps import StepInputs, build_step, choose_step


def train_model(
    model: nn.Module,
    x: torch.Tensor,
    y: torch.Tensor,
    settings: TrainSettings,
    *,
    kd: KDSettings | None = None,
    teacher_logits: torch.Tensor | None = None,
    views: torch.Tensor | None = None,
    teacher: nn.Module | None = None,
    on_step: Callable[[int, int, float], None] | None = None,
    checkpoint: Path | None = None,
) -> TrainResult:
    """Train ``model`` in place on (x, y); with ``kd``, against the teacher's targets, which follow the
    augmentation in one of three ways (see ``nas_kd.teacher.load.kd_targets``):

    - ``teacher_logits`` [N, C]: cached logits of the un-augmented images;
    - ``views`` [K, N, ...] with ``teacher_logits`` [K, N, C]: K fixed augmented views, each with its
      cached logits; every step draws one view per image (``settings.augment`` is then not re-applied);
    - ``teacher``: the teacher runs on each augmented batch (exact, but costs its forward pass).

    With ``checkpoint``, the state is saved after every epoch and training resumes from it.
    Raises TrialFailed when the loss stops being finite.
    """
    kd = kd or KDSettings(alpha=0.0)
    device = device_for(model)
    step_name = choose_step(kd, cached_logits=teacher_logits is not None, teacher=teacher,
                            checkpointed=checkpoint is not None)
    loss_step = build_step(step_name, StepInputs(model, settings, kd, teacher, device, sample=x[:2]))
    next_batch = batch_source(x, y, settings.augment, device, teacher_logits=teacher_logits, views=views)
    g = torch.Generator().manual_seed(settings.seed)  # every draw of the run: order, views, augmentation
    n, bs = len(y), settings.batch_size
    per_epoch, total = steps_per_epoch(n, bs), total_steps(settings, n)
    opt = torch.optim.SGD([*model.parameters(), *loss_step.trainable.parameters()], lr=settings.lr,
                          momentum=settings.momentum, weight_decay=settings.weight_decay, nesterov=True)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=settings.lr, total_steps=total, pct_start=0.15)
    model.train()
    start, step, loss_value = time.perf_counter(), 0, math.nan
    earlier_seconds = 0.0  # training time of the runs this one resumes, so seconds cover the whole training
    if checkpoint is not None and checkpoint.exists():
        step, earlier_seconds = resume(checkpoint, model, opt, sched, g)
    with interrupts.deferred():  # Ctrl-C stops at a step boundary, never inside torch (see interrupts)
        while step < total:
            order = torch.randperm(n, generator=g)
            for idx in order[: per_epoch * bs].split(bs)[: total - step]:  # whole batches, up to the last step
                interrupts.check()
                loss = loss_step.loss(next_batch(idx, g))
                loss_value = loss.item()
                if not math.isfinite(loss_value):
                    raise TrialFailed(f"loss became {loss_value} at step {step + 1}/{total}")
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
                sched.step()
                step += 1
                if on_step is not None:
                    on_step(step, total, loss_value)
            if checkpoint is not None:
                save_checkpoint(checkpoint, model, opt, sched, g, step, earlier_seconds + time.perf_counter() - start)
    return TrainResult(seconds=earlier_seconds + time.perf_counter() - start, steps=step, final_loss=loss_value)
