"""Load an exported student back into PyTorch from its folder (spec.json + weights.safetensors)."""

from __future__ import annotations

from pathlib import Path

from safetensors.torch import load_file
from torch import nn

from nas_kd.errors import UserError
from nas_kd.model.builder import build_student
from nas_kd.model.spec import ArchSpec


def load_student(folder: str | Path) -> nn.Module:
    """The exported student of ``folder`` as an ``nn.Module`` in eval mode, weights loaded.

    Raises UserError when the folder lacks a readable spec or weights."""
    folder = Path(folder)
    try:
        spec = ArchSpec.from_json((folder / "spec.json").read_text())
        state = load_file(folder / "weights.safetensors")
    except (OSError, ValueError) as err:
        raise UserError(f"cannot load a student from {folder}: {err}") from None
    model = build_student(spec)
    model.load_state_dict(state)
    return model.eval()
