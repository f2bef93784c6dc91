"""Export one trial: retrain it, write its deployables and model card into a temporary folder, and
move that folder into place, so a failed export leaves no folder behind (and an old one intact).
With int8, a finished export of the same recipe is quantized in place instead of retrained."""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import tempfile
from collections.abc import Iterator
from dataclasses import asdict, dataclass
from pathlib import Path

import optuna

from nas_kd.export.card import ablation_entry, machine_entry, model_card, write_card
from nas_kd.export.deploy import write_deployables
from nas_kd.export.load import load_student
from nas_kd.export.quantize import INT8_FILE, add_int8
from nas_kd.export.retrain import (
    DEFAULT_KD_TARGETS,
    Recipe,
    TrainingClock,
    read_recipe,
    resume_folder,
    train_labels_only,
)
from nas_kd.export.schemes import SchemeOptions, SchemeRun, check_options, run_scheme, trainings
from nas_kd.files import give_default_modes, write_json
from nas_kd.progress import Progress, format_seconds
from nas_kd.study.records import TrialRecord

CHECK_IMAGES = 256  # validation images both runtimes must reproduce PyTorch's logits on


@dataclass(frozen=True)
class ExportResult:
    folder: Path
    card: dict
    retrained: bool = True  # False: a finished export was quantized in place


def export_trial(study: optuna.Study, record: TrialRecord, out: Path, *, epochs: float | None, ablation: bool,
                 augment: str | None = None, kd_targets_mode: str = DEFAULT_KD_TARGETS, seed: int | None = None,
                 data_dir: str | None = None, cache_dir: str | None = None, int8_max_drop: float | None = None,
                 scheme: SchemeOptions | None = None, progress: Progress | None = None,
                 screening: dict | None = None) -> ExportResult:
    """Retrain ``record``'s architecture with KD on the whole training split (augmented: a long run
    needs it, a 2-epoch search trial does not), evaluate once on test, and write the export folder
    ``out`` (atomically). An interrupted training is resumed by the same call.

    With ``int8_max_drop`` (points of validation accuracy) the folder also gets ``model.int8.onnx``;
    when ``out`` already holds a finished export of this recipe, that student is quantized in place.
    ``scheme`` is the distillation recipe (``--recipe``; default: KD from the study's teacher);
    ``screening`` (``--screen``) goes on the card as how this trial was chosen."""
    progress, scheme = progress or Progress(), scheme or SchemeOptions()
    check_options(scheme)
    recipe = read_recipe(study, record, epochs=epochs, augment=augment, kd_targets_mode=kd_targets_mode, seed=seed,
                         data_dir=data_dir, cache_dir=cache_dir, progress=progress)
    if int8_max_drop is not None and finished_export(out, study.study_name, record, recipe, ablation=ablation,
                                                     scheme=scheme):
        return quantize_in_place(out, recipe, int8_max_drop, progress)
    with staged_folder(out) as tmp:
        progress.log(f"export: trial {record.number} ({recipe.spec.summary()}), recipe {scheme.name}, "
                     f"{recipe.kd.describe()}, {recipe.settings.epochs:g} epochs on {len(recipe.split.y_train)} images")
        clock = TrainingClock(trainings=trainings(scheme) + (1 if ablation else 0))
        outcome = run_scheme(SchemeRun(recipe, scheme, out, clock, progress, cache_dir=cache_dir))
        student = outcome.student
        card = model_card(study.study_name, record, recipe, student)
        card["recipe"] = {**outcome.entry, **scheme.key()}
        if screening is not None:
            card["screening"] = screening
        progress.log(f"export: {scheme.name} student test accuracy {student.test_accuracy:.2%} "
                     f"(val {student.val_accuracy:.2%}) after {format_seconds(student.seconds)}")
        if ablation:
            card["ablation"] = ablation_entry(card, train_labels_only(recipe, out, clock, progress))
            progress.log(f"export: labels only {card['ablation']['labels_only_test_accuracy']:.2%}: "
                         f"KD gains {card['ablation']['kd_gain_points']:+.2f} points")
        check = recipe.split.x_val[:CHECK_IMAGES]
        card.update(write_deployables(student.model, recipe.spec, check, tmp))
        for name, content in outcome.files.items():  # e.g. exits.json, which load_student reads
            write_json(tmp / name, content)
        if int8_max_drop is not None:
            card["int8"] = add_int8(tmp, recipe, student.model, max_drop=int8_max_drop, check=check, out=out,
                                    progress=progress)
        card["machine"] = machine_entry()
        write_card(card, tmp)
    return ExportResult(out, card)


