"""nas_kd: budgeted architecture search for knowledge-distilled students.

Public surface: ``python -m nas_kd.search`` / ``.report`` / ``.export`` / ``.teacher`` (CLIs), and for
code: ``ArchSpec`` (a student as data), ``build_student`` (spec → module), ``count_cost`` (FLOPs and
parameters) and ``load_student`` (an exported student).
"""

from nas_kd.model.builder import build_student
from nas_kd.model.cost import count_cost
from nas_kd.model.spec import ArchSpec, StageSpec

__all__ = ["ArchSpec", "StageSpec", "build_student", "count_cost", "load_student"]
__version__ = "0.1.0"


def load_student(folder: str) -> "torch.nn.Module":  # noqa: F821 - torch is imported by the builder
    """The exported student in ``folder`` (from ``python -m nas_kd.export``), weights loaded, eval mode."""
    from nas_kd.export.load import load_student as _load  # on first use: `import nas_kd` stays light

    return _load(folder)
