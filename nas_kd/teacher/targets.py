"""What a student distils against when its images are augmented: ``kd_targets``."""

from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

from nas_kd.data import Split
from nas_kd.errors import UserError
from nas_kd.files import save_torch
from nas_kd.teacher.cache import TeacherCache, load_tensor
from nas_kd.teacher.load import Teacher
from nas_kd.teacher.logits import teacher_logits
from nas_kd.train import augment_batch, predict_logits

KD_TARGETS = ("clean", "views", "live")
VIEWS = 4  # augmented views cached per training image by kd_targets(..., "views")


def kd_targets(teacher: Teacher, split: Split, mode: str, augment: str, *,
               cache_dir: Path | str | None = None) -> dict:
    """What ``train_model`` distils against when the student's images are augmented (keyword arguments):

    - ``clean``: logits of the un-augmented images, cached once (a KD step costs a label-only step);
    - ``views``: ``VIEWS`` fixed augmented views of every image, with their logits cached; training
      draws one view per image per step (the same cost as ``clean`` once cached);
    - ``live``: the teacher runs on every augmented batch (exact targets, plus the teacher's forward).
    """
    if mode not in KD_TARGETS:
        raise UserError(f"unknown KD targets {mode!r}: choose one of {', '.join(KD_TARGETS)}")
    if mode == "clean" or augment == "none":
        return {"teacher_logits": teacher_logits(teacher, split, cache_dir=cache_dir)}
    if mode == "live":
        return {"teacher": teacher.model.eval()}
    views = fixed_views(split, augment)
    path = TeacherCache.at(cache_dir).views(teacher.info.key, teacher.info.sha256, augment, VIEWS)
    logits = load_tensor(path, (VIEWS, len(split.y_train), split.num_classes))
    if logits is None:
        logits = torch.stack([predict_logits(teacher.model, v) for v in views])
        save_torch(logits, path)
    return {"views": views, "teacher_logits": logits}


def fixed_views(split: Split, augment: str) -> torch.Tensor:
    """``VIEWS`` augmented views of every training image [VIEWS, N, ...], the same for every run."""
    g = torch.Generator().manual_seed(0)  # the views are part of the data
    return torch.stack([
        torch.cat([augment_batch(chunk, augment, g) for chunk in split.x_train.split(4096)]) for _ in range(VIEWS)
    ])


def model_targets(model: nn.Module, split: Split, mode: str, augment: str) -> dict:
    """``kd_targets`` of a trained student used as a teacher (a born-again generation, a teacher
    assistant): its logits are computed here, not cached, since the student exists only in this run."""
    if mode == "clean" or augment == "none":
        return {"teacher_logits": predict_logits(model, split.x_train)}
    if mode == "live":
        return {"teacher": model.eval()}
    views = fixed_views(split, augment)
    return {"views": views, "teacher_logits": torch.stack([predict_logits(model, v) for v in views])}
