"""Training one model: settings, the loop, augmentation and evaluation (students and teachers alike)."""

from nas_kd.train.loop import (
    AUGMENTATIONS,
    TrainResult,
    TrainSettings,
    accuracy,
    at_least_steps,
    augment_batch,
    device_for,
    predict_logits,
    train_model,
)

__all__ = [
    "AUGMENTATIONS",
    "TrainResult",
    "TrainSettings",
    "accuracy",
    "at_least_steps",
    "augment_batch",
    "device_for",
    "predict_logits",
    "train_model",
]
