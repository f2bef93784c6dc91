"""The report's charts: each ``draw_*`` turns a ReportData into one Plotly figure, nothing else."""

from __future__ import annotations

import math

import pandas as pd
import plotly.graph_objects as go
from plotly.subplots import make_subplots

from nas_kd.quantity import format_quantity
from nas_kd.report.data import ReportData, outcome
from nas_kd.study.records import Status, TrialRecord

WEBGL_ABOVE = 1000  # more points than this: draw with WebGL (go.Scattergl) to stay responsive
LOG_AXIS_SPAN = 10.0  # FLOPs/params spanning more than this factor are drawn on a log axis
NO_FEASIBLE = "no trial fits the budget yet"
INTEGER_TICKS_UP_TO = 20  # trials: up to this many, a tick and a marker per trial (Plotly would tick 0.5 steps)

FRONT_COLOR, TRIAL_COLOR, FADED, FAILED_COLOR = "#d62728", "#1f77b4", "#9a9a9a", "#ff7f0e"

_HOVER = ("trial #%{customdata[0]} (%{customdata[4]})<br>val accuracy %{y:.2%}<br>FLOPs %{customdata[1]}"
          "<br>params %{customdata[2]}<br>%{customdata[3]}<extra></extra>")
_HOVER_UNTRAINED = ("trial #%{customdata[0]} (%{customdata[4]}, not trained)<br>FLOPs %{customdata[1]}"
                    "<br>params %{customdata[2]}<br>%{customdata[3]}<extra></extra>")


def format_count(value: int | None) -> str:
    """A cost as people read it and exactly: ``150k (150,000)``; ``-`` when unknown."""
    return "-" if value is None else f"{format_quantity(value)} ({value:,})"


def _scatter(n_points: int) -> type:
    return go.Scattergl if n_points > WEBGL_ABOVE else go.Scatter


def _span_is_wide(values: list[float]) -> bool:
    positive = [v for v in values if v and v > 0]
    return bool(positive) and max(positive) / min(positive) > LOG_AXIS_SPAN


def _hover_data(records: list[TrialRecord]) -> list[list]:
    return [[r.number, format_count(r.flops), format_count(r.params), r.summary or "-", outcome(r)] for r in records]


def _no_feasible_note(fig: go.Figure, size: int) -> None:
    fig.add_annotation(text=NO_FEASIBLE, xref="x domain", yref="y domain", x=0.5, y=0.5, showarrow=False,
                       font=dict(size=size, color=FRONT_COLOR))


def _budget_line(fig: go.Figure, x: float, text: str) -> None:
    """A dotted vertical line over the whole plot height at the budget ``x``, labelled at its top."""
    fig.add_shape(type="line", xref="x", yref="paper", x0=x, x1=x, y0=0, y1=1,
                  line=dict(color="black", dash="dot", width=1.5),
                  label=dict(text=text, textposition="end", textangle=0, xanchor="right", yanchor="top",
                             padding=6, font=dict(size=12)))


def _accuracy_traces(data: ReportData, x_of: str, n_points: int) -> list:
    """Traces of trained trials off the front and of repeated architectures; x = record attribute ``x_of``."""
    scatter = _scatter(n_points)
    small = n_points > WEBGL_ABOVE
    front_numbers = {r.number for r in data.front}
    trained = [r for r in data.feasible_trained if r.number not in front_numbers and getattr(r, x_of) is not None]
    repeats = [r for r in data.records if r.status == Status.DUPLICATE and r.val_accuracy is not None
               and getattr(r, x_of) is not None]
    traces = []
    if repeats:
        traces.append(scatter(
            x=[getattr(r, x_of) for r in repeats], y=[r.val_accuracy for r in repeats], mode="markers",
            name=f"repeated architecture ({len(repeats)})", customdata=_hover_data(repeats), hovertemplate=_HOVER,
            marker=dict(color=FADED, symbol="circle-open", size=5 if small else 8, opacity=0.5),
        ))
    if trained:
        traces.append(scatter(
            x=[getattr(r, x_of) for r in trained], y=[r.val_accuracy for r in trained], mode="markers",
            name=f"trained within budget ({len(trained)})", customdata=_hover_data(trained), hovertemplate=_HOVER,
            marker=dict(color=TRIAL_COLOR, size=4 if small else 7, opacity=0.6),
        ))
    return traces


