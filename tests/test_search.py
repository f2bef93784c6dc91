"""End-to-end searches on the generated 12×12 'tiny' set: real studies, real training, seconds each."""

import json
import subprocess
import sys
from pathlib import Path

import optuna
import pytest

from nas_kd.model.builder import build_student
from nas_kd.model.cost import count_cost
from nas_kd.model.spec import ArchSpec
from nas_kd.search.cli import main

BUDGET = 150_000


def run(tmp_path, cache_dir, *extra, name="t"):
    args = ["--dataset", "tiny", "--budget", "150k", "--min-steps", "0", "--epochs", "4", "--batch-size", "32",
            "--studies-dir", str(tmp_path / "studies"), "--cache-dir", str(cache_dir), "--study-name", name,
            "--threads", "2", *extra]
    return main(args)


def load(tmp_path, name="t"):
    return optuna.load_study(study_name=name, storage=f"sqlite:///{tmp_path / 'studies' / (name + '.db')}")


def trained(study):
    return [t for t in study.trials if t.user_attrs.get("status") == "trained"]


def test_search_stays_within_budget_writes_the_front_and_resumes(tmp_path, cache_dir, capsys):
    assert run(tmp_path, cache_dir, "--trials", "3", "--promote-until", "0") == 0
    out = capsys.readouterr()
    assert "Pareto front" in out.out and "1 multiply-add = 1 FLOP" in out.out
    study = load(tmp_path)
    done = trained(study)
    assert len(done) == 3
    for t in done:
        assert t.state == optuna.trial.TrialState.COMPLETE
        assert t.user_attrs["flops"] <= BUDGET and t.values[1] == t.user_attrs["flops"]
        assert 0 <= t.values[0] <= 1 and t.user_attrs["train_seconds"] > 0
        # the study alone rebuilds the candidate, at the recorded cost
        spec = ArchSpec.from_dict(t.user_attrs["spec"])
        assert count_cost(build_student(spec), (1, 12, 12)).flops == t.user_attrs["flops"]
        assert (tmp_path / "studies" / "t" / "trials" / f"{t.number}.pt").exists()
    for t in study.trials:
        if t.user_attrs.get("status") == "infeasible":
            assert t.user_attrs["flops"] > BUDGET and t.constraints["flops"] > 0
            assert "train_seconds" not in t.user_attrs
            # rejected by the analytic count, which must be fvcore's number
            spec = ArchSpec.from_dict(t.user_attrs["spec"])
            assert count_cost(build_student(spec), (1, 12, 12)).flops == t.user_attrs["flops"]
    identity = study.user_attrs["nas_kd.identity"]
    assert identity["budget_flops"] == BUDGET and identity["split"]["split_seed"] == 0
    assert "multiply-add" in identity["flop_convention"] and identity["teacher"]["sha256"]
    front = json.loads((tmp_path / "studies" / "t" / "front.json").read_text())
    assert front and all(r["flops"] <= BUDGET for r in front)
    assert (tmp_path / "studies" / "t" / "front.csv").read_text().startswith("number,")

    # same command, same study name: resumes and adds trials
    assert run(tmp_path, cache_dir, "--trials", "2", "--promote-until", "0") == 0
    assert "resuming" in capsys.readouterr().err
    study = load(tmp_path)
    assert len(trained(study)) == 5
    numbers = [t.number for t in trained(study)]
    assert len(set(numbers)) == 5


def test_label_only_search_needs_no_teacher(tmp_path, capsys):
    cache = tmp_path / "fresh-cache"
    assert run(tmp_path, cache, "--trials", "1", "--promote-until", "0", "--alpha", "0", name="labels") == 0
    assert not cache.exists()
    assert "labels only" in capsys.readouterr().err


def test_a_diverging_trial_fails_alone_with_its_reason(tmp_path, cache_dir, capsys):
    assert run(tmp_path, cache_dir, "--trials", "2", "--promote-until", "0", "--lr", "1e12", name="nan") == 0
    failed = [t for t in load(tmp_path, "nan").trials if t.state == optuna.trial.TrialState.FAIL]
    assert len(failed) == 2
    assert all("loss became" in t.user_attrs["fail_reason"] for t in failed)


