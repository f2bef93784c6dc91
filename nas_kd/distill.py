"""Distillation losses, registered by name and chosen from config (``--kd NAME``).

A loss is one small function ``(batch, settings) -> scalar tensor``; adding a loss is adding one
function with ``@register_kd_loss("name")``, never a new branch in the trainer.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F


@dataclass(frozen=True)
class KDSettings:
    """Which loss and its knobs; ``alpha = 0`` means labels only (no teacher is needed)."""

    loss: str = "hinton"
    temperature: float = 4.0
    alpha: float = 0.9

    @property
    def uses_teacher(self) -> bool:
        return self.alpha > 0

    def describe(self) -> str:
        if not self.uses_teacher:
            return "loss = ce (labels only)"
        return f"loss = {self.alpha:g} * {self.loss}(T={self.temperature:g}) + {1 - self.alpha:g} * ce"


@dataclass(frozen=True)
class KDBatch:
    """What a loss may look at for one batch; feature lists are filled only for losses needing them."""

    student_logits: torch.Tensor
    labels: torch.Tensor
    teacher_logits: torch.Tensor | None = None
    student_features: list[torch.Tensor] | None = None
    teacher_features: list[torch.Tensor] | None = None


KDLoss = Callable[[KDBatch, KDSettings], torch.Tensor]
_LOSSES: dict[str, KDLoss] = {}


def register_kd_loss(name: str) -> Callable[[KDLoss], KDLoss]:
    def wrap(fn: KDLoss) -> KDLoss:
        _LOSSES[name] = fn
        return fn

    return wrap


def kd_loss_names() -> list[str]:
    return sorted(_LOSSES)


def get_kd_loss(name: str) -> KDLoss:
    """The registered loss called ``name``; ValueError naming the registered ones otherwise."""
    try:
        return _LOSSES[name]
    except KeyError:
        raise ValueError(f"unknown KD loss {name!r}: choose one of {', '.join(kd_loss_names())}") from None


def soft_kl(student_logits: torch.Tensor, teacher_logits: torch.Tensor, temperature: float) -> torch.Tensor:
    """KL(p_teacher^T || p_student^T), batch mean, times T² (Hinton et al. 2015)."""
    t = temperature
    log_p_s = F.log_softmax(student_logits / t, dim=1)
    log_p_t = F.log_softmax(teacher_logits / t, dim=1)
    return F.kl_div(log_p_s, log_p_t, reduction="batchmean", log_target=True) * (t * t)


@register_kd_loss("hinton")
def hinton_loss(batch: KDBatch, s: KDSettings) -> torch.Tensor:
    """``alpha·T²·KL(teacher_T ‖ student_T) + (1 − alpha)·CE(labels, student)``.

    Hinton, Vinyals & Dean 2015, "Distilling the Knowledge in a Neural Network". The T² factor
    keeps gradient magnitudes comparable across temperatures.
    """
    ce = F.cross_entropy(batch.student_logits, batch.labels)
    if s.alpha == 0:
        return ce
    if batch.teacher_logits is None:
        raise ValueError("hinton loss with alpha > 0 needs teacher logits")
    kd = soft_kl(batch.student_logits, batch.teacher_logits, s.temperature)
    return s.alpha * kd + (1 - s.alpha) * ce
