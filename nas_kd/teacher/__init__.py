"""Teachers: trained once per (dataset, recipe, split, seed) or brought by the user, cached, loaded
hash-checked and weights-only; their logits are what a student distils against. Import from here,
not from the modules underneath (``python -m nas_kd.teacher`` is the command line, in ``cli``).

The way through the package: ``recipes`` (how a teacher is made) → ``members`` (one network,
trained resumably) → ``load`` (a recipe's teacher, a brought one from ``external``, ensembles;
described by ``info.TeacherInfo``) → ``logits`` and ``targets`` (what a student distils against).
``cache`` builds every path on disk; ``ship`` is for maintainers; ``nets`` holds the architectures.
"""

from nas_kd.teacher.info import TeacherInfo
from nas_kd.teacher.load import (
    EnsembleTeacher,
    Teacher,
    check_teacher_sources,
    load_or_train_teacher,
    load_teacher,
)
from nas_kd.teacher.logits import teacher_logits
from nas_kd.teacher.nets import build_teacher
from nas_kd.teacher.recipes import (
    DEFAULT_TEACHER,
    RECIPES,
    TeacherRecipe,
    default_teacher,
    recipes_for,
    register_recipes,
)
from nas_kd.teacher.targets import KD_TARGETS, VIEWS, kd_targets

__all__ = ["DEFAULT_TEACHER", "KD_TARGETS", "RECIPES", "VIEWS", "EnsembleTeacher", "Teacher", "TeacherInfo",
           "TeacherRecipe", "build_teacher", "check_teacher_sources", "default_teacher", "kd_targets",
           "load_or_train_teacher", "load_teacher", "recipes_for", "register_recipes", "teacher_logits"]
