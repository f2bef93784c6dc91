"""The pruning schedule: FLOP targets falling geometrically from the start's cost to ``--to``, each
reached by pruning and followed by KD fine-tuning with the export's recipe (teacher, targets,
augmentation). Every fine-tuning is checkpointed every epoch; pruning itself is deterministic given
the weights, so a resumed run prunes again to the same network and resumes its fine-tuning."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from nas_kd.compress.prune import prune_to
from nas_kd.distill.losses import needs_features
from nas_kd.export.retrain import Recipe, TrainingClock, checkpoint_file
from nas_kd.model.cost import count_cost
from nas_kd.progress import Progress
from nas_kd.quantity import format_quantity
from nas_kd.train import accuracy, train_model


@dataclass(frozen=True)
class Plan:
    """What the command asked for: the budget, how many pruning steps, fine-tuning epochs after each."""

    to: int
    steps: int
    finetune_epochs: float


def flop_targets(start: int, to: int, steps: int) -> list[int]:
    """Each step's budget: every step removes the same fraction of FLOPs; the last is ``to`` itself."""
    return [int(start * (to / start) ** (k / steps)) for k in range(1, steps)] + [to]


def prune_in_steps(model: nn.Module, recipe: Recipe, plan: Plan, key: dict, out: Path,
                   progress: Progress) -> tuple[nn.Module, list[dict]]:
    """``model`` pruned to ``plan.to`` in ``plan.steps`` steps, fine-tuned after each, and the schedule
    as the model card records it. ``key`` names everything that shaped ``model`` (the checkpoints'
    names: a changed command starts afresh)."""
    split, shape = recipe.split, recipe.split.input_shape
    schedule = []
    targets = flop_targets(count_cost(model, shape).flops, plan.to, plan.steps)
    for step, target in enumerate(targets, start=1):
        before = count_cost(model, shape)
        model, fraction = prune_to(model, shape, target)
        after = count_cost(model, shape)
        pruned_val = accuracy(model, split.x_val, split.y_val)
        progress.log(f"compress: step {step}/{plan.steps}: {format_quantity(before.flops)} -> "
                     f"{format_quantity(after.flops)} FLOPs (target {format_quantity(target)}), "
                     f"{fraction:.1%} of each group's channels cut; val {pruned_val:.2%} before fine-tuning")
        checkpoint = None if needs_features(recipe.kd.loss) else checkpoint_file(out, f"prune{step}", **key, step=step)
        seconds = _finetune(model, recipe, plan, step, checkpoint, progress)
        val = accuracy(model, split.x_val, split.y_val)
        progress.log(f"compress: step {step}/{plan.steps}: val {val:.2%} after {plan.finetune_epochs:g} epochs")
        schedule.append({
            "step": step, "target_flops": target, "flops_before": before.flops, "flops_after": after.flops,
            "params_before": before.params, "params_after": after.params, "channel_fraction_cut": round(fraction, 5),
            "val_accuracy_pruned": pruned_val, "val_accuracy": val, "epochs": plan.finetune_epochs,
            "train_seconds": round(seconds, 3),
        })
    return model, schedule


def _finetune(model: nn.Module, recipe: Recipe, plan: Plan, step: int, checkpoint: Path | None,
              progress: Progress) -> float:
    """KD fine-tuning after a pruning step: the recipe's settings for ``plan.finetune_epochs`` (a fresh
    one-cycle schedule), a seed of its own per step. Returns its training seconds."""
    settings = dataclasses.replace(recipe.settings, epochs=plan.finetune_epochs, seed=recipe.settings.seed + step)
    label = f"step {step}/{plan.steps} fine-tuning"
    if checkpoint is not None and checkpoint.exists():
        progress.log(f"compress: resuming {label} from {checkpoint}")
    clock = TrainingClock(trainings=1)
    clock.next_training()

    def on_step(done: int, total: int, loss: float) -> None:
        progress.status(f"{label}: step {done}/{total} ({done / total:.0%}) loss {loss:.3f} {clock.text(done, total)}")

    torch.manual_seed(settings.seed)  # feature losses draw their adapters' initial weights
    split = recipe.split
    result = train_model(model.to(memory_format=torch.channels_last), split.x_train, split.y_train, settings,
                         kd=recipe.kd, on_step=on_step, checkpoint=checkpoint, **recipe.targets)
    return result.seconds
