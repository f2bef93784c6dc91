"""Default teachers: trained once per (dataset, architecture, recipe, split, seed), cached, loaded safely.

A cached teacher is a state dict (loaded with ``weights_only=True``) plus a JSON record of its
recipe, accuracy, training time and SHA-256; the hash is checked on every load. Teacher logits for
the training split are computed once and cached too, so a KD trial costs what a label-only one does.
"""

from __future__ import annotations

import hashlib
import json
import os
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
from torch import nn

from nas_kd.data import Split
from nas_kd.errors import UserError
from nas_kd.progress import Progress, format_seconds
from nas_kd.teacher_nets import build_teacher
from nas_kd.train import TrainSettings, accuracy, predict_logits, train_model


@dataclass(frozen=True)
class TeacherRecipe:
    arch: dict
    train: TrainSettings


DEFAULT_RECIPES: dict[str, TeacherRecipe] = {
    "fashion-mnist": TeacherRecipe(
        {"arch": "resnet", "width": 32, "blocks": [2, 2, 2]},
        TrainSettings(epochs=10, batch_size=128, lr=0.1, weight_decay=5e-4, augment="crop"),
    ),
    "digits": TeacherRecipe(
        {"arch": "resnet", "width": 32, "blocks": [1, 1, 1]},
        TrainSettings(epochs=60, batch_size=64, lr=0.05, weight_decay=5e-4, augment="crop"),
    ),
    "tiny": TeacherRecipe(
        {"arch": "resnet", "width": 8, "blocks": [1, 1]},
        TrainSettings(epochs=12, batch_size=32, lr=0.05, weight_decay=5e-4),
    ),
}


@dataclass
class Teacher:
    model: nn.Module
    info: dict  # key, dataset, arch, recipe, split, val/test accuracy, train seconds, sha256


def default_cache_dir() -> Path:
    return Path(os.environ.get("NAS_KD_CACHE_DIR", Path.home() / ".cache" / "nas_kd"))


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def _teacher_key(dataset: str, recipe: TeacherRecipe, split: Split, seed: int) -> str:
    ident = json.dumps(
        {"arch": recipe.arch, "train": asdict(recipe.train), "val_size": split.description["val_size"],
         "split_seed": split.description["split_seed"],
         "data": split.description["fingerprint"]},
        sort_keys=True,
    )
    digest = hashlib.sha256(ident.encode()).hexdigest()[:10]
    return f"{dataset}-{recipe.arch['arch']}{recipe.arch.get('width', '')}-{digest}-seed{seed}"


def load_or_train_teacher(
    split: Split, *, seed: int = 0, cache_dir: Path | None = None, progress: Progress | None = None,
    device: torch.device | str = "cpu",
) -> Teacher:
    """The default teacher for ``split``'s dataset: loaded from the cache, or trained and cached."""
    dataset = split.description["dataset"]
    if dataset not in DEFAULT_RECIPES:
        raise UserError(f"no default teacher for dataset {dataset!r}")
    recipe = DEFAULT_RECIPES[dataset]
    folder = Path(cache_dir or default_cache_dir()) / "teachers"
    key = _teacher_key(dataset, recipe, split, seed)
    weights, record = folder / f"{key}.pt", folder / f"{key}.json"
    progress = progress or Progress(quiet=True)
    model = build_teacher(recipe.arch, split.input_shape[0], split.num_classes)
    if weights.exists() and record.exists():
        info = json.loads(record.read_text())
        _load_checked(model, weights, info["sha256"])
        progress.log(
            f"teacher: cached {key} (val {info['val_accuracy']:.2%}, test {info['test_accuracy']:.2%})"
        )
        return Teacher(model.to(device).eval(), info)

    progress.log(f"teacher: training {key} ({recipe.train.epochs:g} epochs; cached for later runs)")
    torch.manual_seed(seed)
    model = model.to(device).to(memory_format=torch.channels_last)
    start = time.perf_counter()

    def on_step(step: int, total: int, loss: float) -> None:
        progress.status(
            f"teacher: step {step}/{total} ({step / total:.0%}) loss {loss:.3f} "
            f"elapsed {format_seconds(time.perf_counter() - start)}"
        )

    train = TrainSettings(**{**asdict(recipe.train), "seed": seed})
    train_model(model, split.x_train, split.y_train, train, on_step=on_step)
    seconds = time.perf_counter() - start
    info = {
        "key": key,
        "dataset": dataset,
        "arch": recipe.arch,
        "recipe": asdict(train),
        "split": {k: split.description[k] for k in ("train_size", "val_size", "split_seed")},
        "val_accuracy": accuracy(model, split.x_val, split.y_val),
        "test_accuracy": accuracy(model, split.x_test, split.y_test),
        "train_seconds": round(seconds, 1),
        "params": sum(p.numel() for p in model.parameters()),
    }
    folder.mkdir(parents=True, exist_ok=True)
    tmp = weights.with_suffix(".pt.tmp")
    torch.save({k: v.contiguous() for k, v in model.state_dict().items()}, tmp)
    info["sha256"] = sha256_file(tmp)
    os.replace(tmp, weights)
    _write_json(record, info)
    progress.log(
        f"teacher: trained in {format_seconds(seconds)}: val {info['val_accuracy']:.2%}, "
        f"test {info['test_accuracy']:.2%}"
    )
    return Teacher(model.eval(), info)


def _load_checked(model: nn.Module, path: Path, sha256: str) -> None:
    actual = sha256_file(path)
    if actual != sha256:
        raise UserError(
            f"teacher file {path} does not match its recorded SHA-256 (expected {sha256[:12]}…, "
            f"found {actual[:12]}…): it was changed or damaged; delete it to retrain"
        )
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
        model.load_state_dict(state)
    except Exception as err:  # noqa: BLE001 - any unpickling/shape failure is the same user problem
        raise UserError(f"cannot load teacher weights {path}: {err}") from None


def teacher_logits(teacher: Teacher, split: Split, *, cache_dir: Path | None = None) -> torch.Tensor:
    """Teacher logits for every training image of ``split`` (cached on disk by teacher hash)."""
    folder = Path(cache_dir or default_cache_dir()) / "teachers"
    path = folder / f"{teacher.info['key']}-{teacher.info['sha256'][:12]}-train-logits.pt"
    if path.exists():
        logits = torch.load(path, map_location="cpu", weights_only=True)
        if logits.shape == (len(split.y_train), split.num_classes):
            return logits
    logits = predict_logits(teacher.model, split.x_train)
    folder.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    torch.save(logits, tmp)
    os.replace(tmp, path)
    return logits


def _write_json(path: Path, data: dict) -> None:
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_text(json.dumps(data, indent=2, sort_keys=True))
    os.replace(tmp, path)
