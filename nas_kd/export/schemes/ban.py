"""``--recipe ban``: born-again networks (Furlanello et al. 2018). Generation 1 is distilled from the
study's teacher (from labels when there is none); generation k+1, of the same architecture, from
generation k's outputs. Each generation trains ``--epochs``; the card gives every generation's
accuracy and that of their ensemble (mean of the generations' softmax); the generation shipped is
the best on validation."""

from __future__ import annotations

import torch

from nas_kd.distill.losses import KDSettings
from nas_kd.export.schemes import SchemeOutcome, SchemeRun, register_scheme
from nas_kd.teacher.targets import model_targets
from nas_kd.train import predict_logits


def student_kd(kd: KDSettings) -> KDSettings:
    """The loss a generation learns from its predecessor with: the study's, or Hinton's defaults when
    the study trained from labels only."""
    return kd if kd.uses_teacher else KDSettings()


@register_scheme("ban", trainings=lambda o: o.generations)
def born_again(run: SchemeRun) -> SchemeOutcome:
    recipe, k = run.recipe, run.options.generations
    targets, kd, source = recipe.targets, recipe.kd, "teacher" if recipe.kd.uses_teacher else "labels"
    generations, rows = [], []
    for g in range(1, k + 1):
        model = run.new_student()
        seconds = run.train(model, f"generation {g} of {k}", targets, kd=kd, generation=g)
        trained = run.trained(model, seconds)
        generations.append(trained)
        rows.append({"generation": g, "learns_from": source, "val_accuracy": trained.val_accuracy,
                     "test_accuracy": trained.test_accuracy, "train_seconds": round(seconds, 3)})
        run.progress.log(f"export: generation {g} of {k} (from {source}): test {trained.test_accuracy:.2%} "
                         f"(val {trained.val_accuracy:.2%})")
        if g < k:
            targets = model_targets(model, recipe.split, recipe.kd_targets, recipe.settings.augment)
            kd, source = student_kd(recipe.kd), f"generation {g}"
    best = max(range(k), key=lambda i: (generations[i].val_accuracy, i))
    split = recipe.split
    entry = {"name": "ban", "each_generation": rows, "shipped_generation": best + 1, "trainings": k,
             "ensemble": {"val_accuracy": _ensemble_accuracy(generations, split.x_val, split.y_val),
                          "test_accuracy": _ensemble_accuracy(generations, split.x_test, split.y_test)},
             "rule": "each generation trains --epochs; the best on validation is shipped"}
    return SchemeOutcome(generations[best], entry)


def _ensemble_accuracy(generations: list, x: torch.Tensor, y: torch.Tensor) -> float:
    probs = torch.stack([predict_logits(t.model, x).softmax(1) for t in generations]).mean(0)
    return (probs.argmax(1) == y).float().mean().item()
