"""Teachers on the generated 'tiny' set: caching, hash checks, ensembles, resumable training, CLI."""

import json
import shutil

import pytest
import torch

import nas_kd.teacher.load as load_mod
import nas_kd.teacher.members as members_mod
import nas_kd.teacher.recipes as recipes_mod
from nas_kd.data import load_dataset, split_dataset
from nas_kd.errors import UserError
from nas_kd.teacher import (
    EnsembleTeacher,
    build_teacher,
    kd_targets,
    load_or_train_teacher,
    load_teacher,
    teacher_logits,
)
from nas_kd.teacher.cache import ACCURACY, LOGITS_DIR
from nas_kd.teacher.cli import main
from nas_kd.train import TrainSettings, accuracy, train_model


@pytest.fixture(scope="module")
def split():
    data = load_dataset("tiny")
    return split_dataset(data, val_size=58, seed=0)


def test_teacher_is_cached_and_reused(split, cache_dir):
    first = load_or_train_teacher(split, cache_dir=cache_dir)
    assert first.info.val_accuracy > 0.5 and 0 <= first.info.test_accuracy <= 1
    assert first.info.flops > 0 and first.info.params > 0
    again = load_or_train_teacher(split, cache_dir=cache_dir, train=False)
    assert again.info.sha256 == first.info.sha256
    x = split.x_val[:8]
    assert torch.allclose(first.model.eval()(x), again.model.eval()(x), atol=1e-5)
    logits = teacher_logits(again, split, cache_dir=cache_dir)
    assert logits.shape == (len(split.y_train), split.num_classes)
    assert torch.allclose(logits[:8], again.model(split.x_train[:8]), atol=1e-5)


def test_the_records_a_study_and_a_model_card_keep(split, cache_dir):
    single = load_or_train_teacher(split, cache_dir=cache_dir)
    record = single.info.study_record()
    assert list(record) == ["key", "sha256", "val_accuracy", "test_accuracy", "arch", "flops", "params"]
    assert json.loads(json.dumps(record)) == record and record["arch"] == single.info.arch
    card = single.info.card_record()
    assert list(card) == ["key", "sha256", "val_accuracy", "test_accuracy", "flops", "params"]
    pair = load_teacher(split, ("quick", "quick"), cache_dir=cache_dir)
    assert pair.info.study_record()["arch"] == [single.info.arch, single.info.arch]
    assert pair.info.kind == "ensemble" and pair.info.parts == (single.info.key, single.info.key)


def test_tampered_teacher_file_is_refused(split, tmp_path):
    t = load_or_train_teacher(split, cache_dir=tmp_path)
    weights = next((tmp_path / "teachers" / t.info.key).glob("member-0.pt"))
    data = bytearray(weights.read_bytes())
    data[-20] ^= 0xFF
    weights.write_bytes(bytes(data))
    with pytest.raises(UserError, match="does not match its recorded SHA-256"):
        load_or_train_teacher(split, cache_dir=tmp_path)


def test_ensemble_averages_member_logits_exactly(split, cache_dir):
    ens = load_or_train_teacher(split, recipe="ensemble", cache_dir=cache_dir)
    assert isinstance(ens.model, EnsembleTeacher) and len(ens.model.members) == 2
    x = split.x_val
    a, b = (m.eval()(x) for m in ens.model.members)
    assert torch.allclose(ens.model(x), (a + b) / 2, atol=1e-6)
    assert not torch.allclose(a, b)  # two seeds, two different members
    weighted = EnsembleTeacher(list(ens.model.members), weights=[3.0, 1.0]).eval()
    assert torch.allclose(weighted(x), 0.75 * a + 0.25 * b, atol=1e-6)
    assert ens.info.val_accuracy == pytest.approx(((a + b).argmax(1) == split.y_val).float().mean().item())


