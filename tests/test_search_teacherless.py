"""Search without a teacher (--teacher none): labels only, or self-distillation inside each trial
(--self-distill): no teacher is trained or loaded, candidates are scored and saved as plain
students, their checkpoints hold the exits their promotions resume with."""

import optuna
import pytest
import torch

from nas_kd.model.builder import build_student
from nas_kd.model.spec import ArchSpec
from nas_kd.search.cli import main
from nas_kd.study.records import trial_records
from nas_kd.train import accuracy

ARGS = ["--dataset", "tiny", "--budget", "150k", "--min-steps", "0", "--epochs", "2", "--batch-size", "32",
        "--no-warm-start", "--workers", "1", "--threads", "1", "--trials", "4", "--promote-until", "0"]


def _search(tmp_path, *extra, name="t"):
    cache = tmp_path / "empty-cache"  # no teacher in it: a teacher would have to be trained here
    code = main([*ARGS, "--studies-dir", str(tmp_path), "--cache-dir", str(cache), "--study-name", name, *extra])
    return code, cache


def _study(tmp_path, name="t"):
    return optuna.load_study(study_name=name, storage=f"sqlite:///{tmp_path / (name + '.db')}")


def test_teacher_none_trains_from_labels_and_never_makes_a_teacher(tmp_path, capsys):
    code, cache = _search(tmp_path, "--teacher", "none", "--rungs", "1")
    assert code == 0
    study = _study(tmp_path)
    assert study.user_attrs["nas_kd.identity"]["kd"]["alpha"] == 0
    err = capsys.readouterr().err
    assert "loss = ce (labels only)" in err and "\nteacher: " not in err  # no teacher line: none loaded
    assert not (cache / "teachers").exists()
    assert sum(r.status == "trained" for r in trial_records(study)) == 4


def test_self_distill_trains_exits_scores_the_plain_student_and_promotes_with_its_exits(tmp_path):
    code, _ = _search(tmp_path, "--teacher", "none", "--self-distill", "--rungs", "2", "--eta", "2")
    assert code == 0
    study = _study(tmp_path)
    assert study.user_attrs["nas_kd.identity"]["self_distill"] is True
    from nas_kd.data import load_dataset, split_dataset

    identity = study.user_attrs["nas_kd.identity"]
    split = split_dataset(load_dataset("tiny"), val_size=identity["split"]["val_size"],
                          seed=identity["split"]["split_seed"])
    out = tmp_path / "t" / "trials"
    checked = 0
    for r in trial_records(study):
        if r.status != "trained":
            continue
        spec = ArchSpec.from_dict(r.spec)
        state = torch.load(out / f"{r.number}.ckpt", weights_only=True)["model"]
        has_exits = any(k.startswith("exits.") for k in state)
        assert has_exits == (len(spec.stages) >= 2)
        model = build_student(spec)
        model.load_state_dict(torch.load(out / f"{r.number}.pt", weights_only=True))  # plain: no exit keys
        assert accuracy(model, split.x_val, split.y_val) == pytest.approx(r.val_accuracy, abs=1e-6)
        checked += 1
    assert checked == 4
    rungs = optuna.load_study(study_name="t.rungs", storage=f"sqlite:///{tmp_path / 't.db'}")
    assert [t for t in rungs.trials if t.state == optuna.trial.TrialState.COMPLETE]  # promotions resumed


@pytest.mark.parametrize(("extra", "message"), [
    (["--teacher", "none", "--alpha", "0.5"], "--teacher none trains from labels"),
    (["--teacher", "none", "--kd", "search"], "--teacher none trains from labels"),
    (["--teacher", "none", "--teacher", "quick"], "--teacher none means no teacher"),
    (["--self-distill", "--kd", "fitnet"], "--self-distill distils soft outputs; --kd fitnet"),
    (["--self-distill", "--kd", "search"], "--self-distill distils soft outputs; --kd search"),
])
def test_teacher_none_with_teacher_settings_is_one_line_and_exit_2(tmp_path, capsys, extra, message):
    code, _ = _search(tmp_path, *extra)
    err = capsys.readouterr().err
    assert code == 2 and message in err and len(err.strip().splitlines()) == 1
    assert not (tmp_path / "t.db").exists()
