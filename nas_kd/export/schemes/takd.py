"""``--recipe takd``: teacher-assistant KD (Mirzadeh et al. 2020). When the teacher is far larger than
the student, an assistant of intermediate size is distilled from the teacher, then the student from
the assistant.

The assistant is the student widened: every channel count times one multiplier, chosen so its FLOPs
are the geometric mean of the teacher's and the student's (the paper found the best assistant near
the middle of the gap). The student's own layout keeps the assistant's features and inductive biases
close to the student's, which a narrower teacher recipe would not. It is trained with the study's KD
recipe for ``--epochs`` and cached like a teacher, so a second export of the same student reuses it."""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
from dataclasses import asdict
from pathlib import Path

import torch

from nas_kd.errors import UserError
from nas_kd.export.schemes import SchemeOutcome, SchemeRun, register_scheme
from nas_kd.export.schemes.ban import student_kd
from nas_kd.files import save_torch, write_json
from nas_kd.model.cost import analytic_flops
from nas_kd.model.spec import ArchSpec
from nas_kd.teacher.cache import TeacherCache
from nas_kd.teacher.targets import model_targets

MAX_WIDTH = 8.0  # the widest assistant tried (× every channel count)
NO_TEACHER_FLOPS_RATIO = 8.0  # assistant / student FLOPs when the teacher's FLOPs are unknown (brought teacher)


def widen(spec: ArchSpec, factor: float) -> ArchSpec:
    """``spec`` with every channel count times ``factor``, rounded to a multiple of 8 (at least 8)."""
    def w(c: int) -> int:
        return max(8, 8 * round(c * factor / 8)) if c else 0

    stages = tuple(dataclasses.replace(s, channels=w(s.channels)) for s in spec.stages)
    return dataclasses.replace(spec, stem_channels=w(spec.stem_channels), stages=stages,
                               head_channels=w(spec.head_channels))


def assistant_spec(spec: ArchSpec, input_shape: tuple[int, int, int], target_flops: float) -> tuple[ArchSpec, float]:
    """The widened student whose FLOPs come closest to ``target_flops`` (in log), and its multiplier."""
    candidates = [1 + i / 8 for i in range(int((MAX_WIDTH - 1) * 8) + 1)]
    best = min(candidates, key=lambda f: abs(math.log(analytic_flops(widen(spec, f), input_shape) / target_flops)))
    return widen(spec, best), best


@register_scheme("takd", trainings=lambda o: 2)
def teacher_assistant(run: SchemeRun) -> SchemeOutcome:
    recipe = run.recipe
    if not recipe.kd.uses_teacher:
        raise UserError("--recipe takd needs the study's teacher: this study trained from labels only (--alpha 0)")
    shape = recipe.split.input_shape
    student_flops = analytic_flops(recipe.spec, shape)
    teacher_flops = (recipe.teacher or {}).get("flops")
    target = math.sqrt(teacher_flops * student_flops) if teacher_flops else NO_TEACHER_FLOPS_RATIO * student_flops
    spec, factor = assistant_spec(recipe.spec, shape, target)
    assistant = run.new_student(spec)
    path, cached = _cache_path(run, spec), False
    if path.exists():
        assistant.load_state_dict(torch.load(path, weights_only=True))
        seconds, cached = json.loads(path.with_suffix(".json").read_text())["train_seconds"], True
        run.clock.next_training()
        run.progress.log(f"export: teacher assistant {spec.summary()} from the cache ({path})")
    else:
        seconds = run.train(assistant, "teacher assistant", recipe.targets, assistant=spec.to_dict())
        write_json(path.with_suffix(".json"), {"spec": spec.to_dict(), "train_seconds": seconds})
        save_torch(assistant.state_dict(), path)  # last: its presence means the assistant is complete
    helper = run.trained(assistant, seconds)
    run.progress.log(f"export: teacher assistant ({analytic_flops(spec, shape):,} FLOPs): test "
                     f"{helper.test_accuracy:.2%} (val {helper.val_accuracy:.2%})")
    targets = model_targets(assistant, recipe.split, recipe.kd_targets, recipe.settings.augment)
    student = run.new_student()
    student_seconds = run.train(student, "student from the assistant", targets, kd=student_kd(recipe.kd),
                                assistant=spec.to_dict())
    entry = {"name": "takd", "trainings": 2, "assistant": {
        "architecture": spec.summary(), "spec": spec.to_dict(), "flops": analytic_flops(spec, shape),
        "width_multiplier": factor, "target_flops": round(target), "val_accuracy": helper.val_accuracy,
        "test_accuracy": helper.test_accuracy, "train_seconds": round(seconds, 3), "from_cache": cached,
        "rule": ("the student widened to the geometric mean of teacher and student FLOPs" if teacher_flops else
                 f"the student widened to {NO_TEACHER_FLOPS_RATIO:g}x its FLOPs (the teacher's are unknown)")}}
    return SchemeOutcome(run.trained(student, student_seconds), entry)


def _cache_path(run: SchemeRun, spec: ArchSpec) -> Path:
    """The assistant's weights in the teacher cache, named by everything that shapes them."""
    r = run.recipe
    key = {"assistant": spec.to_dict(), "settings": asdict(r.settings), "kd": asdict(r.kd),
           "teacher": r.teacher and r.teacher["sha256"], "data": r.split.description["fingerprint"],
           "kd_targets": r.kd_targets}
    digest = hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()[:16]
    return TeacherCache.at(run.cache_dir).root / "assistants" / f"{digest}.pt"
