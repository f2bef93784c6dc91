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
import math
import os
import re
import sys
import time
import warnings
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
from torch import nn

from nas_kd import interrupts
from nas_kd.data import Split, dataset_names, default_val_size, load_dataset, split_dataset
from nas_kd.errors import UserError
from nas_kd.progress import Progress, format_seconds
from nas_kd.quantity import format_quantity
from nas_kd.teacher.nets import build_teacher
from nas_kd.train.loop import TrainSettings, accuracy, predict_logits, train_model


@dataclass(frozen=True)
class TeacherRecipe:
    """How a teacher is made: ``members`` networks of ``arch`` (member i trains with seed + i)."""

    arch: dict
    train: TrainSettings
    members: int = 1


RECIPES: dict[str, dict[str, TeacherRecipe]] = {
    "fashion-mnist": {
        # 37 MFLOPs, 92.85% test; trains in ~18 minutes on 2 cores
        "quick": TeacherRecipe(
            {"arch": "resnet", "width": 32, "blocks": [1, 1, 1]},
            TrainSettings(epochs=8, batch_size=128, lr=0.1, weight_decay=5e-4, augment="crop"),
        ),
        # shipped, part of the default: 2 members (logits averaged, 74 MFLOPs in all),
        # 93.60% val / 93.78% test; each member took ~2 h on one core of this machine
        "strong": TeacherRecipe(
            {"arch": "resnet", "width": 32, "blocks": [1, 1, 1]},
            TrainSettings(epochs=15, batch_size=128, lr=0.1, weight_decay=5e-4, augment="crop-flip-erase"),
            members=2,
        ),
        # one ResNet with twice strong's blocks (80.5 MFLOPs), 30 epochs: 94.60% val / 94.97% test;
        # trained in 3h59m (8 epochs on 1 thread, the rest on 2) here
        "deep": TeacherRecipe(
            {"arch": "resnet", "width": 32, "blocks": [2, 2, 2]},
            TrainSettings(epochs=30, batch_size=128, lr=0.1, weight_decay=5e-4, augment="crop-flip-erase"),
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
# A dataset's default teacher: one recipe, or several whose logits are averaged with a weight per
# recipe (a recipe's own members are averaged first). Fashion-MNIST's ships with the package.
DEFAULT_TEACHER: dict[str, tuple[tuple[str, ...], tuple[float, ...] | None]] = {
    # chosen on validation (benchmarks/RESULTS.md): strong alone 93.60%, deep alone 94.60%, strong's
    # two members and deep weighted 1:1:3 94.72% (test 94.81%). Both ship: 3 networks, 155 MFLOPs.
    "fashion-mnist": (("strong", "deep"), (2.0, 3.0)),
    "digits": (("quick",), None),
    "tiny": (("quick",), None),
}
GENERIC_MIN_STEPS = 1000


def recipes_for(dataset: str, n_train: int | None = None) -> dict[str, TeacherRecipe]:
    """The dataset's recipes. A dataset the user brings (npz:, folder:, a factory) gets a small
    ResNet trained on first use for 15 epochs, or more on small data: at least 1000 SGD steps."""
    if dataset in RECIPES:
        return RECIPES[dataset]
    epochs = max(15, math.ceil(GENERIC_MIN_STEPS / max(1, (n_train or 0) // 64))) if n_train else 15
    return {"quick": TeacherRecipe(
        {"arch": "resnet", "width": 16, "blocks": [1, 1, 1]},
        TrainSettings(epochs=epochs, batch_size=64, lr=0.05, weight_decay=5e-4, augment="crop"),
    )}


def default_teacher(dataset: str) -> tuple[tuple[str, ...], tuple[float, ...] | None]:
    """The recipes (and their weights) of the teacher used when no ``--teacher`` is given."""
    return DEFAULT_TEACHER.get(dataset, (("quick",), None))


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
    info: dict  # key, dataset, recipe, split, members, val/test accuracy, seconds, sha256, flops, params


def default_cache_dir() -> Path:
    return Path(os.environ.get("NAS_KD_CACHE_DIR", Path.home() / ".cache" / "nas_kd"))


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


# Teachers that take hours to train ship with the package: nas_kd/shipped_teachers/KEY/member-i.pt,
# listed in MANIFEST.json with each file's SHA-256 and training record. A split that matches the
# shipped key (same data, split and recipe) uses them at once; any other split trains its own.
MANIFEST = "MANIFEST.json"


def shipped_dir() -> Path:
    return Path(os.environ.get("NAS_KD_SHIPPED_DIR", Path(__file__).resolve().parent.parent / "shipped_teachers"))


def shipped_manifest() -> dict:
    return shipped_manifest_of(shipped_dir())


def shipped_manifest_of(folder: Path, name: str = MANIFEST) -> dict:
    """A JSON record shipped in ``folder`` (the teachers' manifest by default); empty if absent."""
    path = folder / name
    return json.loads(path.read_text()) if path.exists() else {}


def _shipped_member(key: str, member: str) -> tuple[Path, dict] | None:
    entry = shipped_manifest().get(key, {}).get(member)
    return (shipped_dir() / key / f"{member}.pt", entry) if entry else None


def ship_teacher(key: str, cache_dir: Path | str | None = None) -> Path:
    """Copy a trained teacher from the cache into the package's shipped teachers (maintainers)."""
    src = Path(cache_dir or default_cache_dir()) / "teachers" / key
    records = sorted(src.glob("member-*.json"))
    if not records:
        raise UserError(f"no trained teacher {key} in {src.parent}: train it first")
    dest = shipped_dir() / key
    dest.mkdir(parents=True, exist_ok=True)
    manifest = shipped_manifest()
    manifest[key] = {}
    for record in records:
        info = json.loads(record.read_text())
        weights = record.with_suffix(".pt")
        (dest / weights.name).write_bytes(weights.read_bytes())
        if sha256_file(dest / weights.name) != info["sha256"]:
            raise UserError(f"{weights} does not match its recorded SHA-256; retrain it")
        manifest[key][record.stem] = info
    _write_json(shipped_dir() / MANIFEST, manifest)
    return dest


def teacher_key(dataset: str, recipe_name: str, recipe: TeacherRecipe, split: Split, seed: int) -> str:
    ident = json.dumps(
        {"arch": recipe.arch, "train": asdict(recipe.train), "members": recipe.members,
         "val_size": split.description["val_size"], "split_seed": split.description["split_seed"],
         "data": split.description["fingerprint"]},
        sort_keys=True,
    )
    digest = hashlib.sha256(ident.encode()).hexdigest()[:10]
    if ":" in dataset:  # npz:/a/b.npz, folder:/a/b, pkg.mod:fn also name a folder: keep it short
        kind, _, where = dataset.partition(":")
        dataset = f"{kind if kind in ('npz', 'folder') else 'factory'}-{Path(where).stem or where}"
    dataset = re.sub(r"[^A-Za-z0-9._-]", "_", dataset)[-40:]
    return f"{dataset}-{recipe_name}-{recipe.arch['arch']}{recipe.arch.get('width', '')}-{digest}-seed{seed}"


def _recipe(dataset: str, name: str | None, n_train: int | None = None) -> tuple[str, TeacherRecipe]:
    recipes = recipes_for(dataset, n_train)
    if name is None:
        names = default_teacher(dataset)[0]
        if len(names) > 1:
            raise UserError(f"the default {dataset} teacher averages recipes {', '.join(names)}: "
                            "name one with --recipe")
        name = names[0]
    if name not in recipes:
        raise UserError(f"unknown teacher recipe {name!r} for {dataset}: choose one of {', '.join(recipes)}")
    return name, recipes[name]


def load_or_train_teacher(
    split: Split, *, seed: int = 0, recipe: str | None = None, cache_dir: Path | str | None = None,
    progress: Progress | None = None, device: torch.device | str = "cpu", train: bool = True,
) -> Teacher:
    """The dataset's teacher for ``split``: loaded from the cache, or trained (resumably) and cached."""
    dataset = split.description["dataset"]
    recipe_name, rec = _recipe(dataset, recipe, len(split.y_train))
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
        info.update(_ensemble_accuracy(model, split, folder / f"ensemble-{info['sha256'][:12]}.json", info["sha256"]))
    progress.log(f"teacher: {key} (val {info['val_accuracy']:.2%}, test {info['test_accuracy']:.2%})")
    return Teacher(model.eval(), info)


ACCURACY = "ensemble-accuracy.json"  # shipped: measured accuracy of the shipped ensembles, by SHA-256


def _ensemble_accuracy(model: nn.Module, split: Split, path: Path, sha256: str) -> dict:
    """An ensemble's validation and test accuracy, measured once per split and cached beside its
    members (measuring a 74-MFLOP ensemble on 15k images took a minute of every search's start);
    shipped ensembles ship their measurement too."""
    which = split.identity
    shipped = shipped_manifest_of(shipped_dir() / LOGITS_DIR, ACCURACY).get(sha256, {})
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
        path.parent.mkdir(parents=True, exist_ok=True)
        _write_json(path, {**result, "split": which})
    except OSError:  # a read-only cache only costs the minute again
        pass
    return result


def check_teacher_sources(dataset: str, sources: tuple[str, ...], weights: tuple[float, ...] | None,
                          weight_files: tuple[str, ...] = ()) -> None:
    """Refuse unknown recipes, missing teacher files and mismatched weights before any work starts."""
    from nas_kd.teacher.external import is_external, is_factory

    for name in sources or default_teacher(dataset)[0]:
        if is_external(name):
            if not is_factory(name) and not Path(name).is_file():
                raise UserError(f"teacher file {name} does not exist")
        else:
            _recipe(dataset, name)
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
    from nas_kd.teacher.external import is_external, is_factory, load_external

    check_teacher_sources(split.description["dataset"], sources, weights, weight_files)
    if not sources:
        sources, default_weights = default_teacher(split.description["dataset"])
        weights = default_weights if len(sources) > 1 else None
    files = iter(weight_files)
    parts = []
    for source in sources:
        if is_external(source):
            model, info = load_external(source, next(files) if is_factory(source) else None,
                                        teacher_input=teacher_input, split=split)
            info.update(dataset=split.description["dataset"], recipe_name=source, split=split.description,
                        train_seconds=0.0, val_accuracy=accuracy(model, split.x_val, split.y_val),
                        test_accuracy=accuracy(model, split.x_test, split.y_test))
            info["members"] = [dict(info)]
            (progress or Progress(quiet=True)).log(f"teacher: {source} ({info['kind']}): validation accuracy "
                                                   f"{info['val_accuracy']:.2%}")
            parts.append(Teacher(model, info))
        else:
            parts.append(load_or_train_teacher(split, seed=seed, recipe=source, cache_dir=cache_dir,
                                               progress=progress, device=device, train=train))
    if len(parts) == 1:
        return parts[0]
    w = list(weights or [1.0] * len(parts))
    model = EnsembleTeacher([t.model for t in parts], w).eval()
    shas = "".join(t.info["sha256"] for t in parts) + json.dumps(w)
    info = {
        "key": "+".join(t.info["key"] for t in parts) + ("" if weights is None else f"@{','.join(map(str, w))}"),
        "dataset": parts[0].info["dataset"], "recipe_name": "+".join(t.info["recipe_name"] for t in parts),
        "parts": [t.info["key"] for t in parts], "arch": [t.info["arch"] for t in parts], "weights": w,
        "members": [m for t in parts for m in t.info["members"]], "split": parts[0].info["split"],
        "sha256": hashlib.sha256(shas.encode()).hexdigest(),
        "train_seconds": round(sum(t.info["train_seconds"] for t in parts), 1),
        "params": sum(t.info["params"] for t in parts),
        "flops": None if any(t.info["flops"] is None for t in parts) else sum(t.info["flops"] for t in parts),
    }
    if any(is_external(s) for s in sources):  # a brought teacher's logits also depend on --teacher-input
        info.update(val_accuracy=accuracy(model, split.x_val, split.y_val),
                    test_accuracy=accuracy(model, split.x_test, split.y_test))
    else:  # recipes only: measured once per split, like a recipe's own members
        folder = Path(cache_dir or default_cache_dir()) / "teachers" / "ensembles"
        info.update(_ensemble_accuracy(model, split, folder / f"{info['sha256'][:16]}.json", info["sha256"]))
    (progress or Progress(quiet=True)).log(
        f"teacher: ensemble of {len(parts)} ({info['recipe_name']}, weights {w}): val {info['val_accuracy']:.2%}")
    return Teacher(model, info)


def _member(split: Split, rec: TeacherRecipe, seed: int, stem: Path, progress: Progress,
            device: torch.device | str, train: bool, label: str) -> tuple[nn.Module, dict]:
    from nas_kd.model.cost import count_flops

    weights, record, ckpt = stem.with_suffix(".pt"), stem.with_suffix(".json"), stem.with_suffix(".ckpt")
    model = build_teacher(rec.arch, split.input_shape[0], split.num_classes)
    shipped = _shipped_member(stem.parent.name, stem.name)
    if shipped is not None:
        path, info = shipped
        load_checked(model, path, info["sha256"], shipped=True)
        return model.to(device).eval(), {**info, "shipped": True}
    if weights.exists() and record.exists():
        info = json.loads(record.read_text())
        load_checked(model, weights, info["sha256"])
        return model.to(device).eval(), info
    if not train:
        dataset = split.description["dataset"]
        recipe = next(n for n, r in recipes_for(dataset, len(split.y_train)).items() if r == rec)
        extra = "" if recipe in default_teacher(dataset)[0] else f" --recipe {recipe}"  # plain train: whole default
        raise UserError(f"no trained teacher {label}: run python -m nas_kd.teacher train --dataset {dataset}{extra}")
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
        "split": split.identity,
        "val_accuracy": accuracy(model, split.x_val, split.y_val),
        "test_accuracy": accuracy(model, split.x_test, split.y_test),
        "train_seconds": round(seconds, 3),
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


def load_checked(model: nn.Module, path: Path, sha256: str, *, shipped: bool = False) -> None:
    """Load a state dict with ``weights_only=True`` after checking the file's SHA-256."""
    actual = sha256_file(path)
    if actual != sha256:
        fix = ("reinstall nas_kd (pip install --force-reinstall nas_kd), or retrain it with "
               "python -m nas_kd.teacher train" if shipped else "delete it to retrain")
        raise UserError(
            f"{'shipped ' if shipped else ''}teacher file {path} does not match its recorded SHA-256 "
            f"(expected {sha256[:12]}…, found {actual[:12]}…): it was changed or damaged; {fix}"
        )
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
        model.load_state_dict(state)
    except Exception as err:  # noqa: BLE001 - any unpickling/shape failure is the same user problem
        raise UserError(f"cannot load teacher weights {path}: {err}") from None


# The default teachers' logits on their own training split ship too (shipped_teachers/logits/), so a
# first search on a new machine starts at once: computing them for Fashion-MNIST's 155-MFLOP default
# takes about 3 minutes on 2 cores (11 on a busy one). Listed with their SHA-256, checked on load.
LOGITS_DIR = "logits"


def _logits_name(teacher: Teacher) -> str:
    return f"train-logits-{teacher.info['sha256'][:12]}.pt"


def _shipped_logits(teacher: Teacher, split: Split) -> torch.Tensor | None:
    folder = shipped_dir() / LOGITS_DIR
    entry = shipped_manifest_of(folder).get(_logits_name(teacher))
    if entry is None or entry.get("split") != split.identity:
        return None
    path = folder / _logits_name(teacher)
    actual = sha256_file(path) if path.exists() else "missing"
    if actual != entry["sha256"]:
        raise UserError(
            f"shipped teacher logits {path} do not match their recorded SHA-256 (expected "
            f"{entry['sha256'][:12]}…, found {actual[:12]}…): reinstall nas_kd (pip install --force-reinstall "
            "nas_kd), or delete the file to compute them again"
        )
    logits = torch.load(path, map_location="cpu", weights_only=True)
    return logits if logits.shape == (len(split.y_train), split.num_classes) else None


def ship_logits(teacher: Teacher, split: Split, cache_dir: Path | str | None = None,
                parts: tuple[Teacher, ...] = ()) -> Path:
    """Copy ``teacher``'s training-split logits into the package (maintainers), hashed in its manifest,
    with the measured accuracy of it and of its ``parts`` where they are ensembles."""
    logits = teacher_logits(teacher, split, cache_dir=cache_dir)
    folder = shipped_dir() / LOGITS_DIR
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / _logits_name(teacher)
    torch.save(logits.contiguous(), path)
    manifest = shipped_manifest_of(folder)
    manifest[path.name] = {"teacher": teacher.info["key"], "teacher_sha256": teacher.info["sha256"],
                           "split": split.identity, "shape": list(logits.shape), "sha256": sha256_file(path)}
    _write_json(folder / MANIFEST, manifest)
    accuracies = shipped_manifest_of(folder, ACCURACY)
    for part in [teacher.info, *(t.info for t in parts)]:
        if len(part["members"]) > 1:  # an ensemble's accuracy is measured at load, not recorded with weights
            accuracies[part["sha256"]] = {"teacher": part["key"], "split": split.identity,
                                          "val_accuracy": part["val_accuracy"], "test_accuracy": part["test_accuracy"]}
    _write_json(folder / ACCURACY, accuracies)
    return path


def teacher_logits(teacher: Teacher, split: Split, *, cache_dir: Path | str | None = None) -> torch.Tensor:
    """Teacher logits for every training image of ``split``: shipped with the package for the default
    teachers, otherwise computed once and cached on disk by teacher hash."""
    folder = Path(cache_dir or default_cache_dir()) / "teachers" / teacher.info["key"]
    path = folder / _logits_name(teacher)
    if path.exists():
        logits = torch.load(path, map_location="cpu", weights_only=True)
        if logits.shape == (len(split.y_train), split.num_classes):
            return logits
    shipped = _shipped_logits(teacher, split)
    if shipped is not None:
        return shipped
    logits = predict_logits(teacher.model, split.x_train)
    folder.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    torch.save(logits, tmp)
    os.replace(tmp, path)
    return logits


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
    from nas_kd.train.loop import augment_batch

    g = torch.Generator().manual_seed(0)  # the views are part of the data, the same for every run
    views = torch.stack([
        torch.cat([augment_batch(chunk, augment, g) for chunk in split.x_train.split(4096)]) for _ in range(VIEWS)
    ])
    folder = Path(cache_dir or default_cache_dir()) / "teachers" / teacher.info["key"]
    path = folder / f"views-{VIEWS}-{augment}-{teacher.info['sha256'][:12]}.pt"
    if path.exists():
        logits = torch.load(path, map_location="cpu", weights_only=True)
        if logits.shape == (VIEWS, len(split.y_train), split.num_classes):
            return {"views": views, "teacher_logits": logits}
    logits = torch.stack([predict_logits(teacher.model, v) for v in views])
    folder.mkdir(parents=True, exist_ok=True)
    torch.save(logits, path.with_suffix(".tmp"))
    os.replace(path.with_suffix(".tmp"), path)
    return {"views": views, "teacher_logits": logits}


def _write_json(path: Path, data: dict) -> None:
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_text(json.dumps(data, indent=2, sort_keys=True))
    os.replace(tmp, path)


def _split_for(args: argparse.Namespace) -> Split:
    data = load_dataset(args.dataset, args.data_dir)
    val = args.val_size if args.val_size is not None else default_val_size(len(data.y_train))
    return split_dataset(data, val_size=val, seed=args.split_seed)


def _train_one_member(split: Split, args: argparse.Namespace, progress: Progress) -> int:
    name, rec = _recipe(split.description["dataset"], args.recipe[0] if args.recipe else None, len(split.y_train))
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
    with interrupts.installed():  # a stop is a clean exit 130, with no work lost
        return _main(argv)


def _main(argv: list[str] | None) -> int:
    warnings.filterwarnings("ignore", category=DeprecationWarning)
    p = argparse.ArgumentParser(prog="python -m nas_kd.teacher", description="Train or inspect a default teacher.")
    p.add_argument("command", choices=("train", "show", "ship"),
                   help="train (or resume) a teacher; show it and measure its test accuracy; ship: copy a "
                   "trained teacher into the package (maintainers)")
    p.add_argument("--dataset", default="fashion-mnist",
                   help=f"one of {', '.join(dataset_names())}, or npz:PATH, folder:PATH, pkg.module:factory")
    p.add_argument("--recipe", action="append", default=[],
                   help="teacher recipe (default: the dataset's default); several: an averaged ensemble")
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
        if len(args.recipe) > 1 and args.member is not None:
            raise UserError("--member takes one --recipe")
        if args.command == "train" and args.member is not None:
            return _train_one_member(split, args, progress)
        teacher = load_teacher(split, tuple(args.recipe), seed=args.seed, cache_dir=args.cache_dir,
                               progress=progress, train=args.command == "train")
        if args.command == "ship":  # a default of several recipes ships each of them, then its logits
            parts = teacher.info.get("parts", [teacher.info["key"]])
            cache = Path(args.cache_dir or default_cache_dir()) / "teachers"
            for key in parts:
                if key in shipped_manifest() and not list((cache / key).glob("member-*.json")):
                    print(f"{key} is shipped already")
                else:
                    print(f"shipped {key} to {ship_teacher(key, args.cache_dir)}")
            recipes = tuple(args.recipe) or default_teacher(split.description["dataset"])[0]
            members = tuple(load_teacher(split, (r,), seed=args.seed, cache_dir=args.cache_dir, train=False)
                            for r in recipes) if len(recipes) > 1 else ()
            print(f"shipped its logits to {ship_logits(teacher, split, args.cache_dir, members)}")
            return 0
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
    if "parts" in info:
        averaged = f" (logits averaged; recipes {info['recipe_name']} weighted {info['weights']})"
    archs = dict.fromkeys(json.dumps(m["arch"]) for m in members)
    print(f"architecture: {len(members)} member(s) of {' / '.join(archs)}{averaged}")
    shipped = all(m.get("shipped") for m in members)
    print(f"weights: {'shipped with nas_kd' if shipped else 'trained on this machine'} "
          f"({', '.join(str(m['params'] * 4 // 1024) + ' KiB' for m in members)} of float32)")
    print(f"FLOPs: {format_quantity(info['flops'])} ({info['flops']}; 1 multiply-add = 1 FLOP, fvcore)"
          if info["flops"] else "FLOPs: not counted (an ONNX or TorchScript teacher)")
    print(f"params: {format_quantity(info['params'])} ({info['params']})")
    print(f"sha256: {info['sha256']}")
    print(f"training time: {format_seconds(info['train_seconds'])}; validation accuracy: {info['val_accuracy']:.2%}")
    print(f"test accuracy: {accuracy(teacher.model, split.x_test, split.y_test):.2%}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
