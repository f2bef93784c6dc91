"""Budgets beyond FLOPs, on real tiny searches: int8 memory and size (counted), latency (measured)."""

import sqlite3

import optuna
import pytest

from nas_kd.model.memory import count_footprint
from nas_kd.model.spec import ArchSpec
from nas_kd.report.page import write_report
from nas_kd.search.cli import main
from nas_kd.study.records import front_records, trial_records


def run(tmp_path, cache_dir, *extra, name="b"):
    args = ["--dataset", "tiny", "--budget", "150k", "--min-steps", "0", "--epochs", "1", "--batch-size", "32",
            "--studies-dir", str(tmp_path / "studies"), "--cache-dir", str(cache_dir), "--study-name", name,
            "--threads", "1", "--rungs", "1", *extra]
    return main(args)


def load(tmp_path, name="b"):
    return optuna.load_study(study_name=name, storage=f"sqlite:///{tmp_path / 'studies' / (name + '.db')}")


def test_a_memory_and_size_budget_reject_candidates_before_training(tmp_path, cache_dir):
    budget_memory, budget_size = 3000, 6000
    assert run(tmp_path, cache_dir, "--trials", "2",
               "--promote-until", "0", "--memory-budget", "3kB", "--size-budget", "6kB") == 0
    study = load(tmp_path)
    assert study.user_attrs["nas_kd.identity"]["budget_memory"] == budget_memory
    statuses = {t.user_attrs["status"] for t in study.trials}
    assert "trained" in statuses and "infeasible" in statuses
    for t in study.trials:
        f = count_footprint(ArchSpec.from_dict(t.user_attrs["spec"]), (1, 12, 12))
        assert (t.user_attrs["peak_memory"], t.user_attrs["model_size"]) == (f.peak_memory, f.model_size)
        fits = f.peak_memory <= budget_memory and f.model_size <= budget_size and t.user_attrs["flops"] <= 150_000
        assert (t.user_attrs["status"] != "infeasible") == fits
        assert t.constraints["peak_memory"] == f.peak_memory - budget_memory
        if not fits:
            assert "train_seconds" not in t.user_attrs
    # the report's front table shows both
    html = write_report(study, tmp_path / "report").read_text()
    assert "peak memory (int8)" in html and "size (int8)" in html and "3 kB int8 peak memory" in html


@pytest.mark.parametrize(("flags", "message"), [
    (["--memory-budget", "lots"], "cannot read --memory-budget 'lots'"),
    (["--memory-budget", "100B"], "--memory-budget 100 B is below the smallest int8 peak memory of space"),
    (["--size-budget", "10B"], "--size-budget 10 B is below the smallest int8 model size of space"),
    (["--latency-budget", "300"], "--latency-budget"),
    (["--latency-budget", "0.5us"], "is below the latency of space"),
    (["--objective", "speed"], "--objective"),
])
def test_impossible_or_unreadable_budgets_are_one_line_and_exit_2(tmp_path, cache_dir, capsys, flags, message):
    assert run(tmp_path, cache_dir, "--trials", "1", "--promote-until", "0", *flags) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: ") and message in err and len(err.splitlines()) == 1 and "Traceback" not in err
    assert not (tmp_path / "studies" / "b.db").exists()  # refused before a study was made


def test_a_latency_search_ranks_the_front_by_measured_latency(tmp_path, cache_dir, capsys):
    assert run(tmp_path, cache_dir, "--trials", "2",
               "--promote-until", "0", "--objective", "latency", "--latency-budget", "50ms") == 0
    assert "50 ms latency | front: accuracy against latency" in capsys.readouterr().err
    study = load(tmp_path)
    identity = study.user_attrs["nas_kd.identity"]
    assert identity["objective"] == "latency" and identity["latency_machine"]["threads"] == 1
    assert identity["latency_machine"]["cpu"] and "median" in identity["latency_method"]
    done = [t for t in study.trials if t.user_attrs["status"] == "trained"]
    assert len(done) == 2
    for t in done:  # the front's cost axis is the measured latency
        assert t.user_attrs["latency_us"] > 0 and t.values[1] == t.user_attrs["latency_us"]
        assert t.constraints["latency_us"] == t.user_attrs["latency_us"] - 50_000
    front = front_records(trial_records(study))
    assert [r.latency_us for r in front] == sorted(r.latency_us for r in front)
    # every timed spec (and the space's cheapest, timed for the budget check) is in the shared cache
    with sqlite3.connect(cache_dir / "latency.sqlite") as db:
        cached = {row[0] for row in db.execute("SELECT spec FROM latency")}
    assert {t.user_attrs["spec_json"] for t in done} <= cached
    html = write_report(study, tmp_path / "report").read_text()
    assert "Latency against FLOPs" in html and "latency µs" in html and "Spearman" in html
    # the same study cannot be resumed counting FLOPs, nor with another latency thread count
    assert run(tmp_path, cache_dir, "--trials", "1", "--promote-until", "0") == 2
    assert run(tmp_path, cache_dir, "--trials", "1",
               "--promote-until", "0", "--objective", "latency", "--latency-budget", "50ms",
               "--latency-threads", "2") == 2
