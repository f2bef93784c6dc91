"""A training run's whole state, saved atomically at an epoch's end or between two steps of one, and
loaded to resume it exactly."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from nas_kd.files import save_torch


@dataclass
class Position:
    """Where a run is: steps taken, and inside the current epoch its image order and the batches used."""

    step: int = 0
    order: torch.Tensor | None = None  # None: the next step starts a new epoch
    batches_done: int = 0
    seconds: float = 0.0  # training seconds spent so far (the runs a resumed one continues)


def save_checkpoint(path: Path, model: nn.Module, opt: torch.optim.Optimizer,
                    sched: torch.optim.lr_scheduler.LRScheduler, g: torch.Generator, at: Position) -> None:
    """Model, optimizer, schedule, the generator's state and the epoch's order: a resumed run draws
    what this one would have, even from the middle of an epoch."""
    state = {"model": model.state_dict(), "opt": opt.state_dict(), "sched": sched.state_dict(),
             "rng": g.get_state(), "step": at.step, "seconds": at.seconds, "batches_done": at.batches_done}
    if at.order is not None:
        state["order"] = at.order
    save_torch(state, path)


def load_checkpoint(path: Path) -> tuple[Position, dict]:
    """Where the saved run was, and its whole state (for ``restore``)."""
    state = torch.load(path, map_location="cpu", weights_only=True)
    # An epoch-end checkpoint has no order: the next step draws a new one.
    at = Position(int(state["step"]), state.get("order"), int(state.get("batches_done", 0)),
                  float(state.get("seconds", 0.0)))
    return at, state


def restore(state: dict, model: nn.Module, opt: torch.optim.Optimizer, g: torch.Generator,
            sched: torch.optim.lr_scheduler.LRScheduler | None = None) -> None:
    """Load a checkpoint's state into the run's objects; its schedule too, unless the run starts a new
    segment there (then ``sched`` is None and the caller starts the new cycle afterwards)."""
    model.load_state_dict(state["model"])
    opt.load_state_dict(state["opt"])
    g.set_state(state["rng"])
    if sched is not None:
        sched.load_state_dict(state["sched"])
