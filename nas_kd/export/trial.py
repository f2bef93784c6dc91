"""Export one trial: retrain it, write its deployables and model card into a temporary folder, and
move that folder into place, so a failed export leaves no folder behind."""

from __future__ import annotations

import os
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path

import optuna

from nas_kd.export.card import ablation_entry, machine_entry, model_card, write_card
from nas_kd.export.deploy import write_deployables
from nas_kd.export.retrain import (
    DEFAULT_KD_TARGETS,
    TrainingClock,
    read_recipe,
    resume_folder,
    train_labels_only,
    train_with_kd,
)
from nas_kd.files import give_default_modes
from nas_kd.progress import Progress, format_seconds
from nas_kd.study.records import TrialRecord

CHECK_IMAGES = 256  # validation images both runtimes must reproduce PyTorch's logits on


@dataclass(frozen=True)
class ExportResult:
    folder: Path
    card: dict


def export_trial(study: optuna.Study, record: TrialRecord, out: Path, *, epochs: float | None, ablation: bool,
                 augment: str | None = None, kd_targets_mode: str = DEFAULT_KD_TARGETS, seed: int | None = None,
                 data_dir: str | None = None, cache_dir: str | None = None,
                 progress: Progress | None = None) -> ExportResult:
    """Retrain ``record``'s architecture with KD on the whole training split (augmented: a long run
    needs it, a 2-epoch search trial does not), evaluate once on test, and write the export folder
    ``out`` (atomically). An interrupted training is resumed by the same call."""
    progress = progress or Progress()
    recipe = read_recipe(study, record, epochs=epochs, augment=augment, kd_targets_mode=kd_targets_mode, seed=seed,
                         data_dir=data_dir, cache_dir=cache_dir, progress=progress)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}-", dir=out.parent))
    try:
        progress.log(f"export: trial {record.number} ({recipe.spec.summary()}), {recipe.kd.describe()}, "
                     f"{recipe.settings.epochs:g} epochs on {len(recipe.split.y_train)} images")
        clock = TrainingClock(trainings=2 if ablation else 1)
        student = train_with_kd(recipe, out, clock, progress)
        card = model_card(study.study_name, record, recipe, student)
        progress.log(f"export: KD student test accuracy {student.test_accuracy:.2%} "
                     f"(val {student.val_accuracy:.2%}) after {format_seconds(student.seconds)}")
        if ablation:
            card["ablation"] = ablation_entry(card, train_labels_only(recipe, out, clock, progress))
            progress.log(f"export: labels only {card['ablation']['labels_only_test_accuracy']:.2%}: "
                         f"KD gains {card['ablation']['kd_gain_points']:+.2f} points")
        card.update(write_deployables(student.model, recipe.spec, recipe.split.x_val[:CHECK_IMAGES], tmp))
        card["machine"] = machine_entry()
        write_card(card, tmp)
        give_default_modes(tmp)  # mkdtemp's 0700 would survive the rename and lock other users out
        if out.exists():
            shutil.rmtree(out)
        os.replace(tmp, out)
        shutil.rmtree(resume_folder(out), ignore_errors=True)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)  # the checkpoints stay: the same command resumes from them
        raise
    return ExportResult(out, card)
