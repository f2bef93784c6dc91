"""The report page: figures and tables assembled into one self-contained HTML file.

``write_report`` writes ``OUT_DIR/report.html`` (plotly.js embedded once, so it opens offline) and
the Pareto chart as ``pareto.png``. Every string from the study is escaped here.
"""

from __future__ import annotations

import dataclasses
import html
import json
import sys
from pathlib import Path

import optuna
import plotly.graph_objects as go

from nas_kd.files import write_text
from nas_kd.progress import format_seconds
from nas_kd.quantity import format_bytes, format_quantity
from nas_kd.report.data import STATUS_ORDER, ReportData, early_exit_curves, outcome, report_data
from nas_kd.report.figures import (
    NO_FEASIBLE,
    draw_history,
    draw_importance,
    draw_latency,
    draw_params,
    draw_pareto,
    format_count,
)
from nas_kd.report.png import write_png
from nas_kd.study.records import Status

MAX_FAILED_ROWS = 100  # failed trials listed one by one in the page; the rest are counted
OLDER_SETTINGS = "(recorded by an older nas_kd)"

Figure = tuple[str, go.Figure | None, str]  # heading, figure (None: not drawn), caption or why not drawn

_STYLE = """
body { font-family: system-ui, sans-serif; margin: 2em auto; max-width: 1200px; padding: 0 1em; color: #222; }
table { border-collapse: collapse; margin: 0.5em 0 1.5em; font-size: 0.9em; }
th, td { border: 1px solid #ccc; padding: 0.25em 0.6em; text-align: left; vertical-align: top; }
th { background: #f3f3f3; }
td.num { text-align: right; font-variant-numeric: tabular-nums; }
.note { color: #b00; font-weight: bold; }
.caption { color: #555; font-size: 0.9em; }
pre { background: #f7f7f7; padding: 0.8em; overflow-x: auto; }
#settings-table td:first-child { font-family: ui-monospace, monospace; white-space: nowrap; }
"""


def _e(value: object) -> str:
    return html.escape(str(value), quote=True)


def _table(header: list[str], rows: list[list], *, table_id: str = "", numeric: frozenset[int] = frozenset()) -> str:
    """An HTML table; cells are escaped here (pass raw values)."""
    head = "".join(f"<th>{_e(h)}</th>" for h in header)
    body = "".join(
        "<tr>" + "".join(f'<td class="num">{_e(c)}</td>' if i in numeric else f"<td>{_e(c)}</td>"
                         for i, c in enumerate(row)) + "</tr>"
        for row in rows
    )
    ident = f' id="{_e(table_id)}"' if table_id else ""
    return f"<table{ident}><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


def _value(v: object) -> str:
    return v if isinstance(v, str) else json.dumps(v)


def _seconds(s: float | None) -> str:
    return "-" if s is None else f"{format_seconds(s)} ({s:,.0f} s)"


def render_html(data: ReportData, figures: list[Figure]) -> str:
    """The whole page, ``figures`` in order; the first drawn one carries the embedded plotly.js."""
    name = _e(data.study_name)
    parts = [f"<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">"
             f"<title>nas_kd report: {name}</title><style>{_STYLE}</style></head><body>",
             f"<h1>nas_kd search report: {name}</h1>", f"<p>{_e(_summary_line(data))}</p>"]
    if not data.front:
        parts.append(f'<p class="note" id="no-feasible">{_e(NO_FEASIBLE.capitalize())}: '
                     f"{data.counts.get(Status.TRAINED, 0)} trials trained within budget so far.</p>")
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
    for value, what in ((data.budget_memory, "int8 peak memory"), (data.budget_size, "int8 model size")):
        if value:
            budget += f", {format_bytes(value)} {what}"
    if data.budget_latency_us:
        budget += f", {data.budget_latency_us:,.0f} µs latency"
    if data.objective == "latency":
        budget += " (front: accuracy against measured latency)"
    best = max((r.val_accuracy for r in data.front), default=None)
    best_text = f"best validation accuracy within budget {best:.2%}" if best is not None else NO_FEASIBLE
    return (f"{len(data.records)} trials: {c[Status.TRAINED]} trained, {c[Status.INFEASIBLE]} over budget "
            f"(not trained), {c[Status.DUPLICATE]} repeated architectures, {c[Status.FAILED]} failed; "
            f"{budget}; {best_text}.")


