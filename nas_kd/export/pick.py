"""Which trial of a study to export: one by number, or a rule over the trained, feasible trials."""

from __future__ import annotations

import argparse
import os

import numpy as np

from nas_kd.errors import UserError
from nas_kd.quantity import format_quantity, parse_quantity
from nas_kd.study.records import Status, TrialRecord, front_candidates, front_records

PICKS = "best, knee or max-acc-under:BUDGET"


def add_trial_arguments(p: argparse.ArgumentParser, verb: str) -> None:
    """The study and the trial of it a command works on (``--study-name``, ``--studies-dir``,
    ``--storage``, ``--trial`` or ``--pick``): the same flags for every command that takes a trial."""
    p.add_argument("--study-name", required=True)
    p.add_argument("--studies-dir", default="studies")
    p.add_argument("--storage", default=os.environ.get("NAS_KD_STORAGE"),
                   help="Optuna storage URL (default: $NAS_KD_STORAGE, else sqlite:///STUDIES_DIR/NAME.db)")
    group = p.add_mutually_exclusive_group()
    group.add_argument("--trial", type=int, help=f"trial number to {verb}")
    group.add_argument("--pick", default="best", help="best (default), knee, or max-acc-under:BUDGET (e.g. :2M)")


def pick_trial(records: list[TrialRecord], *, trial: int | None = None, pick: str = "best") -> TrialRecord:
    """The trial to export: by number, or ``best`` (highest validation accuracy), ``knee`` (the
    front point farthest from the line joining its ends), or ``max-acc-under:BUDGET``.

    Raises UserError when that trial does not exist or was not trained within budget."""
    if trial is not None:
        return _numbered(records, front_candidates(records), trial)
    if pick == "knee":
        return _knee(front_records(_trained(records)))
    return ranked_trials(records, pick, 1)[0]


def ranked_trials(records: list[TrialRecord], pick: str, k: int) -> list[TrialRecord]:
    """The ``k`` best trials under a ranking rule (``best`` or ``max-acc-under:BUDGET``), best first:
    highest validation accuracy, of equals the cheaper. Fewer when fewer qualify, never none.

    Raises UserError for an unknown rule, for ``knee`` (a point, not a ranking), or when none qualify."""
    done = _trained(records)
    if pick.startswith("max-acc-under"):
        limit = parse_quantity(pick.split(":", 1)[1] if ":" in pick else "", what="max-acc-under budget")
        done = [r for r in done if r.flops <= limit]
        if not done:
            raise UserError(f"no trained trial has at most {format_quantity(limit)} FLOPs")
    elif pick == "knee":
        raise UserError("--screen needs a ranking: use it with --pick best or --pick max-acc-under:BUDGET, not knee")
    elif pick != "best":
        raise UserError(f"unknown --pick {pick!r}: use {PICKS}")
    return sorted(done, key=lambda r: (-r.val_accuracy, r.flops))[:k]


def _trained(records: list[TrialRecord]) -> list[TrialRecord]:
    """The trained, feasible trials (UserError when there are none)."""
    if not records:
        raise UserError("the study has no trials yet: run `python -m nas_kd.search` first")
    done = front_candidates(records)
    if not done:
        raise UserError("no trial of this study is trained within budget: nothing to export")
    return done


def _numbered(records: list[TrialRecord], done: list[TrialRecord], trial: int) -> TrialRecord:
    match = [r for r in records if r.number == trial]
    if not match:
        raise UserError(f"no trial {trial} in this study (it has trials 0-{len(records) - 1})")
    r = match[0]
    if r not in done:
        why = r.fail_reason or ("over budget, never trained" if r.status == Status.INFEASIBLE else r.status)
        raise UserError(f"trial {trial} cannot be exported: it is {r.status} ({why}); pick a trained trial")
    return r


def _knee(front: list[TrialRecord]) -> TrialRecord:
    """The point of ``front`` (cheapest first) farthest above the chord joining its ends, with
    accuracy and log-FLOPs each scaled to [0, 1] so neither axis's unit decides."""
    if len(front) <= 2:
        return front[-1]
    a0, c0 = front[0].val_accuracy, np.log(front[0].flops)
    a1, c1 = front[-1].val_accuracy, np.log(front[-1].flops)

    def above_chord(r: TrialRecord) -> float:
        x = (np.log(r.flops) - c0) / max(c1 - c0, 1e-12)
        y = (r.val_accuracy - a0) / max(a1 - a0, 1e-12)
        return y - x

    return max(front, key=above_chord)
