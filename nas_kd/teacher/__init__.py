"""Teachers: trained once per (dataset, recipe, split, seed) or brought by the user, cached, loaded
hash-checked and weights-only; their logits are what a student distils against. Import from here,
not from the modules underneath (``python -m nas_kd.teacher`` is the command line)."""

from nas_kd.teacher.load import (
    DEFAULT_TEACHER,
    KD_TARGETS,
    RECIPES,
    EnsembleTeacher,
    Teacher,
    TeacherRecipe,
    check_teacher_sources,
    default_teacher,
    kd_targets,
    load_or_train_teacher,
    load_teacher,
    recipes_for,
    teacher_logits,
)
from nas_kd.teacher.nets import build_teacher

__all__ = ["DEFAULT_TEACHER", "KD_TARGETS", "RECIPES", "EnsembleTeacher", "Teacher", "TeacherRecipe",
           "build_teacher", "check_teacher_sources", "default_teacher", "kd_targets", "load_or_train_teacher",
           "load_teacher", "recipes_for", "teacher_logits"]
