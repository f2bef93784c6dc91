"""Where teachers live on disk: every path of the teacher cache and of the shipped teachers is
built here, and every teacher file is loaded here (hash-checked, weights only).

Cache (``$NAS_KD_CACHE_DIR``, default ``~/.cache/nas_kd``), under ``teachers/``::

    KEY/member-I.pt / .json / .ckpt / .time   one member's weights, record, checkpoint, training time
    KEY/ensemble-SHA12.json                  a recipe ensemble's measured accuracy
    KEY/train-logits-SHA12.pt                logits on the training split
    KEY/views-N-AUGMENT-SHA12.pt             logits of N augmented views of it
    ensembles/SHA16.json                     an ensemble of several recipes' measured accuracy

Shipped (``nas_kd/shipped_teachers``, or ``$NAS_KD_SHIPPED_DIR``): ``KEY/member-I.pt`` listed in
``MANIFEST.json`` with each file's SHA-256 and training record; ``logits/`` holds the default
teachers' training-split logits (its own ``MANIFEST.json``) and ``ensemble-accuracy.json``. A split
that matches a shipped key (same data, split and recipe) uses them at once.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import NamedTuple

import torch
from torch import nn

from nas_kd.data import Split
from nas_kd.errors import UserError
from nas_kd.files import sha256_file
from nas_kd.teacher.recipes import TeacherRecipe

MANIFEST = "MANIFEST.json"
LOGITS_DIR = "logits"
ACCURACY = "ensemble-accuracy.json"  # shipped: measured accuracy of the shipped ensembles, by SHA-256


def teacher_key(dataset: str, recipe_name: str, recipe: TeacherRecipe, split: Split, seed: int) -> str:
    """The name of a recipe teacher: readable, plus a digest of everything its weights depend on."""
    ident = json.dumps(
        {"arch": recipe.arch, "train": asdict(recipe.train), "members": recipe.members,
         "val_size": split.description["val_size"], "split_seed": split.description["split_seed"],
         "data": split.description["fingerprint"]},
        sort_keys=True,
    )
    digest = hashlib.sha256(ident.encode()).hexdigest()[:10]
    if ":" in dataset:  # npz:/a/b.npz, folder:/a/b, pkg.mod:fn also name a folder: keep it short
        kind, _, where = dataset.partition(":")
        dataset = f"{kind if kind in ('npz', 'folder') else 'factory'}-{Path(where).stem or where}"
    dataset = re.sub(r"[^A-Za-z0-9._-]", "_", dataset)[-40:]
    return f"{dataset}-{recipe_name}-{recipe.arch['arch']}{recipe.arch.get('width', '')}-{digest}-seed{seed}"


def default_cache_dir() -> Path:
    return Path(os.environ.get("NAS_KD_CACHE_DIR", Path.home() / ".cache" / "nas_kd"))


class MemberFiles(NamedTuple):
    """The files of one member, ``.../KEY/member-I`` with these suffixes."""

    weights: Path  # .pt, the state dict
    record: Path  # .json, its recipe, accuracy, cost, training time and SHA-256
    checkpoint: Path  # .ckpt, while training
    seconds: Path  # .time, training seconds so far, kept beside the checkpoint so a resumed run adds them up

    @classmethod
    def of(cls, stem: Path) -> MemberFiles:
        return cls(*(stem.with_suffix(suffix) for suffix in (".pt", ".json", ".ckpt", ".time")))


@dataclass(frozen=True)
class TeacherCache:
    """The teacher cache under ``root`` (``CACHE/teachers``)."""

    root: Path

    @classmethod
    def at(cls, cache_dir: Path | str | None = None) -> TeacherCache:
        return cls(Path(cache_dir or default_cache_dir()) / "teachers")

    def folder(self, key: str) -> Path:
        return self.root / key

    def member(self, key: str, index: int) -> MemberFiles:
        return MemberFiles.of(self.folder(key) / f"member-{index}")

    def member_records(self, key: str) -> list[Path]:
        """The records of the members trained (or being trained) under ``key``."""
        return sorted(self.folder(key).glob("member-*.json"))

    def recipe_ensemble_accuracy(self, key: str, sha256: str) -> Path:
        return self.folder(key) / f"ensemble-{sha256[:12]}.json"

    def mixed_ensemble_accuracy(self, sha256: str) -> Path:
        return self.root / "ensembles" / f"{sha256[:16]}.json"

    def logits(self, key: str, sha256: str) -> Path:
        return self.folder(key) / logits_name(sha256)

    def views(self, key: str, sha256: str, augment: str, n_views: int) -> Path:
        return self.folder(key) / f"views-{n_views}-{augment}-{sha256[:12]}.pt"


def logits_name(sha256: str) -> str:
    """The file name of a teacher's training-split logits, cached or shipped."""
    return f"train-logits-{sha256[:12]}.pt"


def shipped_dir() -> Path:
    return Path(os.environ.get("NAS_KD_SHIPPED_DIR", Path(__file__).resolve().parent.parent / "shipped_teachers"))


def shipped_logits_dir() -> Path:
    return shipped_dir() / LOGITS_DIR


def shipped_manifest() -> dict:
    return shipped_manifest_of(shipped_dir())


def shipped_manifest_of(folder: Path, name: str = MANIFEST) -> dict:
    """A JSON record shipped in ``folder`` (the teachers' manifest by default); empty if absent."""
    path = folder / name
    return json.loads(path.read_text()) if path.exists() else {}


def shipped_member(key: str, member: str) -> tuple[Path, dict] | None:
    """A shipped member's weights and record, or None when that member is not shipped."""
    entry = shipped_manifest().get(key, {}).get(member)
    return (shipped_dir() / key / f"{member}.pt", entry) if entry else None


def load_checked(model: nn.Module, path: Path, sha256: str, *, shipped: bool = False) -> None:
    """Load a state dict with ``weights_only=True`` after checking the file's SHA-256."""
    actual = sha256_file(path)
    if actual != sha256:
        fix = ("reinstall nas_kd (pip install --force-reinstall nas_kd), or retrain it with "
               "python -m nas_kd.teacher train" if shipped else "delete it to retrain")
        raise UserError(
            f"{'shipped ' if shipped else ''}teacher file {path} does not match its recorded SHA-256 "
            f"(expected {sha256[:12]}…, found {actual[:12]}…): it was changed or damaged; {fix}"
        )
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
        model.load_state_dict(state)
    except Exception as err:  # noqa: BLE001 - any unpickling/shape failure is the same user problem
        raise UserError(f"cannot load teacher weights {path}: {err}") from None


def load_tensor(path: Path, shape: tuple[int, ...]) -> torch.Tensor | None:
    """A cached tensor (weights only) if it exists and has ``shape``, else None."""
    if not path.exists():
        return None
    tensor = torch.load(path, map_location="cpu", weights_only=True)
    return tensor if tuple(tensor.shape) == shape else None
