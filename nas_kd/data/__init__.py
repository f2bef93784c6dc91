"""Datasets: a name gives train/test tensors (``load_dataset``); a seeded split carves validation
from train (``split_dataset``). Import from here, not from the modules underneath.

``dataset`` defines the two records, ``registry`` maps names to loaders, ``builtin`` and ``user``
register the loaders (importing this package registers them all).
"""

from nas_kd.data import builtin, user  # noqa: F401 - imported for their registrations
from nas_kd.data.dataset import Dataset, Split, default_val_size, fingerprint, split_dataset
from nas_kd.data.registry import dataset_names, load_dataset, register_dataset, register_source
from nas_kd.data.user import call_factory

__all__ = ["Dataset", "Split", "call_factory", "dataset_names", "default_val_size", "fingerprint", "load_dataset",
           "register_dataset", "register_source", "split_dataset"]
