"""The ``tiny`` test fixtures as a plugin (``NAS_KD_PLUGINS=tests.tiny``, set by conftest.py): a
generated, learnable 12×12 dataset and its small teacher recipes. Tests, CLI subprocesses and
search workers all reach them by name (``--dataset tiny``) through this one module."""

from __future__ import annotations

import numpy as np
import torch

from nas_kd.data import Dataset, register_dataset
from nas_kd.teacher import TeacherRecipe, register_recipes
from nas_kd.train import TrainSettings


def make_tiny(n_train: int = 384, n_test: int = 128, size: int = 12, classes: int = 4) -> Dataset:
    """A generated, learnable set: each class is a noisy oriented stripe pattern."""
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


_SMALL_RESNET = {"arch": "resnet", "width": 8, "blocks": [1, 1]}
_SETTINGS = TrainSettings(epochs=12, batch_size=32, lr=0.05, weight_decay=5e-4)
register_recipes(
    "tiny",
    {"quick": TeacherRecipe(_SMALL_RESNET, _SETTINGS), "ensemble": TeacherRecipe(_SMALL_RESNET, _SETTINGS, members=2)},
    default=(("quick",), None),
)
