"""Export: retrain a chosen trial and write deployable files with a model card.

``python -m nas_kd.export`` is the command; ``main(argv)`` runs it from Python.
"""

from nas_kd.export.cli import load_student, main

__all__ = ["load_student", "main"]