def test_an_ensembles_accuracy_is_measured_once_per_split(split, cache_dir, monkeypatch):
    first = load_or_train_teacher(split, recipe="ensemble", cache_dir=cache_dir)
    monkeypatch.setattr(load_mod, "accuracy", lambda *a, **k: pytest.fail("measured again"))
    again = load_or_train_teacher(split, recipe="ensemble", cache_dir=cache_dir, train=False)
    assert (again.info.val_accuracy, again.info.test_accuracy) == (
        first.info.val_accuracy, first.info.test_accuracy)
    cached = next((cache_dir / "teachers" / first.info.key).glob("ensemble-*.json"))
    cached.write_text(cached.read_text().replace('"split_seed": 0', '"split_seed": 9'))  # another split's
    with pytest.raises(pytest.fail.Exception, match="measured again"):
        load_or_train_teacher(split, recipe="ensemble", cache_dir=cache_dir, train=False)


def test_a_shipped_ensembles_recorded_accuracy_is_used_for_its_own_split_only(split, cache_dir, tmp_path,
                                                                              monkeypatch):
    first = load_or_train_teacher(split, recipe="ensemble", cache_dir=cache_dir)
    shipped = tmp_path / "shipped" / LOGITS_DIR
    shipped.mkdir(parents=True)
    record = {"split": split.identity, "val_accuracy": 0.123, "test_accuracy": 0.456}
    (shipped / ACCURACY).write_text(json.dumps({first.info.sha256: record}))
    monkeypatch.setenv("NAS_KD_SHIPPED_DIR", str(tmp_path / "shipped"))
    monkeypatch.setattr(load_mod, "accuracy", lambda *a, **k: pytest.fail("measured again"))
    fresh_cache = tmp_path / "cache"
    shutil.copytree(cache_dir / "teachers" / first.info.key, fresh_cache / "teachers" / first.info.key,
                    ignore=shutil.ignore_patterns("ensemble-*.json"))  # its members, not its measured accuracy
    again = load_or_train_teacher(split, recipe="ensemble", cache_dir=fresh_cache, train=False)
    assert (again.info.val_accuracy, again.info.test_accuracy) == (0.123, 0.456)
    record["split"] = {**split.identity, "split_seed": 9}  # recorded for another split: not used
    (shipped / ACCURACY).write_text(json.dumps({first.info.sha256: record}))
    with pytest.raises(pytest.fail.Exception, match="measured again"):
        load_or_train_teacher(split, recipe="ensemble", cache_dir=fresh_cache, train=False)


def test_training_resumes_exactly_after_an_interruption(split, tmp_path):
    settings = TrainSettings(epochs=3, batch_size=32, lr=0.05, augment="crop-flip-erase", seed=3)

    def fresh():
        torch.manual_seed(0)
        return build_teacher({"arch": "resnet", "width": 4, "blocks": [1]}, 1, split.num_classes)

    reference = fresh()
    train_model(reference, split.x_train, split.y_train, settings)

    steps_per_epoch = len(split.y_train) // 32
    ckpt = tmp_path / "run.ckpt"

    def stop_in_epoch_two(step, total, loss):
        if step == steps_per_epoch + 2:
            raise KeyboardInterrupt

    model = fresh()
    with pytest.raises(KeyboardInterrupt):
        train_model(model, split.x_train, split.y_train, settings, on_step=stop_in_epoch_two, checkpoint=ckpt)
    assert ckpt.exists()
    resumed = fresh()
    result = train_model(resumed, split.x_train, split.y_train, settings, checkpoint=ckpt)
    assert result.steps == 3 * steps_per_epoch
    for k, v in reference.state_dict().items():
        assert torch.allclose(v.float(), resumed.state_dict()[k].float(), atol=1e-6), k


def test_teacher_train_cli_resumes_after_interruption(tmp_path, monkeypatch, capsys):
    real = members_mod.train_model
    calls = {"n": 0}

    def interrupted_once(*args, **kwargs):
        calls["n"] += 1
        if calls["n"] == 1:
            inner = kwargs["on_step"]

            def on_step(step, total, loss):
                inner(step, total, loss)
                if step == total // 2:
                    raise KeyboardInterrupt

            kwargs["on_step"] = on_step
        return real(*args, **kwargs)

    monkeypatch.setattr(members_mod, "train_model", interrupted_once)
    args = ["train", "--dataset", "tiny", "--cache-dir", str(tmp_path)]
    assert main(args) == 130
    assert list(tmp_path.glob("teachers/*/member-0.ckpt"))
    assert main(args) == 0
    err = capsys.readouterr().err
    assert "resuming" in err
    assert not list(tmp_path.glob("teachers/*/member-0.ckpt"))
    record = json.loads(next(tmp_path.glob("teachers/*/member-0.json")).read_text())
    assert record["train_seconds"] > 0


