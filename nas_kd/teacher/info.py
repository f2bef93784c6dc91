"""What is known about a loaded teacher (``TeacherInfo``), and the records other parts keep of it.

One record for the three kinds of teacher: a recipe's (its members trained here or shipped), a
brought one (TorchScript, ONNX, factory) and an ensemble of several teachers (``parts``).
"""

from __future__ import annotations

from dataclasses import dataclass

# What a search stores in its study (nas_kd.study.records.TEACHER_ATTR) and an export's model card.
STUDY_KEYS = ("key", "sha256", "val_accuracy", "test_accuracy", "arch", "flops", "params")
CARD_KEYS = ("key", "sha256", "val_accuracy", "test_accuracy", "flops", "params")


@dataclass(frozen=True)
class TeacherInfo:
    """A teacher's identity, accuracy and cost.

    ``key`` names it (and its cache folder); ``sha256`` identifies its weights (an ensemble's: its
    parts' hashes and weights); ``members`` are the JSON records of the networks it averages, as
    saved beside their weights; ``flops`` is None when fvcore cannot count it (ONNX, TorchScript).
    """

    key: str
    dataset: str
    recipe_name: str  # the recipe; a brought teacher's source; "a+b" for an ensemble of teachers
    arch: dict | tuple[dict, ...]  # an ensemble of teachers: one per part
    sha256: str
    val_accuracy: float
    test_accuracy: float
    flops: int | None
    params: int
    train_seconds: float
    split: dict  # which images it was measured on
    members: tuple[dict, ...]
    kind: str = "recipe"  # "recipe", "torchscript", "onnx", "factory" or "ensemble"
    source: str | None = None  # a brought teacher's file or pkg.module:factory
    input: str = "normalised"  # a brought teacher's input ("raw": [0, 1] pixels)
    parts: tuple[str, ...] = ()  # an ensemble of teachers: their keys
    weights: tuple[float, ...] = ()  # an ensemble of teachers: the weight of each part's logits

    @property
    def shipped(self) -> bool:
        """Every member's weights came with the package."""
        return all(m.get("shipped") for m in self.members)

    def _record(self, keys: tuple[str, ...]) -> dict:
        arch = list(self.arch) if isinstance(self.arch, tuple) else self.arch
        return {k: arch if k == "arch" else getattr(self, k) for k in keys}

    def study_record(self) -> dict:
        """The JSON-ready record a search keeps in its study: key, sha256, accuracies, arch, cost."""
        return self._record(STUDY_KEYS)

    def card_record(self) -> dict:
        """The record an export's model card shows: key, sha256, accuracies, cost."""
        return self._record(CARD_KEYS)
