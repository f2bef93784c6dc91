"""Export: retrain a chosen trial and write deployable files with a model card.

``python -m nas_kd.export`` is the command; ``main(argv)`` runs it from Python; ``load_student(folder)``
loads what it wrote. The way through: ``pick`` (which trial) → ``retrain`` (its recipe, KD training,
the ablation) → ``deploy`` (files checked against their runtimes) and ``card`` → ``trial`` (the
folder moved into place) ← ``cli`` (the command).
"""

from nas_kd.export.cli import main
from nas_kd.export.load import load_student

__all__ = ["load_student", "main"]
