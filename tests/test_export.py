"""Export from a real tiny study: every file, both runtimes checked, load_student, the model card."""

import json

import numpy as np
import optuna
import pytest
import torch

import nas_kd
from nas_kd.export import main as export_main
from nas_kd.export.pick import pick_trial
from nas_kd.export.retrain import export_epochs
from nas_kd.model.builder import build_student
from nas_kd.model.cost import count_cost
from nas_kd.model.memory import count_footprint
from nas_kd.model.spec import ArchSpec
from nas_kd.study.records import TrialRecord


def export(study_dir, cache_dir, *extra):
    return export_main(["--study-name", "ex", "--studies-dir", str(study_dir), "--cache-dir", str(cache_dir),
                        "--epochs", "3", "--threads", "2", *extra])


def test_export_writes_checked_deployables_and_a_card(study_dir, cache_dir, capsys):
    assert export(study_dir, cache_dir, "--ablation", "--out", str(study_dir / "out")) == 0
    folder = study_dir / "out"
    for name in ("spec.json", "weights.safetensors", "model.ts", "model.onnx", "model_card.json", "model_card.md"):
        assert (folder / name).is_file(), name
    card = json.loads((folder / "model_card.json").read_text())
    spec = ArchSpec.from_json((folder / "spec.json").read_text())

    model = nas_kd.load_student(folder)
    assert card["flops"] == count_cost(build_student(spec), (1, 12, 12)).flops
    assert card["params"] == count_cost(model, (1, 12, 12)).params
    assert card["flops_thop"] > 0 and card["test_accuracy"] >= 0 and card["train_seconds"] > 0
    assert "labels_only_test_accuracy" in card["ablation"]
    assert card["training"]["augment"] == "none" and card["kd_targets"] == "clean"
    assert card["training"]["epochs"] == 3 and card["training"]["seed"] == 0
    assert card["teacher"]["sha256"] and card["latency_us_per_image"]["onnxruntime"] > 0
    footprint = count_footprint(spec, (1, 12, 12))
    assert card["int8_footprint"]["peak_memory_bytes"] == footprint.peak_memory
    assert card["int8_footprint"]["model_size_bytes"] == footprint.model_size
    assert f"{footprint.peak_memory:,} B" in (folder / "model_card.md").read_text()

    x = torch.randn(16, 1, 12, 12)
    with torch.inference_mode():
        expected = model(x).numpy()
    import onnxruntime as ort

    onnx_out = ort.InferenceSession(str(folder / "model.onnx"), providers=["CPUExecutionProvider"]).run(
        None, {"images": x.numpy()})[0]
    assert np.abs(onnx_out - expected).max() < 1e-4
    scripted = torch.jit.load(str(folder / "model.ts"))
    assert np.abs(scripted(x).detach().numpy() - expected).max() < 1e-4
    assert card["onnx_max_abs_diff"] < 1e-4
    assert "test accuracy" in (folder / "model_card.md").read_text()
    assert not [p for p in study_dir.iterdir() if p.name.startswith(".out-")]  # no temporary folder left


def test_load_student_reproduces_the_exported_logits(study_dir, cache_dir):
    assert export(study_dir, cache_dir, "--pick", "knee", "--out", str(study_dir / "knee")) == 0
    a = nas_kd.load_student(study_dir / "knee")
    b = nas_kd.load_student(study_dir / "knee")
    x = torch.randn(4, 1, 12, 12)
    assert torch.equal(a(x), b(x))
    assert a.training is False


def test_export_distils_from_augmented_views_with_the_seed_asked_for(study_dir, cache_dir):
    assert export(study_dir, cache_dir, "--kd-targets", "views", "--seed", "3", "--augment", "crop",
                  "--out", str(study_dir / "views")) == 0
    card = json.loads((study_dir / "views" / "model_card.json").read_text())
    assert card["kd_targets"] == "views" and card["training"]["seed"] == 3 and card["training"]["augment"] == "crop"
    assert "teacher targets views, seed 3" in (study_dir / "views" / "model_card.md").read_text()


