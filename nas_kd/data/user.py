"""Datasets a user brings: ``npz:PATH``, ``folder:PATH`` (one sub-folder per class) and
``pkg.module:factory``. Each becomes a ``Dataset`` like the registered ones: images float32
N×C×H×W in [0, 1] (or as given, when already float), labels 0..K-1; shape and classes inferred.

A source without a test set gets a fixed, seeded 20% hold-out, never used by the search.
"""

from __future__ import annotations

import importlib
from pathlib import Path

import numpy as np
import torch

from nas_kd.data.dataset import Dataset, hold_out
from nas_kd.data.registry import register_source
from nas_kd.errors import UserError

IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".bmp", ".gif", ".tif", ".tiff", ".webp"}


def _images(x: np.ndarray, what: str) -> torch.Tensor:
    """N×H×W, N×H×W×C (C ≤ 4) or N×C×H×W → float32 N×C×H×W; uint8 is scaled to [0, 1]."""
    x = np.asarray(x)
    if x.ndim == 3:
        x = x[:, None]
    elif x.ndim == 4 and x.shape[-1] in (1, 3, 4) and x.shape[1] not in (1, 3, 4):
        x = x.transpose(0, 3, 1, 2)
    if x.ndim != 4 or x.shape[0] == 0:
        raise UserError(f"{what}: expected images shaped N×H×W, N×H×W×C or N×C×H×W, got {x.shape}")
    if not (np.issubdtype(x.dtype, np.integer) or np.issubdtype(x.dtype, np.floating)):
        raise UserError(f"{what}: images must be numbers, got dtype {x.dtype}")
    scaled = x.astype(np.float32) / 255.0 if x.dtype == np.uint8 else x.astype(np.float32)
    if not np.isfinite(scaled).all():
        raise UserError(f"{what}: images contain NaN or infinite values")
    return torch.from_numpy(np.ascontiguousarray(scaled))


def _labels(y: np.ndarray, what: str, classes: np.ndarray | None = None) -> tuple[torch.Tensor, np.ndarray]:
    y = np.asarray(y).reshape(-1)
    if classes is None:
        classes = np.unique(y)
        if len(classes) < 2:
            raise UserError(f"{what}: labels hold {len(classes)} class; a classifier needs at least 2")
    unknown = np.setdiff1d(np.unique(y), classes)
    if len(unknown):
        raise UserError(f"{what}: test labels {unknown[:5].tolist()} do not occur in the training labels")
    return torch.from_numpy(np.searchsorted(classes, y).astype(np.int64)), classes


