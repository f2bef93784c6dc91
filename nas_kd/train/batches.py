"""One step's batch: images, labels and any cached teacher logits, from the training set or its fixed views."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch

from nas_kd.train.augment import augment_batch


@dataclass(frozen=True)
class Batch:
    """What a loss step gets: ``images`` on the model's device, channels-last."""

    images: torch.Tensor
    labels: torch.Tensor
    teacher_logits: torch.Tensor | None = None  # cached targets of exactly these images, if the run has them


BatchSource = Callable[[torch.Tensor, torch.Generator], Batch]  # (indices, generator) -> the step's batch


def batch_source(x: torch.Tensor, y: torch.Tensor, augment: str, device: torch.device, *,
                 teacher_logits: torch.Tensor | None = None, views: torch.Tensor | None = None) -> BatchSource:
    """How a step's indices become its batch, decided once per run:

    - with ``views`` [K, N, ...] and their ``teacher_logits`` [K, N, C]: one of the K fixed views of
      each image, drawn from the generator; ``augment`` is not applied again;
    - otherwise the images augmented with the generator's draws, with their rows of ``teacher_logits``
      [N, C] when given.
    """
    if views is not None:
        def from_views(idx: torch.Tensor, g: torch.Generator) -> Batch:
            view = torch.randint(0, len(views), (len(idx),), generator=g)
            return _on_device(views[view, idx].to(device), y[idx], teacher_logits[view, idx], device)

        return from_views

    def augmented(idx: torch.Tensor, g: torch.Generator) -> Batch:
        images = augment_batch(x[idx], augment, g).to(device, non_blocking=True)
        return _on_device(images, y[idx], None if teacher_logits is None else teacher_logits[idx], device)

    return augmented


def _on_device(images: torch.Tensor, labels: torch.Tensor, teacher_logits: torch.Tensor | None,
               device: torch.device) -> Batch:
    return Batch(images.contiguous(memory_format=torch.channels_last), labels.to(device, non_blocking=True),
                 teacher_logits)