def _study(study_dir):
    return optuna.load_study(study_name="ex", storage=f"sqlite:///{study_dir / 'ex.db'}")


def test_bad_choices_exit_2_and_write_nothing(study_dir, cache_dir, capsys, tmp_path):
    infeasible = [t.number for t in _study(study_dir).trials if t.user_attrs.get("status") == "infeasible"]
    cases = [(["--trial", "999"], "no trial 999"), (["--pick", "sideways"], "unknown --pick"),
             (["--augment", "sideways"], "unknown augmentation 'sideways'"),
             (["--kd-targets", "x"], "unknown KD targets 'x'")]
    if infeasible:
        cases.append((["--trial", str(infeasible[0])], "over budget"))
    for args, message in cases:
        out = tmp_path / "never"
        assert export(study_dir, cache_dir, *args, "--out", str(out)) == 2
        assert message in capsys.readouterr().err
        assert not out.exists()
    assert export_main(["--study-name", "nope", "--studies-dir", str(study_dir)]) == 2
    assert "no study named 'nope'" in capsys.readouterr().err


def test_missing_teacher_is_a_clear_error(study_dir, tmp_path, capsys):
    assert export(study_dir, tmp_path / "empty-cache", "--out", str(tmp_path / "x")) == 2
    assert "no trained teacher" in capsys.readouterr().err
    assert not (tmp_path / "x").exists()


def _rec(n, acc, flops, status="trained"):
    return TrialRecord(n, "COMPLETE", status, acc, flops, 1000, 1.0, "", {}, status != "infeasible")


def test_pick_rules():
    recs = [_rec(0, 0.80, 1e5), _rec(1, 0.90, 4e5), _rec(2, 0.91, 2e6), _rec(3, 0.99, 9e6, "infeasible"),
            _rec(4, 0.85, 3e5)]
    assert pick_trial(recs, pick="best").number == 2
    assert pick_trial(recs, pick="max-acc-under:500k").number == 1
    assert pick_trial(recs, pick="knee").number == 1
    assert pick_trial(recs, trial=4).number == 4


def test_default_retraining_is_20_epochs_100_on_fashion_mnist_and_at_least_1000_steps(study_dir, cache_dir):
    assert export_epochs(55_000, 128) == 20  # 8,580 steps already
    assert export_epochs(55_000, 128, "fashion-mnist") == 100  # students there gain from long KD
    assert export_epochs(1146, 128, "digits") == 125  # digits: 8 steps an epoch
    out = study_dir / "default-epochs"
    assert export_main(["--study-name", "ex", "--studies-dir", str(study_dir), "--cache-dir", str(cache_dir),
                        "--threads", "2", "--out", str(out)]) == 0
    card = json.loads((out / "model_card.json").read_text())
    steps_per_epoch = card["dataset"]["train_size"] // card["training"]["batch_size"]
    assert card["training"]["epochs"] == export_epochs(card["dataset"]["train_size"], card["training"]["batch_size"])
    assert 1000 <= card["training"]["epochs"] * steps_per_epoch < 1000 + steps_per_epoch


def test_interrupted_export_resumes_to_the_same_student(study_dir, cache_dir, monkeypatch, capsys):
    from safetensors.torch import load_file

    import nas_kd.export.retrain as export_mod

    assert export(study_dir, cache_dir, "--out", str(study_dir / "whole")) == 0
    real = export_mod.train_model

    def stopped_in_epoch_three(*args, **kwargs):
        inner = kwargs["on_step"]

        def on_step(step, total, loss):
            inner(step, total, loss)
            if step == total * 5 // 6:  # 3 epochs: two are checkpointed
                raise KeyboardInterrupt

        return real(*args, **{**kwargs, "on_step": on_step})

    monkeypatch.setattr(export_mod, "train_model", stopped_in_epoch_three)
    out = study_dir / "resumed"
    assert export(study_dir, cache_dir, "--out", str(out)) == 130
    assert "the same command resumes it" in capsys.readouterr().err
    assert not out.exists() and list(export_mod.resume_folder(out).glob("kd-*.pt"))

    monkeypatch.setattr(export_mod, "train_model", real)
    assert export(study_dir, cache_dir, "--out", str(out)) == 0
    assert "resuming KD training" in capsys.readouterr().err
    assert not export_mod.resume_folder(out).exists()
    whole, resumed = load_file(study_dir / "whole" / "weights.safetensors"), load_file(out / "weights.safetensors")
    assert whole.keys() == resumed.keys()
    for k in whole:
        assert torch.allclose(whole[k].float(), resumed[k].float(), atol=1e-6), k
    card = json.loads((out / "model_card.json").read_text())
    assert card["training"]["epochs"] == 3 and card["train_seconds"] > 0


