"""A study read into plain data for the report: lists and numbers, no Plotly, no Optuna types.

Everything the page shows is decided here, so it can be checked without drawing anything.
"""

from __future__ import annotations

import json
import warnings
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path

import optuna
from optuna.trial import TrialState

from nas_kd.errors import UserError
from nas_kd.model.cost import FLOP_CONVENTION
from nas_kd.quantity import format_quantity
from nas_kd.report.flags import flags_of_config
from nas_kd.study.pareto import hypervolume, pareto_front
from nas_kd.study.records import (
    DIRECTIONS,
    IDENTITY_ATTR,
    SETTINGS_ATTR,
    TEACHER_ATTR,
    Status,
    TrialRecord,
    front_candidates,
    front_records,
    is_feasible,
    is_trained,
    trial_records,
)

IMPORTANCE_MIN_TRIALS = 4  # feasible trained trials needed before parameter importances mean anything
STATUS_ORDER = (Status.TRAINED, Status.INFEASIBLE, Status.DUPLICATE, Status.FAILED)  # always counted, in this order


@dataclass
class ReportData:
    """Everything the report shows, as plain data."""

    study_name: str
    records: list[TrialRecord]  # every trial, by number
    front: list[TrialRecord]  # feasible trained trials on the Pareto front, cheapest first
    counts: dict[str, int]  # trials by outcome (see ``outcome``): every STATUS_ORDER key, then any others
    budget_flops: int | None
    budget_params: int | None
    num_classes: int | None
    ref_accuracy: float  # hypervolume reference: chance level 1/num_classes
    ref_cost: float | None  # hypervolume reference: the FLOP budget
    hv_numbers: list[int]  # trial numbers ...
    hv_values: list[float]  # ... and the hypervolume of the feasible front after each of them
    importances: dict[str, float]  # parameter -> importance for validation accuracy (may be empty)
    importance_note: str | None  # why importances are missing, when they are
    config: dict = field(default_factory=dict)  # the recorded search settings (SearchConfig fields)
    flags: dict[str, str] = field(default_factory=dict)  # CLI flag -> value of the run that created the study
    flags_recorded: bool = True  # False: ``flags`` were rebuilt from ``config`` (a study of an older nas_kd)
    data_split: dict = field(default_factory=dict)  # dataset, train/val/test sizes, split seed
    space: dict = field(default_factory=dict)  # search space name and YAML source
    flop_convention: str = ""
    teacher: dict | None = None  # key, val_accuracy, test_accuracy, ... or None (labels only)
    trial_seconds: float = 0.0  # sum over trials of (complete - start)
    wall_seconds: float | None = None  # first trial start -> last trial complete
    first_start: datetime | None = None
    last_complete: datetime | None = None
    objective: str = "flops"  # the front's cost axis: flops, or latency (--objective latency)
    budget_memory: int | None = None  # int8 bytes
    budget_size: int | None = None
    budget_latency_us: float | None = None
    latency_method: str | None = None  # how latencies were measured, when they were
    exit_curves: list[dict] = field(default_factory=list)  # exported early-exit students (early_exit_curves)

    @property
    def cost_attr(self) -> str:
        """The record field on the front's cost axis."""
        return "latency_us" if self.objective == "latency" else "flops"

    @property
    def cost_budget(self) -> float | None:
        return self.budget_latency_us if self.objective == "latency" else self.budget_flops

    @property
    def cost_name(self) -> str:
        """The front's cost axis in words: "latency" or "FLOPs"."""
        return "latency" if self.objective == "latency" else "FLOPs"

    def cost_text(self, value: float) -> str:
        """A value on the front's cost axis with its unit: "50 µs", "5M FLOPs"."""
        return f"{value:,.0f} µs" if self.objective == "latency" else f"{format_quantity(value)} FLOPs"

    @property
    def feasible_trained(self) -> list[TrialRecord]:
        """Trials trained within budget (the candidates of the front)."""
        return front_candidates(self.records)

    def teacher_cost(self, cost: str) -> float:
        """The teacher's ``"flops"`` or ``"params"`` when recorded (not every study has them), else 0."""
        value = (self.teacher or {}).get(cost)
        return float(value) if isinstance(value, (int, float)) and value > 0 else 0.0


def outcome(r: TrialRecord) -> str:
    """The trial's status, except that a trial Optuna marks failed counts as failed whatever it recorded."""
    return Status.FAILED if r.state == TrialState.FAIL.name else r.status


