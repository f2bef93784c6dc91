"""``--recipe self``: self-distillation (Be Your Own Teacher). The student trains with an exit after
every stage but the last (``nas_kd.distill.exits``); the earlier exits learn from the final one (and
the teacher). Without ``--exits`` the exits are dropped and the plain student is shipped; with it
the early-exit student is shipped, and the card gives, per confidence threshold, its test accuracy,
mean FLOPs per image (fvcore, per exit) and measured latency."""

from __future__ import annotations

import time

import torch

from nas_kd.distill.exits import EXITS_FILE, ExitPrefix, ExitStudent
from nas_kd.errors import UserError
from nas_kd.export.retrain import Trained
from nas_kd.export.schemes import SchemeOutcome, SchemeRun, register_scheme
from nas_kd.model.cost import count_flops
from nas_kd.train import predict_logits

THRESHOLDS = (0.5, 0.6, 0.7, 0.8, 0.9, 0.95, 0.99, 0.999, 1.0)
LATENCY_IMAGES = 300  # test images timed one by one per threshold


@register_scheme("self")
def self_distillation(run: SchemeRun) -> SchemeOutcome:
    recipe = run.recipe
    if len(recipe.spec.stages) < 2:
        raise UserError(f"--recipe self needs a student with at least two stages; {recipe.spec.summary()} has one")
    model = ExitStudent(run.new_student()).to(memory_format=torch.channels_last)
    seconds = run.train(model, "self-distillation", recipe.targets, exits=True)
    split = recipe.split
    val, test = predict_logits(model, split.x_val).argmax(2), predict_logits(model, split.x_test).argmax(2)
    rows = [{"exit": i + 1, "after_stage": i + 1, "val_accuracy": (val[:, i] == split.y_val).float().mean().item(),
             "test_accuracy": (test[:, i] == split.y_test).float().mean().item()} for i in range(model.n_exits)]
    entry = {"name": "self", "each_exit": rows, "trainings": 1, "exits_kept": run.options.exits}
    final = rows[-1]
    if not run.options.exits:
        return SchemeOutcome(Trained(model.student, seconds, final["val_accuracy"], final["test_accuracy"]), entry)
    entry["early_exit"] = early_exit_table(model, split.x_test, split.y_test, split.input_shape)
    exits = {"exits": model.n_exits, "exit_grid": model.grid,
             "outputs": "logits [batch, exits, classes], the last exit is the student's own classifier"}
    return SchemeOutcome(Trained(model, seconds, final["val_accuracy"], final["test_accuracy"]), entry,
                         files={EXITS_FILE: exits})


def early_exit_table(model: ExitStudent, x: torch.Tensor, y: torch.Tensor, input_shape: tuple[int, ...]) -> dict:
    """Per threshold: accuracy, share of images per exit, mean FLOPs per image, latency per image."""
    # a prefix is made in eval mode: count_flops restores a module's mode on all it holds, the model's layers too
    flops = [count_flops(ExitPrefix(model, k).eval(), input_shape) for k in range(model.n_exits)]
    model = model.eval().to(memory_format=torch.contiguous_format)
    rows = []
    for threshold in THRESHOLDS:
        logits, answered = _predict(model, x, threshold)
        share = torch.bincount(answered, minlength=model.n_exits).float() / len(x)
        rows.append({"threshold": threshold, "test_accuracy": (logits.argmax(1) == y).float().mean().item(),
                     "exit_share": [round(s, 4) for s in share.tolist()],
                     "mean_flops": round(float((share * torch.tensor(flops, dtype=torch.float)).sum())),
                     "latency_us_per_image": _latency(model, x[:LATENCY_IMAGES], threshold)})
    return {"flops_at_exit": flops, "student_flops": count_flops(model.student, input_shape), "thresholds": rows,
            "latency_method": f"PyTorch, 1 thread, batch 1, mean over the first {LATENCY_IMAGES} test images",
            "flops_method": "fvcore count of the stem, the stages up to the exit and every exit tried on the way"}


def _predict(model: ExitStudent, x: torch.Tensor, threshold: float) -> tuple[torch.Tensor, torch.Tensor]:
    parts = [model.predict(x[i : i + 512], threshold) for i in range(0, len(x), 512)]
    return torch.cat([p[0] for p in parts]), torch.cat([p[1] for p in parts])


def _latency(model: ExitStudent, x: torch.Tensor, threshold: float) -> float:
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        with torch.inference_mode():
            for image in x[:20]:  # warm-up
                model.predict(image[None], threshold)
            start = time.perf_counter()
            for image in x:
                model.predict(image[None], threshold)
            return round(1e6 * (time.perf_counter() - start) / len(x), 1)
    finally:
        torch.set_num_threads(threads)
