"""Training one model, students and teachers alike: settings, the loop, augmentation and evaluation."""

from nas_kd.train.augment import AUGMENTATIONS, augment_batch
from nas_kd.train.device import device_for
from nas_kd.train.evaluate import accuracy, predict_logits
from nas_kd.train.loop import train_model
from nas_kd.train.settings import TrainResult, TrainSettings, at_least_steps

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
