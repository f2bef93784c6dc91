"""A hand design (a warm start) whose worker stopped under it is queued again, so a resumed study
never silently lacks it.

A warm start is a trial the search enqueued itself (``Attr.WARM_START`` names the design). When
its worker stops - interrupted by the user, or killed, so that its heartbeat lapses - the trial
ends FAILED through no fault of the design, and the design is enqueued once more with the same
parameters. A design that failed on its own (its loss became NaN, it ran out of memory, the code
crashed) is not: it would fail again.

Two ways in, so that exactly one process queues a design again:
- the storage calls ``requeue_stale_design`` for each trial whose heartbeat lapsed, in the one
  process that failed it (Optuna's heartbeat callback);
- the run that resumes a study calls ``requeue_stopped_designs`` before any of its workers starts,
  which catches designs interrupted by the user (they are failed by their own process, which is
  stopping) and those failed stale before this rule existed.
Either way a design is not queued again while a later trial of it waits, runs or has finished.
"""

from __future__ import annotations

import optuna
from optuna.trial import FrozenTrial, TrialState

from nas_kd.study.records import INTERRUPTED_REASON, Attr

MAX_STOPS = 3  # a design whose worker stopped under it this often (the OOM killer, say) stays failed


def stopped_by_its_worker(t: FrozenTrial) -> bool:
    """A trial that failed because its process stopped, not because of its candidate: failed by a
    peer's stale-heartbeat check (no status recorded) or interrupted by the user."""
    return t.state == TrialState.FAIL and (
        Attr.STATUS not in t.user_attrs or t.user_attrs.get(Attr.FAIL_REASON) == INTERRUPTED_REASON)


def requeue_stopped_designs(study: optuna.Study) -> list[str]:
    """Enqueue again every warm start whose latest trial was stopped by its worker; their names."""
    by_name: dict[str, list[FrozenTrial]] = {}
    for t in study.get_trials(deepcopy=False):
        if Attr.WARM_START in t.user_attrs:
            by_name.setdefault(t.user_attrs[Attr.WARM_START], []).append(t)
    names = [name for name, trials in by_name.items() if _wanted_again(trials)]
    for name in names:
        _enqueue(study, max(by_name[name], key=lambda t: t.number))
    return names


def requeue_stale_design(study: optuna.Study, failed: FrozenTrial) -> None:
    """The storage's heartbeat callback: ``failed`` was just failed stale by this process."""
    name = failed.user_attrs.get(Attr.WARM_START)
    if name is None:
        return
    trials = [t for t in study.get_trials(deepcopy=False) if t.user_attrs.get(Attr.WARM_START) == name]
    if _wanted_again(trials):
        _enqueue(study, failed)


def _wanted_again(trials: list[FrozenTrial]) -> bool:
    """The design's latest trial was stopped by its worker, and that has not happened too often."""
    latest = max(trials, key=lambda t: t.number)
    return stopped_by_its_worker(latest) and sum(map(stopped_by_its_worker, trials)) < MAX_STOPS


def _enqueue(study: optuna.Study, trial: FrozenTrial) -> None:
    # The queued parameters, not the trial's: a worker stopped while sampling had set only some.
    params = trial.system_attrs.get("fixed_params", trial.params)
    study.enqueue_trial(params, user_attrs={Attr.WARM_START: trial.user_attrs[Attr.WARM_START]})
