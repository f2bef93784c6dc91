"""What one training run is told (TrainSettings), what it reports (TrainResult) and how long it runs."""

from __future__ import annotations

import math
from dataclasses import dataclass


@dataclass(frozen=True)
class TrainSettings:
    """How one model is trained; stored with every study and export."""

    epochs: float = 2.0  # fractional epochs are allowed: 0.5 = half a pass over the data
    batch_size: int = 128
    lr: float = 0.05  # peak learning rate of the one-cycle schedule (SGD, Nesterov)
    momentum: float = 0.9
    weight_decay: float = 5e-4
    label_smoothing: float = 0.0  # used by label-only training; a KD loss brings its own soft targets
    augment: str = "none"  # "none" | "crop" (random crop, pad 2) | "crop-flip" | "crop-flip-erase"
    seed: int = 0


@dataclass(frozen=True)
class TrainResult:
    """``seconds`` covers the runs a resumed training continues; ``final_loss`` is the last step's."""

    seconds: float
    steps: int
    final_loss: float


def steps_per_epoch(n_images: int, batch_size: int) -> int:
    """Whole batches only: the last partial batch is dropped (batch norm needs more than one sample)."""
    return max(1, n_images // batch_size)


def total_steps(settings: TrainSettings, n_images: int) -> int:
    """SGD steps of the whole run: ``settings.epochs`` (possibly fractional) times the steps of an epoch."""
    return max(1, int(round(settings.epochs * steps_per_epoch(n_images, settings.batch_size))))


def at_least_steps(epochs: float, n_images: int, batch_size: int, min_steps: int, *,
                   whole_epochs: bool = False) -> float:
    """``epochs``, or more when they would give fewer than ``min_steps`` SGD steps (small datasets:
    2 epochs of 1,000 images are 15 steps, too few to learn or rank anything). ``whole_epochs``
    rounds the longer length up to a whole number of epochs."""
    needed = min_steps / steps_per_epoch(n_images, batch_size)
    return float(max(epochs, math.ceil(needed) if whole_epochs else needed))
