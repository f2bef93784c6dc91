"""The study's record format, owned here: the attribute keys a search writes, the status values a
trial can end with, and ``TrialRecord``, the typed view that report and export read through.

An Optuna study stays a plain Optuna study (optuna-dashboard opens it); what nas_kd adds lives in
user attributes: on the study, the run's identity, settings and teacher; on each trial, its spec,
cost, accuracy, timings and status.
"""

from __future__ import annotations

from dataclasses import dataclass

import optuna
from optuna.trial import FrozenTrial, TrialState

from nas_kd.study.pareto import pareto_front

DIRECTIONS = ("maximize", "minimize")  # validation accuracy, FLOPs

# Study attributes
IDENTITY_ATTR = "nas_kd.identity"  # what must not change on resume (checked by storage.check_identity)
SETTINGS_ATTR = "nas_kd.settings"  # the creating run's settings, data description, space, flags
TEACHER_ATTR = "nas_kd.teacher"  # the teacher's key, hash, accuracy and cost
RUNGS_SUFFIX = ".rungs"  # the companion study NAME.rungs holds the promotions to longer rungs


class Attr:
    """Trial attributes."""

    SPEC = "spec"  # ArchSpec.to_dict()
    SPEC_JSON = "spec_json"  # ArchSpec.to_json(): the key that finds repeated architectures
    SUMMARY = "summary"  # one-line spec
    FLOPS = "flops"
    PARAMS = "params"
    PEAK_MEMORY = "peak_memory"  # int8 bytes (nas_kd.model.memory)
    MODEL_SIZE = "model_size"  # int8 bytes
    LATENCY = "latency_us"  # onnxruntime, batch 1, on the machine that ran the trial
    STATUS = "status"  # one of Status
    VAL_ACCURACY = "val_accuracy"
    TRAIN_SECONDS = "train_seconds"
    MID_VAL = "mid_val"  # half-way accuracy on the early-stop probe
    STOP_REASON = "stop_reason"
    FAIL_REASON = "fail_reason"
    DUPLICATE_OF = "duplicate_of"
    WORKER = "worker"
    RUN = "run"  # the --workers run that trained it (workers share its --trials)
    KD = "kd"  # this trial's recipe under --kd search
    WARM_START = "warm_start"  # the hand design's name
    # on a promotion (a trial of the rungs study)
    SOURCE = "source"  # the candidate's trial number in the search's study
    RUNG = "rung"  # the rung it trains to (1, 2, ...)
    COST = "cost"  # the candidate's cost on the front's axis (older promotions: "flops")
    CLAIM = "claim"  # a token naming the claim's maker


class Status:
    """How a trial ended, as recorded in its ``status`` attribute."""

    TRAINED = "trained"
    INFEASIBLE = "infeasible"  # over budget: rejected before training
    DUPLICATE = "duplicate"  # an architecture trained before: its result reused
    STOPPED = "stopped early"
    FAILED = "failed"
    RUNNING = "running"


STALE_REASON = "its worker stopped (no heartbeat): killed or crashed"
INTERRUPTED_REASON = "interrupted by the user"  # Ctrl-C or SIGTERM: its process stopped cleanly


def is_trained(t: FrozenTrial) -> bool:
    """A trial that trained to the end and was told its accuracy (duplicates reuse another's)."""
    return t.state == TrialState.COMPLETE and t.user_attrs.get(Attr.STATUS) == Status.TRAINED


def is_feasible(t: FrozenTrial) -> bool:
    if t.constraints:
        return all(v <= 0 for v in t.constraints.values())
    return t.user_attrs.get(Attr.STATUS) != Status.INFEASIBLE


