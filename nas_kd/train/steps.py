"""The loss of one batch: a registered step per kind of target, looked up once before the loop.

A step is built from what the run has (``StepInputs``) and then called on every batch. A new kind of
target is one function with ``@register_step("name")`` and a line in ``choose_step``; a new KD loss
needs no step at all (register it in ``nas_kd.distill.losses``).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import nn

from nas_kd.distill.losses import KDBatch, KDSettings, get_kd_loss, needs_features
from nas_kd.train.batches import Batch
from nas_kd.train.features import feature_adapters
from nas_kd.train.settings import TrainSettings


@dataclass(frozen=True)
class StepInputs:
    """What a step is built from; ``sample`` is a couple of training images (feature shapes)."""

    model: nn.Module
    settings: TrainSettings
    kd: KDSettings
    teacher: nn.Module | None
    device: torch.device
    sample: torch.Tensor


@dataclass(frozen=True)
class LossStep:
    """``loss(batch)`` is the scalar to minimise; ``trainable`` holds parts trained beside the model."""

    loss: Callable[[Batch], torch.Tensor]
    trainable: nn.Module = field(default_factory=nn.ModuleList)


StepBuilder = Callable[[StepInputs], LossStep]
_STEPS: dict[str, StepBuilder] = {}


def register_step(name: str) -> Callable[[StepBuilder], StepBuilder]:
    """Register a step builder under ``name`` (the name ``choose_step`` returns for its kind of target)."""
    def wrap(fn: StepBuilder) -> StepBuilder:
        _STEPS[name] = fn
        return fn

    return wrap


def choose_step(kd: KDSettings, *, cached_logits: bool, teacher: nn.Module | None, checkpointed: bool,
                model_step: str | None = None) -> str:
    """The registered step that trains with ``kd`` given the run's targets; ValueError, before any
    training, when the targets cannot serve ``kd``. A model that names its own step (``model_step``,
    its ``loss_step`` attribute: several peers, a student with exits) is trained by that step."""
    get_kd_loss(kd.loss)  # an unknown loss name is refused even when it would go unused
    if model_step is not None:
        if model_step not in _STEPS:
            raise ValueError(f"the model asks for an unregistered loss step {model_step!r}")
        return model_step
    if not kd.uses_teacher:
        return "labels"
    if not cached_logits and teacher is None:
        raise ValueError("KD training needs teacher logits or a teacher")
    if not needs_features(kd.loss):
        return "cached-logits" if cached_logits else "live-teacher"
    if teacher is None or not hasattr(teacher, "forward_features"):
        raise ValueError(f"{kd.loss} needs a teacher module with forward_features")
    if checkpointed:
        raise ValueError("feature distillation does not checkpoint its adapters")
    return "features"


def teacher_target(b: Batch, run: StepInputs) -> torch.Tensor | None:
    """The teacher's logits for this batch, on the model's device: cached with the batch, else from a
    live teacher, else None (labels only, or no teacher)."""
    target = b.teacher_logits
    if target is None and run.teacher is not None and run.kd.uses_teacher:
        with torch.no_grad():
            target = run.teacher(b.images)
    return None if target is None else target.to(run.device)


def build_step(name: str, inputs: StepInputs) -> LossStep:
    """The step registered as ``name``, built for this run (feature adapters are created here)."""
    return _STEPS[name](inputs)


@register_step("labels")
def labels_step(run: StepInputs) -> LossStep:
    """Cross-entropy with the labels, smoothed by ``settings.label_smoothing``; no teacher."""
    model, smoothing = run.model, run.settings.label_smoothing

    def loss(b: Batch) -> torch.Tensor:
        return F.cross_entropy(model(b.images), b.labels, label_smoothing=smoothing)

    return LossStep(loss)


@register_step("cached-logits")
def cached_logits_step(run: StepInputs) -> LossStep:
    """The KD loss against the teacher logits the batch carries (of its images or of their views)."""
    model, kd, device, kd_loss = run.model, run.kd, run.device, get_kd_loss(run.kd.loss)

    def loss(b: Batch) -> torch.Tensor:
        return kd_loss(KDBatch(model(b.images), b.labels, teacher_logits=b.teacher_logits.to(device)), kd)

    return LossStep(loss)


@register_step("live-teacher")
def live_teacher_step(run: StepInputs) -> LossStep:
    """The KD loss against the teacher run on this very (augmented) batch: exact, for its forward pass."""
    model, teacher, kd, device, kd_loss = run.model, run.teacher, run.kd, run.device, get_kd_loss(run.kd.loss)

    def loss(b: Batch) -> torch.Tensor:
        logits = model(b.images)
        with torch.no_grad():
            target = teacher(b.images)
        return kd_loss(KDBatch(logits, b.labels, teacher_logits=target.to(device)), kd)

    return LossStep(loss)


@register_step("features")
def features_step(run: StepInputs) -> LossStep:
    """A feature loss: paired stage outputs of student (through its adapters) and teacher, on this batch."""
    model, teacher, kd, kd_loss = run.model, run.teacher, run.kd, get_kd_loss(run.kd.loss)
    pairs, adapters = feature_adapters(model, teacher, run.sample.to(run.device), kd.loss, run.device)

    def loss(b: Batch) -> torch.Tensor:
        s_feats = model.forward_features(b.images)
        with torch.no_grad():
            t_feats = teacher.forward_features(b.images)
        return kd_loss(KDBatch(
            model.classify(s_feats[-1]), b.labels, teacher_logits=b.teacher_logits,
            student_features=[adapt(s_feats[i]) for (i, _), adapt in zip(pairs, adapters, strict=True)],
            teacher_features=[t_feats[j] for _, j in pairs]), kd)

    return LossStep(loss, trainable=adapters)
