"""Export recipes beyond one teacher (--recipe ban|dml|takd) on a real tiny study: each runs end to end
and its loss falls, born-again generations learn from their predecessor's logits, mutual-learning
peers exchange outputs, the teacher assistant is cached, a stopped recipe resumes, bad input is one line."""

import json
import math

import optuna
import pytest
import torch

from nas_kd.distill.losses import KDSettings
from nas_kd.distill.mutual import Peers, mutual_loss
from nas_kd.export import main as export_main
from nas_kd.export.retrain import TrainingClock, read_recipe
from nas_kd.export.schemes import SchemeOptions, SchemeRun, run_scheme
from nas_kd.export.schemes.takd import assistant_spec, widen
from nas_kd.model.builder import build_student
from nas_kd.model.cost import analytic_flops
from nas_kd.progress import Progress
from nas_kd.study.records import trial_records
from nas_kd.train import TrainSettings, predict_logits, train_model


def export(study_dir, cache_dir, *extra):
    return export_main(["--study-name", "ex", "--studies-dir", str(study_dir), "--cache-dir", str(cache_dir),
                        "--epochs", "2", "--threads", "2", *extra])


class RecordingRun(SchemeRun):
    """A scheme run that keeps, for every training, its model, targets and the loss of each step."""

    trainings: list

    def train(self, model, label, targets, *, kd=None, **key):
        losses = []
        r = self.recipe
        train_model(model, r.split.x_train, r.split.y_train, r.settings, kd=kd or r.kd,
                    on_step=lambda step, total, loss: losses.append(loss), **targets)
        self.trainings.append({"label": label, "model": model, "targets": targets, "losses": losses})
        return 1.0


def _run(study_dir, cache_dir, tmp_path, options):
    study = optuna.load_study(study_name="ex", storage=f"sqlite:///{study_dir / 'ex.db'}")
    record = next(r for r in trial_records(study) if r.status == "trained")
    recipe = read_recipe(study, record, epochs=4, augment=None, kd_targets_mode="clean", seed=0, data_dir=None,
                         cache_dir=str(cache_dir), progress=Progress(quiet=True))
    run = RecordingRun(recipe, options, tmp_path / "out", TrainingClock(3), Progress(quiet=True),
                       cache_dir=str(tmp_path / "cache"))
    run.trainings = []
    return run, run_scheme(run)