@pytest.mark.parametrize(
    "args, message",
    [(["--budget", "5MB"], "cannot read --budget"),
     (["--params", "lots"], "cannot read --params"),
     (["--dataset", "imagenet"], "unknown dataset 'imagenet'"),
     (["--budget", "1k"], "below the cheapest architecture"),
     (["--budget", "1k"], "or use a smaller --space (e.g. --space default-v2, whose stems may stride 2)"),
     (["--budget", "1k", "--space", "default-v2"], "or use a smaller --space\n"),
     (["--params", "10"], "parameter budget"),
     (["--study-name", "../escape"], "study name"),
     (["--alpha", "2"], "--alpha must be in"),
     (["--kd", "nope"], "unknown distillation loss"),
     (["--kd", "search", "--alpha", "0"], "--kd search chooses alpha"),
     (["--threads", "0"], "--threads must be at least 1, got 0"),
     (["--workers", "0"], "--workers must be at least 1, got 0"),
     (["--trials", "0"], "--trials must be at least 1, got 0"),
     (["--trials", "two"], "--trials must be a whole number"),
     (["--timeout", "-5"], "--timeout must be a positive number of seconds, got -5"),
     (["--sampler", "grid"], "invalid choice: 'grid'"),
     (["--tail", "cheap-first"], "invalid choice: 'cheap-first'")],
)
def test_bad_input_exits_2_with_one_clear_message(tmp_path, cache_dir, capsys, args, message):
    assert run(tmp_path, cache_dir, "--trials", "1", "--promote-until", "0", *args) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and message in err
    assert len(err.strip().splitlines()) == 1 and "Traceback" not in err
    assert not (tmp_path / "studies" / "t.db").exists()  # refused before any study exists


def test_missing_dataset_files_say_how_to_get_them(tmp_path, capsys):
    code = main(["--dataset", "fashion-mnist", "--data-dir", str(tmp_path), "--studies-dir", str(tmp_path)])
    assert code == 2
    assert "apt-get install dataset-fashion-mnist" in capsys.readouterr().err


def test_bad_space_file(tmp_path, cache_dir, capsys):
    bad = tmp_path / "bad.yaml"
    bad.write_text("stem: {channels: [8], stride: [1]}\n")
    assert run(tmp_path, cache_dir, "--space", str(bad)) == 2
    assert "missing section 'stages'" in capsys.readouterr().err


def test_unwritable_studies_folder(tmp_path, cache_dir, capsys):
    blocker = tmp_path / "file"
    blocker.write_text("not a folder")
    code = main(["--dataset", "tiny", "--budget", "150k", "--min-steps", "0", "--studies-dir", str(blocker / "studies"),
                 "--cache-dir", str(cache_dir)])
    assert code == 2
    assert "cannot write to studies folder" in capsys.readouterr().err


def test_resuming_with_other_settings_is_refused(tmp_path, cache_dir, capsys):
    assert run(tmp_path, cache_dir, "--trials", "1", "--promote-until", "0", name="r") == 0
    assert run(tmp_path, cache_dir, "--trials", "1", "--promote-until", "0", "--epochs", "2", name="r") == 2
    err = capsys.readouterr().err
    assert "other settings" in err and "train" in err and "new --study-name" in err