def _untrained_traces(untrained: list[TrialRecord], n_points: int, x_of: str = "flops") -> list:
    """Over-budget and failed trials have a cost but no accuracy: markers on a categorical strip."""
    traces = []
    for status, label, color, symbol in ((Status.INFEASIBLE, "over budget", FADED, "circle"),
                                         (Status.FAILED, "failed", FAILED_COLOR, "x")):
        group = [r for r in untrained if outcome(r) == status]
        if group:
            traces.append(_scatter(n_points)(
                x=[getattr(r, x_of) for r in group], y=[label] * len(group), mode="markers",
                name=f"{label}, not trained ({len(group)})", customdata=_hover_data(group),
                hovertemplate=_HOVER_UNTRAINED,
                marker=dict(color=color, symbol=symbol, size=5 if n_points > WEBGL_ABOVE else 7, opacity=0.35),
            ))
    return traces


def draw_pareto(data: ReportData) -> go.Figure:
    """Validation accuracy against the front's cost (FLOPs, or latency with ``--objective latency``):
    every trial, the front as a step line, budget and teacher.

    Trials without an accuracy (over budget, failed) go in a strip below the chart, on the same x axis."""
    x, unit = _cost_axis(data)
    untrained = [r for r in data.records if getattr(r, x) is not None and r.val_accuracy is None
                 and outcome(r) in (Status.INFEASIBLE, Status.FAILED)]
    drawn = [r for r in data.records if getattr(r, x) is not None]
    rows = 2 if untrained else 1
    fig = make_subplots(rows=rows, cols=1, shared_xaxes=True, vertical_spacing=0.04,
                        row_heights=[0.8, 0.2] if rows == 2 else None)
    for trace in _accuracy_traces(data, x, len(drawn)):
        fig.add_trace(trace, row=1, col=1)
    if data.front:
        fig.add_trace(_scatter(len(drawn))(
            x=[getattr(r, x) for r in data.front], y=[r.val_accuracy for r in data.front], mode="lines+markers",
            line=dict(shape="hv", color=FRONT_COLOR, width=2), name=f"Pareto front ({len(data.front)})",
            marker=dict(color=FRONT_COLOR, size=10, line=dict(color="white", width=1)),
            customdata=_hover_data(data.front), hovertemplate=_HOVER,
        ), row=1, col=1)
    else:
        _no_feasible_note(fig, 18)
        fig.update_yaxes(range=[0, 1], row=1, col=1)
    for trace in _untrained_traces(untrained, len(drawn), x):
        fig.add_trace(trace, row=2, col=1)
    if x == "flops":
        _draw_teacher(fig, data, "flops")
        for trace in _exit_traces(data):
            fig.add_trace(trace, row=1, col=1)
    budget = data.cost_budget
    if budget:
        _budget_line(fig, budget, f"budget {data.cost_text(budget)}")
    if _span_is_wide([getattr(r, x) for r in drawn] + [budget or 0, data.teacher_cost("flops") if x == "flops" else 0]):
        fig.update_xaxes(type="log")
    fig.update_yaxes(title_text="validation accuracy", tickformat=".0%", row=1, col=1)
    fig.update_xaxes(title_text=unit, row=rows, col=1)
    fig.update_layout(
        title=f"Validation accuracy against {data.cost_name} ({len(data.records)} trials; front in red)",
        height=620, template="plotly_white", hovermode="closest",
    )
    return fig


def _exit_traces(data: ReportData) -> list:
    """Each exported early-exit student's accuracy against mean FLOPs per image, one point per
    confidence threshold (test accuracy, after export: not the search's validation proxy)."""
    traces = []
    for curve in data.exit_curves:
        flops, acc, thresholds = zip(*sorted(curve["points"]), strict=True)
        traces.append(go.Scatter(
            x=list(flops), y=list(acc), mode="lines+markers", line=dict(dash="dot", width=2),
            marker=dict(symbol="diamond", size=8), name=f"early exit, trial {curve['trial']} (test, exported)",
            customdata=[[t] for t in thresholds],
            hovertemplate="threshold %{customdata[0]}<br>mean FLOPs %{x:,.0f}<br>test %{y:.2%}<extra></extra>"))
    return traces


def _cost_axis(data: ReportData) -> tuple[str, str]:
    """The record field on the front's cost axis and the axis title."""
    if data.cost_attr == "latency_us":
        return "latency_us", "latency, µs per image (onnxruntime, batch 1, this machine)"
    return "flops", "FLOPs (1 multiply-add = 1 FLOP)"


