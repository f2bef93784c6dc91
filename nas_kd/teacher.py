"""Teachers: trained once per (dataset, recipe, split, seed), cached, loaded safely; logits cached.

A teacher is one network or an ensemble whose logits are averaged. Each member is a state dict
(loaded with ``weights_only=True``) with a JSON record of its recipe, accuracy, training time and
SHA-256, checked on every load. Training saves a checkpoint after every epoch and resumes from it.
Teacher logits for the training split are computed once and cached, so a KD trial costs what a
label-only trial costs.

``python -m nas_kd.teacher train --dataset fashion-mnist`` trains (or resumes) a teacher;
``python -m nas_kd.teacher show --dataset fashion-mnist`` describes it and measures its test accuracy.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import sys
import time
import warnings
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
from torch import nn

from nas_kd.data import Split, dataset_names, default_val_size, load_dataset, split_dataset
from nas_kd.errors import UserError
from nas_kd.progress import Progress, format_seconds
from nas_kd.quantity import format_quantity
from nas_kd.teacher_nets import build_teacher
from nas_kd.train import TrainSettings, accuracy, predict_logits, train_model


@dataclass(frozen=True)
class TeacherRecipe:
    """How a teacher is made: ``members`` networks of ``arch`` (member i trains with seed + i)."""

    arch: dict
    train: TrainSettings
    members: int = 1


RECIPES: dict[str, dict[str, TeacherRecipe]] = {
    "fashion-mnist": {
        # ~40 MFLOPs; trained on first use in ~15 minutes on 2 cores
        "quick": TeacherRecipe(
            {"arch": "resnet", "width": 32, "blocks": [1, 1, 1]},
            TrainSettings(epochs=8, batch_size=128, lr=0.1, weight_decay=5e-4, augment="crop"),
        ),
        # an ensemble of 4 (logits averaged): ~160 MFLOPs in all, but its logits are cached
        "strong": TeacherRecipe(
            {"arch": "resnet", "width": 32, "blocks": [1, 1, 1]},
            TrainSettings(epochs=30, batch_size=128, lr=0.1, weight_decay=5e-4, augment="crop-flip-erase"),
            members=4,
        ),
    },
    "digits": {
        "quick": TeacherRecipe(
            {"arch": "resnet", "width": 32, "blocks": [1, 1, 1]},
            TrainSettings(epochs=60, batch_size=64, lr=0.05, weight_decay=5e-4, augment="crop"),
        ),
    },
    "tiny": {
        "quick": TeacherRecipe(
            {"arch": "resnet", "width": 8, "blocks": [1, 1]},
            TrainSettings(epochs=12, batch_size=32, lr=0.05, weight_decay=5e-4),
        ),
        "ensemble": TeacherRecipe(
            {"arch": "resnet", "width": 8, "blocks": [1, 1]},
            TrainSettings(epochs=12, batch_size=32, lr=0.05, weight_decay=5e-4),
            members=2,
        ),
    },
}
DEFAULT_RECIPE = {"fashion-mnist": "quick", "digits": "quick", "tiny": "quick"}


class EnsembleTeacher(nn.Module):
    """Averages its members' logits (optionally weighted); one member behaves as that member."""

    def __init__(self, members: list[nn.Module], weights: list[float] | None = None) -> None:
        super().__init__()
        self.members = nn.ModuleList(members)
        w = torch.tensor(weights or [1.0] * len(members), dtype=torch.float32)
        self.register_buffer("weights", w / w.sum(), persistent=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return sum(w * m(x) for w, m in zip(self.weights, self.members, strict=True))


@dataclass
class Teacher:
    model: nn.Module
    info: dict  # key, dataset, recipe, split, members, val/test accuracy, seconds, sha256, flops, params


def default_cache_dir() -> Path:
    return Path(os.environ.get("NAS_KD_CACHE_DIR", Path.home() / ".cache" / "nas_kd"))


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def teacher_key(dataset: str, recipe_name: str, recipe: TeacherRecipe, split: Split, seed: int) -> str:
    ident = json.dumps(
        {"arch": recipe.arch, "train": asdict(recipe.train), "members": recipe.members,
         "val_size": split.description["val_size"], "split_seed": split.description["split_seed"],
         "data": split.description["fingerprint"]},
        sort_keys=True,
    )
    digest = hashlib.sha256(ident.encode()).hexdigest()[:10]
    return f"{dataset}-{recipe_name}-{recipe.arch['arch']}{recipe.arch.get('width', '')}-{digest}-seed{seed}"


def _recipe(dataset: str, name: str | None) -> tuple[str, TeacherRecipe]:
    if dataset not in RECIPES:
        raise UserError(f"no default teacher for dataset {dataset!r}")
    name = name or DEFAULT_RECIPE[dataset]
    if name not in RECIPES[dataset]:
        raise UserError(f"unknown teacher recipe {name!r} for {dataset}: choose one of {', '.join(RECIPES[dataset])}")
    return name, RECIPES[dataset][name]


def load_or_train_teacher(
    split: Split, *, seed: int = 0, recipe: str | None = None, cache_dir: Path | str | None = None,
    progress: Progress | None = None, device: torch.device | str = "cpu", train: bool = True,
) -> Teacher:
    """The dataset's teacher for ``split``: loaded from the cache, or trained (resumably) and cached."""
    dataset = split.description["dataset"]
    recipe_name, rec = _recipe(dataset, recipe)
    key = teacher_key(dataset, recipe_name, rec, split, seed)
    folder = Path(cache_dir or default_cache_dir()) / "teachers" / key
    progress = progress or Progress(quiet=True)
    members, infos = [], []
    for i in range(rec.members):
        model, info = _member(split, rec, seed + i, folder / f"member-{i}", progress, device, train,
                              label=f"{key} member {i + 1}/{rec.members}")
        members.append(model)
        infos.append(info)
    model = members[0] if len(members) == 1 else EnsembleTeacher(members)
    info = {
        "key": key, "dataset": dataset, "recipe_name": recipe_name, "arch": rec.arch, "members": infos,
        "split": infos[0]["split"],
        "sha256": hashlib.sha256("".join(m["sha256"] for m in infos).encode()).hexdigest(),
        "train_seconds": round(sum(m["train_seconds"] for m in infos), 1),
        "params": sum(m["params"] for m in infos),
        "flops": sum(m["flops"] for m in infos),
    }
    if len(members) == 1:
        info.update(val_accuracy=infos[0]["val_accuracy"], test_accuracy=infos[0]["test_accuracy"])
    else:
        info.update(val_accuracy=accuracy(model, split.x_val, split.y_val),
                    test_accuracy=accuracy(model, split.x_test, split.y_test))
    progress.log(f"teacher: {key} (val {info['val_accuracy']:.2%}, test {info['test_accuracy']:.2%})")
    return Teacher(model.eval(), info)


def _member(split: Split, rec: TeacherRecipe, seed: int, stem: Path, progress: Progress,
            device: torch.device | str, train: bool, label: str) -> tuple[nn.Module, dict]:
    from nas_kd.cost import count_flops

    weights, record, ckpt = stem.with_suffix(".pt"), stem.with_suffix(".json"), stem.with_suffix(".ckpt")
    model = build_teacher(rec.arch, split.input_shape[0], split.num_classes)
    if weights.exists() and record.exists():
        info = json.loads(record.read_text())
        load_checked(model, weights, info["sha256"])
        return model.to(device).eval(), info
    if not train:
        raise UserError(f"no trained teacher {label}: run python -m nas_kd.teacher train "
                        f"--dataset {split.description['dataset']}")
    resumed = " (resuming)" if ckpt.exists() else ""
    progress.log(f"teacher: training {label}{resumed}: {rec.train.epochs:g} epochs; cached for later runs")
    stem.parent.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(seed)
    model = model.to(device).to(memory_format=torch.channels_last)
    settings = TrainSettings(**{**asdict(rec.train), "seed": seed})
    start = time.perf_counter()
    previous = json.loads(ckpt.with_suffix(".time").read_text()) if ckpt.with_suffix(".time").exists() else 0.0

    def on_step(step: int, total: int, loss: float) -> None:
        if step % 50 == 0 or step == total:
            ckpt.with_suffix(".time").write_text(json.dumps(previous + time.perf_counter() - start))
        progress.status(f"teacher: step {step}/{total} ({step / total:.0%}) loss {loss:.3f} "
                        f"elapsed {format_seconds(previous + time.perf_counter() - start)}")

    train_model(model, split.x_train, split.y_train, settings, on_step=on_step, checkpoint=ckpt)
    seconds = previous + time.perf_counter() - start
    info = {
        "seed": seed, "recipe": asdict(settings), "arch": rec.arch,
        "split": {k: split.description[k] for k in ("train_size", "val_size", "split_seed", "fingerprint")},
        "val_accuracy": accuracy(model, split.x_val, split.y_val),
        "test_accuracy": accuracy(model, split.x_test, split.y_test),
        "train_seconds": round(seconds, 1),
        "params": sum(p.numel() for p in model.parameters()),
        "flops": count_flops(model, split.input_shape),
    }
    tmp = weights.with_suffix(".pt.tmp")
    torch.save({k: v.contiguous() for k, v in model.state_dict().items()}, tmp)
    info["sha256"] = sha256_file(tmp)
    os.replace(tmp, weights)
    _write_json(record, info)
    for leftover in (ckpt, ckpt.with_suffix(".time")):
        leftover.unlink(missing_ok=True)
    progress.log(f"teacher: trained {label} in {format_seconds(seconds)}: val {info['val_accuracy']:.2%}, "
                 f"test {info['test_accuracy']:.2%}")
    return model.eval(), info


def load_checked(model: nn.Module, path: Path, sha256: str) -> None:
    """Load a state dict with ``weights_only=True`` after checking the file's SHA-256."""
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


def teacher_logits(teacher: Teacher, split: Split, *, cache_dir: Path | str | None = None) -> torch.Tensor:
    """Teacher logits for every training image of ``split`` (cached on disk by teacher hash)."""
    folder = Path(cache_dir or default_cache_dir()) / "teachers" / teacher.info["key"]
    path = folder / f"train-logits-{teacher.info['sha256'][:12]}.pt"
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


def _split_for(args: argparse.Namespace) -> Split:
    data = load_dataset(args.dataset, args.data_dir)
    val = args.val_size if args.val_size is not None else default_val_size(len(data.y_train))
    return split_dataset(data, val_size=val, seed=args.split_seed)


def _train_one_member(split: Split, args: argparse.Namespace, progress: Progress) -> int:
    name, rec = _recipe(split.description["dataset"], args.recipe)
    if not 0 <= args.member < rec.members:
        raise UserError(f"--member must be in 0..{rec.members - 1} for recipe {name!r}")
    key = teacher_key(split.description["dataset"], name, rec, split, args.seed)
    stem = Path(args.cache_dir or default_cache_dir()) / "teachers" / key / f"member-{args.member}"
    _, info = _member(split, rec, args.seed + args.member, stem, progress, "cpu", True,
                      label=f"{key} member {args.member + 1}/{rec.members}")
    print(f"member {args.member}: val {info['val_accuracy']:.2%}, test {info['test_accuracy']:.2%}, "
          f"{format_seconds(info['train_seconds'])}")
    return 0


def main(argv: list[str] | None = None) -> int:
    warnings.filterwarnings("ignore", category=DeprecationWarning)
    p = argparse.ArgumentParser(prog="python -m nas_kd.teacher", description="Train or inspect a default teacher.")
    p.add_argument("command", choices=("train", "show"))
    p.add_argument("--dataset", default="fashion-mnist", help=f"one of {', '.join(dataset_names())}")
    p.add_argument("--recipe", help="teacher recipe (default: the dataset's default)")
    p.add_argument("--seed", type=int, default=0, help="teacher seed (default 0)")
    p.add_argument("--data-dir")
    p.add_argument("--val-size", type=float)
    p.add_argument("--split-seed", type=int, default=0)
    p.add_argument("--cache-dir", help="teacher cache (default ~/.cache/nas_kd or $NAS_KD_CACHE_DIR)")
    p.add_argument("--member", type=int, help="train only this ensemble member (run several in parallel)")
    p.add_argument("--threads", type=int)
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads or os.cpu_count() or 1)
    try:
        split = _split_for(args)
        progress = Progress()
        if args.command == "train" and args.member is not None:
            return _train_one_member(split, args, progress)
        teacher = load_or_train_teacher(split, seed=args.seed, recipe=args.recipe, cache_dir=args.cache_dir,
                                        progress=progress, train=args.command == "train")
    except UserError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("\ninterrupted: progress is checkpointed every epoch; run the same command to resume", file=sys.stderr)
        return 130
    info = teacher.info
    if args.command == "train":
        print(f"teacher {info['key']}: {len(info['members'])} member(s), trained in "
              f"{format_seconds(info['train_seconds'])}; val {info['val_accuracy']:.2%}, "
              f"test {info['test_accuracy']:.2%}")
        return 0
    members = info["members"]
    print(f"teacher: {info['key']}")
    averaged = " (logits averaged)" if len(members) > 1 else ""
    print(f"architecture: {len(members)} x {json.dumps(info['arch'])}{averaged}")
    print(f"FLOPs: {format_quantity(info['flops'])} ({info['flops']}; 1 multiply-add = 1 FLOP, fvcore)")
    print(f"params: {format_quantity(info['params'])} ({info['params']})")
    print(f"sha256: {info['sha256']}")
    print(f"training time: {format_seconds(info['train_seconds'])}; validation accuracy: {info['val_accuracy']:.2%}")
    print(f"test accuracy: {accuracy(teacher.model, split.x_test, split.y_test):.2%}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
