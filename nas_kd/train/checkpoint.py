"""A training run's whole state at an epoch's end, saved atomically and loaded to resume it exactly."""

from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

from nas_kd.files import save_torch


def save_checkpoint(path: Path, model: nn.Module, opt: torch.optim.Optimizer,
                    sched: torch.optim.lr_scheduler.LRScheduler, g: torch.Generator, step: int,
                    seconds: float) -> None:
    """Model, optimizer, schedule and the generator's state: a resumed run draws what this one would have."""
    state = {"model": model.state_dict(), "opt": opt.state_dict(), "sched": sched.state_dict(),
             "rng": g.get_state(), "step": step, "seconds": seconds}
    save_torch(state, path)


def resume(path: Path, model: nn.Module, opt: torch.optim.Optimizer,
           sched: torch.optim.lr_scheduler.LRScheduler, g: torch.Generator) -> tuple[int, float]:
    """Load ``path`` into the run's objects; the steps taken and the training seconds spent so far."""
    state = torch.load(path, map_location="cpu", weights_only=True)
    model.load_state_dict(state["model"])
    opt.load_state_dict(state["opt"])
    sched.load_state_dict(state["sched"])
    g.set_state(state["rng"])
    return int(state["step"]), float(state.get("seconds", 0.0))  # no "seconds" (an older checkpoint): none counted