def _front_section(data: ReportData) -> str:
    if not data.front:
        return f'<p class="note">{_e(NO_FEASIBLE.capitalize())}.</p>'
    searched = any(r.kd for r in data.front)  # --kd search: show which recipe won each point
    memory = any(r.peak_memory is not None for r in data.front)  # studies of older versions lack it
    timed = any(r.latency_us is not None for r in data.front)
    rows = [[r.number, f"{r.val_accuracy:.2%}", str(r.rung), " → ".join(f"{a:.2%}" for a in r.rung_accuracies),
             format_count(r.flops), format_count(r.params)]
            + ([_bytes(r.peak_memory), _bytes(r.model_size)] if memory else [])
            + ([_micros(r.latency_us)] if timed else [])
            + ["-" if r.train_seconds is None else f"{r.train_seconds:.1f}", r.summary]
            + ([r.kd_text] if searched else []) for r in data.front]
    header = (["trial", "val accuracy", "rung", "accuracy by rung", "FLOPs", "params"]
              + (["peak memory (int8)", "size (int8)"] if memory else []) + (["latency µs"] if timed else [])
              + ["train s", "architecture"] + (["KD recipe"] if searched else []))
    numeric = frozenset({0, 1, 2, *range(4, len(header) - 1 - searched)})
    return ("<h3>The front, cheapest first</h3>"
            "<p class=\"note\">Accuracy at the longest rung each candidate reached; a candidate goes up a rung "
            "when it ranks among the best third of a rung's results (Pareto rank, spread kept).</p>"
            + _table(header, rows, table_id="front-table", numeric=numeric))


def _bytes(value: int | None) -> str:
    return "-" if value is None else f"{format_bytes(value)} ({value:,} B)"


def _micros(value: float | None) -> str:
    return "-" if value is None else f"{value:,.0f}"


def _search_section(data: ReportData) -> str:
    parts = ["<h2>The search</h2>", _counts_and_times(data), _teacher_section(data), _data_section(data),
             "<h3>FLOP convention</h3>", f'<p id="flop-convention">{_e(data.flop_convention)}</p>',
             _settings_section(data), _failed_section(data)]
    return "\n".join(p for p in parts if p)


def _counts_and_times(data: ReportData) -> str:
    def rank(status: str) -> tuple[int, str]:
        return (STATUS_ORDER.index(status) if status in STATUS_ORDER else len(STATUS_ORDER), status)

    counts = sorted(data.counts.items(), key=lambda kv: rank(kv[0]))
    return _table(["status", "trials"], [[k, v] for k, v in counts] + [["total", len(data.records)]],
                  table_id="counts-table", numeric=frozenset({1})) + _table(["time", "value"], [
        ["sum of trial durations", _seconds(data.trial_seconds)],
        ["wall time, first start to last completion", _seconds(data.wall_seconds)],
        ["first trial started", data.first_start.isoformat(" ", "seconds") if data.first_start else "-"],
        ["last trial completed", data.last_complete.isoformat(" ", "seconds") if data.last_complete else "-"],
    ], table_id="time-table")


def _teacher_section(data: ReportData) -> str:
    t = data.teacher
    if not t:
        return '<h3>Teacher</h3>\n<p id="teacher-none">no teacher (labels only)</p>'

    def shown(k: str, v: object) -> str:
        if isinstance(v, (int, float)) and k.endswith("accuracy"):
            return f"{v:.2%}"
        return format_count(v) if isinstance(v, int) and k in ("flops", "params") else _value(v)

    rows = [[k, shown(k, t[k])] for k in ("key", "arch", "val_accuracy", "test_accuracy", "flops", "params", "sha256")
            if k in t]
    return "<h3>Teacher</h3>\n" + _table(["teacher", "value"], rows, table_id="teacher-table")


def _data_section(data: ReportData) -> str:
    keys = ("dataset", "train_size", "val_size", "test_size", "split_seed", "fingerprint", "split")
    rows = [[k, _value(data.data_split[k])] for k in keys if k in data.data_split]
    return "<h3>Data split</h3>\n" + (_table(["data", "value"], rows, table_id="data-table") if rows
                                      else "<p>no data split recorded</p>")


