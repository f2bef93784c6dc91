"""Retrain a picked trial's architecture for export: the recipe read from its study, then the KD
training (and the labels-only ablation), each checkpointed every epoch so the same command resumes it."""

from __future__ import annotations

import dataclasses
import hashlib
import json
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path

import optuna
import torch
from torch import nn

from nas_kd.data import Split, load_dataset, split_dataset
from nas_kd.distill.losses import KDSettings, needs_features
from nas_kd.errors import UserError
from nas_kd.model.builder import build_student
from nas_kd.model.spec import ArchSpec
from nas_kd.progress import Progress, elapsed_and_left
from nas_kd.study.records import IDENTITY_ATTR, SETTINGS_ATTR, TrialRecord
from nas_kd.teacher import KD_TARGETS, kd_targets, load_teacher
from nas_kd.train import AUGMENTATIONS, TrainSettings, accuracy, at_least_steps, train_model

# Fashion-MNIST trained this long overfits without augmentation, and the teacher's targets follow the
# augmented images (benchmarks/RESULTS.md, KD targets). Other data gets none by default: flips and
# 2-pixel shifts are not label-preserving everywhere (digits, 8×8 images).
DEFAULT_AUGMENT = {"fashion-mnist": "crop-flip"}
DEFAULT_KD_TARGETS = "clean"
# An export is run once, so it trains far longer than a search trial: 20 epochs, and at least
# EXPORT_MIN_STEPS SGD steps so that small data (digits: 8 steps an epoch) is not trained for fewer
# steps than its search trials were. Fashion-MNIST students keep gaining from KD long after 20 epochs.
# Both lengths were chosen on validation accuracy (benchmarks/RESULTS.md).
EXPORT_EPOCHS = 20
DATASET_EXPORT_EPOCHS = {"fashion-mnist": 100}
EXPORT_MIN_STEPS = 1000


def export_epochs(n_images: int, batch_size: int, dataset: str = "") -> float:
    """The default retraining length: the dataset's entry in ``DATASET_EXPORT_EPOCHS`` or
    ``EXPORT_EPOCHS``, and more whole epochs when those give fewer than ``EXPORT_MIN_STEPS`` steps."""
    return at_least_steps(dataset_export_epochs(dataset), n_images, batch_size, EXPORT_MIN_STEPS, whole_epochs=True)


def dataset_export_epochs(dataset: str) -> float:
    """The dataset's default retraining length, before any stretch to ``EXPORT_MIN_STEPS``."""
    return DATASET_EXPORT_EPOCHS.get(dataset, EXPORT_EPOCHS)


@dataclass(frozen=True)
class Recipe:
    """How an export trains its student; every field shapes the result."""

    spec: ArchSpec
    split: Split
    settings: TrainSettings
    kd: KDSettings
    kd_targets: str  # how the teacher's targets follow augmentation: one of KD_TARGETS
    teacher: dict | None  # the teacher's card record (TeacherInfo.card_record); None without a teacher
    targets: dict  # what train_model distils against: teacher_logits, views, teacher

    def run_key(self) -> dict:
        """What names this recipe's checkpoints, so a changed command starts afresh."""
        return {"spec": self.spec.to_dict(), "settings": asdict(self.settings), "dataset": self.split.description,
                "teacher": self.teacher and self.teacher["sha256"], "kd_targets": self.kd_targets}


