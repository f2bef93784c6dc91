"""The HTML report: built from one real tiny search, plus studies crafted through Optuna for the edge cases."""

import contextlib
import io
import json
import random
import re
import shutil

import optuna
import pytest
from optuna.distributions import CategoricalDistribution, IntDistribution
from optuna.trial import TrialState, create_trial

from nas_kd import files
from nas_kd.report import main, png, report_data, write_report
from nas_kd.report import page as report_page
from nas_kd.report.figures import NO_FEASIBLE, draw_importance, draw_pareto
from nas_kd.search import main as search_main

BUDGET = 150_000
PLOTLY_BUNDLE = re.compile(r"plotly\.js v\d+\.\d+\.\d+")


# A small space (most members fit 150k FLOPs at 12x12): the default one spends seconds counting the
# FLOPs of over-budget samples first, and this file must stay fast on a busy machine.
SMALL_SPACE = """
name: small
stem: {channels: [8, 16], stride: [1, 2]}
stages:
  count: {low: 1, high: 2}
  depth: 1
  channels: {low: 8, high: 64, step: 8}
  kernel: [3]
  stride: [1, 2]
  block: [ds]
  expansion: [2]
  pointwise_rank: [full]
head: {channels: [0], classifier_rank: [full]}
activation: [relu]
"""


@pytest.fixture(scope="module")
def searched(tmp_path_factory, cache_dir):
    """One real search (2 trained trials) on the tiny set; returns (studies dir, study, search stdout).

    Labels only (--alpha 0): training the teacher would dominate this file's run time; the teacher's
    place in the report is checked on crafted studies below.
    """
    root = tmp_path_factory.mktemp("report")
    studies, space = root / "studies", root / "small.yaml"
    space.write_text(SMALL_SPACE)
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        code = search_main(["--dataset", "tiny", "--budget", "150k", "--min-steps", "0",
                            "--epochs", "4", "--batch-size", "32",
                            "--studies-dir", str(studies), "--cache-dir", str(cache_dir), "--study-name", "rep",
                            "--threads", "2", "--trials", "2",
                            "--promote-until", "0", "--space", str(space), "--alpha", "0"])
    assert code == 0
    study = optuna.load_study(study_name="rep", storage=f"sqlite:///{studies / 'rep.db'}")
    return studies, study, out.getvalue()


def _front_table(page: str) -> str:
    match = re.search(r'<table id="front-table">.*?</table>', page, re.S)
    assert match, "no front table in the page"
    return match.group(0)


def _crafted_study(tmp_path, name, source=None):
    """A study in SQLite with the user attrs of ``source`` (a real nas_kd study) when given."""
    study = optuna.create_study(study_name=name, storage=f"sqlite:///{tmp_path / 'crafted.db'}",
                                directions=["maximize", "minimize"])
    for key, value in (source.user_attrs if source else {}).items():
        study.set_user_attr(key, value)
    return study


def _trial(status, flops, acc=None, summary="stem8/s1 | ds k3 c8 s1 x1 | fc | relu", params=None, budget=BUDGET):
    attrs = {"status": status, "flops": flops, "params": 1000, "summary": summary}
    if status == "failed":
        attrs["fail_reason"] = "TrialFailed: loss became nan"
        return create_trial(state=TrialState.FAIL, user_attrs=attrs, params=params or {},
                            distributions=_dists(params))
    values = [acc if acc is not None else 0.0, float(flops)]
    if status == "trained":
        attrs.update(val_accuracy=acc, train_seconds=1.5)
    return create_trial(values=values, user_attrs=attrs, constraints={"flops": flops - budget},
                        params=params or {}, distributions=_dists(params))


def _dists(params):
    all_dists = {"width": IntDistribution(8, 128), "act": CategoricalDistribution(["relu", "hs", "big"])}
    return {k: all_dists[k] for k in (params or {})}


