"""Dataset names: ``load_dataset(name)`` finds the loader registered for it.

Two kinds of registration: a fixed name (``fashion-mnist``; the loader takes an optional data
folder) and a source kind that recognises a family of names (``npz:PATH``; the loader takes the
whole name). Fixed names are looked up first, then source kinds in the order they registered.
Plugins listed in ``NAS_KD_PLUGINS`` (see ``nas_kd.plugins``) are imported before a lookup, so
they can register datasets of their own.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from nas_kd.data.dataset import Dataset
from nas_kd.errors import UserError
from nas_kd.plugins import load_plugins

NamedLoader = Callable[[str | None], Dataset]  # the data folder (None: the loader's default) -> Dataset
SourceLoader = Callable[[str], Dataset]  # the whole name ("npz:/data/x.npz") -> Dataset


@dataclass(frozen=True)
class _SourceKind:
    pattern: str  # how the name is written, for messages: "npz:PATH"
    matches: Callable[[str], bool]
    load: SourceLoader


_NAMED: dict[str, NamedLoader] = {}
_SOURCES: list[_SourceKind] = []


def register_dataset(name: str) -> Callable[[NamedLoader], NamedLoader]:
    """Decorator: ``fn(data_dir)`` loads the dataset called ``name``."""

    def wrap(fn: NamedLoader) -> NamedLoader:
        _NAMED[name] = fn
        return fn

    return wrap


def register_source(pattern: str, matches: Callable[[str], bool]) -> Callable[[SourceLoader], SourceLoader]:
    """Decorator: ``fn(name)`` loads every dataset name ``matches`` accepts (written ``pattern``)."""

    def wrap(fn: SourceLoader) -> SourceLoader:
        _SOURCES.append(_SourceKind(pattern, matches, fn))
        return fn

    return wrap


def dataset_names() -> list[str]:
    """The fixed names registered so far (a plugin's appear once a lookup has imported it)."""
    return sorted(_NAMED)


def source_patterns() -> list[str]:
    """How names of the registered source kinds are written: ``npz:PATH``, ..."""
    return [kind.pattern for kind in _SOURCES]


def load_dataset(name: str, data_dir: str | None = None) -> Dataset:
    """Load a dataset by name: a registered one, or one the user brings (``npz:PATH``,
    ``folder:PATH``, ``pkg.module:factory``); UserError naming the choices otherwise."""
    load_plugins()
    if name in _NAMED:
        return _NAMED[name](data_dir)
    for kind in _SOURCES:
        if kind.matches(name):
            return kind.load(name)
    raise UserError(f"unknown dataset {name!r}: choose one of {', '.join(dataset_names())}, "
                    f"or {', '.join(source_patterns())}")
