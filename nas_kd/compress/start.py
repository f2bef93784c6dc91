"""Where pruning starts: the trial's student trained for export here (with export's recipe and its
per-epoch checkpoints), or the weights of a finished export folder of that same trial."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from nas_kd.compress.shapes import PRUNED_SHAPES
from nas_kd.errors import UserError
from nas_kd.export.load import load_student
from nas_kd.export.retrain import Recipe, Trained, TrainingClock, train_with_kd
from nas_kd.files import sha256_file
from nas_kd.model.cost import count_cost
from nas_kd.model.spec import ArchSpec
from nas_kd.progress import Progress
from nas_kd.study.records import TrialRecord
from nas_kd.train import accuracy


@dataclass(frozen=True)
class Start:
    student: Trained
    entry: dict  # the model card's record of the start
    key: str  # names the start in the checkpoints of the steps after it


def read_export_card(folder: Path, study_name: str, record: TrialRecord) -> dict:
    """The model card of ``folder``, checked to be a finished, unpruned export of ``record``'s trial.

    Raises UserError otherwise."""
    if (folder / PRUNED_SHAPES).exists():
        raise UserError(f"--from-export {folder} is already pruned: start from the export of the trial itself")
    try:
        card = json.loads((folder / "model_card.json").read_text())
        same = ArchSpec.from_dict(card["spec"]) == ArchSpec.from_dict(record.spec)
    except (OSError, ValueError, KeyError, TypeError) as err:
        raise UserError(f"--from-export {folder} is not a finished export folder: {err}") from None
    if not same or card.get("study") != study_name or card.get("trial") != record.number:
        raise UserError(f"--from-export {folder} holds trial {card.get('trial')} of study {card.get('study')!r}, "
                        f"not trial {record.number} of {study_name!r}")
    return card


def export_settings(card: dict) -> dict:
    """What ``read_recipe`` needs to fine-tune with the recipe the export was trained with."""
    training = card["training"]
    return {"epochs": training["epochs"], "augment": training["augment"], "seed": training["seed"],
            "kd_targets_mode": card.get("kd_targets") or "clean"}


def start_student(recipe: Recipe, out: Path, export: Path | None, progress: Progress) -> Start:
    """The student to prune, with its cost and accuracies (test too, for the card's comparison)."""
    split = recipe.split
    if export is None:
        student = train_with_kd(recipe, out, TrainingClock(trainings=1), progress)
        entry, key = {"from": "trained here", "epochs": recipe.settings.epochs}, "trained here"
    else:
        card = json.loads((export / "model_card.json").read_text())
        model = load_student(export)
        student = Trained(model, float(card.get("train_seconds", 0.0)), accuracy(model, split.x_val, split.y_val),
                          accuracy(model, split.x_test, split.y_test))
        key = sha256_file(export / "weights.safetensors")
        entry = {"from": "export", "folder": str(export), "weights_sha256": key, "epochs": card["training"]["epochs"]}
    cost = count_cost(student.model, split.input_shape)
    entry.update(flops=cost.flops, params=cost.params, val_accuracy=student.val_accuracy,
                 test_accuracy=student.test_accuracy, train_seconds=round(student.seconds, 3))
    progress.log(f"compress: start {cost.flops:,} FLOPs, val {student.val_accuracy:.2%} ({entry['from']})")
    return Start(student, entry, key)
