"""Teacher recipes: how each dataset's teachers are made, and which of them teach by default.

A recipe is an architecture, training settings and a number of members (member i trains with
seed + i; their logits are averaged). A dataset with no recipes of its own (one the user brings)
gets a small generic ResNet. Plugins (``NAS_KD_PLUGINS``) add recipes with ``register_recipes``.
"""

from __future__ import annotations

from dataclasses import dataclass

from nas_kd.errors import UserError
from nas_kd.plugins import load_plugins
from nas_kd.train import TrainSettings, at_least_steps


@dataclass(frozen=True)
class TeacherRecipe:
    """How a teacher is made: ``members`` networks of ``arch`` (member i trains with seed + i)."""

    arch: dict
    train: TrainSettings
    members: int = 1


# Accuracies and costs of these recipes are in benchmarks/RESULTS.md.
RECIPES: dict[str, dict[str, TeacherRecipe]] = {
    "fashion-mnist": {
        "quick": TeacherRecipe(
            {"arch": "resnet", "width": 32, "blocks": [1, 1, 1]},
            TrainSettings(epochs=8, batch_size=128, lr=0.1, weight_decay=5e-4, augment="crop"),
        ),
        # shipped, part of the default: 2 members, logits averaged
        "strong": TeacherRecipe(
            {"arch": "resnet", "width": 32, "blocks": [1, 1, 1]},
            TrainSettings(epochs=15, batch_size=128, lr=0.1, weight_decay=5e-4, augment="crop-flip-erase"),
            members=2,
        ),
        # shipped, part of the default: one ResNet with twice strong's blocks
        "deep": TeacherRecipe(
            {"arch": "resnet", "width": 32, "blocks": [2, 2, 2]},
            TrainSettings(epochs=30, batch_size=128, lr=0.1, weight_decay=5e-4, augment="crop-flip-erase"),
        ),
    },
    "digits": {
        "quick": TeacherRecipe(
            {"arch": "resnet", "width": 32, "blocks": [1, 1, 1]},
            TrainSettings(epochs=60, batch_size=64, lr=0.05, weight_decay=5e-4, augment="crop"),
        ),
    },
}

Default = tuple[tuple[str, ...], tuple[float, ...] | None]  # recipe names, and a weight per recipe (or None)

# A dataset's default teacher: one recipe, or several whose logits are averaged with a weight per
# recipe (a recipe's own members are averaged first). Fashion-MNIST's ships with the package.
DEFAULT_TEACHER: dict[str, Default] = {
    # chosen on validation (benchmarks/RESULTS.md): strong's two members and deep, weighted 1:1:3
    "fashion-mnist": (("strong", "deep"), (2.0, 3.0)),
    "digits": (("quick",), None),
}
GENERIC_MIN_STEPS = 1000  # a brought dataset's teacher trains for at least this many SGD steps


def register_recipes(dataset: str, recipes: dict[str, TeacherRecipe], default: Default | None = None) -> None:
    """Add ``dataset``'s recipes (a plugin's, say) and, optionally, its default teacher."""
    RECIPES.setdefault(dataset, {}).update(recipes)
    if default is not None:
        DEFAULT_TEACHER[dataset] = default


def recipes_for(dataset: str, n_train: int | None = None) -> dict[str, TeacherRecipe]:
    """The dataset's recipes. A dataset the user brings (npz:, folder:, a factory) gets a small
    ResNet trained on first use for 15 epochs, or more on small data: at least 1000 SGD steps."""
    load_plugins()
    if dataset in RECIPES:
        return RECIPES[dataset]
    batch_size = 64
    epochs = int(at_least_steps(15, n_train, batch_size, GENERIC_MIN_STEPS, whole_epochs=True)) if n_train else 15
    return {"quick": TeacherRecipe(
        {"arch": "resnet", "width": 16, "blocks": [1, 1, 1]},
        TrainSettings(epochs=epochs, batch_size=batch_size, lr=0.05, weight_decay=5e-4, augment="crop"),
    )}


def default_teacher(dataset: str) -> Default:
    """The recipes (and their weights) of the teacher used when no ``--teacher`` is given."""
    load_plugins()
    return DEFAULT_TEACHER.get(dataset, (("quick",), None))


def find_recipe(dataset: str, name: str | None, n_train: int | None = None) -> tuple[str, TeacherRecipe]:
    """The recipe called ``name`` (None: the dataset's default, when that is one recipe)."""
    recipes = recipes_for(dataset, n_train)
    if name is None:
        names = default_teacher(dataset)[0]
        if len(names) > 1:
            raise UserError(f"the default {dataset} teacher averages recipes {', '.join(names)}: "
                            "name one with --recipe")
        name = names[0]
    if name not in recipes:
        raise UserError(f"unknown teacher recipe {name!r} for {dataset}: choose one of {', '.join(recipes)}")
    return name, recipes[name]


def recipe_name(dataset: str, recipe: TeacherRecipe, n_train: int | None = None) -> str:
    """The name ``recipe`` has among the dataset's recipes."""
    return next(n for n, r in recipes_for(dataset, n_train).items() if r == recipe)
