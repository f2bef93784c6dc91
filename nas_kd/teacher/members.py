"""One member of a recipe teacher: shipped, cached, or trained here (resumably) and cached.

Training saves a checkpoint after every epoch and the seconds spent beside it, so an interrupted
run resumes where it stopped and its record counts the time of every run.
"""

from __future__ import annotations

import json
import time
from dataclasses import asdict

import torch
from torch import nn

from nas_kd.data import Split
from nas_kd.errors import UserError
from nas_kd.files import atomic_path, sha256_file, write_json, write_text
from nas_kd.model.cost import count_flops
from nas_kd.progress import Progress, elapsed_and_left, format_seconds
from nas_kd.teacher.cache import MemberFiles, TeacherCache, load_checked, shipped_member
from nas_kd.teacher.nets import build_teacher
from nas_kd.teacher.recipes import TeacherRecipe, default_teacher, recipe_name
from nas_kd.train import TrainSettings, accuracy, train_model


def load_or_train_member(split: Split, recipe: TeacherRecipe, *, key: str, index: int, seed: int,
                         cache: TeacherCache, progress: Progress, device: torch.device | str = "cpu",
                         train: bool = True) -> tuple[nn.Module, dict]:
    """Member ``index`` of teacher ``key`` (trained with ``seed + index``) and its record."""
    label = f"{key} member {index + 1}/{recipe.members}"
    model = build_teacher(recipe.arch, split.input_shape[0], split.num_classes)
    shipped = shipped_member(key, f"member-{index}")
    if shipped is not None:
        path, info = shipped
        load_checked(model, path, info["sha256"], shipped=True)
        return model.to(device).eval(), {**info, "shipped": True}
    files = cache.member(key, index)
    if files.weights.exists() and files.record.exists():
        info = json.loads(files.record.read_text())
        load_checked(model, files.weights, info["sha256"])
        return model.to(device).eval(), info
    if not train:
        dataset = split.description["dataset"]
        name = recipe_name(dataset, recipe, len(split.y_train))
        extra = "" if name in default_teacher(dataset)[0] else f" --recipe {name}"  # plain train: whole default
        raise UserError(f"no trained teacher {label}: run python -m nas_kd.teacher train --dataset {dataset}{extra}")
    return _train(model, split, recipe, seed + index, files, progress, device, label)


def _train(model: nn.Module, split: Split, recipe: TeacherRecipe, seed: int, files: MemberFiles,
           progress: Progress, device: torch.device | str, label: str) -> tuple[nn.Module, dict]:
    resumed = " (resuming)" if files.checkpoint.exists() else ""
    progress.log(f"teacher: training {label}{resumed}: {recipe.train.epochs:g} epochs; cached for later runs")
    files.weights.parent.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(seed)
    model = model.to(device).to(memory_format=torch.channels_last)
    settings = TrainSettings(**{**asdict(recipe.train), "seed": seed})
    start = time.perf_counter()
    previous = json.loads(files.seconds.read_text()) if files.seconds.exists() else 0.0

    def on_step(step: int, total: int, loss: float) -> None:
        elapsed = previous + time.perf_counter() - start
        if step % 50 == 0 or step == total:
            write_text(files.seconds, json.dumps(elapsed))
        progress.status(f"teacher: step {step}/{total} ({step / total:.0%}) loss {loss:.3f} "
                        f"{elapsed_and_left(step, total, elapsed)}")

    train_model(model, split.x_train, split.y_train, settings, on_step=on_step, checkpoint=files.checkpoint)
    seconds = previous + time.perf_counter() - start
    info = {
        "seed": seed, "recipe": asdict(settings), "arch": recipe.arch,
        "split": split.identity,
        "val_accuracy": accuracy(model, split.x_val, split.y_val),
        "test_accuracy": accuracy(model, split.x_test, split.y_test),
        "train_seconds": round(seconds, 3),
        "params": sum(p.numel() for p in model.parameters()),
        "flops": count_flops(model, split.input_shape),
    }
    with atomic_path(files.weights) as tmp:
        torch.save({k: v.contiguous() for k, v in model.state_dict().items()}, tmp)
        info["sha256"] = sha256_file(tmp)
    write_json(files.record, info, sort_keys=True)
    for leftover in (files.checkpoint, files.seconds):
        leftover.unlink(missing_ok=True)
    progress.log(f"teacher: trained {label} in {format_seconds(seconds)}: val {info['val_accuracy']:.2%}, "
                 f"test {info['test_accuracy']:.2%}")
    return model.eval(), info
