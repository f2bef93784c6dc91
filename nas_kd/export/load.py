"""Load an exported student back into PyTorch from its folder (spec.json + weights.safetensors, and for
a pruned student from ``nas_kd.compress`` its layer shapes, pruned_shapes.json)."""

from __future__ import annotations

import json
from pathlib import Path

from safetensors.torch import load_file
from torch import nn

from nas_kd.compress.shapes import PRUNED_SHAPES, apply_shapes
from nas_kd.distill.exits import EXITS_FILE, ExitStudent
from nas_kd.errors import UserError
from nas_kd.model.builder import build_student
from nas_kd.model.spec import ArchSpec


def load_student(folder: str | Path) -> nn.Module:
    """The exported student of ``folder`` as an ``nn.Module`` in eval mode, weights loaded. A student
    exported with ``--exits`` is an ``ExitStudent``: ``model(x)`` gives every exit's logits
    [batch, exits, classes], ``model.predict(x, threshold)`` the answers and which exit gave each.

    Raises UserError when the folder lacks a readable spec or weights."""
    folder = Path(folder)
    try:
        spec = ArchSpec.from_json((folder / "spec.json").read_text())
        state = load_file(folder / "weights.safetensors")
        shapes = json.loads((folder / PRUNED_SHAPES).read_text()) if (folder / PRUNED_SHAPES).exists() else None
        exits = json.loads((folder / EXITS_FILE).read_text()) if (folder / EXITS_FILE).exists() else None
    except (OSError, ValueError) as err:
        raise UserError(f"cannot load a student from {folder}: {err}") from None
    model = build_student(spec) if shapes is None else apply_shapes(build_student(spec), shapes)
    if exits is not None:  # exports from before the exits pooled have no exit_grid: their heads run at full resolution
        model = ExitStudent(model, exits.get("exit_grid"))
    model.load_state_dict(state)
    return model.eval()
