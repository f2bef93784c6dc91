"""Knowledge distillation: the recipe (KDSettings), what a loss sees (KDBatch) and the registered losses."""

from nas_kd.distill.losses import (
    KD_SEARCH,
    KDBatch,
    KDSettings,
    get_kd_loss,
    kd_loss_names,
    needs_features,
    register_kd_loss,
    suggest_kd,
)

__all__ = [
    "KD_SEARCH",
    "KDBatch",
    "KDSettings",
    "get_kd_loss",
    "kd_loss_names",
    "needs_features",
    "register_kd_loss",
    "suggest_kd",
]
