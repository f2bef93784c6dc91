"""What a dataset is (``Dataset``: raw train/test tensors) and how it is split for training
(``Split``: a seeded validation set carved from train, everything normalised by train's statistics).

The test set is only ever read by final evaluation (export); search-time accuracy is measured on
the validation split, which is carved from the training set.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass

import torch

from nas_kd.errors import UserError


@dataclass(frozen=True)
class Dataset:
    """Raw arrays of one dataset: images as float32 N×C×H×W in [0, 1], labels as int64."""

    name: str
    x_train: torch.Tensor
    y_train: torch.Tensor
    x_test: torch.Tensor
    y_test: torch.Tensor
    num_classes: int

    @property
    def input_shape(self) -> tuple[int, int, int]:
        return tuple(self.x_train.shape[1:])  # type: ignore[return-value]


@dataclass(frozen=True)
class Split:
    """Normalised tensors ready for training: train / validation (from train) / test."""

    x_train: torch.Tensor
    y_train: torch.Tensor
    x_val: torch.Tensor
    y_val: torch.Tensor
    x_test: torch.Tensor
    y_test: torch.Tensor
    num_classes: int
    input_shape: tuple[int, int, int]
    description: dict

    @property
    def identity(self) -> dict:
        """Which images form this split: what cached teachers and resumed studies must match."""
        return {k: self.description[k] for k in ("train_size", "val_size", "split_seed", "fingerprint")}

    def subset_index(self, size: int | None, seed: int) -> torch.Tensor:
        """Indices of a fixed, seeded subset of the training split (all of it when size is None)."""
        n = len(self.y_train)
        if size is None or size >= n:
            return torch.arange(n)
        return torch.randperm(n, generator=torch.Generator().manual_seed(seed))[:size].sort().values


def hold_out(n: int, n_out: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Sorted indices of a seeded random ``n_out`` of ``range(n)``, and of the rest."""
    perm = torch.randperm(n, generator=torch.Generator().manual_seed(seed))
    return perm[:n_out].sort().values, perm[n_out:].sort().values


def default_val_size(n_train: int) -> int:
    """Validation images carved from train when the user does not say: min(5000, 15%)."""
    return min(5000, round(0.15 * n_train))


def split_dataset(data: Dataset, *, val_size: int | float, seed: int) -> Split:
    """Carve a seeded validation split from train; normalise with the train split's statistics."""
    n = len(data.y_train)
    n_val = int(round(val_size * n)) if isinstance(val_size, float) and val_size < 1 else int(val_size)
    if not 0 < n_val < n:
        raise UserError(f"validation size {val_size} does not fit {n} training images")
    val_idx, train_idx = hold_out(n, n_val, seed)
    x_train, x_val = data.x_train[train_idx], data.x_train[val_idx]
    mean = x_train.mean(dim=(0, 2, 3), keepdim=True)
    std = x_train.std(dim=(0, 2, 3), keepdim=True).clamp_min(1e-6)

    def norm(x: torch.Tensor) -> torch.Tensor:
        return ((x - mean) / std).contiguous()

    description = {
        "dataset": data.name,
        "fingerprint": fingerprint(data),
        "input_shape": list(data.input_shape),
        "num_classes": data.num_classes,
        "train_size": len(train_idx),
        "val_size": n_val,
        "test_size": len(data.y_test),
        "split_seed": seed,
        "split": "validation carved from the training set by a seeded permutation; "
        "test set untouched",
        "normalisation": {"mean": mean.flatten().tolist(), "std": std.flatten().tolist()},
    }
    return Split(
        x_train=norm(x_train),
        y_train=data.y_train[train_idx],
        x_val=norm(x_val),
        y_val=data.y_train[val_idx],
        x_test=norm(data.x_test),
        y_test=data.y_test,
        num_classes=data.num_classes,
        input_shape=data.input_shape,
        description=description,
    )


def fingerprint(data: Dataset) -> str:
    """SHA-256 (first 16 hex digits) of the training images and labels: caches key on it."""
    h = hashlib.sha256()
    for t in (data.x_train, data.y_train):
        h.update(t.numpy().tobytes())
    return h.hexdigest()[:16]