def test_export_folder_is_readable_by_other_users(study_dir, cache_dir):
    import os
    import stat

    out = study_dir / "shared"
    old = os.umask(0o022)
    try:
        assert export(study_dir, cache_dir, "--out", str(out)) == 0
    finally:
        os.umask(old)
    assert stat.S_IMODE(out.stat().st_mode) == 0o755
    files = [p for p in out.rglob("*") if p.is_file()]
    assert {p.name for p in files} >= {"weights.safetensors", "model.onnx", "model_card.json"}
    assert {p.name: oct(stat.S_IMODE(p.stat().st_mode)) for p in files} == {p.name: "0o644" for p in files}


def test_progress_shows_the_time_left_over_both_trainings(study_dir, cache_dir, capsys):
    from nas_kd.export.retrain import TrainingClock

    now = [0.0]
    clock = TrainingClock(trainings=2, now=lambda: now[0])
    clock.next_training()
    texts = []
    for step in range(1, 11):  # 10 s a step
        now[0] = 10.0 * step
        texts.append(clock.text(step, 10))
    assert texts[4] == "elapsed 00:50, about 02:30 left"  # 5 + 10 steps to go
    assert texts[9] == "elapsed 01:40, about 01:40 left"  # the ablation's 10 steps are still ahead
    clock.next_training()
    now[0] = 110.0
    assert clock.text(6, 10) == "elapsed 01:50, about 00:40 left"  # resumed at step 5: 11 steps run here
    now[0] = 150.0
    assert clock.text(10, 10) == "elapsed 02:30"

    assert clock.text(1, 1000) == "elapsed 02:30"  # no rate from one step yet: its time is mostly start-up

    now[0] = 1000.0
    paused = TrainingClock(trainings=1, now=lambda: now[0])
    paused.next_training()
    for step in range(1, 11):  # 10 s a step, and an hour stopped (Ctrl-Z) after step 5
        now[0] = 1000.0 + 10.0 * step + (3600.0 if step > 5 else 0.0)
        text = paused.text(step, 20)
    # 10 steps to go at 9 s (10 steps in 90 s: the gap the pause fell in is not counted), not at 370 s
    assert text == "elapsed 1:01:40, about 01:30 left"

    assert export(study_dir, cache_dir, "--ablation", "--out", str(study_dir / "eta")) == 0
    assert "elapsed 00:0" in capsys.readouterr().err  # a real export's progress goes through the clock


def test_zero_threads_is_a_one_line_usage_error(study_dir, cache_dir, capsys, tmp_path):
    with pytest.raises(SystemExit) as stop:
        export(study_dir, cache_dir, "--threads", "0", "--out", str(tmp_path / "never"))
    assert stop.value.code == 2
    err = capsys.readouterr().err
    assert "--threads must be at least 1, got 0" in err and "Traceback" not in err
    assert not (tmp_path / "never").exists()


def test_ranked_trials_for_screening():
    from nas_kd.errors import UserError
    from nas_kd.export.pick import ranked_trials

    recs = [_rec(0, 0.80, 1e5), _rec(1, 0.90, 4e5), _rec(2, 0.91, 2e6), _rec(3, 0.99, 9e6, "infeasible"),
            _rec(4, 0.85, 3e5), _rec(5, 0.90, 3e5)]
    assert [r.number for r in ranked_trials(recs, "best", 3)] == [2, 5, 1]  # of equals, the cheaper first
    assert [r.number for r in ranked_trials(recs, "max-acc-under:350k", 9)] == [5, 4, 0]
    with pytest.raises(UserError, match="needs a ranking"):
        ranked_trials(recs, "knee", 2)


