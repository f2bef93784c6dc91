"""A teacher's logits on every training image: computed once and cached by teacher hash, so a KD
trial costs what a label-only trial costs.

The default teachers' logits on their own training split ship with the package too, so a first
search on a new machine starts at once; they are listed with their SHA-256, checked on load.
"""

from __future__ import annotations

from pathlib import Path

import torch

from nas_kd.data import Split
from nas_kd.errors import UserError
from nas_kd.files import save_torch, sha256_file
from nas_kd.teacher.cache import TeacherCache, load_tensor, logits_name, shipped_logits_dir, shipped_manifest_of
from nas_kd.teacher.load import Teacher
from nas_kd.train import predict_logits


def teacher_logits(teacher: Teacher, split: Split, *, cache_dir: Path | str | None = None) -> torch.Tensor:
    """Teacher logits for every training image of ``split``: shipped with the package for the default
    teachers, otherwise computed once and cached on disk by teacher hash."""
    path = TeacherCache.at(cache_dir).logits(teacher.info.key, teacher.info.sha256)
    shape = (len(split.y_train), split.num_classes)
    cached = load_tensor(path, shape)
    if cached is not None:
        return cached
    shipped = shipped_logits(teacher, split)
    if shipped is not None:
        return shipped
    logits = predict_logits(teacher.model, split.x_train)
    save_torch(logits, path)
    return logits


def shipped_logits(teacher: Teacher, split: Split) -> torch.Tensor | None:
    """The package's logits of ``teacher`` on ``split`` (hash-checked), or None if none ship."""
    folder = shipped_logits_dir()
    name = logits_name(teacher.info.sha256)
    entry = shipped_manifest_of(folder).get(name)
    if entry is None or entry.get("split") != split.identity:
        return None
    path = folder / name
    actual = sha256_file(path) if path.exists() else "missing"
    if actual != entry["sha256"]:
        raise UserError(
            f"shipped teacher logits {path} do not match their recorded SHA-256 (expected "
            f"{entry['sha256'][:12]}…, found {actual[:12]}…): reinstall nas_kd (pip install --force-reinstall "
            "nas_kd), or delete the file to compute them again"
        )
    return load_tensor(path, (len(split.y_train), split.num_classes))