def test_teacher_show_measures_test_accuracy(cache_dir, split, capsys):
    t = load_or_train_teacher(split, cache_dir=cache_dir)
    assert main(["show", "--dataset", "tiny", "--cache-dir", str(cache_dir)]) == 0
    out = capsys.readouterr().out.strip().splitlines()
    assert out[-1] == f"test accuracy: {t.info.test_accuracy:.2%}"
    assert any(line.startswith("sha256: ") for line in out) and any("FLOPs" in line for line in out)


def test_zero_threads_is_a_usage_error_before_any_work(tmp_path, capsys):
    with pytest.raises(SystemExit) as stop:
        main(["train", "--dataset", "tiny", "--threads", "0", "--cache-dir", str(tmp_path)])
    assert stop.value.code == 2
    err = capsys.readouterr().err
    assert "--threads must be at least 1, got 0" in err and "Traceback" not in err
    assert not list(tmp_path.iterdir())


def test_show_without_a_trained_teacher_says_how_to_train(tmp_path, capsys):
    assert main(["show", "--dataset", "tiny", "--cache-dir", str(tmp_path)]) == 2
    assert "python -m nas_kd.teacher train --dataset tiny" in capsys.readouterr().err


def test_search_with_two_teachers_distils_from_their_weighted_average(tmp_path, cache_dir, split, capsys):
    from nas_kd.search.cli import main as search_main
    args = ["--dataset", "tiny", "--budget", "150k", "--min-steps", "0",
            "--epochs", "1", "--batch-size", "32", "--trials", "1", "--promote-until", "0",
            "--studies-dir", str(tmp_path), "--cache-dir", str(cache_dir), "--study-name", "ens", "--threads", "2",
            "--teacher", "quick", "--teacher", "ensemble", "--ensemble-weights", "2,1"]
    assert search_main(args) == 0
    assert "teacher: ensemble of 2 (quick+ensemble, weights [2.0, 1.0]): val" in capsys.readouterr().err
    teacher = load_teacher(split, ("quick", "ensemble"), (2.0, 1.0), cache_dir=cache_dir, train=False)
    single = load_or_train_teacher(split, recipe="quick", cache_dir=cache_dir, train=False)
    pair = load_or_train_teacher(split, recipe="ensemble", cache_dir=cache_dir, train=False)
    x = split.x_val
    expected = (2 * single.model(x) + pair.model(x)) / 3
    assert torch.allclose(teacher.model(x), expected, atol=1e-5)
    import optuna

    study = optuna.load_study(study_name="ens", storage=f"sqlite:///{tmp_path / 'ens.db'}")
    recorded = study.user_attrs["nas_kd.teacher"]
    assert recorded["sha256"] == teacher.info.sha256 and "+" in recorded["key"]
    assert study.user_attrs["nas_kd.identity"]["teacher"]["sha256"] == teacher.info.sha256
    assert recorded["val_accuracy"] == pytest.approx(teacher.info.val_accuracy)
    # the same run with other weights is another teacher: resuming with it is refused
    assert search_main([*args[:-1], "1,1"]) == 2


