"""The one extension point for names nas_kd does not know: ``NAS_KD_PLUGINS``.

``NAS_KD_PLUGINS`` holds comma-separated importable module names. The dataset registry and the
teacher-recipe lookup import them once, before looking a name up; a plugin registers what it adds
when imported, with ``nas_kd.data.register_dataset`` and ``nas_kd.teacher.register_recipes``.
Being an environment variable, it reaches every process a command starts (search workers too).
"""

from __future__ import annotations

import importlib
import os

from nas_kd.errors import UserError

ENV = "NAS_KD_PLUGINS"
_loaded: set[str] = set()


def plugin_names() -> list[str]:
    """The module names ``NAS_KD_PLUGINS`` lists, in order."""
    return [name.strip() for name in os.environ.get(ENV, "").split(",") if name.strip()]


def load_plugins() -> None:
    """Import every listed plugin not imported yet; UserError naming the one that fails."""
    for name in plugin_names():
        if name in _loaded:
            continue
        try:
            importlib.import_module(name)
        except Exception as err:  # noqa: BLE001 - whatever the plugin's import raised, the fix is the same
            raise UserError(f"cannot import plugin {name!r} listed in {ENV}: {type(err).__name__}: {err} "
                            f"(give importable module names, comma-separated, or unset {ENV})") from None
        _loaded.add(name)
