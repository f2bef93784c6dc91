"""Compress: prune a trained student's channels to a smaller FLOP budget and ship it like export.

``python -m nas_kd.compress`` is the command; ``main(argv)`` runs it from Python; the folder it
writes loads with ``nas_kd.load_student(folder)``. The way through: ``start`` (the student to prune)
→ ``schedule`` (targets; ``prune`` with torch-pruning, KD fine-tuning) → ``run`` (export's files,
``shapes``, ``card``, the folder moved into place) ← ``cli`` (the command).
"""

from __future__ import annotations


def main(argv: list[str] | None = None) -> int:
    """The command (see ``nas_kd.compress.cli``); imported on first use, so that ``shapes``, which
    ``load_student`` needs, loads without torch-pruning and the export modules."""
    from nas_kd.compress.cli import main as _main

    return _main(argv)


__all__ = ["main"]
