"""``python -m nas_kd.report --study-name NAME``: one self-contained HTML page about a finished search.

Two steps, kept apart so each can be tested alone: ``report_data(study)`` reads the study into
plain lists and numbers (no Plotly), and the ``draw_*`` functions turn that data into Plotly
figures. ``write_report`` assembles the figures and the tables into ``STUDIES_DIR/NAME/report.html``
(plotly.js embedded, so it opens offline) and, when Plotly's image export works, ``pareto.png``.
"""

from __future__ import annotations

import argparse
import html
import importlib.util
import json
import os
import sys
import threading
import warnings
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path

import optuna
import plotly.graph_objects as go
from optuna.trial import TrialState
from plotly.subplots import make_subplots

from nas_kd.errors import UserError
from nas_kd.progress import format_seconds
from nas_kd.quantity import format_quantity
from nas_kd.study.pareto import hypervolume, pareto_front
from nas_kd.study.records import DIRECTIONS, IDENTITY_ATTR, TrialRecord, front_records, trial_records
from nas_kd.study.storage import open_named_study

IMPORTANCE_MIN_TRIALS = 4  # feasible trained trials needed before parameter importances mean anything
WEBGL_ABOVE = 1000  # more points than this: draw with WebGL (go.Scattergl) to stay responsive
LOG_AXIS_SPAN = 10.0  # FLOPs/params spanning more than this factor are drawn on a log axis
PNG_TIMEOUT_S = 60.0
MAX_FAILED_ROWS = 100  # failed trials listed one by one in the page; the rest are counted
NO_FEASIBLE = "no trial fits the budget yet"
PNG_NOTE = ("note: no PNG written (Plotly image export needs kaleido and a Chromium browser: "
            "pip install kaleido; apt-get install chromium)")

_FRONT_COLOR, _TRIAL_COLOR, _FADED, _FAILED_COLOR = "#d62728", "#1f77b4", "#9a9a9a", "#ff7f0e"


@dataclass
class ReportData:
    """Everything the report shows, as plain data: no Plotly, no Optuna types."""

    study_name: str
    records: list[TrialRecord]  # every trial, by number
    front: list[TrialRecord]  # feasible trained trials on the Pareto front, cheapest first
    counts: dict[str, int]  # trials by status: trained / infeasible / duplicate / failed (+ running, ...)
    budget_flops: int | None
    budget_params: int | None
    num_classes: int | None
    ref_accuracy: float  # hypervolume reference: chance level 1/num_classes
    ref_cost: float | None  # hypervolume reference: the FLOP budget
    hv_numbers: list[int]  # trial numbers ...
    hv_values: list[float]  # ... and the hypervolume of the feasible front after each of them
    importances: dict[str, float]  # parameter -> importance for validation accuracy (may be empty)
    importance_note: str | None  # why importances are missing, when they are
    config: dict = field(default_factory=dict)  # the search settings ("nas_kd.settings" -> "config")
    data_split: dict = field(default_factory=dict)  # dataset, train/val/test sizes, split seed
    space: dict = field(default_factory=dict)  # search space name and YAML source
    flop_convention: str = ""
    teacher: dict | None = None  # key, val_accuracy, test_accuracy, ... or None (labels only)
    trial_seconds: float = 0.0  # sum over trials of (complete - start)
    wall_seconds: float | None = None  # first trial start -> last trial complete
    first_start: datetime | None = None
    last_complete: datetime | None = None

    @property
    def feasible_trained(self) -> list[TrialRecord]:
        """Trials trained within budget (the candidates of the front)."""
        return [r for r in self.records if r.status == "trained" and r.feasible and r.val_accuracy is not None]


def _status(r: TrialRecord) -> str:
    return "failed" if r.state == "FAIL" else r.status


