"""Maintainers' commands: copy trained teachers and their logits into the package's shipped teachers
(``python -m nas_kd.teacher ship``), each file listed in a manifest with its SHA-256."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

from nas_kd.data import Split
from nas_kd.errors import UserError
from nas_kd.files import atomic_path, save_torch, sha256_file, write_json
from nas_kd.teacher.cache import (
    ACCURACY,
    MANIFEST,
    TeacherCache,
    logits_name,
    shipped_dir,
    shipped_logits_dir,
    shipped_manifest,
    shipped_manifest_of,
)
from nas_kd.teacher.load import Teacher, load_teacher
from nas_kd.teacher.logits import teacher_logits
from nas_kd.teacher.recipes import default_teacher


def ship_teacher(key: str, cache_dir: Path | str | None = None) -> Path:
    """Copy a trained teacher from the cache into the package's shipped teachers."""
    cache = TeacherCache.at(cache_dir)
    records = cache.member_records(key)
    if not records:
        raise UserError(f"no trained teacher {key} in {cache.root}: train it first")
    dest = shipped_dir() / key
    manifest = shipped_manifest()
    manifest[key] = {}
    for record in records:
        info = json.loads(record.read_text())
        weights = record.with_suffix(".pt")
        with atomic_path(dest / weights.name) as tmp:
            tmp.write_bytes(weights.read_bytes())
        if sha256_file(dest / weights.name) != info["sha256"]:
            raise UserError(f"{weights} does not match its recorded SHA-256; retrain it")
        manifest[key][record.stem] = info
    write_json(shipped_dir() / MANIFEST, manifest, sort_keys=True)
    return dest


def ship_logits(teacher: Teacher, split: Split, cache_dir: Path | str | None = None,
                parts: tuple[Teacher, ...] = ()) -> Path:
    """Copy ``teacher``'s training-split logits into the package, hashed in its manifest, with the
    measured accuracy of it and of its ``parts`` where they are ensembles."""
    logits = teacher_logits(teacher, split, cache_dir=cache_dir)
    folder = shipped_logits_dir()
    path = save_torch(logits.contiguous(), folder / logits_name(teacher.info.sha256))
    manifest = shipped_manifest_of(folder)
    manifest[path.name] = {"teacher": teacher.info.key, "teacher_sha256": teacher.info.sha256,
                           "split": split.identity, "shape": list(logits.shape), "sha256": sha256_file(path)}
    write_json(folder / MANIFEST, manifest, sort_keys=True)
    accuracies = shipped_manifest_of(folder, ACCURACY)
    for part in [teacher.info, *(t.info for t in parts)]:
        if len(part.members) > 1:  # an ensemble's accuracy is measured at load, not recorded with weights
            accuracies[part.sha256] = {"teacher": part.key, "split": split.identity,
                                       "val_accuracy": part.val_accuracy, "test_accuracy": part.test_accuracy}
    write_json(folder / ACCURACY, accuracies, sort_keys=True)
    return path


def ship(teacher: Teacher, split: Split, recipes: tuple[str, ...], *, seed: int,
         cache_dir: Path | str | None, say: Callable[[str], object] = print) -> None:
    """Ship ``teacher`` (loaded from ``recipes``, none: the default): each recipe it averages, then
    its logits; ``say`` is told each step done."""
    cache = TeacherCache.at(cache_dir)
    for key in teacher.info.parts or (teacher.info.key,):
        if key in shipped_manifest() and not cache.member_records(key):
            say(f"{key} is shipped already")
        else:
            say(f"shipped {key} to {ship_teacher(key, cache_dir)}")
    recipes = recipes or default_teacher(split.description["dataset"])[0]
    parts = tuple(load_teacher(split, (r,), seed=seed, cache_dir=cache_dir, train=False)
                  for r in recipes) if len(recipes) > 1 else ()
    say(f"shipped its logits to {ship_logits(teacher, split, cache_dir, parts)}")