def finished_export(out: Path, study_name: str, record: TrialRecord, recipe: Recipe, *, ablation: bool = False,
                    scheme: SchemeOptions | None = None) -> bool:
    """Whether ``out`` holds a finished export of ``record`` trained by ``recipe`` (same spec, data,
    training settings and seed, KD, teacher and distillation scheme, read from its model card) and, if
    asked, its ablation. A card from before recipes existed was made by ``kd``."""
    try:
        card = json.loads((out / "model_card.json").read_text())
    except (OSError, ValueError):
        return False
    if not all((out / name).is_file() for name in ("spec.json", "weights.safetensors", "model.onnx")):
        return False
    kd_targets = recipe.kd_targets if recipe.kd.uses_teacher else None
    scheme_key = (scheme or SchemeOptions()).key()
    made_by = card.get("recipe", {"name": "kd"})
    wanted = [study_name, record.number, recipe.spec.to_dict(), recipe.split.description["fingerprint"],
              asdict(recipe.settings), asdict(recipe.kd), kd_targets, recipe.teacher and recipe.teacher["sha256"],
              scheme_key]
    found = [card.get("study"), card.get("trial"), card.get("spec"), card.get("dataset", {}).get("fingerprint"),
             card.get("training"), card.get("kd"), card.get("kd_targets"), (card.get("teacher") or {}).get("sha256"),
             {k: made_by.get(k) for k in scheme_key}]
    same = json.dumps(wanted, sort_keys=True) == json.dumps(found, sort_keys=True)
    return same and (not ablation or "ablation" in card)


def quantize_in_place(out: Path, recipe: Recipe, max_drop: float, progress: Progress) -> ExportResult:
    """Add ``model.int8.onnx`` and the card's int8 entry to the finished export ``out`` without
    retraining it; the folder is replaced as a whole, so a failure leaves the old export as it was."""
    progress.log(f"export: {out} already holds this trial trained with these settings; "
                 "quantizing that student, not retraining it")
    card = json.loads((out / "model_card.json").read_text())
    with staged_folder(out) as tmp:
        shutil.copytree(out, tmp, dirs_exist_ok=True)
        (tmp / INT8_FILE).unlink(missing_ok=True)
        card["int8"] = add_int8(tmp, recipe, load_student(tmp), max_drop=max_drop,
                                check=recipe.split.x_val[:CHECK_IMAGES], out=out, progress=progress)
        write_card(card, tmp)
    return ExportResult(out, card, retrained=False)


@contextlib.contextmanager
def staged_folder(out: Path) -> Iterator[Path]:
    """A temporary folder beside ``out`` that takes its place when the block ends without error; on
    an error it is removed, and the training checkpoints stay (the same command resumes from them)."""
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}-", dir=out.parent))
    try:
        yield tmp
        give_default_modes(tmp)  # mkdtemp's 0700 would survive the rename and lock other users out
        _replace_folder(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    shutil.rmtree(resume_folder(out), ignore_errors=True)


def _replace_folder(new: Path, out: Path) -> None:
    """Put ``new`` at ``out``: the old folder is renamed aside first and removed only once ``new`` is in."""
    if not out.exists():
        os.replace(new, out)
        return
    old = out.with_name(f".{out.name}.old-{os.getpid()}")
    shutil.rmtree(old, ignore_errors=True)
    os.replace(out, old)
    try:
        os.replace(new, out)
    except BaseException:
        os.replace(old, out)
        raise
    shutil.rmtree(old, ignore_errors=True)