def _settings_section(data: ReportData) -> str:
    """The flags of the run that created the study: what a user would type to run the search again."""
    parts = ["<h3>Search settings</h3>"]
    if not data.flags:
        parts.append("<p>no settings recorded</p>")
    else:
        parts.append('<p class="caption">The command-line flags of the run that created the study'
                     + ("" if data.flags_recorded else f' <span id="settings-older">{_e(OLDER_SETTINGS)}</span>')
                     + ".</p>")
        parts.append(_table(["flag", "value"], [[k, v] for k, v in data.flags.items()], table_id="settings-table"))
    if data.space:
        parts.append(f"<details><summary>search space {_e(data.space.get('name', ''))}</summary>"
                     f"<pre>{_e(data.space.get('source', ''))}</pre></details>")
    return "\n".join(parts)


def _failed_section(data: ReportData) -> str:
    failed = [r for r in data.records if outcome(r) == Status.FAILED]
    if not failed:
        return ""
    rows = [[r.number, format_count(r.flops), r.fail_reason or "-", r.summary] for r in failed[-MAX_FAILED_ROWS:]]
    parts = [f"<h3>Failed trials ({len(failed)})</h3>",
             _table(["trial", "FLOPs", "reason", "architecture"], rows, table_id="failed-table",
                    numeric=frozenset({0}))]
    if len(failed) > MAX_FAILED_ROWS:
        parts.append(f"<p>(the last {MAX_FAILED_ROWS} shown; {len(failed) - MAX_FAILED_ROWS} earlier ones "
                     "are counted above)</p>")
    return "\n".join(parts)


def hypervolume_caption(data: ReportData) -> str:
    """How the hypervolume is measured: its reference point, in words (plain text)."""
    chance = (f"chance level 1/{data.num_classes} = {data.ref_accuracy:.1%}" if data.num_classes
              else f"{data.ref_accuracy:.1%}")
    axis = data.cost_name
    cost = (f"the budget, {data.cost_text(data.ref_cost)}" if data.cost_budget
            else f"{data.cost_text(data.ref_cost or 0)} (no budget recorded)")
    return (f"Hypervolume: the area of (accuracy, {axis}) dominated by the feasible front and bounded by the "
            f"reference point accuracy = {chance}, {axis} = {cost}; shown as a fraction of the box "
            f"(100% − chance) × reference {axis}, so 1.0 would be 100% accuracy at zero {axis}.")


def _pareto_caption(data: ReportData) -> str:
    text = ("Every trial with a counted cost is drawn; trials over budget were never trained and failed trials "
            "have no accuracy, so both sit in the strip below the chart.")
    if data.cost_budget:
        text += f" The dotted line is the budget, {data.cost_text(data.cost_budget)}."
    if data.teacher and data.teacher.get("val_accuracy") is not None:
        text += (f" The {'star' if data.teacher_cost('flops') else 'dashed line'} is the teacher "
                 f"(validation accuracy {data.teacher['val_accuracy']:.2%}).")
    if data.exit_curves and data.objective == "flops":
        text += (" Dotted diamonds: exported early-exit students (export --exits), test accuracy against mean "
                 "FLOPs per image, one point per confidence threshold: after export, so above the search's "
                 "short-training validation proxy.")
    return text


def report_figures(data: ReportData) -> list[Figure]:
    """The page's figures in order; the first is the Pareto chart (the PNG is made of it)."""
    latency = draw_latency(data)
    return [
        (f"Pareto front: validation accuracy against {data.cost_name}", draw_pareto(data), _pareto_caption(data)),
        ("Accuracy against parameters", draw_params(data), ""),
        *([("Latency against FLOPs", latency, data.latency_method or "")] if latency is not None else []),
        ("Optimisation history", draw_history(data), hypervolume_caption(data)),
        ("Which architecture choices mattered", draw_importance(data),
         data.importance_note or "fANOVA importance of each sampled parameter for validation accuracy, over "
         "trained trials within budget (parameters present in every such trial)."),
    ]


def write_report(study: optuna.Study, out_dir: Path, *, png: bool = True) -> Path:
    """Write ``out_dir/report.html`` and, unless ``png`` is False, ``out_dir/pareto.png`` (a one-line
    note on stderr when the image export is unavailable); return the HTML path."""
    data = dataclasses.replace(report_data(study), exit_curves=early_exit_curves(Path(out_dir)))
    figures = report_figures(data)
    path = write_text(Path(out_dir) / "report.html", render_html(data, figures))
    if png:
        note = write_png(figures[0][1], path.with_name("pareto.png"))
        if note:
            print(note, file=sys.stderr)
    return path
