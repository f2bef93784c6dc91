"""Promotions in a shared study: the rung results every worker sees, and a claim that makes sure
no two workers train the same promotion.

The search's own study keeps one trial per candidate, told its rung-0 accuracy, so the sampler
models one fidelity only. Longer rungs live in a companion study, ``NAME.rungs``, in the same
storage: one trial per promotion, created RUNNING as its claim and told the accuracy reached.
Claims race safely on any storage: a worker adds its claim, then keeps it only if it is the
lowest-numbered live claim for that candidate and rung (numbers are handed out in the order
claims are created). A claim whose worker was stopped (interrupted, killed: its heartbeat lapses)
ends FAILED and no longer counts, so the promotion is open again and the candidate resumes from
its checkpoint.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass

import optuna
from optuna.trial import FrozenTrial, TrialState

from nas_kd.search.rungs import RungResult
from nas_kd.study.records import RUNGS_SUFFIX, Attr, Status, is_feasible, is_trained
from nas_kd.study.storage import make_storage


@dataclass(frozen=True)
class Claim:
    """A promotion this worker won: train ``source`` up to ``rung``."""

    number: int  # the claim's trial number in the rungs study
    trial_id: int  # its storage id (heartbeats)
    source: int  # the candidate's trial number in the search's study
    rung: int


def open_rungs(name: str, storage_url: str) -> optuna.Study:
    return optuna.create_study(study_name=name + RUNGS_SUFFIX, storage=make_storage(storage_url),
                               direction="maximize", load_if_exists=True)


def rung_results(study: optuna.Study, rungs: optuna.Study) -> list[RungResult]:
    """Every finished rung: rung 0 from the search's trials, higher rungs from the promotions."""
    results = [RungResult(t.number, 0, t.values[0], t.values[1])
               for t in study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
               if is_trained(t) and is_feasible(t)]
    results += [RungResult(t.user_attrs[Attr.SOURCE], t.user_attrs[Attr.RUNG], t.values[0],
                           t.user_attrs.get(Attr.COST, t.user_attrs.get(Attr.FLOPS)))
                for t in rungs.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))]
    return results


def _live(rungs: optuna.Study) -> list[FrozenTrial]:
    """Claims that hold their promotion: running, done, or failed on their own (NaN, out of memory),
    which are not tried again. A claim lost to another or stopped with its worker holds nothing."""
    return [t for t in rungs.get_trials(deepcopy=False)
            if t.state in (TrialState.RUNNING, TrialState.COMPLETE) or t.user_attrs.get(Attr.STATUS) == Status.FAILED]


def promoted(rungs: optuna.Study) -> set[tuple[int, int]]:
    """(candidate, rung it leaves) for every promotion claimed, done or failed on its own."""
    return {(t.user_attrs[Attr.SOURCE], t.user_attrs[Attr.RUNG] - 1) for t in _live(rungs)}


def try_claim(rungs: optuna.Study, result: RungResult, run_id: str | None = None) -> Claim | None:
    """Claim the promotion of ``result`` to the next rung; None if another worker claimed it first.
    ``run_id``: the run of local workers this worker belongs to (its peers wait while it trains)."""
    token, rung = uuid.uuid4().hex, result.rung + 1
    attrs = {Attr.SOURCE: result.candidate, Attr.RUNG: rung, Attr.COST: result.cost, Attr.CLAIM: token}
    rungs.add_trial(optuna.trial.create_trial(state=TrialState.RUNNING,
                                              user_attrs={**attrs, **({Attr.RUN: run_id} if run_id else {})}))
    same = sorted((t for t in _live(rungs)
                   if t.user_attrs.get(Attr.SOURCE) == result.candidate and t.user_attrs.get(Attr.RUNG) == rung),
                  key=lambda t: t.number)
    mine = next(t for t in same if t.user_attrs.get(Attr.CLAIM) == token)
    if same[0].number != mine.number:
        rungs.tell(mine.number, state=TrialState.FAIL)
        return None
    return Claim(mine.number, mine._trial_id, result.candidate, rung)  # noqa: SLF001


def claim_trial(rungs: optuna.Study, claim: Claim) -> optuna.Trial:
    """The claim as a live trial (for its heartbeat and attributes)."""
    return optuna.Trial(rungs, claim.trial_id)


def record_rung(rungs: optuna.Study, claim: Claim, accuracy: float, seconds: float) -> None:
    trial = claim_trial(rungs, claim)
    trial.set_user_attr(Attr.STATUS, Status.TRAINED)
    trial.set_user_attr(Attr.VAL_ACCURACY, accuracy)
    trial.set_user_attr(Attr.TRAIN_SECONDS, round(seconds, 3))
    rungs.tell(claim.number, accuracy)


def fail_claim(rungs: optuna.Study, claim: Claim, reason: str, *, reopen: bool) -> None:
    """The promotion did not finish. ``reopen``: its worker stopped (Ctrl-C, SIGTERM), so it is open
    again and resumes from the candidate's checkpoint; otherwise it failed on its own and stays failed."""
    try:
        trial = claim_trial(rungs, claim)
        if not reopen:
            trial.set_user_attr(Attr.STATUS, Status.FAILED)
        trial.set_user_attr(Attr.FAIL_REASON, reason[:1000])
        rungs.tell(claim.number, state=TrialState.FAIL)
    except optuna.exceptions.UpdateFinishedTrialError:  # interrupted after it was recorded
        pass
