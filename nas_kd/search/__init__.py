"""The search: prepare a run, ask the study for candidates, train them, keep the front.

``python -m nas_kd.search`` is the command; ``main(argv)`` runs it from Python.
"""

from nas_kd.search.cli import main, run_search

__all__ = ["main", "run_search"]
