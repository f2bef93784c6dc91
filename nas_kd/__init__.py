"""nas_kd: budgeted architecture search for knowledge-distilled students.

Public surface: ``python -m nas_kd.search`` (the CLI), and for code: ``ArchSpec`` (a student as
data), ``build_student`` (spec → module) and ``count_cost`` (FLOPs and parameters).
"""

from nas_kd.arch import ArchSpec, StageSpec
from nas_kd.builder import build_student
from nas_kd.cost import count_cost

__all__ = ["ArchSpec", "StageSpec", "build_student", "count_cost"]
__version__ = "0.1.0"