def report_data(study: optuna.Study) -> ReportData:
    """Read ``study`` into a ReportData. UserError when the study has no trials yet."""
    records = sorted(trial_records(study), key=lambda r: r.number)
    if not records:
        raise UserError(f"study {study.study_name} has no trials yet; run `python -m nas_kd.search` first")
    attrs = study.user_attrs
    identity = attrs.get(IDENTITY_ATTR) or {}
    settings = attrs.get(SETTINGS_ATTR) or {}
    config = settings.get("config") or {}
    data_split = settings.get("data") or {}
    budget = identity.get("budget_flops", config.get("budget_flops"))
    objective = identity.get("objective") or "flops"
    axis_budget = identity.get("budget_latency_us") if objective == "latency" else budget
    num_classes = identity.get("num_classes") or data_split.get("num_classes")
    ref_accuracy = 1.0 / num_classes if num_classes else 0.0
    ref_cost = float(axis_budget) if axis_budget else _costliest_trained(records)
    hv_numbers, hv_values = _hypervolume_history(records, ref_accuracy, ref_cost)
    importances, importance_note = _importances(study)
    flags = settings.get("flags")
    return ReportData(
        study_name=study.study_name, records=records, front=front_records(records), counts=_counts(records),
        budget_flops=budget, budget_params=identity.get("budget_params", config.get("budget_params")),
        num_classes=num_classes, ref_accuracy=ref_accuracy, ref_cost=ref_cost,
        hv_numbers=hv_numbers, hv_values=hv_values,
        importances=importances, importance_note=importance_note, config=config,
        flags={k: str(v) for k, v in flags.items()} if flags else flags_of_config(config),
        flags_recorded=bool(flags) or not config,
        data_split=data_split, space=settings.get("space") or {},
        flop_convention=identity.get("flop_convention") or settings.get("flop_convention") or FLOP_CONVENTION,
        teacher=attrs.get(TEACHER_ATTR), **_timings(study),
        objective=objective, budget_memory=identity.get("budget_memory"), budget_size=identity.get("budget_size"),
        budget_latency_us=identity.get("budget_latency_us"), latency_method=identity.get("latency_method"),
    )


def _counts(records: list[TrialRecord]) -> dict[str, int]:
    counts = dict.fromkeys(STATUS_ORDER, 0)
    for r in records:
        counts[outcome(r)] = counts.get(outcome(r), 0) + 1
    return counts


def _costliest_trained(records: list[TrialRecord]) -> float | None:
    """Without a budget (not a nas_kd study) the hypervolume is bounded by the costliest trained trial."""
    costs = [r.cost for r in records if r.cost is not None and r.val_accuracy is not None]
    return max(costs) * 1.1 if costs else None


def _timings(study: optuna.Study) -> dict:
    """Sum of trial durations, wall time from the first start to the last completion, and both ends."""
    trials = study.get_trials(deepcopy=False)
    starts = [t.datetime_start for t in trials if t.datetime_start]
    spans = [(t.datetime_start, t.datetime_complete) for t in trials if t.datetime_start and t.datetime_complete]
    first_start = min(starts) if starts else None
    last_complete = max((c for _, c in spans), default=None)
    return dict(
        trial_seconds=sum((c - s).total_seconds() for s, c in spans),
        wall_seconds=(last_complete - first_start).total_seconds() if first_start and last_complete else None,
        first_start=first_start, last_complete=last_complete,
    )


def _hypervolume_history(
    records: list[TrialRecord], ref_accuracy: float, ref_cost: float | None
) -> tuple[list[int], list[float]]:
    """Hypervolume of the feasible front after each trial (incremental: only the front is kept)."""
    if ref_cost is None:
        return [], []
    front: list[tuple[float, float]] = []
    numbers, values, area = [], [], 0.0
    for r in records:
        if r.on_front_candidate and r.cost is not None:
            points = [*front, (r.val_accuracy, float(r.cost))]
            front = [points[i] for i in pareto_front(points)]
            area = hypervolume(front, ref_accuracy=ref_accuracy, ref_cost=ref_cost)
        numbers.append(r.number)
        values.append(area)
    return numbers, values


def _importances(study: optuna.Study) -> tuple[dict[str, float], str | None]:
    """fANOVA importances for validation accuracy over feasible trained trials, or a reason why not."""
    done = [t for t in study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
            if is_trained(t) and is_feasible(t)]
    if len(done) < IMPORTANCE_MIN_TRIALS:
        return {}, (f"Parameter importances need at least {IMPORTANCE_MIN_TRIALS} trained trials within "
                    f"budget; this study has {len(done)}.")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            feasible = optuna.create_study(directions=list(DIRECTIONS))
            feasible.add_trials(done)
            result = optuna.importance.get_param_importances(
                feasible, evaluator=optuna.importance.FanovaImportanceEvaluator(seed=0),
                target=lambda t: t.values[0],
            )
    except Exception as err:  # noqa: BLE001 - importances are a nicety; the report goes on without them
        return {}, f"Parameter importances could not be computed ({type(err).__name__}: {err})."
    if not result:
        return {}, "Parameter importances could not be computed: no parameter varies across all trained trials."
    return {k: float(v) for k, v in result.items()}, None


def early_exit_curves(out_dir: Path) -> list[dict]:
    """The early-exit students exported into ``out_dir`` (``export --exits``, default folders): per
    student, its trial and, per confidence threshold, mean FLOPs per image and test accuracy."""
    curves = []
    for card_file in sorted(Path(out_dir).glob("*/model_card.json")):
        try:
            card = json.loads(card_file.read_text())
            table = card["recipe"]["early_exit"]["thresholds"]
            points = [(row["mean_flops"], row["test_accuracy"], row["threshold"]) for row in table]
        except (OSError, ValueError, KeyError, TypeError):
            continue  # not an early-exit export (or not one of ours)
        curves.append({"trial": card.get("trial"), "folder": card_file.parent.name, "points": points,
                       "test_accuracy": card.get("test_accuracy")})
    return curves
