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
    (["--recipe", "nope"], "unknown --recipe 'nope': choose one of ban, dml, kd, self, takd"),
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


def _exit_student(stages="ds k3 c16 s2 x1 | ds k3 c32 s2 x1 | ds k3 c48 s1 x1"):
    from nas_kd.distill.exits import ExitStudent
    from nas_kd.model.spec import parse_summary

    torch.manual_seed(0)
    return ExitStudent(build_student(parse_summary(f"stem8/s1 | {stages} | head32 | fc | relu", 1, 10))).eval()


def test_an_early_exit_student_answers_at_the_last_exit_at_threshold_1_and_the_first_at_0():
    model = _exit_student()
    x = torch.randn(32, 1, 12, 12)
    with torch.no_grad():
        every = model(x)
        plain = model.student(x)
    assert every.shape == (32, 3, 10) and torch.allclose(every[:, -1], plain, atol=1e-6)
    logits, answered = model.predict(x, 1.0)
    assert torch.allclose(logits, plain, atol=1e-6) and (answered == 2).all()
    logits, answered = model.predict(x, 0.0)
    assert torch.allclose(logits, every[:, 0], atol=1e-6) and (answered == 0).all()
    logits, answered = model.predict(x, 0.105)  # in between: each image from the exit that answered it
    assert torch.allclose(logits, every[torch.arange(32), answered], atol=1e-5)


def test_self_distillation_trains_every_exit_from_the_last(study_dir, cache_dir, tmp_path):
    from nas_kd.distill.exits import ExitStudent, self_distill_loss

    run, outcome = _run(study_dir, cache_dir, tmp_path, SchemeOptions("self"))
    (training,) = run.trainings
    assert isinstance(training["model"], ExitStudent) and _falls(training["losses"])
    assert outcome.student.model is training["model"].student  # exits dropped without --exits
    assert len(outcome.entry["each_exit"]) == len(run.recipe.spec.stages)
    # an auxiliary exit learns from the final exit's outputs: changing them changes its gradient
    logits = torch.randn(4, 2, 10, requires_grad=True)
    labels = torch.tensor([1, 2, 3, 4])
    grads = []
    for final in (torch.zeros(4, 10), torch.randn(4, 10) * 3):
        both = torch.stack([logits[:, 0], final], dim=1)
        (g,) = torch.autograd.grad(self_distill_loss(both, labels, KDSettings(alpha=0.0)), logits)
        grads.append(g[:, 0])
    assert not torch.allclose(*grads)


def test_exits_export_with_a_threshold_table_and_onnx_gives_every_exit(study_dir, cache_dir, tmp_path):
    import onnxruntime as ort

    import nas_kd
    from nas_kd.distill.exits import ExitStudent

    out = tmp_path / "exits"
    assert export(study_dir, cache_dir, "--exits", "--out", str(out)) == 0
    card = json.loads((out / "model_card.json").read_text())
    table = card["recipe"]["early_exit"]
    assert card["recipe"]["name"] == "self" and card["recipe"]["exits_kept"]
    assert [row["threshold"] for row in table["thresholds"]][-1] == 1.0
    last = table["thresholds"][-1]
    assert last["exit_share"][-1] == 1.0 and last["mean_flops"] == table["flops_at_exit"][-1]
    assert abs(last["test_accuracy"] - card["test_accuracy"]) < 1e-9
    assert table["flops_at_exit"] == sorted(table["flops_at_exit"]) and table["student_flops"] < last["mean_flops"]
    model = nas_kd.load_student(out)
    assert isinstance(model, ExitStudent)
    x = torch.randn(8, 1, 12, 12)
    with torch.no_grad():
        expected = model(x).numpy()
    got = ort.InferenceSession(str(out / "model.onnx"), providers=["CPUExecutionProvider"]).run(
        None, {"images": x.numpy()})[0]
    assert got.shape == expected.shape == (8, model.n_exits, card["dataset"]["num_classes"])
    assert abs(got - expected).max() < 1e-4
    assert "| threshold | test accuracy |" in (out / "model_card.md").read_text()