def test_search_writes_the_report_and_the_cli_rewrites_it(searched, capsys):
    studies, study, search_out = searched
    page_path = studies / "rep" / "report.html"
    assert f"report: {page_path}" in search_out  # the finished search wrote it already
    page_path.unlink()

    assert main(["--study-name", "rep", "--studies-dir", str(studies)]) == 0
    out = capsys.readouterr().out
    assert f"open: {page_path}" in out and f"optuna-dashboard sqlite:///{studies / 'rep.db'}" in out
    page = page_path.read_text()
    # self-contained: plotly.js embedded exactly once, nothing fetched from the network
    assert len(PLOTLY_BUNDLE.findall(page)) == 1
    assert not re.search(r"<script[^>]*\bsrc\s*=\s*[\"']?https?:", page, re.I)
    assert page.count('class="plotly-graph-div"') >= 3
    # every front member (as the search itself wrote it) is in the front table, cheapest first
    front = json.loads((studies / "rep" / "front.json").read_text())
    table = _front_table(page)
    positions = [table.index(f'<tr><td class="num">{r["number"]}</td>') for r in front]
    assert positions == sorted(positions) and len(front) >= 1
    assert '"text":"budget 150k FLOPs"' in page  # the label of the budget line in the chart
    assert 'id="teacher-none">no teacher (labels only)<' in page and "teacher val" not in page
    assert "chance level 1/4" in page and "one multiply-add = one FLOP" in page
    assert _settings(page)["--alpha"] == "0" and "<td>split_seed</td><td>0</td>" in page
    assert re.search(r"<td>test_size</td><td>\d+</td>", page) and "sum of trial durations" in page
    assert not list((studies / "rep").glob(".*tmp*"))  # the atomic write left nothing behind


def test_report_data_counts_front_and_history(searched):
    _, study, _ = searched
    data = report_data(study)
    by_status = {}
    for t in study.trials:
        key = "failed" if t.state == TrialState.FAIL else t.user_attrs["status"]
        by_status[key] = by_status.get(key, 0) + 1
    assert {k: v for k, v in data.counts.items() if v} == by_status
    assert data.counts["trained"] == 2 and len(data.records) == len(study.trials)
    trained = [t for t in study.trials if t.user_attrs.get("status") == "trained"]
    best = max(trained, key=lambda t: (t.values[0], -t.values[1]))
    assert best.number in [r.number for r in data.front]
    assert all(r.flops <= BUDGET and r.status == "trained" for r in data.front)
    assert [r.flops for r in data.front] == sorted(r.flops for r in data.front)
    assert data.budget_flops == BUDGET and data.ref_accuracy == pytest.approx(0.25)
    assert data.hv_numbers == [t.number for t in study.trials]
    assert data.hv_values == sorted(data.hv_values) and data.hv_values[-1] > 0
    assert data.teacher is None
    assert data.data_split["split_seed"] == 0 and data.config["budget_flops"] == BUDGET
    assert data.trial_seconds > 0 and data.wall_seconds >= data.trial_seconds * 0.99
    assert "at least 4" in data.importance_note and draw_importance(data) is None
    # hover carries number, FLOPs, params and the architecture summary
    fig = draw_pareto(data)
    budget_line = next(s for s in fig.layout.shapes if s.x0 == s.x1 == BUDGET)
    assert budget_line.yref == "paper" and budget_line.label.text == "budget 150k FLOPs"
    front_trace = next(t for t in fig.data if t.name.startswith("Pareto front"))
    assert front_trace.line.shape == "hv"
    assert [row[0] for row in front_trace.customdata] == [r.number for r in data.front]
    assert [row[3] for row in front_trace.customdata] == [r.summary for r in data.front]
    assert "customdata[3]" in front_trace.hovertemplate


def test_a_search_with_an_empty_front_still_writes_its_report_and_a_broken_report_is_a_note(
        tmp_path, cache_dir, monkeypatch, capsys):
    space = tmp_path / "small.yaml"
    space.write_text(SMALL_SPACE)
    args = ["--dataset", "tiny", "--budget", "150k", "--min-steps", "0",
            "--epochs", "1", "--batch-size", "32", "--lr", "1e12",
            "--studies-dir", str(tmp_path), "--cache-dir", str(cache_dir), "--study-name", "nan", "--threads", "2",
            "--trials", "1", "--promote-until", "0", "--space", str(space), "--alpha", "0"]
    assert search_main(args) == 0  # the one trial diverges and fails: nothing on the front
    out = capsys.readouterr().out
    assert f"report: {tmp_path / 'nan' / 'report.html'}" in out
    page = (tmp_path / "nan" / "report.html").read_text()
    assert "No trial fits the budget yet" in page and 'id="failed-table"' in page and "loss became" in page

    def broken(*_args, **_kwargs):
        raise RuntimeError("disk on fire")

    monkeypatch.setattr(report_page, "render_html", broken)  # whichever way the search reaches write_report
    assert search_main(args) == 0  # resumes, adds a trial; the report failing does not fail the search
    captured = capsys.readouterr()
    assert "report:" not in captured.out
    assert "note: no report written (RuntimeError: disk on fire)" in captured.err


