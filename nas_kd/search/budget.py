"""What a candidate costs, checked against every budget before it trains, cheapest check first.

FLOPs from the analytic count (microseconds) reject most over-budget candidates; the int8 footprint
(microseconds, ``nas_kd.model.memory``) comes next; fvcore counts the rest (~0.5 s); latency, when a
budget or the objective needs it, is measured last (under a second; cached per spec).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from nas_kd.model.cost import count_cost, count_params
from nas_kd.model.memory import walk_spec
from nas_kd.model.spec import ArchSpec
from nas_kd.search.config import SearchConfig
from nas_kd.search.prepare import LatencyFn


@dataclass(frozen=True)
class CandidateCost:
    flops: int
    params: int
    peak_memory: int  # int8 bytes (nas_kd.model.memory)
    model_size: int  # int8 bytes
    latency_us: float | None = None  # measured only when a budget or the objective needs it

    def objective(self, cfg: SearchConfig) -> float:
        """The front's cost axis: FLOPs, or the measured latency with ``--objective latency``
        (infinite for a candidate rejected before it was timed: it never reaches a front)."""
        if cfg.objective == "latency":
            return math.inf if self.latency_us is None else self.latency_us
        return float(self.flops)


def screen(model: torch.nn.Module, spec: ArchSpec, shape: tuple[int, int, int], cfg: SearchConfig,
           latency: LatencyFn | None = None) -> CandidateCost:
    """The candidate's costs, each measured only if the cheaper ones fit (the rest stay unmeasured:
    an over-budget candidate records the figure that rejected it)."""
    walk = walk_spec(spec, shape)  # the analytic FLOP count and the footprint, in one pass
    cost = CandidateCost(walk.macs, count_params(model), walk.peak, walk.weights)
    if not fits(cost, cfg):
        return cost
    counted = count_cost(model, shape)
    cost = CandidateCost(counted.flops, counted.params, walk.peak, walk.weights)
    if latency is None or not fits(cost, cfg):
        return cost
    return CandidateCost(cost.flops, cost.params, cost.peak_memory, cost.model_size, latency(model, spec))


def overshoot(cost: CandidateCost, cfg: SearchConfig) -> dict[str, float]:
    """How far over (> 0) or under each budget given the candidate is: the sampler's constraints."""
    budgets = {"flops": (cost.flops, cfg.budget_flops), "params": (cost.params, cfg.budget_params),
               "peak_memory": (cost.peak_memory, cfg.budget_memory), "model_size": (cost.model_size, cfg.budget_size),
               "latency_us": (cost.latency_us, cfg.budget_latency_us)}
    return {k: float(v - b) for k, (v, b) in budgets.items() if b is not None and v is not None}


def fits(cost: CandidateCost, cfg: SearchConfig) -> bool:
    return all(v <= 0 for v in overshoot(cost, cfg).values())
