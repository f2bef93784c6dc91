"""The Pareto front of (accuracy ↑, FLOPs ↓), its hypervolume, and its knee."""

from __future__ import annotations

from collections.abc import Sequence
from typing import TypeVar

T = TypeVar("T")


def pareto_front(points: Sequence[tuple[float, float]]) -> list[int]:
    """Indices of the non-dominated points (maximise accuracy, minimise cost), by ascending cost.

    Ties: of identical points only the first is kept.
    """
    order = sorted(range(len(points)), key=lambda i: (points[i][1], -points[i][0], i))
    front, best_acc = [], float("-inf")
    for i in order:
        acc, _ = points[i]
        if acc > best_acc:
            front.append(i)
            best_acc = acc
    return front


def hypervolume(points: Sequence[tuple[float, float]], *, ref_accuracy: float, ref_cost: float) -> float:
    """Area dominated by the points and bounded by the reference (accuracy floor, cost ceiling).

    Points below the accuracy floor or above the cost ceiling add nothing.
    """
    inside = [(a, c) for a, c in points if a > ref_accuracy and c < ref_cost]
    area, prev_cost = 0.0, ref_cost
    # Sweep from high cost to low: each front point owns the strip up to the previous cost.
    for i in reversed(pareto_front(inside)):
        acc, cost = inside[i]
        area += (acc - ref_accuracy) * (prev_cost - cost)
        prev_cost = cost
    return area
