"""Export recipes (``--recipe``): how the shipped student is distilled, each a registered function.

A scheme gets the export's ``SchemeRun`` (the study's recipe, the options, a checkpointed ``train``)
and returns the student to ship with its model card entry. Adding one is one module with
``@register_scheme("name")``, never a branch in export or in the training loop:

- ``kd``: Hinton KD from the study's teacher (the default; today's export);
- ``ban``: born-again networks, each generation distilled from the one before;
- ``dml``: deep mutual learning, peers of one architecture trained together;
- ``takd``: a teacher assistant between teacher and student;
- ``self``: self-distillation through exits after every stage, kept with ``--exits``.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch
from torch import nn

from nas_kd.distill.losses import KDSettings, needs_features
from nas_kd.errors import UserError
from nas_kd.export.retrain import Recipe, Trained, TrainingClock, checkpoint_file, fit, score
from nas_kd.model.builder import build_student
from nas_kd.model.spec import ArchSpec
from nas_kd.progress import Progress

DEFAULT_SCHEME = "kd"
DEFAULT_GENERATIONS = 3
DEFAULT_PEERS = 2


@dataclass(frozen=True)
class SchemeOptions:
    """The recipe chosen on the command line and its knobs (only the chosen recipe's count)."""

    name: str = DEFAULT_SCHEME
    generations: int = DEFAULT_GENERATIONS  # ban
    peers: int = DEFAULT_PEERS  # dml
    exits: bool = False  # self: ship the early exits

    def key(self) -> dict:
        """What names this recipe in checkpoints and the model card: its name and its own knobs."""
        extra = {"ban": {"generations": self.generations}, "dml": {"peers": self.peers},
                 "self": {"exits": self.exits}}.get(self.name, {})
        return {"name": self.name, **extra}


@dataclass
class SchemeRun:
    """What a scheme trains with; ``train`` checkpoints every training under the export's folder."""

    recipe: Recipe
    options: SchemeOptions
    out: Path
    clock: TrainingClock
    progress: Progress
    cache_dir: str | None = None

    def new_student(self, spec: ArchSpec | None = None) -> nn.Module:
        torch.manual_seed(self.recipe.settings.seed)
        return build_student(spec or self.recipe.spec).to(memory_format=torch.channels_last)

    def train(self, model: nn.Module, label: str, targets: dict, *, kd: KDSettings | None = None,
              **key: object) -> float:
        """Train ``model`` in place against ``targets``; ``label`` and ``key`` name its checkpoint."""
        kd = kd or self.recipe.kd
        checkpoint = checkpoint_file(self.out, label.replace(" ", "-"), kd=asdict(kd), recipe=self.options.key(),
                                     **key, **self.recipe.run_key())
        return fit(self.recipe, model, kd, targets, label, checkpoint, self.clock, self.progress)

    def trained(self, model: nn.Module, seconds: float) -> Trained:
        return Trained(model, seconds, *score(model, self.recipe.split))


@dataclass(frozen=True)
class SchemeOutcome:
    student: Trained  # the student shipped
    entry: dict  # the model card's "recipe" entry
    files: dict[str, dict] = field(default_factory=dict)  # JSON files the export folder ships beside the student


Scheme = Callable[[SchemeRun], SchemeOutcome]
_SCHEMES: dict[str, tuple[Scheme, Callable[[SchemeOptions], int]]] = {}


def register_scheme(name: str, *,
                    trainings: Callable[[SchemeOptions], int] = lambda o: 1) -> Callable[[Scheme], Scheme]:
    """Register a scheme; ``trainings`` says how many trainings it runs (for the time-left estimate)."""
    def wrap(fn: Scheme) -> Scheme:
        _SCHEMES[name] = (fn, trainings)
        return fn

    return wrap


def scheme_names() -> list[str]:
    return sorted(_SCHEMES)


def check_options(options: SchemeOptions) -> None:
    """Raises UserError for an unknown recipe or a count it cannot use."""
    if options.name not in _SCHEMES:
        raise UserError(f"unknown --recipe {options.name!r}: choose one of {', '.join(scheme_names())}")
    if options.generations < 1:
        raise UserError(f"--generations must be at least 1, got {options.generations}")
    if options.peers < 2:
        raise UserError(f"--peers must be at least 2 (mutual learning trains students together), got {options.peers}")


def trainings(options: SchemeOptions) -> int:
    return _SCHEMES[options.name][1](options)


def run_scheme(run: SchemeRun) -> SchemeOutcome:
    """The student ``run.options.name`` ships. Raises UserError when the study's loss cannot serve it."""
    name = run.options.name
    if name != DEFAULT_SCHEME and needs_features(run.recipe.kd.loss):
        raise UserError(f"--recipe {name} distils soft outputs; the study's loss {run.recipe.kd.loss} needs the "
                        "teacher's features: use --recipe kd")
    return _SCHEMES[name][0](run)


from nas_kd.export.schemes import ban, dml, takd  # noqa: E402, F401  (register the schemes)
from nas_kd.export.schemes import kd as _kd  # noqa: E402, F401
from nas_kd.export.schemes import self as _self  # noqa: E402, F401
