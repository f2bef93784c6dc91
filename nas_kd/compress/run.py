"""Compress one trial: prune its trained student in steps, then write the export folder (export's
deployables and model card, the layer shapes, the pruning schedule) through a temporary folder
moved into place, so a failed or interrupted run leaves no folder behind, only its checkpoints."""

from __future__ import annotations

from dataclasses import asdict
from pathlib import Path

import numpy as np
import torch
from torch import nn

from nas_kd.compress.card import pruning_entry, write_pruned_card
from nas_kd.compress.schedule import Plan, prune_in_steps
from nas_kd.compress.shapes import PRUNED_SHAPES, layer_shapes
from nas_kd.compress.start import Start
from nas_kd.export.card import machine_entry, model_card
from nas_kd.export.deploy import ONNX_TOLERANCE, write_deployables
from nas_kd.export.load import load_student
from nas_kd.export.retrain import Recipe, Trained
from nas_kd.export.trial import CHECK_IMAGES, ExportResult, staged_folder
from nas_kd.files import write_json
from nas_kd.progress import Progress
from nas_kd.quantity import format_quantity
from nas_kd.study.records import TrialRecord
from nas_kd.train import accuracy


def compress_trial(study_name: str, record: TrialRecord, recipe: Recipe, plan: Plan, start: Start, out: Path,
                   progress: Progress) -> ExportResult:
    """Prune ``start``'s student to ``plan.to`` FLOPs with KD fine-tuning between the steps, evaluate
    it once on test, and write the export folder ``out``. The same call resumes an interrupted run."""
    key = {"run": recipe.run_key(), "kd": asdict(recipe.kd), "start": start.key, "plan": asdict(plan)}
    model, schedule = prune_in_steps(start.student.model, recipe, plan, key, out, progress)
    split = recipe.split
    seconds = start.student.seconds + sum(step["train_seconds"] for step in schedule)
    student = Trained(model, seconds, schedule[-1]["val_accuracy"], accuracy(model, split.x_test, split.y_test))
    card = model_card(study_name, record, recipe, student)  # its flops and params: fvcore's count of this model
    card["architecture"] += f", channel-pruned to {format_quantity(card['flops'])} FLOPs"
    card["pruning"] = pruning_entry(plan, start.entry, schedule)
    progress.log(f"compress: test accuracy {student.test_accuracy:.2%} at {card['flops']:,} FLOPs "
                 f"(start: {start.entry['test_accuracy']:.2%} at {start.entry['flops']:,})")
    with staged_folder(out) as tmp:  # on success the checkpoints go too
        batch = split.x_val[:CHECK_IMAGES]
        card.update(write_deployables(model, recipe.spec, batch, tmp))
        write_json(tmp / PRUNED_SHAPES, layer_shapes(model), sort_keys=True)
        _check_reloads(model, batch, tmp)
        card["machine"] = machine_entry()
        write_pruned_card(card, tmp)
    return ExportResult(out, card)


def _check_reloads(model: nn.Module, batch: torch.Tensor, folder: Path) -> None:
    """``load_student(folder)`` must give the pruned model's logits: no folder it cannot load is shipped."""
    with torch.inference_mode():
        diff = float(np.abs((load_student(folder)(batch) - model.eval()(batch)).numpy()).max())
    if not diff <= ONNX_TOLERANCE:
        raise RuntimeError(f"the pruned student reloaded from its files disagrees with it: max |diff| {diff:.2e}")