def test_screen_exports_the_best_screened_trial_and_reuses_the_screening(study_dir, cache_dir, monkeypatch):
    import nas_kd.export.retrain as export_mod
    from nas_kd.export.pick import ranked_trials
    from nas_kd.study.records import trial_records

    top = [r.number for r in ranked_trials(trial_records(_study(study_dir)), "best", 2)]
    assert len(top) == 2, "the fixture study needs two trained trials"
    runs, real = [], export_mod.train_model

    def counted(*args, **kwargs):
        runs.append(kwargs["settings"].epochs if "settings" in kwargs else args[3].epochs)
        return real(*args, **kwargs)

    monkeypatch.setattr(export_mod, "train_model", counted)
    assert export(study_dir, cache_dir, "--screen", "2", "--screen-epochs", "2", "--seed", "5",
                  "--out", str(study_dir / "screened")) == 0
    assert runs == [2, 2, 3]  # two screenings, then the export
    card = json.loads((study_dir / "screened" / "model_card.json").read_text())
    s = card["screening"]
    assert [c["trial"] for c in s["candidates"]] == top and s["epochs"] == 2 and s["seed"] == 0
    best = max(s["candidates"], key=lambda c: (c["screen_val_accuracy"], -c["flops"]))
    assert card["trial"] == s["chosen_trial"] == best["trial"]
    assert card["training"]["seed"] == 5 and card["training"]["epochs"] == 3
    assert all(0 < c["screen_val_accuracy"] <= 1 and c["train_seconds"] > 0 for c in s["candidates"])
    assert f"trial {best['trial']} (shipped)" in (study_dir / "screened" / "model_card.md").read_text()
    folder = study_dir / "ex" / "screening"
    assert len(list(folder.glob("*.json"))) == 2 and not list(folder.glob("*.pt")) + list(folder.glob("*.claim"))

    runs.clear()  # another seed's export shares the screening: only its own training runs
    assert export(study_dir, cache_dir, "--screen", "2", "--screen-epochs", "2", "--seed", "6",
                  "--out", str(study_dir / "screened-6")) == 0
    assert runs == [3]
    again = json.loads((study_dir / "screened-6" / "model_card.json").read_text())
    assert again["screening"]["candidates"] == s["candidates"] and again["trial"] == card["trial"]


def test_screening_left_by_a_stopped_process_is_resumed(study_dir, cache_dir, tmp_path, monkeypatch):
    from nas_kd.export.pick import ranked_trials
    from nas_kd.export.screen import screen_trials
    from nas_kd.progress import Progress
    from nas_kd.study.records import trial_records

    study = _study(study_dir)
    top = ranked_trials(trial_records(study), "best", 2)
    folder = tmp_path / "screening"
    folder.mkdir()
    (folder / "stale.claim").write_text("elsewhere 1")  # unrelated names are left alone
    kwargs = dict(epochs=1, augment=None, kd_targets_mode="clean", data_dir=None, cache_dir=str(cache_dir),
                  progress=Progress())
    first = screen_trials(study, top, folder, **kwargs)
    for f in folder.glob("*.json"):  # as if the process had died holding its claims, results unwritten
        f.with_suffix(".claim").write_text(f"{__import__('socket').gethostname()} 999999999")
        f.unlink()
    again = screen_trials(study, top, folder, **kwargs)
    assert [s.val_accuracy for s in again] == [s.val_accuracy for s in first]
    assert sorted(p.name for p in folder.iterdir() if p.suffix == ".claim") == ["stale.claim"]

    # a live process's claim is waited for, and its result used rather than trained again
    import os
    import socket
    import threading

    import nas_kd.export.screen as screen_mod

    result = sorted(folder.glob("*.json"))[0]
    result.unlink()
    result.with_suffix(".claim").write_text(f"{socket.gethostname()} {os.getpid()}")

    def other_export_finishes():
        result.write_text(json.dumps({"val_accuracy": 0.5, "seconds": 1.0}))
        result.with_suffix(".claim").unlink()

    monkeypatch.setattr(screen_mod, "WAIT_SECONDS", 0.2)
    timer = threading.Timer(2.0, other_export_finishes)
    timer.start()
    try:
        waited = screen_trials(study, top, folder, **kwargs)
    finally:
        timer.join()
    number = int(result.name.split("-")[0].removeprefix("trial"))
    assert {s.record.number: s.val_accuracy for s in waited}[number] == 0.5

    # the time left counts only what this export trains, not what another export sharing the screening
    # trains (that made the estimate about twice too long with two exports)
    results = sorted(folder.glob("*.json"))
    for f in results:
        f.unlink()
    other = results[0]
    other.with_suffix(".claim").write_text(f"{socket.gethostname()} {os.getpid()}")
    left_after_start, real_fit = [], screen_mod.fit

    def fit_recording_the_clock(recipe, model, kd, targets, label, checkpoint, clock, progress):
        seconds = real_fit(recipe, model, kd, targets, label, checkpoint, clock, progress)
        left_after_start.append(clock.not_started)
        other.write_text(json.dumps({"val_accuracy": 0.5, "seconds": 1.0}))
        other.with_suffix(".claim").unlink()
        return seconds

    monkeypatch.setattr(screen_mod, "fit", fit_recording_the_clock)
    screen_mod.screen_trials(study, top, folder, **kwargs)
    assert left_after_start == [0]