@dataclass(frozen=True)
class TrialRecord:
    """One trial as the rest of nas_kd sees it (plain data, no Optuna types)."""

    number: int
    state: str  # COMPLETE / FAIL / RUNNING / ...
    status: str  # a Status value
    val_accuracy: float | None
    flops: int | None
    params: int | None
    train_seconds: float | None
    summary: str
    spec: dict | None
    feasible: bool
    fail_reason: str | None = None
    kd: dict | None = None  # this trial's distillation recipe under --kd search
    rung: int = 0  # the longest rung it finished: ``val_accuracy`` and ``train_seconds`` are that rung's
    rung_accuracies: tuple[float, ...] = ()  # its validation accuracy at each rung it finished
    peak_memory: int | None = None  # int8 bytes; None in studies made before it was counted
    model_size: int | None = None  # int8 bytes
    latency_us: float | None = None  # measured when the search used latency
    objective_cost: float | None = None  # the front's cost axis: FLOPs, or latency (--objective latency)

    @property
    def cost(self) -> float | None:
        """The cost the front ranks by: ``objective_cost``, or FLOPs in records that lack it."""
        return self.objective_cost if self.objective_cost is not None else self.flops

    @property
    def on_front_candidate(self) -> bool:
        """Trained to the end, within budget, with an accuracy: what fronts and picks are made of."""
        return self.status == Status.TRAINED and self.feasible and self.val_accuracy is not None

    @property
    def kd_text(self) -> str:
        if not self.kd:
            return ""
        k = self.kd
        return f"{k['loss']} T={k['temperature']:g} a={k['alpha']:.2f}"

    def to_dict(self) -> dict:
        return dict(self.__dict__)


def to_record(t: FrozenTrial, promotions: tuple[FrozenTrial, ...] = ()) -> TrialRecord:
    """``t`` as a record; ``promotions`` are its finished longer rungs (trials of the rungs study)."""
    a = t.user_attrs
    if t.state == TrialState.FAIL and Attr.STATUS not in a:  # failed by another worker's stale-trial check
        a = {**a, Attr.STATUS: Status.FAILED, Attr.FAIL_REASON: STALE_REASON}
    has_result = t.state == TrialState.COMPLETE and a.get(Attr.STATUS) in (Status.TRAINED, Status.DUPLICATE)
    rungs = sorted(promotions, key=lambda p: p.user_attrs[Attr.RUNG]) if has_result else []
    last = rungs[-1] if rungs else None
    return TrialRecord(
        number=t.number,
        state=t.state.name,
        status=a.get(Attr.STATUS, Status.RUNNING if t.state == TrialState.RUNNING else t.state.name.lower()),
        val_accuracy=(last.values[0] if last else t.values[0]) if has_result else None,
        flops=a.get(Attr.FLOPS),
        params=a.get(Attr.PARAMS),
        train_seconds=last.user_attrs.get(Attr.TRAIN_SECONDS) if last else a.get(Attr.TRAIN_SECONDS),
        summary=a.get(Attr.SUMMARY, ""),
        spec=a.get(Attr.SPEC),
        feasible=is_feasible(t),
        fail_reason=a.get(Attr.FAIL_REASON),
        kd=a.get(Attr.KD),
        rung=last.user_attrs[Attr.RUNG] if last else 0,
        rung_accuracies=(t.values[0], *(p.values[0] for p in rungs)) if has_result else (),
        peak_memory=a.get(Attr.PEAK_MEMORY),
        model_size=a.get(Attr.MODEL_SIZE),
        latency_us=a.get(Attr.LATENCY),
        objective_cost=t.values[1] if has_result else None,
    )


def trial_records(study) -> list[TrialRecord]:  # noqa: ANN001 - an optuna.Study
    """Every trial of the search's study, each with the longer rungs it reached (NAME.rungs)."""
    by_source: dict[int, list[FrozenTrial]] = {}
    for p in _promotions(study):
        by_source.setdefault(p.user_attrs[Attr.SOURCE], []).append(p)
    return [to_record(t, tuple(by_source.get(t.number, ()))) for t in study.get_trials(deepcopy=False)]


def _promotions(study) -> list[FrozenTrial]:  # noqa: ANN001
    """The finished promotions of ``study``'s candidates; none for a study searched with one rung."""
    try:
        # the storage object is the study's own; Optuna has no public accessor for it
        rungs = optuna.load_study(study_name=study.study_name + RUNGS_SUFFIX, storage=study._storage)  # noqa: SLF001
    except KeyError:
        return []
    return [t for t in rungs.get_trials(deepcopy=False, states=(TrialState.COMPLETE,)) if Attr.SOURCE in t.user_attrs]


def front_candidates(records: list[TrialRecord]) -> list[TrialRecord]:
    return [r for r in records if r.on_front_candidate]


def front_records(records: list[TrialRecord]) -> list[TrialRecord]:
    """Feasible trained trials on the Pareto front of (validation accuracy ↑, cost ↓), cheapest first
    (the cost is FLOPs, or latency in a study searched with ``--objective latency``)."""
    done = front_candidates(records)
    return [done[i] for i in pareto_front([(r.val_accuracy, r.cost) for r in done])]
