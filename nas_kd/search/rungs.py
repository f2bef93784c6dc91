"""Which candidate earns a longer training: Pareto-aware promotion between rungs (MO-ASHA).

A candidate first trains for rung 0's steps; the scheduler may later promote it to rung 1, which
resumes it from its checkpoint for ``eta`` times as many steps in all, and so on. Promotion is
asynchronous (ASHA, Li et al. 2020): whenever a worker is free it asks ``next_promotion``; of the
``n`` results recorded at a rung, the best ``n // eta`` by ``promotion_order`` may go up, highest
rung first. Order is non-dominated sorting of (accuracy ↑, cost ↓: FLOPs or latency); inside one
front, crowding distance on (accuracy, log cost) puts the front's ends and its sparse stretches first, so the
promoted set spans the budget instead of clustering at its top (Schmucker et al. 2021 use an
ε-net for the same purpose). Unlike a synchronous halving that keeps whole fronts, a rung never
promotes more than ``n // eta`` nor empties.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass


@dataclass(frozen=True)
class RungResult:
    """One candidate's result at one rung."""

    candidate: int  # the search trial's number
    rung: int
    accuracy: float
    cost: float  # the front's cost axis: FLOPs, or latency under --objective latency


def _dominates(a: RungResult, b: RungResult) -> bool:
    return a.accuracy >= b.accuracy and a.cost <= b.cost and (a.accuracy > b.accuracy or a.cost < b.cost)


def nondominated_fronts(results: Sequence[RungResult]) -> list[list[int]]:
    """Indices of ``results`` peeled into fronts: front 0 is dominated by nobody, front 1 only by front 0, ..."""
    left = list(range(len(results)))
    fronts = []
    while left:
        front = [i for i in left if not any(_dominates(results[j], results[i]) for j in left if j != i)]
        fronts.append(front)
        left = [i for i in left if i not in front]
    return fronts


def crowding_distance(results: Sequence[RungResult], front: Sequence[int]) -> dict[int, float]:
    """NSGA-II's crowding distance of each member of ``front`` (infinite at either end of an objective)."""
    distance = {i: 0.0 for i in front}
    for value in (lambda r: r.accuracy, lambda r: math.log(max(1.0, r.cost))):
        ranked = sorted(front, key=lambda i: (value(results[i]), results[i].candidate))
        span = value(results[ranked[-1]]) - value(results[ranked[0]])
        distance[ranked[0]] = distance[ranked[-1]] = math.inf
        if span <= 0:
            continue
        for before, here, after in zip(ranked, ranked[1:], ranked[2:], strict=False):
            distance[here] += (value(results[after]) - value(results[before])) / span
    return distance


def promotion_order(results: Sequence[RungResult]) -> list[RungResult]:
    """``results`` best first: by front, then most isolated first, then more accurate, then lower number."""
    order = []
    for front in nondominated_fronts(results):
        crowd = crowding_distance(results, front)
        order += sorted(front, key=lambda i: (-crowd[i], -results[i].accuracy, results[i].candidate))
    return [results[i] for i in order]


def promotable(results: Sequence[RungResult], *, promoted: set[tuple[int, int]], top_rung: int,
               eta: int) -> list[RungResult]:
    """Every result that may go up now, the one to promote first first: of each rung below ``top_rung``
    (highest first), its best ``n // eta`` results not yet promoted (``promoted`` holds the
    (candidate, rung) pairs already moved up)."""
    out = []
    for rung in range(top_rung - 1, -1, -1):
        at_rung = [r for r in results if r.rung == rung]
        out += [r for r in promotion_order(at_rung)[: len(at_rung) // eta] if (r.candidate, rung) not in promoted]
    return out


def next_promotion(results: Sequence[RungResult], *, promoted: set[tuple[int, int]], top_rung: int,
                   eta: int) -> RungResult | None:
    """The result to promote next, or None."""
    candidates = promotable(results, promoted=promoted, top_rung=top_rung, eta=eta)
    return candidates[0] if candidates else None


def rung_steps(first: int, eta: int, rung: int) -> int:
    """Total training steps a candidate has had once it finished ``rung`` (rung 0: ``first``)."""
    return first * eta**rung