def test_a_one_trial_study_renders(searched, tmp_path, monkeypatch):
    _, source, _ = searched
    one = next(t for t in source.trials if t.user_attrs.get("status") == "trained")
    study = _crafted_study(tmp_path, "one", source)
    study.set_user_attr("nas_kd.teacher", {"key": "tiny-resnet", "val_accuracy": 0.91, "test_accuracy": 0.9})
    study.add_trial(one)
    data = report_data(study)
    assert len(data.records) == 1 and data.counts["trained"] == 1 and len(data.front) == 1
    fig = draw_pareto(data)
    assert len(fig.data) == 1  # the front alone: one trial, no other trace
    # teacher FLOPs unknown: a dashed horizontal line at its validation accuracy
    line = next(s for s in fig.layout.shapes if s.line.dash == "dash")
    assert line.y0 == line.y1 == 0.91 and line.label.text == "teacher val 91.00%"
    replaced, real_replace = [], files.os.replace
    monkeypatch.setattr(files.os, "replace", lambda a, b: (replaced.append((a, b)), real_replace(a, b)))
    page = write_report(study, tmp_path / "one", png=False).read_text()
    # written beside the target, then renamed over it
    assert [(a.parent, b) for a, b in replaced] == [(tmp_path / "one", tmp_path / "one" / "report.html")]
    assert '<tr><td class="num">0</td>' in _front_table(page)
    assert 'id="teacher-table"' in page and "91.00%" in page
    assert NO_FEASIBLE.capitalize() not in page