def read_recipe(study: optuna.Study, record: TrialRecord, *, epochs: float | None, augment: str | None,
                kd_targets_mode: str, seed: int | None, data_dir: str | None, cache_dir: str | None,
                progress: Progress) -> Recipe:
    """The recipe of ``record``: the study's data split, training settings and KD recipe (under
    ``--kd search``, the trial's own), with the command's length, augmentation, targets and seed.

    Raises UserError for an unknown choice, data that differ from the study's, or a missing teacher."""
    identity = study.user_attrs.get(IDENTITY_ATTR)
    if identity is None:
        raise UserError(f"study {study.study_name!r} was not written by `python -m nas_kd.search`")
    config = study.user_attrs.get(SETTINGS_ATTR, {}).get("config", {})
    augment = augment or DEFAULT_AUGMENT.get(identity["dataset"], "none")
    if augment not in AUGMENTATIONS:
        raise UserError(f"unknown augmentation {augment!r}: choose one of {', '.join(AUGMENTATIONS)}")
    if kd_targets_mode not in KD_TARGETS:
        raise UserError(f"unknown KD targets {kd_targets_mode!r}: choose one of {', '.join(KD_TARGETS)}")
    split = _study_split(identity, data_dir or config.get("data_dir"))
    base = TrainSettings(**identity["train"])
    if epochs is None:
        epochs = export_epochs(len(split.y_train), base.batch_size, identity["dataset"])
    settings = dataclasses.replace(base, epochs=epochs, augment=augment, seed=base.seed if seed is None else seed)
    kd = KDSettings(**(record.kd or identity["kd"]))
    teacher, targets = None, {}
    if kd.uses_teacher:
        teacher, targets = _teacher_targets(identity, config, split, kd, kd_targets_mode, augment,
                                            cache_dir=cache_dir, progress=progress)
    return Recipe(ArchSpec.from_dict(record.spec), split, settings, kd, kd_targets_mode, teacher, targets)


def _study_split(identity: dict, data_dir: str | None) -> Split:
    """The study's train / validation / test split, checked to be made of the same files."""
    data = load_dataset(identity["dataset"], data_dir)
    split = split_dataset(data, val_size=identity["split"]["val_size"], seed=identity["split"]["split_seed"])
    if split.description["fingerprint"] != identity["split"].get("fingerprint"):
        raise UserError(f"the {identity['dataset']} files differ from the ones the study was run on")
    return split


def _teacher_targets(identity: dict, config: dict, split: Split, kd: KDSettings, mode: str, augment: str, *,
                     cache_dir: str | None, progress: Progress) -> tuple[dict, dict]:
    """The study's teacher (cached, never retrained here) and the targets it gives under ``mode``."""
    weights = config.get("teacher_weights")
    teacher = load_teacher(split, tuple(config.get("teachers") or ()), tuple(weights) if weights else None,
                           seed=config.get("teacher_seed", 0), cache_dir=cache_dir, progress=progress, train=False,
                           weight_files=tuple(config.get("teacher_files") or ()),
                           teacher_input=config.get("teacher_input", "normalised"))
    recorded = identity.get("teacher", {}).get("sha256")
    if recorded and recorded != teacher.info.sha256:
        raise UserError("the cached teacher differs from the one this study distilled from "
                        f"({recorded[:12]}… vs {teacher.info.sha256[:12]}…)")
    targets = kd_targets(teacher, split, mode, augment, cache_dir=cache_dir)
    if needs_features(kd.loss):  # feature losses run the teacher on every batch
        targets["teacher"] = teacher.model.eval()
    return teacher.info.card_record(), targets


def resume_folder(out: Path) -> Path:
    """Where an export's trainings keep their per-epoch checkpoints until the export folder is written."""
    return out.parent / f".{out.name}.resume"


def checkpoint_file(out: Path, label: str, **run: object) -> Path:
    """A checkpoint named by everything that shapes the training, so a changed command starts afresh."""
    return resume_folder(out) / f"{run_name(label, **run)}.pt"


def run_name(label: str, **run: object) -> str:
    """``label`` and a hash of ``run``: a file name that changes whenever the training would."""
    return f"{label}-{hashlib.sha256(json.dumps(run, sort_keys=True, default=str).encode()).hexdigest()[:16]}"


PAUSE_SECONDS = 60.0  # a longer gap between two steps is a pause (Ctrl-Z, a wait for a peer's screening), not training