def test_screening_is_the_default_before_a_long_export_only(study_dir, cache_dir, monkeypatch, capsys):
    import nas_kd.export.screen as screen_mod
    from nas_kd.export.pick import ranked_trials
    from nas_kd.export.screen import default_screen
    from nas_kd.study.records import trial_records

    assert default_screen(trial=None, pick="best", export_epochs=100) == 4
    assert default_screen(trial=None, pick="max-acc-under:1M", export_epochs=150) == 4
    assert default_screen(trial=None, pick="best", export_epochs=99) == 1  # a 20-epoch export is not screened
    assert default_screen(trial=3, pick="best", export_epochs=100) == 1  # nor one trial named by number
    assert default_screen(trial=None, pick="knee", export_epochs=100) == 1

    assert export(study_dir, cache_dir, "--out", str(study_dir / "short")) == 0  # 3 epochs: no screening
    assert "screening" not in json.loads((study_dir / "short" / "model_card.json").read_text())
    monkeypatch.setattr(screen_mod, "LONG_EXPORT_EPOCHS", 3)  # count the fixture's 3-epoch export as long
    capsys.readouterr()
    assert export(study_dir, cache_dir, "--screen-epochs", "1", "--out", str(study_dir / "auto")) == 0
    top = [r.number for r in ranked_trials(trial_records(_study(study_dir)), "best", 4)]
    s = json.loads((study_dir / "auto" / "model_card.json").read_text())["screening"]
    assert [c["trial"] for c in s["candidates"]] == top and len(top) >= 2 and s["epochs"] == 1
    assert "--screen 1 skips it" in capsys.readouterr().err
    assert export(study_dir, cache_dir, "--screen", "1", "--out", str(study_dir / "off")) == 0
    assert "screening" not in json.loads((study_dir / "off" / "model_card.json").read_text())


def test_screen_mistakes_exit_2_and_write_nothing(study_dir, cache_dir, capsys, tmp_path):
    out = tmp_path / "never"
    for args, message in [(["--screen", "2", "--trial", "0"], "give --pick, not --trial"),
                          (["--screen", "2", "--pick", "knee"], "needs a ranking"),
                          (["--screen-epochs", "4"], "--screen-epochs applies with --screen K")]:
        assert export(study_dir, cache_dir, *args, "--out", str(out)) == 2
        assert message in capsys.readouterr().err
    for args, message in [(["--screen", "0"], "--screen must be at least 1"),
                          (["--screen", "2", "--screen-epochs", "-1"], "--screen-epochs must be above 0")]:
        with pytest.raises(SystemExit) as stop:
            export(study_dir, cache_dir, *args, "--out", str(out))
        assert stop.value.code == 2 and message in capsys.readouterr().err
    assert not out.exists()