def test_exits_need_two_stages_and_no_other_recipe(study_dir, cache_dir, tmp_path, capsys):
    import dataclasses

    from nas_kd.errors import UserError
    from nas_kd.model.spec import parse_summary

    run, _ = _run(study_dir, cache_dir, tmp_path, SchemeOptions("kd"))
    one = parse_summary("stem8/s2 | ds k3 c16 s2 x2 | fc | relu", 1, run.recipe.spec.num_classes)
    run.recipe = dataclasses.replace(run.recipe, spec=one)
    run.options = SchemeOptions("self", exits=True)
    with pytest.raises(UserError, match="at least two stages"):
        run_scheme(run)
    for args, message in ((["--exits", "--recipe", "ban"], "--exits are trained by --recipe self, not --recipe ban"),
                          (["--exits", "--int8"], "--int8 does not quantize early-exit students yet")):
        assert export(study_dir, cache_dir, *args, "--out", str(tmp_path / "never")) == 2
        err = capsys.readouterr().err
        assert message in err and len(err.strip().splitlines()) == 1


def test_the_report_draws_an_exported_early_exit_curve_beside_the_front(study_dir, cache_dir):
    from nas_kd.report.cli import main as report_main

    out = study_dir / "ex" / "export-exits"  # a default-style folder inside the study's folder
    assert export(study_dir, cache_dir, "--exits", "--out", str(out)) == 0
    assert report_main(["--study-name", "ex", "--studies-dir", str(study_dir), "--no-png"]) == 0
    page = (study_dir / "ex" / "report.html").read_text()
    card = json.loads((out / "model_card.json").read_text())
    assert f"early exit, trial {card['trial']} (test, exported)" in page
    assert "Dotted diamonds: exported early-exit students" in page


def test_an_exit_pools_its_stage_to_a_small_grid_first_and_onnx_agrees_on_partial_windows():
    import io

    import numpy as np

    from nas_kd.distill.exits import ExitHead, ExitPrefix, GridPool
    from nas_kd.model.cost import count_flops
    from nas_kd.model.latency import export_onnx, ort_session

    x = torch.randn(2, 3, 14, 14)
    pooled = GridPool(4)(x)  # windows of 4, the last one 2 wide: a mean over what it covers
    assert pooled.shape == (2, 3, 4, 4)
    assert torch.allclose(pooled[..., 3, 3], x[..., 12:, 12:].mean((-2, -1)), atol=1e-6)
    assert torch.allclose(pooled[..., 0, 1], x[..., :4, 4:8].mean((-2, -1)), atol=1e-6)
    assert torch.equal(GridPool(4)(x[..., :4, :4]), x[..., :4, :4])  # small enough already: untouched
    head = ExitHead(3, 10, "relu").eval()
    buffer = io.BytesIO()
    export_onnx(head, x[:1], buffer)
    got = ort_session(buffer.getvalue()).run(None, {"images": x.numpy()})[0]
    with torch.no_grad():
        assert np.abs(got - head(x).numpy()).max() < 1e-4
    # the first exit's 1x1 conv runs on 4x4, not on its stage's 6x6: cheaper than the full-resolution head
    pooled_model, full = _exit_student(), _exit_student()
    full.exits[0] = ExitHead(16, 10, "relu", grid=None)
    at = [count_flops(ExitPrefix(m.eval(), 0).eval(), (1, 12, 12)) for m in (pooled_model, full)]
    assert at[0] < at[1]


def test_an_early_exit_export_from_before_the_pooling_loads_with_full_resolution_heads(tmp_path):
    from safetensors.torch import save_file

    import nas_kd
    from nas_kd.distill.exits import EXITS_FILE, ExitStudent

    legacy = ExitStudent(_exit_student().student, grid=None).eval()
    (tmp_path / "spec.json").write_text(legacy.student.spec.to_json())
    save_file({k: v.contiguous() for k, v in legacy.state_dict().items()}, str(tmp_path / "weights.safetensors"))
    (tmp_path / EXITS_FILE).write_text(json.dumps({"exits": 3}))  # as stop 30's exports wrote it
    model = nas_kd.load_student(tmp_path)
    x = torch.randn(4, 1, 12, 12)
    with torch.no_grad():
        assert model.grid is None and torch.allclose(model(x), legacy(x), atol=1e-6)
