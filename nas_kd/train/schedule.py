"""The learning rate: one-cycle (warm up over 15%, then anneal towards zero) over each segment of a run.

A plain run is one segment. A run trained in rungs (the search's promotions) restarts the cycle at
each rung's first step, so every rung ends with the rate near zero (budgeted training: a model is
best when its schedule has finished, whatever its length) and a promoted candidate trains exactly as
one trained straight through with the same restarts.
"""

from __future__ import annotations

import bisect
from collections.abc import Sequence

import torch

WARM_UP = 0.15  # share of a segment spent warming up


def segment(step: int, total: int, restarts: Sequence[int]) -> tuple[int, int]:
    """The segment ``[start, end)`` of the run that holds ``step``."""
    bounds = [0, *[r for r in sorted(restarts) if 0 < r < total], total]
    i = bisect.bisect_right(bounds, step) - 1
    i = min(i, len(bounds) - 2)
    return bounds[i], bounds[i + 1]


def one_cycle(opt: torch.optim.Optimizer, lr: float, steps: int) -> torch.optim.lr_scheduler.OneCycleLR:
    return torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=lr, total_steps=max(1, steps), pct_start=WARM_UP)
