"""The report as a person sees it: report.html opened in real headless Chromium (no network), and
every chart checked in the rendered DOM, not in the JSON the page carries.

Chromium is required: without it these tests fail, naming the command that installs it.
"""

import os
import random
import re
import shutil
import subprocess
from html.parser import HTMLParser
from pathlib import Path

import optuna
import pytest

from nas_kd.report import write_report
from tests.test_report import BUDGET, _trial, searched  # noqa: F401 - searched: the fixture, a real tiny search

INSTALL = "apt-get install -y chromium"
RENDER_TIMEOUT_S = 300  # wall clock on a busy machine; the page itself gets a virtual-time budget


def _chromium() -> str:
    path = os.environ.get("BROWSER_PATH") or next(
        (p for p in map(shutil.which, ("chromium", "chromium-browser", "google-chrome")) if p), None)
    if not path:
        pytest.fail(f"these tests open the report in Chromium, which is not installed: {INSTALL}")
    return path


def _render(page: Path, profile: Path, *output: str) -> subprocess.CompletedProcess:
    """Run headless Chromium on ``page`` with ``output`` (--dump-dom, --screenshot=...), offline."""
    args = [_chromium(), "--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
            "--disable-component-update", "--disable-sync", "--no-first-run", "--hide-scrollbars",
            "--enable-logging=stderr", "--v=0", f"--user-data-dir={profile}", "--virtual-time-budget=30000",
            "--window-size=1280,1600", *output, page.resolve().as_uri()]
    done = subprocess.run(args, capture_output=True, text=True, timeout=RENDER_TIMEOUT_S, check=False)
    assert done.returncode == 0, f"chromium failed ({done.returncode}): {done.stderr[-2000:]}"
    return done


class _Charts(HTMLParser):
    """Per Plotly chart div (by id): whether plotly.js drew its SVG, and how many SVG points it holds."""

    def __init__(self) -> None:
        super().__init__()
        self.drawn: dict[str, bool] = {}
        self.points: dict[str, int] = {}
        self._open: list[tuple[str, int]] = []  # (chart id, div depth at which it opened)
        self._depth = 0

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        a = dict(attrs)
        classes = (a.get("class") or "").split()
        if tag == "div":
            self._depth += 1
            if "plotly-graph-div" in classes:
                self._open.append((a.get("id") or "", self._depth))
                self.drawn.setdefault(a.get("id") or "", False)
                self.points.setdefault(a.get("id") or "", 0)
        elif self._open and tag == "svg" and "main-svg" in classes:
            self.drawn[self._open[-1][0]] = True
        elif self._open and tag == "path" and "point" in classes:
            self.points[self._open[-1][0]] += 1

    def handle_endtag(self, tag: str) -> None:
        if tag == "div":
            if self._open and self._open[-1][1] == self._depth:
                self._open.pop()
            self._depth -= 1


def _charts(page: Path, profile: Path) -> tuple[_Charts, str]:
    done = _render(page, profile, "--dump-dom")
    charts = _Charts()
    charts.feed(done.stdout)
    console = "\n".join(line for line in done.stderr.splitlines() if "CONSOLE" in line)
    return charts, console


def test_every_chart_of_a_real_search_draws_in_chromium(searched, tmp_path):  # noqa: F811
    _, study, _ = searched
    page = write_report(study, tmp_path / "rep")
    charts, console = _charts(page, tmp_path / "profile")
    # 2 trained trials: Pareto, parameters and history are drawn; importances need 4 (a sentence instead)
    assert list(charts.drawn) == ["fig0", "fig1", "fig2"], console
    assert all(charts.drawn.values()), f"charts plotly.js did not draw: {charts.drawn}\n{console}"
    trained = sum(1 for t in study.trials if t.user_attrs.get("status") == "trained")
    assert charts.points["fig0"] >= trained and charts.points["fig1"] >= trained  # markers really drawn
    assert "Uncaught" not in console, console
    png = tmp_path / "rep" / "pareto.png"
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n", "pareto.png is written by default"


def test_every_chart_of_a_large_study_with_a_teacher_draws_in_chromium(tmp_path):
    rng = random.Random(0)
    study = optuna.create_study(directions=["maximize", "minimize"])
    study.set_user_attr("nas_kd.identity", {"budget_flops": BUDGET, "num_classes": 10})
    study.set_user_attr("nas_kd.teacher", {"key": "t", "val_accuracy": 0.95, "flops": 2_000_000, "params": 9000})
    trials = [_trial("trained", 1000 * w, 0.3 + 0.5 * w / 128 + rng.uniform(0, 0.02), params={"width": w})
              for w in (rng.randint(8, 128) for _ in range(30))]
    study.add_trials(trials + [_trial("infeasible", BUDGET + 100 * i) for i in range(1100)] + [_trial("failed", 900)])
    page = write_report(study, tmp_path / "big", png=False)
    charts, console = _charts(page, tmp_path / "profile")
    assert list(charts.drawn) == ["fig0", "fig1", "fig2", "fig3"], console  # importances drawn too
    assert all(charts.drawn.values()), f"charts plotly.js did not draw: {charts.drawn}\n{console}"
    assert "Uncaught" not in console, console


def test_the_check_sees_a_chart_that_did_not_draw(searched, tmp_path):  # noqa: F811
    _, study, _ = searched
    page = write_report(study, tmp_path / "rep", png=False)
    html, n = re.subn(r'newPlot\(\s*"fig1"', 'newPlot("no-such-div"', page.read_text())
    assert n == 1
    page.write_text(html)
    charts, _ = _charts(page, tmp_path / "profile")
    assert charts.drawn == {"fig0": True, "fig1": False, "fig2": True}
