"""Dataset registry: a name gives train/test tensors; a seeded split carves validation from train.

The test set is only ever read by final evaluation (export); search-time accuracy is measured on
the validation split, which is carved from the training set.
"""

from __future__ import annotations

import gzip
import hashlib
import os
import struct
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from nas_kd.errors import UserError

FASHION_MNIST_DIRS = ("/usr/share/datasets/fashion-mnist",)
FASHION_MNIST_FILES = {
    "x_train": "train-images-idx3-ubyte.gz",
    "y_train": "train-labels-idx1-ubyte.gz",
    "x_test": "t10k-images-idx3-ubyte.gz",
    "y_test": "t10k-labels-idx1-ubyte.gz",
}


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


_REGISTRY: dict[str, Callable[[str | None], Dataset]] = {}


def register_dataset(name: str) -> Callable:
    def wrap(fn: Callable[[str | None], Dataset]) -> Callable[[str | None], Dataset]:
        _REGISTRY[name] = fn
        return fn

    return wrap


def dataset_names() -> list[str]:
    return sorted(_REGISTRY)


def load_dataset(name: str, data_dir: str | None = None) -> Dataset:
    """Load a registered dataset by name, or one the user brings (``npz:PATH``, ``folder:PATH``,
    ``pkg.module:factory``); UserError naming the choices otherwise."""
    from nas_kd.data.user import is_user_dataset, load_user_dataset

    if name not in _REGISTRY and is_user_dataset(name):
        return load_user_dataset(name)
    if name not in _REGISTRY:
        raise UserError(f"unknown dataset {name!r}: choose one of {', '.join(dataset_names())}, "
                        "or npz:PATH, folder:PATH, pkg.module:factory")
    return _REGISTRY[name](data_dir)


def default_val_size(n_train: int) -> int:
    """Validation images carved from train when the user does not say: min(5000, 15%)."""
    return min(5000, round(0.15 * n_train))


def split_dataset(data: Dataset, *, val_size: int | float, seed: int) -> Split:
    """Carve a seeded validation split from train; normalise with the train split's statistics."""
    n = len(data.y_train)
    n_val = int(round(val_size * n)) if isinstance(val_size, float) and val_size < 1 else int(val_size)
    if not 0 < n_val < n:
        raise UserError(f"validation size {val_size} does not fit {n} training images")
    perm = torch.randperm(n, generator=torch.Generator().manual_seed(seed))
    val_idx, train_idx = perm[:n_val].sort().values, perm[n_val:].sort().values
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


def _read_idx(path: Path) -> np.ndarray:
    """Read one gzip'd IDX file (the MNIST family's format)."""
    try:
        with gzip.open(path, "rb") as f:
            raw = f.read()
        zero, dtype_code, ndim = struct.unpack(">HBB", raw[:4])
        if zero != 0 or dtype_code != 0x08:
            raise ValueError("not an unsigned-byte IDX file")
        shape = struct.unpack(">" + "I" * ndim, raw[4 : 4 + 4 * ndim])
        data = np.frombuffer(raw, dtype=np.uint8, offset=4 + 4 * ndim)
        return data.reshape(shape)
    except (OSError, ValueError, struct.error, EOFError) as err:
        raise UserError(f"cannot read {path}: {err}; the file looks damaged, reinstall it") from None


@register_dataset("fashion-mnist")
def _fashion_mnist(data_dir: str | None) -> Dataset:
    candidates = [data_dir] if data_dir else [os.environ.get("NAS_KD_FASHION_MNIST", "")]
    candidates += [] if data_dir else list(FASHION_MNIST_DIRS)
    for folder in filter(None, candidates):
        paths = {k: Path(folder) / f for k, f in FASHION_MNIST_FILES.items()}
        if all(p.is_file() for p in paths.values()):
            break
    else:
        where = data_dir or " or ".join(FASHION_MNIST_DIRS)
        raise UserError(
            f"Fashion-MNIST files not found in {where} (need {', '.join(FASHION_MNIST_FILES.values())}). "
            "Install them with: apt-get install dataset-fashion-mnist, "
            "or pass --data-dir FOLDER holding the four .gz files"
        )
    arrays = {k: _read_idx(p) for k, p in paths.items()}
    return Dataset(
        name="fashion-mnist",
        x_train=torch.from_numpy(arrays["x_train"].copy()).float().div_(255).unsqueeze(1),
        y_train=torch.from_numpy(arrays["y_train"].astype(np.int64)),
        x_test=torch.from_numpy(arrays["x_test"].copy()).float().div_(255).unsqueeze(1),
        y_test=torch.from_numpy(arrays["y_test"].astype(np.int64)),
        num_classes=10,
    )


@register_dataset("digits")
def _digits(data_dir: str | None) -> Dataset:
    from sklearn.datasets import load_digits

    bunch = load_digits()
    x = torch.from_numpy(bunch.data.astype(np.float32) / 16.0).reshape(-1, 1, 8, 8)
    y = torch.from_numpy(bunch.target.astype(np.int64))
    # scikit-learn ships no test split: hold out a fixed 25% (seed 0), never used in search.
    perm = torch.randperm(len(y), generator=torch.Generator().manual_seed(0))
    n_test = len(y) // 4
    test, train = perm[:n_test].sort().values, perm[n_test:].sort().values
    return Dataset("digits", x[train], y[train], x[test], y[test], num_classes=10)


def make_tiny(n_train: int = 384, n_test: int = 128, size: int = 12, classes: int = 4) -> Dataset:
    """A generated, learnable set for tests: each class is a noisy oriented stripe pattern."""
    g = torch.Generator().manual_seed(1234)
    coords = torch.arange(size, dtype=torch.float32)
    yy, xx = torch.meshgrid(coords, coords, indexing="ij")
    patterns = torch.stack(
        [torch.sin((xx * np.cos(a) + yy * np.sin(a)) * 1.3) for a in np.linspace(0, np.pi, classes, endpoint=False)]
    )

    def draw(n: int) -> tuple[torch.Tensor, torch.Tensor]:
        y = torch.randint(0, classes, (n,), generator=g)
        noise = 1.5 * torch.randn(n, size, size, generator=g)
        x = ((patterns[y] + noise) * 0.25 + 0.5).clamp(0, 1).unsqueeze(1)
        return x, y

    x_train, y_train = draw(n_train)
    x_test, y_test = draw(n_test)
    return Dataset("tiny", x_train, y_train, x_test, y_test, num_classes=classes)


@register_dataset("tiny")
def _tiny(data_dir: str | None) -> Dataset:
    return make_tiny()