def _dataset(name: str, x: torch.Tensor, y: np.ndarray, x_test: torch.Tensor | None,
             y_test: np.ndarray | None) -> Dataset:
    """The checked ``Dataset``: labels mapped to 0..K-1; without a test set, a seeded 20% is held out."""
    if len(x) != len(np.asarray(y).reshape(-1)):
        raise UserError(f"{name}: {len(x)} images but {len(np.asarray(y).reshape(-1))} labels")
    labels, classes = _labels(y, name)
    if x_test is None:
        test, train = hold_out(len(labels), max(1, len(labels) // 5), seed=0)
        x, labels, x_test, test_labels = x[train], labels[train], x[test], labels[test]
    else:
        if x_test.shape[1:] != x.shape[1:]:
            raise UserError(f"{name}: test images are {tuple(x_test.shape[1:])}, training images {tuple(x.shape[1:])}")
        test_labels, _ = _labels(y_test, name, classes)
        if len(x_test) != len(test_labels):
            raise UserError(f"{name}: {len(x_test)} test images but {len(test_labels)} test labels")
    return Dataset(name, x, labels, x_test, test_labels, num_classes=len(classes))


@register_source("npz:PATH", lambda name: name.startswith("npz:"))
def _from_npz(name: str) -> Dataset:
    """Arrays ``x``, ``y`` (and optionally ``x_test``, ``y_test``) of an .npz file."""
    path = Path(name[len("npz:"):])
    try:
        with np.load(path, allow_pickle=False) as f:
            arrays = {k: f[k] for k in f.files}
    except (OSError, ValueError) as err:
        raise UserError(f"cannot read {path} as an .npz file of arrays: {err}") from None
    if "x" not in arrays or "y" not in arrays:
        raise UserError(f"{path} must hold arrays 'x' and 'y' (optional 'x_test', 'y_test'); it has "
                        f"{sorted(arrays) or 'none'}")
    if ("x_test" in arrays) != ("y_test" in arrays):
        raise UserError(f"{path}: give both 'x_test' and 'y_test', or neither")
    x = _images(arrays["x"], f"{path}: x")
    x_test = _images(arrays["x_test"], f"{path}: x_test") if "x_test" in arrays else None
    return _dataset(name, x, arrays["y"], x_test, arrays.get("y_test"))


def _read_folder(root: Path) -> tuple[list[np.ndarray], list[str]]:
    from PIL import Image, UnidentifiedImageError  # imported when asked for: only image folders need it

    classes = sorted(p.name for p in root.iterdir() if p.is_dir())
    images, labels = [], []
    for c in classes:
        for f in sorted((root / c).iterdir()):
            if f.suffix.lower() not in IMAGE_SUFFIXES:
                continue
            try:
                with Image.open(f) as im:
                    images.append(np.asarray(im.convert("L" if im.mode in ("1", "L", "I;16", "I") else "RGB")))
            except (OSError, UnidentifiedImageError) as err:
                raise UserError(f"cannot read image {f}: {err}") from None
            labels.append(c)
    return images, labels


def _stack(images: list[np.ndarray], where: Path) -> np.ndarray:
    shapes = {im.shape for im in images}
    if len(shapes) > 1:
        raise UserError(f"images under {where} differ in size ({', '.join(map(str, sorted(shapes)[:3]))}): "
                        "resize them to one size first")
    return np.stack(images)


@register_source("folder:PATH", lambda name: name.startswith("folder:"))
def _from_folder(name: str) -> Dataset:
    """ROOT/CLASS/image files, or ROOT/train/CLASS and ROOT/test/CLASS."""
    root = Path(name[len("folder:"):])
    if not root.is_dir():
        raise UserError(f"image folder {root} does not exist (expected ROOT/CLASS/image.png, "
                        "optionally ROOT/train/CLASS and ROOT/test/CLASS)")
    parts = (root / "train", root / "test") if (root / "train").is_dir() and (root / "test").is_dir() else (root,)
    loaded = [_read_folder(p) for p in parts]
    if not loaded[0][0]:
        raise UserError(f"no images found under {parts[0]} (one sub-folder per class, image files inside)")
    x = _images(_stack(loaded[0][0], parts[0]), f"{parts[0]}")
    y = np.asarray(loaded[0][1])
    if len(loaded) == 1:
        return _dataset(name, x, y, None, None)
    if not loaded[1][0]:
        raise UserError(f"no images found under {parts[1]}")
    return _dataset(name, x, y, _images(_stack(loaded[1][0], parts[1]), f"{parts[1]}"), np.asarray(loaded[1][1]))


def _as_arrays(part: object, what: str) -> tuple[np.ndarray, np.ndarray]:
    if isinstance(part, tuple) and len(part) == 2:
        x, y = part
        return (x.numpy() if isinstance(x, torch.Tensor) else np.asarray(x),
                y.numpy() if isinstance(y, torch.Tensor) else np.asarray(y))
    try:  # a map-style dataset of (image, label)
        items = [part[i] for i in range(len(part))]  # type: ignore[index, arg-type]
        xs = [x.numpy() if isinstance(x, torch.Tensor) else np.asarray(x) for x, _ in items]
        return np.stack(xs), np.asarray([int(label) for _, label in items])
    except (TypeError, ValueError) as err:
        raise UserError(f"{what} must be an (images, labels) pair or a dataset of (image, label): {err}") from None


def call_factory(source: str, what: str) -> object:
    """Import ``pkg.module:function`` and call it; UserError naming the step that failed."""
    module_name, _, attr = source.partition(":")
    try:
        factory = getattr(importlib.import_module(module_name), attr)
    except (ImportError, AttributeError) as err:
        raise UserError(f"cannot import {what} factory {source!r} (want pkg.module:function): {err}") from None
    try:
        return factory()
    except Exception as err:  # noqa: BLE001 - the user's code failed: say where
        raise UserError(f"{what} factory {source} raised {type(err).__name__}: {err}") from None


def _is_factory_name(name: str) -> bool:
    """``pkg.module:function``: a colon, and no path separator before it."""
    return ":" in name and "/" not in name.split(":")[0]


@register_source("pkg.module:factory", _is_factory_name)
def _from_factory(name: str) -> Dataset:
    """``function()`` returns (train, test), each an (images, labels) pair or a dataset of pairs."""
    result = call_factory(name, "dataset")
    if not (isinstance(result, tuple) and len(result) == 2):
        raise UserError(f"dataset factory {name} must return (train, test); got {type(result).__name__}")
    (x, y), (xt, yt) = _as_arrays(result[0], f"{name} train"), _as_arrays(result[1], f"{name} test")
    return _dataset(name, _images(x, f"{name} train"), y, _images(xt, f"{name} test"), yt)