class TrainingClock:
    """Elapsed time and an estimate of the time left over all of an export's trainings (two with
    ``--ablation``). The rate is that of the steps this process trained, so the steps a resumed
    training skips do not make the rest look quicker, over the time it trained: a pause (a gap of
    more than PAUSE_SECONDS between two steps) would make the rest look slower for the whole run."""

    def __init__(self, trainings: int, now: Callable[[], float] = time.perf_counter) -> None:
        self.not_started = trainings
        self.now = now
        self.start = now()
        self.steps_here = 0  # steps trained by this process, over every training
        self._busy = 0.0  # the time they took: elapsed less the pauses (PAUSE_SECONDS)
        self._last_step: int | None = None
        self._last_time = self.start

    def next_training(self) -> None:
        self.not_started -= 1
        self._last_step = None

    def text(self, step: int, total: int) -> str:
        """``elapsed 01:02, about 10:11 left`` after ``step`` of ``total`` in the current training."""
        self.steps_here += step - (step - 1 if self._last_step is None else self._last_step)
        self._last_step = step
        now = self.now()
        gap, self._last_time = now - self._last_time, now
        self._busy += gap if gap <= PAUSE_SECONDS else 0.0
        left = total - step + self.not_started * total
        return elapsed_and_left(self.steps_here, self.steps_here + left, now - self.start, self._busy)


@dataclass(frozen=True)
class Trained:
    model: nn.Module
    seconds: float  # training time, including the runs it resumed
    val_accuracy: float
    test_accuracy: float


def train_with_kd(recipe: Recipe, out: Path, clock: TrainingClock, progress: Progress) -> Trained:
    """The student the export ships, distilled with the recipe's KD settings."""
    # feature losses train adapters that are not checkpointed (train_model refuses them)
    checkpoint = None if needs_features(recipe.kd.loss) else checkpoint_file(
        out, "kd", kd=asdict(recipe.kd), **recipe.run_key())
    return _train(recipe, recipe.kd, recipe.targets, "KD training", checkpoint, clock, progress)


def train_labels_only(recipe: Recipe, out: Path, clock: TrainingClock, progress: Progress) -> Trained:
    """The ablation: the same architecture, length and seed, from labels alone."""
    kd = KDSettings(loss=recipe.kd.loss, temperature=recipe.kd.temperature, alpha=0.0)
    checkpoint = checkpoint_file(out, "labels", **recipe.run_key())
    return _train(recipe, kd, {}, "label-only training", checkpoint, clock, progress)


def _train(recipe: Recipe, kd: KDSettings, targets: dict, label: str, checkpoint: Path | None,
           clock: TrainingClock, progress: Progress) -> Trained:
    torch.manual_seed(recipe.settings.seed)
    model = build_student(recipe.spec).to(memory_format=torch.channels_last)
    seconds = fit(recipe, model, kd, targets, label, checkpoint, clock, progress)
    return Trained(model, seconds, *score(model, recipe.split))


def fit(recipe: Recipe, model: nn.Module, kd: KDSettings, targets: dict, label: str, checkpoint: Path | None,
        clock: TrainingClock, progress: Progress) -> float:
    """Train ``model`` in place with the recipe's settings against ``targets`` (resuming from
    ``checkpoint``); the training seconds, the runs it resumed included."""
    if checkpoint is not None and checkpoint.exists():
        progress.log(f"export: resuming {label} from {checkpoint}")
    clock.next_training()

    def on_step(step: int, total: int, loss: float) -> None:
        progress.status(f"{label}: step {step}/{total} ({step / total:.0%}) loss {loss:.3f} "
                        f"{clock.text(step, total)}")

    split = recipe.split
    return train_model(model, split.x_train, split.y_train, recipe.settings, kd=kd, on_step=on_step,
                       checkpoint=checkpoint, **targets).seconds


def score(model: nn.Module, split: Split) -> tuple[float, float]:
    """(validation, test) accuracy."""
    return accuracy(model, split.x_val, split.y_val), accuracy(model, split.x_test, split.y_test)
