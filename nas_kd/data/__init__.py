"""Datasets: a name gives train/test tensors (``load_dataset``); a seeded split carves validation
from train (``split_dataset``). Import from here, not from the modules underneath."""

from nas_kd.data.dataset import (
    Dataset,
    Split,
    dataset_names,
    default_val_size,
    fingerprint,
    load_dataset,
    register_dataset,
    split_dataset,
)

__all__ = ["Dataset", "Split", "dataset_names", "default_val_size", "fingerprint", "load_dataset",
           "register_dataset", "split_dataset"]