def _falls(losses):
    head, tail = losses[: max(1, len(losses) // 5)], losses[-max(1, len(losses) // 5):]
    return sum(tail) / len(tail) < sum(head) / len(head)


def test_born_again_generations_learn_from_the_previous_generations_logits(study_dir, cache_dir, tmp_path):
    run, outcome = _run(study_dir, cache_dir, tmp_path, SchemeOptions("ban", generations=3))
    gens = run.trainings
    assert [g["label"] for g in gens] == ["generation 1 of 3", "generation 2 of 3", "generation 3 of 3"]
    assert torch.equal(gens[0]["targets"]["teacher_logits"], run.recipe.targets["teacher_logits"])
    x = run.recipe.split.x_train
    for before, after in zip(gens, gens[1:], strict=False):
        assert torch.allclose(after["targets"]["teacher_logits"], predict_logits(before["model"], x), atol=1e-5)
        assert not torch.allclose(after["targets"]["teacher_logits"], run.recipe.targets["teacher_logits"])
    assert all(_falls(g["losses"]) for g in gens)
    entry = outcome.entry
    assert [g["learns_from"] for g in entry["each_generation"]] == ["teacher", "generation 1", "generation 2"]
    best = max(entry["each_generation"], key=lambda g: (g["val_accuracy"], g["generation"]))
    assert entry["shipped_generation"] == best["generation"]
    assert outcome.student.model is gens[best["generation"] - 1]["model"]
    assert 0 <= entry["ensemble"]["test_accuracy"] <= 1


def test_teacher_assistant_sits_between_teacher_and_student_and_the_student_learns_from_it(study_dir, cache_dir,
                                                                                           tmp_path):
    run, outcome = _run(study_dir, cache_dir, tmp_path, SchemeOptions("takd"))
    helper, student = run.trainings
    shape = run.recipe.split.input_shape
    a = outcome.entry["assistant"]
    target = math.sqrt(run.recipe.teacher["flops"] * analytic_flops(run.recipe.spec, shape))
    assert a["flops"] == analytic_flops(widen(run.recipe.spec, a["width_multiplier"]), shape)
    assert analytic_flops(run.recipe.spec, shape) < a["flops"] and a["target_flops"] == round(target)
    assert torch.equal(helper["targets"]["teacher_logits"], run.recipe.targets["teacher_logits"])
    x = run.recipe.split.x_train
    assert torch.allclose(student["targets"]["teacher_logits"], predict_logits(helper["model"], x), atol=1e-5)
    assert _falls(helper["losses"]) and _falls(student["losses"])


def test_widening_is_chosen_in_log_flops():
    from nas_kd.model.spec import parse_summary

    spec = parse_summary("stem8/s2 | ds k3 c16 s2 x1 | ds k3 c32 s2 x1 | fc | relu", 1, 10)
    base = analytic_flops(spec, (1, 28, 28))
    wide, factor = assistant_spec(spec, (1, 28, 28), 4 * base)
    assert factor > 1 and 2 * base < analytic_flops(wide, (1, 28, 28)) < 8 * base
    assert [s.channels for s in wide.stages] == [8 * round(16 * factor / 8), 8 * round(32 * factor / 8)]


def test_mutual_learning_peers_exchange_outputs():
    torch.manual_seed(0)
    labels = torch.tensor([0, 1, 2, 1])
    peer0 = torch.randn(4, 3, requires_grad=True)

    def grad_of_peer0(peer1):
        mutual_loss(torch.stack([peer0, peer1]), labels, KDSettings(alpha=0.0)).backward()
        g = peer0.grad.clone()
        peer0.grad = None
        return g

    other = torch.randn(4, 3)
    assert not torch.allclose(grad_of_peer0(other), grad_of_peer0(other + torch.randn(4, 3)))
    # peer 1's own term sends no gradient into peer 0: its outputs are held fixed there
    p1 = torch.randn(4, 3, requires_grad=True)
    loss = mutual_loss(torch.stack([peer0.detach(), p1]), labels, KDSettings(alpha=0.0))
    loss.backward()
    assert p1.grad is not None and peer0.grad is None


def test_mutual_learning_trains_every_peer(study_dir, cache_dir, tmp_path):
    run, outcome = _run(study_dir, cache_dir, tmp_path, SchemeOptions("dml", peers=3))
    (together,) = run.trainings
    assert isinstance(together["model"], Peers) and len(together["model"].peers) == 3
    assert _falls(together["losses"])
    first = [p.stem[0].weight for p in together["model"].peers]
    assert not torch.allclose(first[0], first[1])  # peers start from different weights
    entry = outcome.entry
    assert len(entry["each_peer"]) == 3 and entry["learns_from"] == "the other peers and the teacher"
    best = max(entry["each_peer"], key=lambda p: (p["val_accuracy"], -p["peer"]))
    assert entry["shipped_peer"] == best["peer"]


def test_peers_train_with_labels_alone_and_the_loss_falls():
    torch.manual_seed(0)
    x = torch.randn(64, 1, 12, 12)
    y = (x.mean((1, 2, 3)) > 0).long()
    from nas_kd.model.spec import parse_summary

    spec = parse_summary("stem8/s2 | ds k3 c16 s2 x1 | fc | relu", 1, 2)
    peers = Peers([build_student(spec), build_student(spec)])
    losses = []
    train_model(peers, x, y, TrainSettings(epochs=20, batch_size=16, lr=0.05), kd=KDSettings(alpha=0.0),
                on_step=lambda s, t, loss: losses.append(loss))
    assert _falls(losses)


@pytest.mark.parametrize("recipe", ["ban", "dml", "takd"])
def test_each_recipe_exports_end_to_end(study_dir, cache_dir, tmp_path, recipe, capsys):
    out = tmp_path / recipe
    assert export(study_dir, cache_dir, "--recipe", recipe, "--out", str(out)) == 0
    card = json.loads((out / "model_card.json").read_text())
    assert card["recipe"]["name"] == recipe
    assert {"ban": "generations", "dml": "peers", "takd": "assistant"}[recipe] in card["recipe"]
    for name in ("model.onnx", "weights.safetensors", "model_card.md"):
        assert (out / name).is_file()
    page = (out / "model_card.md").read_text()
    assert {"ban": "born-again", "dml": "mutual learning", "takd": "teacher assistant"}[recipe] in page
    if recipe == "takd":  # the assistant is cached like a teacher: a second export trains the student only
        again = tmp_path / "again"
        assert export(study_dir, cache_dir, "--recipe", recipe, "--out", str(again)) == 0
        assert "from the cache" in capsys.readouterr().err
        assert json.loads((again / "model_card.json").read_text())["recipe"]["assistant"]["from_cache"]


def test_a_stopped_born_again_export_resumes_where_it_stopped(study_dir, cache_dir, tmp_path, monkeypatch, capsys):
    import nas_kd.export.retrain as export_mod

    real, calls = export_mod.train_model, []

    def stop_in_generation_two(*args, **kwargs):
        calls.append(1)
        if len(calls) == 2:
            raise KeyboardInterrupt
        return real(*args, **kwargs)

    monkeypatch.setattr(export_mod, "train_model", stop_in_generation_two)
    out = tmp_path / "ban"
    assert export(study_dir, cache_dir, "--recipe", "ban", "--generations", "2", "--out", str(out)) == 130
    assert not out.exists() and len(list(export_mod.resume_folder(out).glob("generation-1-of-2-*.pt"))) == 1
    monkeypatch.setattr(export_mod, "train_model", real)
    capsys.readouterr()
    assert export(study_dir, cache_dir, "--recipe", "ban", "--generations", "2", "--out", str(out)) == 0
    assert "resuming generation 1 of 2" in capsys.readouterr().err
    assert len(json.loads((out / "model_card.json").read_text())["recipe"]["each_generation"]) == 2


@pytest.mark.parametrize(("args", "message"), [
    (["--recipe", "ban", "--generations", "0"], "--generations must be at least 1, got 0"),
    (["--recipe", "nope"], "unknown --recipe 'nope': choose one of ban, dml, kd, takd"),
    (["--recipe", "dml", "--peers", "1"], "--peers must be at least 2"),
    (["--recipe", "ban", "--peers", "3"], "--peers applies to --recipe dml, not --recipe ban"),
    (["--generations", "2"], "--generations applies to --recipe ban, not --recipe kd"),
])
def test_bad_recipe_input_is_one_line_and_exit_2(study_dir, cache_dir, tmp_path, capsys, args, message):
    out = tmp_path / "never"
    assert export(study_dir, cache_dir, *args, "--out", str(out)) == 2
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err and len(err.strip().splitlines()) == 1
    assert not out.exists()
