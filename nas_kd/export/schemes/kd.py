"""``--recipe kd``: Hinton KD from the study's teacher, as the search trained its students."""

from __future__ import annotations

from nas_kd.export.retrain import train_with_kd
from nas_kd.export.schemes import SchemeOutcome, SchemeRun, register_scheme


@register_scheme("kd")
def distil_from_teacher(run: SchemeRun) -> SchemeOutcome:
    """One student, distilled from the teacher (labels only when the study has none)."""
    student = train_with_kd(run.recipe, run.out, run.clock, run.progress)  # checkpoints named as before recipes
    return SchemeOutcome(student, {"name": "kd", "trainings": 1})