def test_cli_error_has_no_traceback():
    proc = subprocess.run([sys.executable, "-m", "nas_kd.search", "--budget", "lots"],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2
    assert proc.stderr.strip().startswith("error: cannot read --budget 'lots'")
    assert "Traceback" not in proc.stderr


def test_a_new_study_trains_the_spaces_hand_designs_first(tmp_path, cache_dir):
    from nas_kd.model.spec import parse_summary

    space = tmp_path / "warm.yaml"
    designs = {"hand-a": "stem8/s1 | ds k3 c16 s2 x1 | fc | relu", "hand-b": "stem8/s2 | ir2 k3 c16 s1 x1 | fc | relu"}
    text = (Path(__file__).parent.parent / "search_spaces" / "default-v1.yaml").read_text().split("warm_start:")[0]
    space.write_text(text + "warm_start:\n" + "".join(f"  {n}: {line}\n" for n, line in designs.items()))
    assert run(tmp_path, cache_dir, "--trials", "3", "--promote-until", "0", "--space", str(space)) == 0
    study = load(tmp_path)
    first = study.trials[:2]
    assert [t.user_attrs.get("warm_start") for t in first] == ["hand-a", "hand-b"]
    for t, line in zip(first, designs.values(), strict=True):
        assert t.user_attrs["spec"] == parse_summary(line, 1, 4).to_dict() and t.user_attrs["status"] == "trained"
    assert "warm_start" not in study.trials[2].user_attrs
    # resuming does not enqueue them again
    assert run(tmp_path, cache_dir, "--trials", "1", "--promote-until", "0", "--space", str(space)) == 0
    assert sum("warm_start" in t.user_attrs for t in load(tmp_path).trials) == 2
    # --no-warm-start: a new study samples from the first trial (a pure random-search baseline)
    assert run(tmp_path, cache_dir, "--trials", "1",
               "--promote-until", "0", "--space", str(space), "--no-warm-start", name="cold") == 0
    assert not any("warm_start" in t.user_attrs for t in load(tmp_path, "cold").trials)


@pytest.mark.parametrize("loss", ["fitnet", "attention", "rkd", "sp"])
def test_feature_losses_train_in_the_search_with_live_teacher_features(tmp_path, cache_dir, loss):
    assert run(tmp_path, cache_dir, "--trials", "2",
               "--promote-until", "0", "--epochs", "1", "--kd", loss, name=loss) == 0
    done = trained(load(tmp_path, loss))
    assert len(done) == 2 and all(0 <= t.values[0] <= 1 for t in done)


def test_kd_search_chooses_a_recipe_per_trial_and_reports_the_winners(tmp_path, cache_dir, capsys):
    from nas_kd.distill.losses import TEMPERATURES, kd_loss_names

    assert run(tmp_path, cache_dir, "--trials", "6",
               "--promote-until", "0", "--epochs", "1", "--kd", "search", name="kds") == 0
    out = capsys.readouterr()
    study = load(tmp_path, "kds")
    recipes = [t.user_attrs["kd"] for t in trained(study)]
    assert len(recipes) == 6
    for r in recipes:
        assert r["loss"] in kd_loss_names() and r["temperature"] in TEMPERATURES and 0.5 <= r["alpha"] <= 0.95
    assert len({r["loss"] for r in recipes}) > 1  # really searched, not fixed
    assert study.user_attrs["nas_kd.identity"]["kd"]["loss"] == "search"
    assert "T=" in out.out  # the printed front names each point's recipe
    assert "KD recipe" in (tmp_path / "studies" / "kds" / "report.html").read_text()
    assert "kd" in (tmp_path / "studies" / "kds" / "front.csv").read_text().splitlines()[0].split(",")
    # export retrains a searched trial with its own recipe
    from nas_kd.export.cli import main as export_main

    pick = trained(study)[0]
    out = tmp_path / "exp"
    assert export_main(["--study-name", "kds", "--studies-dir", str(tmp_path / "studies"), "--cache-dir",
                        str(cache_dir), "--trial", str(pick.number), "--epochs", "1", "--out", str(out)]) == 0
    assert json.loads((out / "model_card.json").read_text())["kd"] == pick.user_attrs["kd"]


class _Done:
    def __init__(self, number, acc, flops, status="trained"):
        self.number, self.values, self.user_attrs = number, [acc, flops], {"status": status}
        self.state = optuna.trial.TrialState.COMPLETE


def test_early_stop_bar_is_the_best_cheaper_trial_minus_a_90th_percentile_gain():
    from nas_kd.search.early_stop import stop_below as _stop_below

    known = [_Done(0, 0.80, 1000), _Done(1, 0.90, 3000), _Done(2, 0.95, 9000)]
    gains = [0.01, 0.02, 0.03, 0.04, 0.05, 0.06, 0.07, 0.08, 0.09, 0.20]
    bar, reason = _stop_below(known, 5000, gains)
    assert bar == pytest.approx(0.90 - 0.20)  # trial 1 is the best at ≤ 5000 FLOPs; 90th pct gain 0.20
    assert "trial #1" in reason and "{:.2%}" in reason
    assert _stop_below(known, 500, gains) is None  # nothing cheaper is trained: never stopped
    assert _stop_below(known, 5000, gains[:4]) is None  # too few gains observed to calibrate
    stopped = [_Done(0, 0.80, 1000), _Done(1, 0.99, 3000, status="stopped early")]
    assert _stop_below(stopped, 5000, gains)[0] == pytest.approx(0.80 - 0.20)  # only trained trials count


def test_early_stop_halts_a_dominated_candidate_half_way(tmp_path, cache_dir, monkeypatch):
    import nas_kd.search.loop as loop

    # every trained trial is scored half-way; the rule's verdict is forced to "stop" from the third on
    real = loop.stop_below
    monkeypatch.setattr(loop, "stop_below", lambda known, cost, gains, *unit: (
        (2.0, "forced {:.2%}") if len(list(known)) >= 2 else real(known, cost, gains, *unit)))
    # on by default in a one-length search (with rungs, promotion does the culling)
    assert run(tmp_path, cache_dir, "--trials", "4",
               "--promote-until", "0", "--no-warm-start", "--rungs", "1", name="es") == 0
    study = load(tmp_path, "es")
    done, stopped = trained(study), [t for t in study.trials if t.state == optuna.trial.TrialState.PRUNED]
    assert len(done) >= 2 and len(done) + len(stopped) == 4
    assert all(0 <= t.user_attrs["mid_val"] <= 1 for t in done + stopped)
    for t in stopped:
        assert t.user_attrs["status"] == "stopped early" and t.user_attrs["stop_reason"].startswith("forced")
        assert "train_seconds" not in t.user_attrs


def test_no_early_stop_trains_every_candidate_to_the_end(tmp_path, cache_dir, monkeypatch):
    import nas_kd.search.loop as loop

    monkeypatch.setattr(loop, "stop_below", lambda known, cost, gains, *unit: (2.0, "forced {:.2%}"))
    assert run(tmp_path, cache_dir, "--trials", "2",
               "--promote-until", "0", "--no-early-stop", "--no-warm-start", "--rungs", "1",
               name="full") == 0
    done = trained(load(tmp_path, "full"))
    assert len(done) == 2 and not any("mid_val" in t.user_attrs for t in done)


def test_settings_are_those_of_the_run_that_created_the_study_with_every_flag(tmp_path, cache_dir):
    import argparse

    from nas_kd.search.cli import build_parser

    assert run(tmp_path, cache_dir, "--trials", "1", "--promote-until", "0", "--seed", "3", name="set") == 0
    first = load(tmp_path, "set").user_attrs["nas_kd.settings"]
    flags = first["flags"]
    assert flags["--budget"] == "150kFLOPs" and flags["--epochs"] == "4" and flags["--trials"] == "1"
    assert flags["--seed"] == "3" and flags["--study-name"] == "set" and flags["--threads"] == "2"
    assert flags["--timeout"] == "none" and flags["--no-early-stop"] == "no" and flags["--device"] == "cpu"
    assert flags["--teacher"] == "quick"  # the effective value: the tiny dataset's default teacher
    options = {a.option_strings[-1] for a in build_parser()._actions if a.help != argparse.SUPPRESS}
    assert set(flags) == options - {"--help"}  # every flag of the search, each with a value
    assert all(isinstance(v, str) for v in flags.values())
    # resumed with another number of trials and a timeout: the study keeps the settings it was created with
    assert run(tmp_path, cache_dir, "--trials", "2",
               "--promote-until", "0", "--seed", "3", "--timeout", "0.001", name="set") == 0
    assert load(tmp_path, "set").user_attrs["nas_kd.settings"] == first


def test_the_storage_url_can_come_from_the_environment(tmp_path, monkeypatch):
    url = f"sqlite:///{tmp_path / 'elsewhere.db'}"
    monkeypatch.setenv("NAS_KD_STORAGE", url)
    assert run(tmp_path, tmp_path / "cache", "--trials", "1", "--promote-until", "0", "--alpha", "0", name="env") == 0
    assert not (tmp_path / "studies" / "env.db").exists()
    study = optuna.load_study(study_name="env", storage=url)
    assert len(trained(study)) == 1 and study.user_attrs["nas_kd.settings"]["flags"]["--storage"] == url
    # --storage, when given, wins over the environment
    other = f"sqlite:///{tmp_path / 'given.db'}"
    assert run(tmp_path, tmp_path / "cache", "--trials", "1",
               "--promote-until", "0", "--alpha", "0", "--storage", other, name="env") == 0
    assert len(trained(optuna.load_study(study_name="env", storage=other))) == 1