def test_a_study_where_nothing_fits_says_so(searched, tmp_path):
    _, source, _ = searched
    study = _crafted_study(tmp_path, "nothing", source)
    study.set_user_attr("nas_kd.teacher", {"key": "t", "val_accuracy": 0.95, "flops": 2_000_000, "params": 9000})
    study.add_trials([_trial("infeasible", BUDGET * k) for k in (2, 5, 30)] + [_trial("failed", BUDGET // 2)])
    data = report_data(study)
    assert data.front == [] and data.counts["infeasible"] == 3 and data.counts["failed"] == 1
    assert not any(data.hv_values)
    fig = draw_pareto(data)
    faded = {t.name: len(t.x) for t in fig.data if "not trained" in t.name}
    assert faded == {"over budget, not trained (3)": 3, "failed, not trained (1)": 1}
    assert fig.layout.xaxis.type == "log"  # 75k .. 4.5M FLOPs
    star = next(t for t in fig.data if t.name.startswith("teacher"))  # teacher FLOPs known: a point
    assert list(star.x) == [2_000_000] and list(star.y) == [0.95]
    page = write_report(study, tmp_path / "nothing", png=False).read_text()
    assert 'id="no-feasible"' in page and "No trial fits the budget yet" in page
    assert 'id="front-table"' not in page and 'id="failed-table"' in page and "loss became nan" in page


def test_unknown_or_empty_study_exits_2_with_one_line(tmp_path, capsys):
    assert main(["--study-name", "nope", "--studies-dir", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and "no study named 'nope'" in err and "Traceback" not in err
    assert not (tmp_path / "nope.db").exists()  # looking did not create an empty database

    optuna.create_study(study_name="empty", storage=f"sqlite:///{tmp_path / 'empty.db'}",
                        directions=["maximize", "minimize"])
    assert main(["--study-name", "empty", "--studies-dir", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert err.strip() == "error: study empty has no trials yet; run `python -m nas_kd.search` first"

    url = f"sqlite:///{tmp_path / 'empty.db'}"
    assert main(["--study-name", "other", "--studies-dir", str(tmp_path), "--storage", url]) == 2
    assert capsys.readouterr().err.startswith("error: no study named 'other'")

    assert main(["--study-name", "../up", "--studies-dir", str(tmp_path)]) == 2  # it would name a folder
    assert capsys.readouterr().err.startswith("error: study name '../up' is not allowed")


def test_the_storage_url_can_come_from_the_environment(tmp_path, monkeypatch, capsys):
    url = f"sqlite:///{tmp_path / 'elsewhere.db'}"
    study = optuna.create_study(study_name="env", storage=url, directions=["maximize", "minimize"])
    study.add_trial(_trial("trained", 50_000, 0.8))
    monkeypatch.setenv("NAS_KD_STORAGE", url)
    assert main(["--study-name", "env", "--studies-dir", str(tmp_path), "--no-png"]) == 0
    assert f"optuna-dashboard {url}" in capsys.readouterr().out and (tmp_path / "env" / "report.html").exists()


def test_user_strings_are_escaped(tmp_path):
    evil = "<script>alert('x')</script>"
    study = optuna.create_study(study_name=f"evil{evil}", storage=f"sqlite:///{tmp_path / 'evil.db'}",
                                directions=["maximize", "minimize"])
    study.set_user_attr("nas_kd.identity", {"budget_flops": BUDGET, "num_classes": 4})
    study.set_user_attr("nas_kd.settings", {"config": {"storage": f"sqlite:///{evil}.db"},
                                            "space": {"name": evil, "source": evil}, "data": {"dataset": evil}})
    study.add_trials([_trial("trained", 50_000, 0.8, summary=f"stem8 {evil}"), _trial("failed", 60_000, summary=evil)])
    page = write_report(study, tmp_path / "evil", png=False).read_text()
    assert "<script>alert" not in page  # neither the tables nor the embedded figure JSON let it through
    escaped = "&lt;script&gt;alert(&#x27;x&#x27;)&lt;/script&gt;"
    assert f"<h1>nas_kd search report: evil{escaped}</h1>" in page
    assert f"stem8 {escaped}" in _front_table(page)
    assert page.count(escaped) >= 6  # title, heading, summary, space, dataset, storage, failed row


def test_thousands_of_trials_are_drawn_with_webgl_in_a_few_traces(tmp_path):
    study = optuna.create_study(directions=["maximize", "minimize"])
    study.set_user_attr("nas_kd.identity", {"budget_flops": BUDGET, "num_classes": 10})
    study.add_trials([_trial("trained", 1000 * (10 + i), 0.5 + i / 100) for i in range(10)]
                     + [_trial("infeasible", BUDGET + 100 * i) for i in range(1000)] + [_trial("failed", 1000)])
    data = report_data(study)
    assert data.counts == {"trained": 10, "infeasible": 1000, "duplicate": 0, "failed": 1}
    fig = draw_pareto(data)
    assert {t.type for t in fig.data} == {"scattergl"} and len(fig.data) <= 5
    assert sum(len(t.x) for t in fig.data if t.name != "Pareto front (10)") == 1001
    assert write_report(study, tmp_path / "big", png=False).stat().st_size > 0


def test_importances_use_feasible_trained_trials_only():
    rng = random.Random(0)
    study = optuna.create_study(directions=["maximize", "minimize"])
    study.set_user_attr("nas_kd.identity", {"budget_flops": BUDGET, "num_classes": 10})
    trials = []
    for _ in range(90):
        params = {"width": rng.randint(8, 128), "act": rng.choice(["relu", "hs", "big"])}
        if params["act"] == "big":  # only "big" goes over budget: were infeasible trials counted, act would lead
            trials.append(_trial("infeasible", BUDGET * 3, params=params))
        else:
            acc = 0.3 + 0.5 * params["width"] / 128 + rng.uniform(0, 0.02)
            trials.append(_trial("trained", 1000 * params["width"], acc, params=params))
    study.add_trials(trials)
    data = report_data(study)
    assert set(data.importances) == {"width", "act"} and data.importance_note is None
    assert data.importances["width"] > 0.8
    bars = draw_importance(data)
    assert list(bars.data[0].y) == ["act", "width"]  # most important at the top


@pytest.mark.parametrize("missing", ["kaleido", "browser"])
def test_a_missing_image_export_is_one_note_naming_the_command_that_adds_it(
        missing, searched, tmp_path, monkeypatch, capsys):
    _, source, _ = searched
    if missing == "kaleido":
        monkeypatch.setattr(png, "image_export_installed", lambda: False)
        command = "pip install kaleido"
    else:  # kaleido's own lookup, pointed at a browser that is not there
        monkeypatch.setenv("BROWSER_PATH", str(tmp_path / "no-such-chromium"))
        command = "apt-get install -y chromium"
    study = _crafted_study(tmp_path, "png", source)
    study.add_trial(_trial("trained", 50_000, 0.9))
    path = write_report(study, tmp_path / "png")
    assert path.exists() and not (tmp_path / "png" / "pareto.png").exists()
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("note: no PNG written") and command in err[0]
    assert not list((tmp_path / "png").glob(".*"))


def _settings(page: str) -> dict[str, str]:
    """The settings table of a report page: flag -> value."""
    match = re.search(r'<table id="settings-table">.*?</table>', page, re.S)
    assert match, "no settings table in the page"
    return dict(re.findall(r"<tr><td>([^<]*)</td><td>([^<]*)</td></tr>", match.group(0)))


def test_settings_are_the_flags_of_the_run_that_created_the_study(searched, tmp_path, cache_dir, capsys):
    studies, source, _ = searched
    resumed = tmp_path / "studies"
    resumed.mkdir()
    shutil.copy(studies / "rep.db", resumed / "rep.db")  # the fixture's study stays as it is
    space = tmp_path / "small.yaml"
    space.write_text(SMALL_SPACE)
    before = _settings((studies / "rep" / "report.html").read_text())
    assert before["--trials"] == "2" and before["--budget"] == "150kFLOPs" and before["--epochs"] == "4"
    assert search_main(["--dataset", "tiny", "--budget", "150k", "--min-steps", "0", "--epochs", "4",
                        "--batch-size", "32", "--studies-dir", str(resumed), "--cache-dir", str(cache_dir),
                        "--study-name", "rep", "--threads", "2", "--trials", "1",
                        "--promote-until", "0", "--timeout", "3600",
                        "--space", str(space), "--alpha", "0"]) == 0
    capsys.readouterr()
    page = write_report(optuna.load_study(study_name="rep", storage=f"sqlite:///{resumed / 'rep.db'}"),
                        tmp_path / "out", png=False).read_text()
    after = _settings(page)
    assert after["--trials"] == "2" and after["--timeout"] == "none"  # the resume's --trials 1 --timeout 3600
    assert {k: v for k, v in after.items() if k != "--storage"} == {
        k: v for k, v in before.items() if k != "--storage"}
    assert "older nas_kd" not in page


def test_an_older_study_shows_its_settings_under_their_flags(tmp_path):
    study = optuna.create_study(directions=["maximize", "minimize"])
    study.set_user_attr("nas_kd.identity", {"budget_flops": BUDGET, "num_classes": 10})
    study.set_user_attr("nas_kd.settings", {"config": {  # as nas_kd recorded it before flags were kept
        "budget_flops": BUDGET, "budget_params": None, "trials": 40, "timeout": None, "warm_start": False,
        "early_stop": True, "train_subset": None, "teacher_weights": [2.0, 1.0], "teachers": ["strong", "quick"],
        "train": {"epochs": 2.0, "lr": 0.1, "momentum": 0.9}, "kd": {"loss": "hinton", "alpha": 0.9}}})
    study.add_trial(_trial("trained", 50_000, 0.8))
    page = write_report(study, tmp_path / "old", png=False).read_text()
    assert _settings(page) == {
        "--budget": "150kFLOPs", "--params": "none", "--trials": "40", "--timeout": "none",
        "--no-warm-start": "yes", "--no-early-stop": "no", "--epochs": "2", "--train-subset": "0", "--lr": "0.1",
        "--kd": "hinton", "--alpha": "0.9", "--teacher": "strong, quick", "--ensemble-weights": "2,1"}
    assert 'id="settings-older">(recorded by an older nas_kd)<' in page
    assert "kd.alpha" not in page and "momentum" not in page  # field names, and fields no flag sets


def test_recorded_flags_are_shown_as_recorded(tmp_path):
    study = optuna.create_study(directions=["maximize", "minimize"])
    flags = {"--budget": "5MFLOPs", "--trials": "40", "--kd": "search", "--no-warm-start": "no"}
    study.set_user_attr("nas_kd.settings", {"config": {"trials": 7, "budget_flops": 1}, "flags": flags})
    study.add_trial(_trial("trained", 50_000, 0.8))
    page = write_report(study, tmp_path / "new", png=False).read_text()
    assert _settings(page) == flags and "older nas_kd" not in page
