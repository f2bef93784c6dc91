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
from nas_kd.train.checkpoint import Position, load_checkpoint, restore, save_checkpoint
from nas_kd.train.device import device_for
from nas_kd.train.schedule import one_cycle, segment
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
    steps: int | None = None,
    restarts: tuple[int, ...] = (),
) -> TrainResult:
    """Train ``model`` in place on (x, y); with ``kd``, against the teacher's targets: ``teacher_logits``
    [N, C] cached for the un-augmented images, or [K, N, C] for K fixed augmented ``views`` [K, N, ...]
    of which each step draws one per image, or a ``teacher`` run on every augmented batch.

    The run lasts ``steps`` (default: ``settings.epochs`` of the data); ``restarts`` are the steps where
    the one-cycle schedule starts again (the search's rungs). With ``checkpoint``, the state is saved
    after every epoch and at the end, and training resumes from it, also from inside an epoch.
    Raises TrialFailed when the loss stops being finite.
    """
    kd = kd or KDSettings(alpha=0.0)
    device = device_for(model)
    step_name = choose_step(kd, cached_logits=teacher_logits is not None, teacher=teacher,
                            checkpointed=checkpoint is not None, model_step=getattr(model, "loss_step", None))
    loss_step = build_step(step_name, StepInputs(model, settings, kd, teacher, device, sample=x[:2]))
    next_batch = batch_source(x, y, settings.augment, device, teacher_logits=teacher_logits, views=views)
    g = torch.Generator().manual_seed(settings.seed)  # every draw of the run: order, views, augmentation
    n, bs = len(y), settings.batch_size
    per_epoch, total = steps_per_epoch(n, bs), steps or total_steps(settings, n)
    opt = torch.optim.SGD([*model.parameters(), *loss_step.trainable.parameters()], lr=settings.lr,
                          momentum=settings.momentum, weight_decay=settings.weight_decay, nesterov=True)
    at, sched, end = _start_or_resume(checkpoint, model, opt, g, settings.lr, total, restarts)
    model.train()
    start, loss_value = time.perf_counter(), math.nan
    with interrupts.deferred():  # Ctrl-C stops at a step boundary, never inside torch (see interrupts)
        while at.step < total:
            if at.order is None:
                at.order, at.batches_done = torch.randperm(n, generator=g), 0
            idx = at.order[at.batches_done * bs : (at.batches_done + 1) * bs]
            at.batches_done += 1
            interrupts.check()
            loss = loss_step.loss(next_batch(idx, g))
            loss_value = loss.item()
            if not math.isfinite(loss_value):
                raise TrialFailed(f"loss became {loss_value} at step {at.step + 1}/{total}")
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
            at.step += 1
            if at.step == end and at.step < total:
                first, end = segment(at.step, total, restarts)
                sched = one_cycle(opt, settings.lr, end - first)
            if on_step is not None:
                on_step(at.step, total, loss_value)
            if at.batches_done == per_epoch:
                at.order = None
            if checkpoint is not None and (at.order is None or at.step == total):
                save_checkpoint(checkpoint, model, opt, sched, g,
                                Position(at.step, at.order, at.batches_done, at.seconds + time.perf_counter() - start))
    return TrainResult(seconds=at.seconds + time.perf_counter() - start, steps=at.step, final_loss=loss_value)


def _start_or_resume(checkpoint: Path | None, model: nn.Module, opt: torch.optim.Optimizer, g: torch.Generator,
                     lr: float, total: int, restarts: tuple[int, ...]) -> tuple[Position, object, int]:
    """Where the run starts (a checkpoint's position, or step 0), its schedule, and the step that ends
    the schedule's current segment."""
    at, saved = load_checkpoint(checkpoint) if checkpoint is not None and checkpoint.exists() else (Position(), None)
    first, end = segment(at.step, total, restarts)
    if saved is not None and at.step == first:  # a new segment starts here: its cycle too, as straight through
        restore(saved, model, opt, g)
    sched = one_cycle(opt, lr, end - first)
    if saved is not None and at.step > first:
        restore(saved, model, opt, g, sched)
    return at, sched, end
