"""The teacher a run names: a recipe's (members shipped, cached or trained here), a brought one,
or an ensemble of several whose logits are averaged with a weight each.

Each recipe member is a state dict (loaded with ``weights_only=True``) with a JSON record of its
recipe, accuracy, training time and SHA-256, checked on every load.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from nas_kd.data import Split
from nas_kd.errors import UserError
from nas_kd.files import write_json
from nas_kd.progress import Progress
from nas_kd.teacher.cache import ACCURACY, TeacherCache, shipped_logits_dir, shipped_manifest_of, teacher_key
from nas_kd.teacher.external import is_external, is_factory, load_external
from nas_kd.teacher.info import TeacherInfo
from nas_kd.teacher.members import load_or_train_member
from nas_kd.teacher.recipes import default_teacher, find_recipe
from nas_kd.train import accuracy


class EnsembleTeacher(nn.Module):
    """Averages its members' logits (optionally weighted); one member behaves as that member."""

    def __init__(self, members: list[nn.Module], weights: list[float] | None = None) -> None:
        super().__init__()
        self.members = nn.ModuleList(members)
        w = torch.tensor(weights or [1.0] * len(members), dtype=torch.float32)
        self.register_buffer("weights", w / w.sum(), persistent=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return sum(w * m(x) for w, m in zip(self.weights, self.members, strict=True))

    def forward_features(self, x: torch.Tensor) -> list[torch.Tensor]:
        """Feature losses distil from the first member's stages (features of different networks do
        not average meaningfully)."""
        return self.members[0].forward_features(x)


@dataclass
class Teacher:
    model: nn.Module
    info: TeacherInfo


def load_or_train_teacher(
    split: Split, *, seed: int = 0, recipe: str | None = None, cache_dir: Path | str | None = None,
    progress: Progress | None = None, device: torch.device | str = "cpu", train: bool = True,
) -> Teacher:
    """The dataset's teacher for ``split``: loaded from the cache, or trained (resumably) and cached."""
    dataset = split.description["dataset"]
    name, rec = find_recipe(dataset, recipe, len(split.y_train))
    key = teacher_key(dataset, name, rec, split, seed)
    cache = TeacherCache.at(cache_dir)
    progress = progress or Progress(quiet=True)
    loaded = [load_or_train_member(split, rec, key=key, index=i, seed=seed, cache=cache, progress=progress,
                                   device=device, train=train) for i in range(rec.members)]
    model = loaded[0][0] if len(loaded) == 1 else EnsembleTeacher([m for m, _ in loaded])
    records = tuple(r for _, r in loaded)
    sha256 = hashlib.sha256("".join(r["sha256"] for r in records).encode()).hexdigest()
    if len(records) == 1:
        measured = {k: records[0][k] for k in ("val_accuracy", "test_accuracy")}
    else:
        measured = _ensemble_accuracy(model, split, cache.recipe_ensemble_accuracy(key, sha256), sha256)
    info = TeacherInfo(
        key=key, dataset=dataset, recipe_name=name, arch=rec.arch, sha256=sha256, **measured,
        flops=sum(r["flops"] for r in records), params=sum(r["params"] for r in records),
        train_seconds=round(sum(r["train_seconds"] for r in records), 1), split=records[0]["split"],
        members=records,
    )
    progress.log(f"teacher: {key} (val {info.val_accuracy:.2%}, test {info.test_accuracy:.2%})")
    return Teacher(model.eval(), info)


def _ensemble_accuracy(model: nn.Module, split: Split, path: Path, sha256: str) -> dict:
    """An ensemble's validation and test accuracy, measured once per split and cached at ``path``
    (measuring a large ensemble on every search's start would cost minutes); shipped ensembles ship
    their measurement too."""
    which = split.identity
    shipped = shipped_manifest_of(shipped_logits_dir(), ACCURACY).get(sha256, {})
    if shipped.get("split") == which:
        return {k: float(shipped[k]) for k in ("val_accuracy", "test_accuracy")}
    try:
        cached = json.loads(path.read_text())
        if cached.get("split") == which:
            return {k: float(cached[k]) for k in ("val_accuracy", "test_accuracy")}
    except (OSError, ValueError, KeyError):  # absent, or half-written by a peer: measure again
        pass
    result = {"val_accuracy": accuracy(model, split.x_val, split.y_val),
              "test_accuracy": accuracy(model, split.x_test, split.y_test)}
    try:
        write_json(path, {**result, "split": which}, sort_keys=True)
    except OSError:  # a read-only cache only costs the measurement again
        pass
    return result


def check_teacher_sources(dataset: str, sources: tuple[str, ...], weights: tuple[float, ...] | None,
                          weight_files: tuple[str, ...] = ()) -> None:
    """Refuse unknown recipes, missing teacher files and mismatched weights before any work starts."""
    for name in sources or default_teacher(dataset)[0]:
        if is_external(name):
            if not is_factory(name) and not Path(name).is_file():
                raise UserError(f"teacher file {name} does not exist")
        else:
            find_recipe(dataset, name)
    factories = [s for s in sources if is_external(s) and is_factory(s)]
    if len(weight_files) != len(factories):
        raise UserError(f"--teacher-weights is given {len(weight_files)} time(s) for {len(factories)} "
                        "factory teacher(s) (pkg.module:factory): give one state dict per factory, in order")
    if weights is not None and len(weights) != max(1, len(sources)):
        raise UserError(f"--ensemble-weights has {len(weights)} value(s) for {max(1, len(sources))} teacher(s)")
    if weights is not None and (min(weights) < 0 or sum(weights) <= 0):
        raise UserError("--ensemble-weights must be non-negative and not all zero")


def load_teacher(
    split: Split, sources: tuple[str, ...] = (), weights: tuple[float, ...] | None = None, *, seed: int = 0,
    cache_dir: Path | str | None = None, progress: Progress | None = None, device: torch.device | str = "cpu",
    train: bool = True, weight_files: tuple[str, ...] = (), teacher_input: str = "normalised",
) -> Teacher:
    """The teacher a search names with ``--teacher`` (repeatable): a recipe or a brought teacher
    (TorchScript, ONNX, factory + weights), or several whose logits are averaged with ``weights``
    (equal by default). No source: the dataset's default teacher (itself possibly several recipes)."""
    check_teacher_sources(split.description["dataset"], sources, weights, weight_files)
    if not sources:
        sources, default_weights = default_teacher(split.description["dataset"])
        weights = default_weights if len(sources) > 1 else None
    progress = progress or Progress(quiet=True)
    files = iter(weight_files)
    parts = []
    for source in sources:
        if is_external(source):
            weights_file = next(files) if is_factory(source) else None
            parts.append(_brought(split, source, weights_file, teacher_input, progress))
        else:
            parts.append(load_or_train_teacher(split, seed=seed, recipe=source, cache_dir=cache_dir,
                                               progress=progress, device=device, train=train))
    if len(parts) == 1:
        return parts[0]
    return _ensemble_of(parts, weights, split, brought=any(is_external(s) for s in sources),
                        cache=TeacherCache.at(cache_dir), progress=progress)


def _brought(split: Split, source: str, weights_file: str | None, teacher_input: str,
             progress: Progress) -> Teacher:
    """A teacher the user brings, measured on ``split``."""
    model, found = load_external(source, weights_file, teacher_input=teacher_input, split=split)
    measured = {"val_accuracy": accuracy(model, split.x_val, split.y_val),
                "test_accuracy": accuracy(model, split.x_test, split.y_test)}
    member = {**found, **measured, "train_seconds": 0.0}
    info = TeacherInfo(
        key=found["key"], dataset=split.description["dataset"], recipe_name=source, arch=found["arch"],
        sha256=found["sha256"], **measured, flops=found["flops"], params=found["params"], train_seconds=0.0,
        split=split.description, members=(member,), kind=found["kind"], source=source, input=teacher_input,
    )
    progress.log(f"teacher: {source} ({info.kind}): validation accuracy {info.val_accuracy:.2%}")
    return Teacher(model, info)


def _ensemble_of(parts: list[Teacher], weights: tuple[float, ...] | None, split: Split, *, brought: bool,
                 cache: TeacherCache, progress: Progress) -> Teacher:
    """Several teachers as one whose logits are their weighted average."""
    w = list(weights or [1.0] * len(parts))
    model = EnsembleTeacher([t.model for t in parts], w).eval()
    infos = [t.info for t in parts]
    sha256 = hashlib.sha256(("".join(i.sha256 for i in infos) + json.dumps(w)).encode()).hexdigest()
    if brought:  # a brought teacher's logits also depend on --teacher-input
        measured = {"val_accuracy": accuracy(model, split.x_val, split.y_val),
                    "test_accuracy": accuracy(model, split.x_test, split.y_test)}
    else:  # recipes only: measured once per split, like a recipe's own members
        measured = _ensemble_accuracy(model, split, cache.mixed_ensemble_accuracy(sha256), sha256)
    info = TeacherInfo(
        key="+".join(i.key for i in infos) + ("" if weights is None else f"@{','.join(map(str, w))}"),
        dataset=infos[0].dataset, recipe_name="+".join(i.recipe_name for i in infos),
        arch=tuple(i.arch for i in infos), sha256=sha256, **measured,
        flops=None if any(i.flops is None for i in infos) else sum(i.flops for i in infos),
        params=sum(i.params for i in infos), train_seconds=round(sum(i.train_seconds for i in infos), 1),
        split=infos[0].split, members=tuple(m for i in infos for m in i.members), kind="ensemble",
        parts=tuple(i.key for i in infos), weights=tuple(w),
    )
    progress.log(f"teacher: ensemble of {len(parts)} ({info.recipe_name}, weights {w}): val {info.val_accuracy:.2%}")
    return Teacher(model, info)