def report_data(study: optuna.Study) -> ReportData:
    """Read ``study`` into a ReportData. UserError when the study has no trials yet."""
    records = trial_records(study)
    if not records:
        raise UserError(f"study {study.study_name} has no trials yet; run nas_kd.search.cli first")
    records.sort(key=lambda r: r.number)
    attrs = study.user_attrs
    identity = attrs.get(IDENTITY_ATTR) or {}
    settings = attrs.get("nas_kd.settings") or {}
    config = settings.get("config") or {}
    budget = identity.get("budget_flops", config.get("budget_flops"))
    budget_params = identity.get("budget_params", config.get("budget_params"))
    num_classes = identity.get("num_classes") or (settings.get("data") or {}).get("num_classes")
    ref_accuracy = 1.0 / num_classes if num_classes else 0.0

    counts: dict[str, int] = {"trained": 0, "infeasible": 0, "duplicate": 0, "failed": 0}
    for r in records:
        counts[_status(r)] = counts.get(_status(r), 0) + 1

    ref_cost = float(budget) if budget else None
    if ref_cost is None:  # not a nas_kd study: bound the area by the costliest trained trial instead
        costs = [r.flops for r in records if r.flops is not None and r.val_accuracy is not None]
        ref_cost = max(costs) * 1.1 if costs else None
    hv_numbers, hv_values = _hypervolume_history(records, ref_accuracy, ref_cost)
    importances, importance_note = _importances(study)

    starts = [t.datetime_start for t in study.get_trials(deepcopy=False) if t.datetime_start]
    spans = [(t.datetime_start, t.datetime_complete) for t in study.get_trials(deepcopy=False)
             if t.datetime_start and t.datetime_complete]
    first_start = min(starts) if starts else None
    last_complete = max((c for _, c in spans), default=None)
    flop_convention = identity.get("flop_convention") or settings.get("flop_convention")
    if not flop_convention:
        from nas_kd.model.cost import FLOP_CONVENTION

        flop_convention = FLOP_CONVENTION
    return ReportData(
        study_name=study.study_name, records=records, front=front_records(records), counts=counts,
        budget_flops=budget, budget_params=budget_params, num_classes=num_classes,
        ref_accuracy=ref_accuracy, ref_cost=ref_cost, hv_numbers=hv_numbers, hv_values=hv_values,
        importances=importances, importance_note=importance_note, config=config,
        data_split=settings.get("data") or {}, space=settings.get("space") or {},
        flop_convention=flop_convention, teacher=attrs.get("nas_kd.teacher"),
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
        if r.status == "trained" and r.feasible and r.val_accuracy is not None and r.flops is not None:
            points = [*front, (r.val_accuracy, float(r.flops))]
            front = [points[i] for i in pareto_front(points)]
            area = hypervolume(front, ref_accuracy=ref_accuracy, ref_cost=ref_cost)
        numbers.append(r.number)
        values.append(area)
    return numbers, values


def _importances(study: optuna.Study) -> tuple[dict[str, float], str | None]:
    """fANOVA importances for validation accuracy over feasible trained trials, or a reason why not."""
    done = [
        t for t in study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
        if t.user_attrs.get("status") == "trained" and all(v <= 0 for v in (t.constraints or {}).values())
    ]
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


# ---------------------------------------------------------------------------------------------- drawing


def _scatter(n_points: int) -> type:
    return go.Scattergl if n_points > WEBGL_ABOVE else go.Scatter


def _span_is_wide(values: list[float]) -> bool:
    positive = [v for v in values if v and v > 0]
    return bool(positive) and max(positive) / min(positive) > LOG_AXIS_SPAN


def _fmt_count(value: int | None) -> str:
    return "-" if value is None else f"{format_quantity(value)} ({value:,})"


def _hover_data(records: list[TrialRecord]) -> list[list]:
    return [[r.number, _fmt_count(r.flops), _fmt_count(r.params), r.summary or "-", _status(r)] for r in records]


_HOVER = ("trial #%{customdata[0]} (%{customdata[4]})<br>val accuracy %{y:.2%}<br>FLOPs %{customdata[1]}"
          "<br>params %{customdata[2]}<br>%{customdata[3]}<extra></extra>")
_HOVER_UNTRAINED = ("trial #%{customdata[0]} (%{customdata[4]}, not trained)<br>FLOPs %{customdata[1]}"
                    "<br>params %{customdata[2]}<br>%{customdata[3]}<extra></extra>")


def _accuracy_traces(data: ReportData, x_of: str, n_points: int) -> list:
    """Traces of trained trials off the front and of repeated architectures; x = record attribute ``x_of``."""
    scatter = _scatter(n_points)
    small = n_points > WEBGL_ABOVE
    front_numbers = {r.number for r in data.front}
    trained = [r for r in data.feasible_trained if r.number not in front_numbers and getattr(r, x_of) is not None]
    repeats = [r for r in data.records if r.status == "duplicate" and r.val_accuracy is not None
               and getattr(r, x_of) is not None]
    traces = []
    if repeats:
        traces.append(scatter(
            x=[getattr(r, x_of) for r in repeats], y=[r.val_accuracy for r in repeats], mode="markers",
            name=f"repeated architecture ({len(repeats)})", customdata=_hover_data(repeats), hovertemplate=_HOVER,
            marker=dict(color=_FADED, symbol="circle-open", size=5 if small else 8, opacity=0.5),
        ))
    if trained:
        traces.append(scatter(
            x=[getattr(r, x_of) for r in trained], y=[r.val_accuracy for r in trained], mode="markers",
            name=f"trained within budget ({len(trained)})", customdata=_hover_data(trained), hovertemplate=_HOVER,
            marker=dict(color=_TRIAL_COLOR, size=4 if small else 7, opacity=0.6),
        ))
    return traces


def draw_pareto(data: ReportData) -> go.Figure:
    """Validation accuracy against FLOPs: every trial, the front as a step line, budget and teacher."""
    untrained = [r for r in data.records if r.flops is not None and r.val_accuracy is None
                 and _status(r) in ("infeasible", "failed")]
    drawn = [r for r in data.records if r.flops is not None]
    n_points = len(drawn)
    scatter = _scatter(n_points)
    rows = 2 if untrained else 1
    fig = make_subplots(rows=rows, cols=1, shared_xaxes=True, vertical_spacing=0.04,
                        row_heights=[0.8, 0.2] if rows == 2 else None)
    for trace in _accuracy_traces(data, "flops", n_points):
        fig.add_trace(trace, row=1, col=1)
    if data.front:
        fig.add_trace(scatter(
            x=[r.flops for r in data.front], y=[r.val_accuracy for r in data.front], mode="lines+markers",
            line=dict(shape="hv", color=_FRONT_COLOR, width=2), name=f"Pareto front ({len(data.front)})",
            marker=dict(color=_FRONT_COLOR, size=10, line=dict(color="white", width=1)),
            customdata=_hover_data(data.front), hovertemplate=_HOVER,
        ), row=1, col=1)
    else:
        fig.add_annotation(text=NO_FEASIBLE, xref="x domain", yref="y domain", x=0.5, y=0.5, showarrow=False,
                           font=dict(size=18, color=_FRONT_COLOR))
        fig.update_yaxes(range=[0, 1], row=1, col=1)
    for status, label, color, symbol in (("infeasible", "over budget", _FADED, "circle"),
                                         ("failed", "failed", _FAILED_COLOR, "x")):
        group = [r for r in untrained if _status(r) == status]
        if group:
            fig.add_trace(scatter(
                x=[r.flops for r in group], y=[label] * len(group), mode="markers",
                name=f"{label}, not trained ({len(group)})", customdata=_hover_data(group),
                hovertemplate=_HOVER_UNTRAINED,
                marker=dict(color=color, symbol=symbol, size=5 if n_points > WEBGL_ABOVE else 7, opacity=0.35),
            ), row=2, col=1)
    _draw_teacher(fig, data, "flops")
    if data.budget_flops:
        fig.add_shape(type="line", xref="x", yref="paper", x0=data.budget_flops, x1=data.budget_flops, y0=0, y1=1,
                      line=dict(color="black", dash="dot", width=1.5),
                      label=dict(text=f"budget {format_quantity(data.budget_flops)} FLOPs", textposition="end",
                                 font=dict(size=12)))
    if _span_is_wide([r.flops for r in drawn] + [data.budget_flops or 0, _teacher_cost(data, "flops")]):
        fig.update_xaxes(type="log")
    fig.update_yaxes(title_text="validation accuracy", tickformat=".0%", row=1, col=1)
    fig.update_xaxes(title_text="FLOPs (1 multiply-add = 1 FLOP)", row=rows, col=1)
    fig.update_layout(
        title=f"Validation accuracy against FLOPs ({len(data.records)} trials; front in red)",
        height=620, template="plotly_white", hovermode="closest",
    )
    return fig


def _teacher_cost(data: ReportData, cost: str) -> float:
    """The teacher's FLOPs or params when recorded (older studies lack them), else 0."""
    value = (data.teacher or {}).get(cost)
    return float(value) if isinstance(value, (int, float)) and value > 0 else 0.0


def _draw_teacher(fig: go.Figure, data: ReportData, cost: str) -> None:
    """The teacher as a star at (cost, val accuracy), or a dashed line at its accuracy when cost is unknown."""
    teacher = data.teacher
    if not teacher or teacher.get("val_accuracy") is None:
        return
    acc = float(teacher["val_accuracy"])
    label = f"teacher val {acc:.2%}"
    x = _teacher_cost(data, cost)
    if x:
        fig.add_trace(go.Scatter(
            x=[x], y=[acc], mode="markers", name=label, marker=dict(symbol="star", size=14, color="black"),
            hovertemplate=f"teacher<br>val accuracy %{{y:.2%}}<br>{cost} %{{x:,}}<extra></extra>",
        ), **({"row": 1, "col": 1} if cost == "flops" else {}))
        return
    fig.add_shape(type="line", xref="x domain", yref="y", x0=0, x1=1, y0=acc, y1=acc,
                  line=dict(color="black", dash="dash", width=1),
                  label=dict(text=label, textposition="start", yanchor="bottom", font=dict(size=11)))


def draw_params(data: ReportData) -> go.Figure:
    """Validation accuracy against trainable parameters, the FLOPs front highlighted."""
    n_points = sum(1 for r in data.records if r.params is not None and r.val_accuracy is not None)
    fig = go.Figure(_accuracy_traces(data, "params", n_points))
    front = [r for r in data.front if r.params is not None]
    if front:
        fig.add_trace(_scatter(n_points)(
            x=[r.params for r in front], y=[r.val_accuracy for r in front], mode="markers",
            name=f"Pareto front in FLOPs ({len(front)})", customdata=_hover_data(front), hovertemplate=_HOVER,
            marker=dict(color=_FRONT_COLOR, size=10, line=dict(color="white", width=1)),
        ))
    else:
        fig.add_annotation(text=NO_FEASIBLE, xref="x domain", yref="y domain", x=0.5, y=0.5, showarrow=False,
                           font=dict(size=16, color=_FRONT_COLOR))
    if data.budget_params:
        fig.add_shape(type="line", xref="x", yref="paper", x0=data.budget_params, x1=data.budget_params, y0=0, y1=1,
                      line=dict(color="black", dash="dot", width=1.5),
                      label=dict(text=f"budget {format_quantity(data.budget_params)} params", textposition="end"))
    _draw_teacher(fig, data, "params")
    params = [r.params for r in data.records if r.params is not None and r.val_accuracy is not None]
    if _span_is_wide(params + [data.budget_params or 0, _teacher_cost(data, "params")]):
        fig.update_xaxes(type="log")
    fig.update_layout(title="Validation accuracy against parameters (trained trials)", template="plotly_white",
                      xaxis_title="trainable parameters", yaxis_title="validation accuracy", yaxis_tickformat=".0%",
                      height=480)
    return fig


def hypervolume_caption(data: ReportData) -> str:
    """How the hypervolume is measured: its reference point, in words (plain text)."""
    chance = (f"chance level 1/{data.num_classes} = {data.ref_accuracy:.1%}" if data.num_classes
              else f"{data.ref_accuracy:.1%}")
    cost = (f"the budget, {format_quantity(data.ref_cost)} FLOPs" if data.budget_flops
            else f"{format_quantity(data.ref_cost or 0)} FLOPs (no budget recorded)")
    return (f"Hypervolume: the area of (accuracy, FLOPs) dominated by the feasible front and bounded by the "
            f"reference point accuracy = {chance}, FLOPs = {cost}; shown as a fraction of the box "
            f"(100% − chance) × reference FLOPs, so 1.0 would be 100% accuracy at zero FLOPs.")


def draw_history(data: ReportData) -> go.Figure:
    """Hypervolume of the feasible front after each trial, over trial number."""
    box = (1.0 - data.ref_accuracy) * (data.ref_cost or 0.0)
    y = [v / box for v in data.hv_values] if box > 0 else data.hv_values
    fig = go.Figure(_scatter(len(y))(
        x=data.hv_numbers, y=y, mode="lines", line=dict(shape="hv", color=_TRIAL_COLOR, width=2),
        name="hypervolume", customdata=data.hv_values,
        hovertemplate="after trial #%{x}<br>%{y:.4f} of the box<br>raw %{customdata:.4g}<extra></extra>",
    ))
    if not any(data.hv_values):
        fig.add_annotation(text=NO_FEASIBLE, xref="x domain", yref="y domain", x=0.5, y=0.5, showarrow=False,
                           font=dict(size=16, color=_FRONT_COLOR))
    ref = f"chance {data.ref_accuracy:.1%}" + (f", {format_quantity(data.ref_cost)} FLOPs" if data.ref_cost else "")
    fig.update_layout(title=f"Hypervolume of the feasible front after each trial (reference: {ref})",
                      xaxis_title="trial number", yaxis_title="hypervolume (fraction of the box)",
                      template="plotly_white", height=380)
    return fig


def draw_importance(data: ReportData) -> go.Figure | None:
    """Horizontal bars of fANOVA importance for validation accuracy; None when unavailable."""
    if not data.importances:
        return None
    items = sorted(data.importances.items(), key=lambda kv: kv[1])
    fig = go.Figure(go.Bar(x=[v for _, v in items], y=[k for k, _ in items], orientation="h",
                           marker_color=_TRIAL_COLOR, hovertemplate="%{y}: %{x:.3f}<extra></extra>"))
    n = len(data.feasible_trained)
    fig.update_layout(title=f"Which architecture choices mattered for validation accuracy "
                            f"(fANOVA over {n} trained trials within budget)",
                      xaxis_title="importance (sums to 1)", template="plotly_white",
                      height=max(300, 60 + 24 * len(items)))
    return fig


# ---------------------------------------------------------------------------------------------- the page

_STYLE = """
body { font-family: system-ui, sans-serif; margin: 2em auto; max-width: 1200px; padding: 0 1em; color: #222; }
table { border-collapse: collapse; margin: 0.5em 0 1.5em; font-size: 0.9em; }
th, td { border: 1px solid #ccc; padding: 0.25em 0.6em; text-align: left; vertical-align: top; }
th { background: #f3f3f3; }
td.num { text-align: right; font-variant-numeric: tabular-nums; }
.note { color: #b00; font-weight: bold; }
.caption { color: #555; font-size: 0.9em; }
pre { background: #f7f7f7; padding: 0.8em; overflow-x: auto; }
"""


def _e(value: object) -> str:
    return html.escape(str(value), quote=True)


def _table(header: list[str], rows: list[list[str]], *, table_id: str = "", numeric: set[int] = frozenset()) -> str:
    """An HTML table; cells are escaped here (pass raw values)."""
    head = "".join(f"<th>{_e(h)}</th>" for h in header)
    body = "".join(
        "<tr>" + "".join(f'<td class="num">{_e(c)}</td>' if i in numeric else f"<td>{_e(c)}</td>"
                         for i, c in enumerate(row)) + "</tr>"
        for row in rows
    )
    ident = f' id="{_e(table_id)}"' if table_id else ""
    return f"<table{ident}><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


def _flatten(d: dict, prefix: str = "") -> list[tuple[str, object]]:
    out: list[tuple[str, object]] = []
    for k, v in d.items():
        if isinstance(v, dict):
            out += _flatten(v, f"{prefix}{k}.")
        else:
            out.append((f"{prefix}{k}", v))
    return out


def _value(v: object) -> str:
    return v if isinstance(v, str) else json.dumps(v)


def _seconds(s: float | None) -> str:
    return "-" if s is None else f"{format_seconds(s)} ({s:,.0f} s)"


def render_html(data: ReportData, figures: list[tuple[str, go.Figure | None, str]]) -> str:
    """The whole page: ``figures`` are (heading, figure or None, caption or fallback sentence), in order.

    The first drawn figure carries the embedded plotly.js; the others reuse it.
    """
    name = _e(data.study_name)
    parts = [f"<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">"
             f"<title>nas_kd report: {name}</title><style>{_STYLE}</style></head><body>",
             f"<h1>nas_kd search report: {name}</h1>", f"<p>{_e(_summary_line(data))}</p>"]
    if not data.front:
        parts.append(f'<p class="note" id="no-feasible">{_e(NO_FEASIBLE.capitalize())}: '
                     f"{data.counts.get('trained', 0)} trials trained within budget so far.</p>")
    plotlyjs_done = False
    for i, (heading, fig, caption) in enumerate(figures):
        parts.append(f"<h2>{_e(heading)}</h2>")
        if fig is not None:
            parts.append(fig.to_html(full_html=False, include_plotlyjs=not plotlyjs_done, div_id=f"fig{i}",
                                     config={"displaylogo": False, "responsive": True}))
            plotlyjs_done = True
        if caption:
            parts.append(f'<p class="caption">{_e(caption)}</p>')
        if i == 0:
            parts.append(_front_section(data))
    parts.append(_search_section(data))
    storage = data.config.get("storage")
    if storage:
        parts.append(f'<p class="caption">Browse the study live: <code>optuna-dashboard {_e(storage)}</code></p>')
    parts.append("</body></html>\n")
    return "\n".join(parts)


def _summary_line(data: ReportData) -> str:
    c = data.counts
    budget = f"budget {format_quantity(data.budget_flops)} FLOPs" if data.budget_flops else "no FLOP budget recorded"
    if data.budget_params:
        budget += f" and {format_quantity(data.budget_params)} parameters"
    best = max((r.val_accuracy for r in data.front), default=None)
    best_text = f"best validation accuracy within budget {best:.2%}" if best is not None else NO_FEASIBLE
    return (f"{len(data.records)} trials: {c.get('trained', 0)} trained, {c.get('infeasible', 0)} over budget "
            f"(not trained), {c.get('duplicate', 0)} repeated architectures, {c.get('failed', 0)} failed; "
            f"{budget}; {best_text}.")


def _front_section(data: ReportData) -> str:
    if not data.front:
        return f'<p class="note">{_e(NO_FEASIBLE.capitalize())}.</p>'
    searched = any(r.kd for r in data.front)  # --kd search: show which recipe won each point
    rows = [[r.number, f"{r.val_accuracy:.2%}", _fmt_count(r.flops), _fmt_count(r.params),
             "-" if r.train_seconds is None else f"{r.train_seconds:.1f}", r.summary]
            + ([r.kd_text] if searched else []) for r in data.front]
    return ("<h3>The front, cheapest first</h3>"
            + _table(["trial", "val accuracy", "FLOPs", "params", "train s", "architecture"]
                     + (["KD recipe"] if searched else []), rows, table_id="front-table", numeric={0, 1, 2, 3, 4}))


def _search_section(data: ReportData) -> str:
    parts = ["<h2>The search</h2>"]
    order = ["trained", "infeasible", "duplicate", "failed"]
    counts = sorted(data.counts.items(), key=lambda kv: (order.index(kv[0]) if kv[0] in order else len(order), kv[0]))
    parts.append(_table(["status", "trials"], [[k, v] for k, v in counts] + [["total", len(data.records)]],
                        table_id="counts-table", numeric={1}))
    parts.append(_table(["time", "value"], [
        ["sum of trial durations", _seconds(data.trial_seconds)],
        ["wall time, first start to last completion", _seconds(data.wall_seconds)],
        ["first trial started", data.first_start.isoformat(" ", "seconds") if data.first_start else "-"],
        ["last trial completed", data.last_complete.isoformat(" ", "seconds") if data.last_complete else "-"],
    ], table_id="time-table"))

    parts.append("<h3>Teacher</h3>")
    t = data.teacher
    if t:
        def shown(k: str, v: object) -> str:
            if isinstance(v, (int, float)) and k.endswith("accuracy"):
                return f"{v:.2%}"
            return _fmt_count(v) if isinstance(v, int) and k in ("flops", "params") else _value(v)

        rows = [[k, shown(k, t[k])]
                for k in ("key", "arch", "val_accuracy", "test_accuracy", "flops", "params", "sha256") if k in t]
        parts.append(_table(["teacher", "value"], rows, table_id="teacher-table"))
    else:
        parts.append('<p id="teacher-none">no teacher (labels only)</p>')

    parts.append("<h3>Data split</h3>")
    keys = ("dataset", "train_size", "val_size", "test_size", "split_seed", "fingerprint", "split")
    split_rows = [[k, _value(data.data_split[k])] for k in keys if k in data.data_split]
    parts.append(_table(["data", "value"], split_rows, table_id="data-table") if split_rows
                 else "<p>no data split recorded</p>")

    parts.append("<h3>FLOP convention</h3>")
    parts.append(f'<p id="flop-convention">{_e(data.flop_convention)}</p>')

    parts.append("<h3>Search settings</h3>")
    parts.append(_table(["setting", "value"], [[k, _value(v)] for k, v in _flatten(data.config)],
                        table_id="settings-table") if data.config else "<p>no settings recorded</p>")
    if data.space:
        parts.append(f"<details><summary>search space {_e(data.space.get('name', ''))}</summary>"
                     f"<pre>{_e(data.space.get('source', ''))}</pre></details>")

    failed = [r for r in data.records if _status(r) == "failed"]
    if failed:
        parts.append(f"<h3>Failed trials ({len(failed)})</h3>")
        rows = [[r.number, _fmt_count(r.flops), r.fail_reason or "-", r.summary] for r in failed[-MAX_FAILED_ROWS:]]
        parts.append(_table(["trial", "FLOPs", "reason", "architecture"], rows, table_id="failed-table",
                            numeric={0}))
        if len(failed) > MAX_FAILED_ROWS:
            parts.append(f"<p>(the last {MAX_FAILED_ROWS} shown; {len(failed) - MAX_FAILED_ROWS} earlier ones "
                         "are counted above)</p>")
    return "\n".join(parts)


def _atomic_write_text(path: Path, text: str) -> None:
    """Write to a temporary file beside ``path``, then rename: a reader never sees half a page."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.{threading.get_ident()}.tmp")
    try:
        tmp.write_text(text, encoding="utf-8")
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def image_export_installed() -> bool:
    """Whether kaleido (Plotly's image export) is importable; it still needs a Chromium browser to work."""
    return importlib.util.find_spec("kaleido") is not None


def write_png(fig: go.Figure, path: Path, *, timeout: float = PNG_TIMEOUT_S) -> bool:
    """Write ``fig`` as PNG via Plotly's image export (kaleido + Chromium); False when unavailable.

    The export runs in a daemon thread so a browser that hangs cannot hold the report up.
    """
    if not image_export_installed():
        return False
    tmp = path.with_name(f".{path.name}.tmp.png")
    outcome: list[bool] = []

    def export() -> None:
        try:
            fig.write_image(str(tmp), width=1100, height=650)
            os.replace(tmp, path)
            outcome.append(True)
        except Exception:  # noqa: BLE001 - no browser, broken kaleido: the HTML report is what matters
            outcome.append(False)

    worker = threading.Thread(target=export, daemon=True)
    worker.start()
    worker.join(timeout)
    if not outcome or not outcome[0]:
        tmp.unlink(missing_ok=True)
        return False
    return True


def write_report(study: optuna.Study, out_dir: Path, *, png: bool = True) -> Path:
    """Write ``out_dir/report.html`` (and ``pareto.png`` when possible) for ``study``; return the HTML path."""
    data = report_data(study)
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    pareto = draw_pareto(data)
    importance = draw_importance(data)
    budget_text = f" The dotted line is the budget, {format_quantity(data.budget_flops)} FLOPs." if data.budget_flops \
        else ""
    teacher_text = ""
    if data.teacher and data.teacher.get("val_accuracy") is not None:
        teacher_text = (f" The {'star' if _teacher_cost(data, 'flops') else 'dashed line'} is the teacher "
                        f"(validation accuracy {data.teacher['val_accuracy']:.2%}).")
    figures = [
        ("Pareto front: validation accuracy against FLOPs", pareto,
         "Every trial with a counted cost is drawn; trials over budget were never trained and failed trials have "
         f"no accuracy, so both sit in the strip below the chart.{budget_text}{teacher_text}"),
        ("Accuracy against parameters", draw_params(data), ""),
        ("Optimisation history", draw_history(data), hypervolume_caption(data)),
        ("Which architecture choices mattered", importance,
         data.importance_note or "fANOVA importance of each sampled parameter for validation accuracy, over "
         "trained trials within budget (parameters present in every such trial)."),
    ]
    path = out_dir / "report.html"
    _atomic_write_text(path, render_html(data, figures))
    if png and not write_png(pareto, out_dir / "pareto.png"):
        print(PNG_NOTE, file=sys.stderr)
    return path


# ---------------------------------------------------------------------------------------------- CLI


def main(argv: list[str] | None = None) -> int:
    """CLI: write the report of one study. Exit 0, or 2 with one ``error:`` line for a user mistake."""
    from nas_kd.search.config import SearchConfig
    from nas_kd.study.storage import redact_url

    p = argparse.ArgumentParser(prog="python -m nas_kd.report",
                                description="Write a self-contained HTML report of a nas_kd search study.")
    p.add_argument("--study-name", required=True, help="the study to report on")
    p.add_argument("--studies-dir", default="studies", help="where studies and their outputs are (default studies)")
    p.add_argument("--storage", help="Optuna storage URL (default: sqlite:///STUDIES_DIR/NAME.db)")
    p.add_argument("--no-png", action="store_true", help="do not try to export pareto.png")
    a = p.parse_args(argv)
    warnings.filterwarnings("ignore", category=optuna.exceptions.ExperimentalWarning)
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    try:
        cfg = SearchConfig(study_name=a.study_name, studies_dir=a.studies_dir, storage=a.storage)
        study = open_named_study(cfg.name, a.studies_dir, a.storage)
        path = write_report(study, cfg.out_dir, png=not a.no_png)
    except UserError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    except OSError as err:
        print(f"error: cannot write the report into {cfg.out_dir}: {err.strerror or err}", file=sys.stderr)
        return 2
    print(f"open: {path}")
    print(f"or browse the study live: optuna-dashboard {redact_url(cfg.storage_url)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
