"""One candidate student: its training and score, its promotions, its weights (its costs: ``budget``)."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import replace
from pathlib import Path

import torch

from nas_kd.distill import KDSettings, needs_features
from nas_kd.distill.exits import ExitStudent
from nas_kd.files import save_torch
from nas_kd.search.config import SearchConfig
from nas_kd.search.early_stop import PROBE_IMAGES, check_half_way
from nas_kd.search.prepare import Run
from nas_kd.search.rungs import rung_steps
from nas_kd.train import TrainSettings, accuracy, at_least_steps, train_model
from nas_kd.train.settings import total_steps


def trial_settings(cfg: SearchConfig, n_images: int) -> TrainSettings:
    """``cfg.train``, with more epochs when ``--epochs`` would give fewer than ``cfg.min_steps`` steps."""
    epochs = at_least_steps(cfg.train.epochs, n_images, cfg.train.batch_size, cfg.min_steps)
    return replace(cfg.train, epochs=epochs)


def rung_length(run: Run, rung: int) -> tuple[int, tuple[int, ...]]:
    """The steps a candidate has trained once it finished ``rung``, and where its schedule restarted."""
    first = total_steps(trial_settings(run.cfg, len(run.y_train)), len(run.y_train))
    return rung_steps(first, run.cfg.eta, rung), tuple(rung_steps(first, run.cfg.eta, k) for k in range(rung))


def checkpoint_path(cfg: SearchConfig, number: int) -> Path:
    """A candidate's training state after its last rung: promotions resume from it."""
    return cfg.out_dir / "trials" / f"{number}.ckpt"


def train_candidate(run: Run, model: torch.nn.Module, kd: KDSettings, show: Callable[[str], None],
                    bar: tuple[float, str] | None = None, *, number: int) -> tuple[float, float, float | None]:
    """Train one candidate's first rung and score it on validation (KD from cached logits; feature
    losses also run the teacher on each batch). With rungs, its state is checkpointed for promotion
    (feature losses keep adapters outside the checkpoint: such candidates are not promoted).

    With early stopping it is also scored half-way on ``PROBE_IMAGES`` validation images and
    stopped there (StoppedEarly) if that score is under ``bar``. ``show`` gets the progress text.
    Returns validation accuracy, training seconds and half-way accuracy (None without a probe)."""
    model = model.to(run.device).to(memory_format=torch.channels_last)
    x_probe, y_probe = run.split.x_val[:PROBE_IMAGES], run.split.y_val[:PROBE_IMAGES]
    mid: list[float] = []

    def on_step(step: int, total: int, _loss: float) -> None:
        show(f"training {step / total:.0%}")
        if run.cfg.stops_early and step == total // 2 and step > 0:
            mid.append(accuracy(model, x_probe, y_probe))
            model.train()
            check_half_way(mid[0], bar)

    features = needs_features(kd.loss) and kd.uses_teacher
    ckpt = checkpoint_path(run.cfg, number) if run.cfg.rungs > 1 and not features else None
    if ckpt is not None:
        ckpt.unlink(missing_ok=True)  # a trial number is trained once: anything there is stale
    result = train_model(trainee(run, model), run.x_train, run.y_train, trial_settings(run.cfg, len(run.y_train)),
                         kd=kd, teacher_logits=run.teacher_logits, teacher=run.teacher if features else None,
                         on_step=on_step, checkpoint=ckpt)
    return accuracy(model, run.split.x_val, run.split.y_val), result.seconds, (mid[0] if mid else None)


def trainee(run: Run, model: torch.nn.Module) -> torch.nn.Module:
    """What trains: the candidate, or under ``--self-distill`` the candidate with exits after its
    stages (a one-stage candidate has none to add). The exits share the candidate's layers, so the
    candidate itself is scored and saved, and its checkpoint holds the exits for its promotions."""
    if not run.cfg.self_distill or len(model.spec.stages) < 2:
        return model
    return ExitStudent(model).to(run.device).to(memory_format=torch.channels_last)


def train_promotion(run: Run, model: torch.nn.Module, kd: KDSettings, number: int, rung: int,
                    show: Callable[[str], None]) -> tuple[float, float]:
    """Resume candidate ``number`` from its checkpoint and train it to the end of ``rung``; its
    validation accuracy, and its training seconds over all its rungs so far."""
    model = model.to(run.device).to(memory_format=torch.channels_last)
    steps, restarts = rung_length(run, rung)
    result = train_model(trainee(run, model), run.x_train, run.y_train, trial_settings(run.cfg, len(run.y_train)),
                         kd=kd, teacher_logits=run.teacher_logits, checkpoint=checkpoint_path(run.cfg, number),
                         steps=steps, restarts=restarts,
                         on_step=lambda step, total, _loss: show(f"rung {rung} {step / total:.0%}"))
    return accuracy(model, run.split.x_val, run.split.y_val), result.seconds


def save_weights(cfg: SearchConfig, number: int, model: torch.nn.Module) -> None:
    """The trained candidate's state dict, for export to start from: ``OUT/trials/NUMBER.pt``."""
    state = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    save_torch(state, cfg.out_dir / "trials" / f"{number}.pt")
