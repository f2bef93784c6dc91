"""The datasets nas_kd knows by name: Fashion-MNIST (the system's IDX files) and scikit-learn's digits."""

from __future__ import annotations

import gzip
import os
import struct
from pathlib import Path

import numpy as np
import torch

from nas_kd.data.dataset import Dataset, hold_out
from nas_kd.data.registry import register_dataset
from nas_kd.errors import UserError

FASHION_MNIST_DIRS = ("/usr/share/datasets/fashion-mnist",)
FASHION_MNIST_FILES = {
    "x_train": "train-images-idx3-ubyte.gz",
    "y_train": "train-labels-idx1-ubyte.gz",
    "x_test": "t10k-images-idx3-ubyte.gz",
    "y_test": "t10k-labels-idx1-ubyte.gz",
}


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
    """Fashion-MNIST from ``data_dir``, else $NAS_KD_FASHION_MNIST, else the system's dataset package."""
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
    """scikit-learn's 8×8 digits (bundled with it, so ``data_dir`` is not used)."""
    from sklearn.datasets import load_digits  # imported when asked for: most runs never need scikit-learn

    bunch = load_digits()
    x = torch.from_numpy(bunch.data.astype(np.float32) / 16.0).reshape(-1, 1, 8, 8)
    y = torch.from_numpy(bunch.target.astype(np.int64))
    # scikit-learn ships no test split: hold out a fixed 25% (seed 0), never used in search.
    test, train = hold_out(len(y), len(y) // 4, seed=0)
    return Dataset("digits", x[train], y[train], x[test], y[test], num_classes=10)