def draw_latency(data: ReportData) -> go.Figure | None:
    """Measured latency against FLOPs of the trained candidates, with their rank correlation
    (None when the study measured no latency)."""
    timed = [r for r in data.feasible_trained if r.latency_us is not None and r.flops is not None]
    if not timed:
        return None
    rho = rank_correlation([r.flops for r in timed], [r.latency_us for r in timed])
    fig = go.Figure(_scatter(len(timed))(
        x=[r.flops for r in timed], y=[r.latency_us for r in timed], mode="markers",
        name=f"trained ({len(timed)})", customdata=_hover_data(timed),
        hovertemplate="trial #%{customdata[0]}<br>FLOPs %{customdata[1]}<br>latency %{y:,.0f} µs"
                      "<br>%{customdata[3]}<extra></extra>",
        marker=dict(color=TRIAL_COLOR, size=8, opacity=0.7)))
    corr = "n/a" if rho is None else f"{rho:.2f}"
    fig.update_layout(title=f"Latency against FLOPs (trained candidates; Spearman rank correlation {corr})",
                      template="plotly_white", xaxis_title="FLOPs (1 multiply-add = 1 FLOP)",
                      yaxis_title="latency, µs per image (onnxruntime, batch 1)", height=480)
    return fig


def rank_correlation(a: list[float], b: list[float]) -> float | None:
    """Spearman's ρ; None for fewer than 3 points or no spread."""
    if len(a) < 3 or len(set(a)) < 2 or len(set(b)) < 2:
        return None
    rho = pd.Series(a, dtype=float).corr(pd.Series(b, dtype=float), method="spearman")
    return None if math.isnan(rho) else float(rho)


def _draw_teacher(fig: go.Figure, data: ReportData, cost: str) -> None:
    """The teacher as a star at (cost, val accuracy), or a dashed line at its accuracy when cost is unknown."""
    teacher = data.teacher
    if not teacher or teacher.get("val_accuracy") is None:
        return
    acc = float(teacher["val_accuracy"])
    label = f"teacher val {acc:.2%}"
    x = data.teacher_cost(cost)
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
            marker=dict(color=FRONT_COLOR, size=10, line=dict(color="white", width=1)),
        ))
    else:
        _no_feasible_note(fig, 16)
    if data.budget_params:
        _budget_line(fig, data.budget_params, f"budget {format_quantity(data.budget_params)} params")
    _draw_teacher(fig, data, "params")
    params = [r.params for r in data.records if r.params is not None and r.val_accuracy is not None]
    if _span_is_wide(params + [data.budget_params or 0, data.teacher_cost("params")]):
        fig.update_xaxes(type="log")
    fig.update_layout(title="Validation accuracy against parameters (trained trials)", template="plotly_white",
                      xaxis_title="trainable parameters", yaxis_title="validation accuracy", yaxis_tickformat=".0%",
                      height=480)
    return fig


def draw_history(data: ReportData) -> go.Figure:
    """Hypervolume of the feasible front after each trial, over trial number, as a fraction of its box."""
    box = (1.0 - data.ref_accuracy) * (data.ref_cost or 0.0)
    y = [v / box for v in data.hv_values] if box > 0 else data.hv_values
    few = len(y) <= INTEGER_TICKS_UP_TO
    fig = go.Figure(_scatter(len(y))(
        x=data.hv_numbers, y=y, mode="lines+markers" if few else "lines",
        line=dict(shape="hv", color=TRIAL_COLOR, width=2),
        name="hypervolume", customdata=data.hv_values,
        hovertemplate="after trial #%{x}<br>%{y:.4f} of the box<br>raw %{customdata:.4g}<extra></extra>",
    ))
    if not any(data.hv_values):
        _no_feasible_note(fig, 16)
    ref = f"chance {data.ref_accuracy:.1%}" + (f", {format_quantity(data.ref_cost)} FLOPs" if data.ref_cost else "")
    fig.update_layout(title=f"Hypervolume of the feasible front after each trial (reference: {ref})",
                      xaxis_title="trial number", yaxis_title="hypervolume (fraction of the box)",
                      template="plotly_white", height=380)
    fig.update_yaxes(rangemode="tozero")  # the rise from nothing is the point of the chart
    fig.update_xaxes(tickformat="d", dtick=1 if few else None)
    return fig


def draw_importance(data: ReportData) -> go.Figure | None:
    """Horizontal bars of fANOVA importance for validation accuracy; None when unavailable."""
    if not data.importances:
        return None
    items = sorted(data.importances.items(), key=lambda kv: kv[1])
    fig = go.Figure(go.Bar(x=[v for _, v in items], y=[k for k, _ in items], orientation="h",
                           marker_color=TRIAL_COLOR, hovertemplate="%{y}: %{x:.3f}<extra></extra>"))
    n = len(data.feasible_trained)
    fig.update_layout(title=f"Which architecture choices mattered for validation accuracy "
                            f"(fANOVA over {n} trained trials within budget)",
                      xaxis_title="importance (sums to 1)", template="plotly_white",
                      height=max(300, 60 + 24 * len(items)))
    return fig
