"""Early stopping: a candidate whose half-way accuracy shows it cannot reach the front is stopped there.

Each candidate is scored half-way on ``PROBE_IMAGES`` validation images. A trained candidate at
most as costly, with final accuracy ``best``, dominates it unless it gains more than ``best -
half-way accuracy`` in its second half. The gain allowed is the study's own: a high quantile of
the half-way -> final gains its trained trials made.
"""

from __future__ import annotations

from collections.abc import Iterable

from optuna.trial import FrozenTrial

from nas_kd.quantity import format_quantity
from nas_kd.study.records import Attr, is_trained

PROBE_IMAGES = 1000  # validation images scored half-way through each trial
MIN_GAINS = 5  # half-way -> final gains observed before the rule may stop anything
GAIN_QUANTILE = 0.9  # a candidate is stopped only if even this large a gain leaves it dominated


class StoppedEarly(Exception):
    """Raised half-way through a candidate's training when it falls below the bar."""

    def __init__(self, accuracy: float, reason: str) -> None:
        super().__init__(reason)
        self.accuracy, self.reason = accuracy, reason


def observed_gains(trained: Iterable[FrozenTrial]) -> list[float]:
    """The half-way -> final accuracy gains of trained trials that were scored half-way."""
    return [t.values[0] - t.user_attrs[Attr.MID_VAL] for t in trained if Attr.MID_VAL in t.user_attrs]


def stop_below(known: Iterable[FrozenTrial], cost: float, gains: list[float],
               unit: str = "FLOPs") -> tuple[float, str] | None:
    """The half-way accuracy under which a candidate of ``cost`` (the front's axis: FLOPs or latency)
    cannot reach the front, and the
    reason to record (a template taking that accuracy); None while fewer than ``MIN_GAINS`` gains
    are known, or when nothing at most as costly is trained: then no candidate is stopped."""
    if len(gains) < MIN_GAINS:
        return None
    cheaper = [t for t in known if t.values[1] <= cost and is_trained(t)]
    if not cheaper:
        return None
    best = max(cheaper, key=lambda t: t.values[0])
    margin = sorted(gains)[min(len(gains) - 1, int(GAIN_QUANTILE * len(gains)))]
    return best.values[0] - margin, (f"half-way accuracy {{:.2%}} + {margin:.2%} (a 90th-percentile second-half "
                                     f"gain) is below trial #{best.number}'s {best.values[0]:.2%} at "
                                     f"{format_quantity(best.values[1])} {unit}")


def check_half_way(accuracy: float, bar: tuple[float, str] | None) -> None:
    """Raise StoppedEarly when the half-way ``accuracy`` is under ``bar`` (from ``stop_below``)."""
    if bar is not None and accuracy < bar[0]:
        raise StoppedEarly(accuracy, bar[1].format(accuracy))