def test_a_default_of_several_recipes_is_their_weighted_ensemble(split, cache_dir, monkeypatch, tmp_path, capsys):
    named = load_teacher(split, ("quick", "ensemble"), (2.0, 1.0), cache_dir=cache_dir)
    monkeypatch.setitem(recipes_mod.DEFAULT_TEACHER, "tiny", (("quick", "ensemble"), (2.0, 1.0)))
    default = load_teacher(split, (), cache_dir=cache_dir, train=False)
    assert default.info.sha256 == named.info.sha256 and len(default.info.parts) == 2
    assert torch.allclose(default.model(split.x_val), named.model(split.x_val), atol=1e-6)
    assert default.info.val_accuracy == pytest.approx(accuracy(named.model, split.x_val, split.y_val))
    assert main(["show", "--dataset", "tiny", "--cache-dir", str(cache_dir)]) == 0
    out = capsys.readouterr().out
    assert "recipes quick+ensemble weighted [2.0, 1.0]" in out and "3 member(s)" in out
    # one member of which recipe? the command must say
    assert main(["train", "--dataset", "tiny", "--member", "0", "--cache-dir", str(cache_dir)]) == 2
    assert "averages recipes quick, ensemble: name one with --recipe" in capsys.readouterr().err
    # shipping the default ships every recipe it averages
    monkeypatch.setenv("NAS_KD_SHIPPED_DIR", str(tmp_path / "shipped"))
    assert main(["ship", "--dataset", "tiny", "--cache-dir", str(cache_dir)]) == 0
    manifest = json.loads((tmp_path / "shipped" / "MANIFEST.json").read_text())
    assert sorted(manifest) == sorted(default.info.parts)
    assert sorted(len(members) for members in manifest.values()) == [1, 2]


def _student(split):
    from nas_kd.model.builder import build_student
    from nas_kd.model.spec import ArchSpec, StageSpec

    torch.manual_seed(0)
    return build_student(ArchSpec(1, split.num_classes, 8, 1, (StageSpec("ds", 1, 16, 3, 2),)))


def test_live_teacher_targets_equal_cached_logits_without_augmentation(split, cache_dir):
    from nas_kd.distill.losses import KDSettings

    teacher = load_or_train_teacher(split, cache_dir=cache_dir)
    settings = TrainSettings(epochs=2, batch_size=32, lr=0.05, seed=1)
    cached, live = _student(split), _student(split)
    train_model(cached, split.x_train, split.y_train, settings, kd=KDSettings(),
                teacher_logits=teacher_logits(teacher, split, cache_dir=cache_dir))
    train_model(live, split.x_train, split.y_train, settings, kd=KDSettings(), teacher=teacher.model.eval())
    for a, b in zip(cached.parameters(), live.parameters(), strict=True):
        assert torch.allclose(a, b, atol=1e-4)


def test_augmented_views_carry_their_own_teacher_logits(split, cache_dir):
    from nas_kd.distill.losses import KDSettings
    from nas_kd.teacher import VIEWS

    teacher = load_or_train_teacher(split, cache_dir=cache_dir)
    first = kd_targets(teacher, split, "views", "crop-flip", cache_dir=cache_dir)
    views, logits = first["views"], first["teacher_logits"]
    assert views.shape == (VIEWS, *split.x_train.shape)
    assert logits.shape == (VIEWS, len(split.y_train), split.num_classes)
    assert not torch.equal(views[0], split.x_train) and not torch.equal(views[0], views[1])
    assert torch.allclose(logits[1], teacher.model(views[1]), atol=1e-4)
    again = kd_targets(teacher, split, "views", "crop-flip", cache_dir=cache_dir)  # from the cache
    assert torch.equal(again["views"], views) and torch.equal(again["teacher_logits"], logits)
    # the student learns from the views (not from x): views of noise teach it nothing
    settings = TrainSettings(epochs=6, batch_size=32, lr=0.05, augment="crop-flip", seed=0)
    student, blind = _student(split), _student(split)
    train_model(student, split.x_train, split.y_train, settings, kd=KDSettings(), **first)
    train_model(blind, split.x_train, split.y_train, settings, kd=KDSettings(), views=torch.randn_like(views),
                teacher_logits=logits)
    assert accuracy(student, split.x_val, split.y_val) > accuracy(blind, split.x_val, split.y_val) + 0.1
    assert set(kd_targets(teacher, split, "clean", "crop", cache_dir=cache_dir)) == {"teacher_logits"}
    assert set(kd_targets(teacher, split, "live", "crop", cache_dir=cache_dir)) == {"teacher"}
    with pytest.raises(UserError, match="unknown KD targets 'x'"):
        kd_targets(teacher, split, "x", "crop")
