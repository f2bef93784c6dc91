"""Which candidate earns a longer training: Pareto-aware promotion between rungs (MO-ASHA).

A candidate first trains for rung 0's steps; the scheduler may later promote it to rung 1, which
resumes it from its checkpoint for ``eta`` times as many steps in all, and so on. Promotion is
asynchronous (ASHA, Li et al. 2020): whenever a worker is free it asks ``next_promotion``; of the
``n`` results recorded at a rung, the best ``n // eta`` by ``banded_order`` may go up, highest
rung first. Pareto order (``promotion_order``) is non-dominated sorting of (accuracy ↑, cost ↓:
FLOPs or latency); inside one front, crowding distance on (accuracy, log cost) puts the front's ends
and its sparse stretches first, so the promoted set spans the budget instead of clustering at its
top (Schmucker et al. 2021 use an ε-net for the same purpose). Unlike a synchronous halving that
keeps whole fronts, a rung never promotes more than ``n // eta`` nor empties.

Pareto order alone starves the top of the budget: a short rung underrates large students, which
learn more slowly and gain most from longer training (measured: 4.38 MFLOPs +1.7 points from rung
2 to export, 0.8 MFLOPs +0.9), so at rung 0 they are dominated by small fast learners. The rung's
results are therefore split into ``BANDS`` cost bands, each ``BAND_RATIO`` times cheaper than the
one above, anchored at the budget: they take turns, dearest first, each giving its own best by
Pareto order. Anchored bands keep each candidate in one band as results arrive; bands spanning the
results' own range moved with every new extreme, and in an asynchronous search (an early promotion
is never undone) each move promoted more: 30 of 40 candidates reached rung 1, where anchored bands
promote 19-22 in a replay of the same three studies, as many as Pareto order alone, with 7-9 of them
above 1.6 MFLOPs instead of 3-5 (benchmarks/RESULTS.md).
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


BANDS = 3  # cost bands that take turns at promotion
BAND_RATIO = 3.0  # each band's costs are up to this many times cheaper than the band above


def cost_bands(results: Sequence[RungResult], top: float | None = None, bands: int = BANDS) -> list[list[int]]:
    """Indices of ``results`` by cost band, dearest band first (empty bands dropped): band k holds
    costs in (top / BAND_RATIO**(k+1), top / BAND_RATIO**k], the last band everything cheaper.
    ``top`` is the budget on the cost axis; without one, the dearest result."""
    if not results:
        return []
    top = top or max(r.cost for r in results)
    members: list[list[int]] = [[] for _ in range(bands)]
    for i, r in enumerate(results):
        k = 0
        while k < bands - 1 and r.cost <= top / BAND_RATIO ** (k + 1):
            k += 1
        members[k].append(i)
    return [band for band in members if band]


def banded_order(results: Sequence[RungResult], top: float | None = None) -> list[RungResult]:
    """``results`` best first, the cost bands under ``top`` taking turns (dearest first), each in Pareto order."""
    queues = [promotion_order([results[i] for i in band]) for band in cost_bands(results, top)]
    order = []
    for turn in range(max((len(q) for q in queues), default=0)):
        order += [q[turn] for q in queues if turn < len(q)]
    return order


def promotable(results: Sequence[RungResult], *, promoted: set[tuple[int, int]], top_rung: int,
               eta: int, top: float | None = None, past_quota: bool = False, tail: str = "rungs") -> list[RungResult]:
    """Every result that may go up now, the one to promote first first: of each rung below ``top_rung``
    (highest first), its best ``n // eta`` results not yet promoted (``promoted`` holds the
    (candidate, rung) pairs already moved up), in ``banded_order`` under the budget ``top``.

    ``past_quota``: every result of each rung in that order, not only its best ``n // eta``. A
    search whose candidates are all trained spends its time left this way (``--promote-until``):
    the most-vetted candidates go on first, so the front is read from longer training.
    ``tail="top-band"``: past the quota, the top cost band's results go first (in the same order), then
    the rest. Short rungs rank that band worst, and ``--pick best`` is made there: in one study the
    band's 20-epoch leaders stopped at rung 0 (benchmarks/RESULTS.md, stop 42)."""
    out = []
    for rung in range(top_rung - 1, -1, -1):
        at_rung = [r for r in results if r.rung == rung]
        ranked = banded_order(at_rung, top)
        if not past_quota:
            ranked = ranked[: len(at_rung) // eta]
        out += [r for r in ranked if (r.candidate, rung) not in promoted]
    if past_quota and tail == "top-band" and out:
        floor = (top or max(r.cost for r in results)) / BAND_RATIO
        out = [r for r in out if r.cost > floor] + [r for r in out if r.cost <= floor]
    return out


def next_promotion(results: Sequence[RungResult], *, promoted: set[tuple[int, int]], top_rung: int,
                   eta: int, top: float | None = None) -> RungResult | None:
    """The result to promote next, or None."""
    candidates = promotable(results, promoted=promoted, top_rung=top_rung, eta=eta, top=top)
    return candidates[0] if candidates else None


def rung_steps(first: int, eta: int, rung: int) -> int:
    """Total training steps a candidate has had once it finished ``rung`` (rung 0: ``first``)."""
    return first * eta**rung
