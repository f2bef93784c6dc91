"""Teachers shipped inside the package: hash-checked, weights-only, used at once; --teacher ensembles."""

import json
import shutil
from pathlib import Path

import optuna
import pytest
import torch

from nas_kd.data import default_val_size, load_dataset, split_dataset
from nas_kd.files import sha256_file
from nas_kd.search.cli import main as search_main
from nas_kd.teacher import RECIPES, build_teacher, default_teacher, load_teacher, teacher_logits
from nas_kd.teacher.cache import LOGITS_DIR, MANIFEST, shipped_dir, shipped_manifest, shipped_manifest_of
from nas_kd.teacher.cli import main
from nas_kd.train import predict_logits

pytestmark = pytest.mark.shipped
PACKAGE_SHIPPED = Path(__file__).resolve().parent.parent / "nas_kd" / "shipped_teachers"


def test_every_shipped_file_matches_the_manifest_and_loads_weights_only():
    manifest = shipped_manifest()
    assert manifest, "the package ships no teacher"
    for key, members in manifest.items():
        for member, info in members.items():
            path = shipped_dir() / key / f"{member}.pt"
            assert sha256_file(path) == info["sha256"]
            state = torch.load(path, map_location="cpu", weights_only=True)
            model = build_teacher(info["arch"], state["stem.0.weight"].shape[1], state["fc.weight"].shape[0])
            model.load_state_dict(state)  # strict: the recorded architecture is the shipped one
            assert sum(p.numel() for p in model.parameters()) == info["params"]
    total = sum(f.stat().st_size for f in PACKAGE_SHIPPED.rglob("*") if f.is_file())  # weights and logits
    assert total < 20 * 2**20


def test_the_package_ships_real_teachers_only_and_the_tests_their_own():
    package = {**json.loads((PACKAGE_SHIPPED / MANIFEST).read_text()),
               **json.loads((PACKAGE_SHIPPED / LOGITS_DIR / MANIFEST).read_text())}
    assert package and not [k for k in package if "tiny" in k or "tiny" in str(package[k].get("teacher", ""))]
    assert any(k.startswith("tiny-") for k in shipped_manifest())  # the tests' folder adds the fixture


def test_every_recipe_of_the_fashion_mnist_default_ships_with_all_its_members():
    manifest = shipped_manifest()
    for recipe in default_teacher("fashion-mnist")[0]:
        keys = [k for k in manifest if k.startswith(f"fashion-mnist-{recipe}-")]
        assert len(keys) == 1, f"recipe {recipe} of the default teacher is not shipped"
        assert len(manifest[keys[0]]) == RECIPES["fashion-mnist"][recipe].members


def test_teacher_show_uses_the_shipped_teacher_and_measures_it(tmp_path, capsys):
    assert main(["show", "--dataset", "tiny", "--cache-dir", str(tmp_path)]) == 0
    out = capsys.readouterr().out.strip().splitlines()
    assert "weights: shipped with nas_kd" in "\n".join(out)
    assert out[-1].startswith("test accuracy: ") and out[-1].endswith("%")
    assert float(out[-1].split()[-1].rstrip("%")) > 80
    assert not list(tmp_path.glob("teachers/*/*.pt"))  # nothing was trained or copied


def test_a_fresh_machine_searches_with_the_shipped_teacher_at_once(tmp_path, capsys):
    args = ["--dataset", "tiny", "--budget", "150k", "--min-steps", "0",
            "--epochs", "1", "--batch-size", "32", "--trials", "1", "--promote-until", "0",
            "--studies-dir", str(tmp_path), "--cache-dir", str(tmp_path / "empty-cache"), "--threads", "2"]
    assert search_main(args) == 0
    assert "teacher: training" not in capsys.readouterr().err
    study = optuna.load_study(study_name="tiny-150kFLOPs", storage=f"sqlite:///{tmp_path / 'tiny-150kFLOPs.db'}")
    assert study.user_attrs["nas_kd.teacher"]["key"] in shipped_manifest()
    assert not list((tmp_path / "empty-cache").rglob("train-logits-*"))  # the shipped logits were used


def _tiny_split():
    data = load_dataset("tiny")
    return split_dataset(data, val_size=default_val_size(len(data.y_train)), seed=0)


def test_shipped_logits_are_the_shipped_teachers_own_and_cover_the_fashion_mnist_default(tmp_path):
    folder = shipped_dir() / LOGITS_DIR
    manifest = shipped_manifest_of(folder)
    for name, entry in manifest.items():
        assert sha256_file(folder / name) == entry["sha256"]
        assert list(torch.load(folder / name, weights_only=True).shape) == entry["shape"]
    default = [e for e in manifest.values() if e["teacher"].startswith("fashion-mnist-strong-")]
    assert len(default) == 1 and default[0]["shape"] == [55000, 10]
    split = _tiny_split()
    teacher = load_teacher(split, cache_dir=tmp_path, train=False)
    shipped = teacher_logits(teacher, split, cache_dir=tmp_path)
    assert torch.allclose(shipped, predict_logits(teacher.model, split.x_train), atol=1e-5)


def test_tampered_shipped_logits_are_refused_with_exit_2(tmp_path, monkeypatch, capsys):
    copy = tmp_path / "shipped"
    shutil.copytree(shipped_dir(), copy)
    name = next(n for n, e in json.loads((copy / LOGITS_DIR / MANIFEST).read_text()).items()
                if e["teacher"].startswith("tiny-"))
    logits = copy / LOGITS_DIR / name
    data = bytearray(logits.read_bytes())
    data[-30] ^= 0xFF
    logits.write_bytes(bytes(data))
    monkeypatch.setenv("NAS_KD_SHIPPED_DIR", str(copy))
    args = ["--dataset", "tiny", "--budget", "150k", "--min-steps", "0", "--epochs", "1", "--batch-size", "32",
            "--trials", "1",
            "--promote-until", "0", "--studies-dir", str(tmp_path / "studies"), "--cache-dir", str(tmp_path / "cache")]
    assert search_main(args) == 2
    err = capsys.readouterr().err
    assert "shipped teacher logits" in err and "SHA-256" in err and "reinstall" in err
    assert "Traceback" not in err


def test_a_tampered_shipped_teacher_is_refused_with_exit_2(tmp_path, monkeypatch, capsys):
    copy = tmp_path / "shipped"
    shutil.copytree(shipped_dir(), copy)
    key = next(k for k in json.loads((copy / MANIFEST).read_text()) if k.startswith("tiny-"))
    weights = copy / key / "member-0.pt"
    data = bytearray(weights.read_bytes())
    data[-30] ^= 0xFF
    weights.write_bytes(bytes(data))
    monkeypatch.setenv("NAS_KD_SHIPPED_DIR", str(copy))
    assert main(["show", "--dataset", "tiny", "--cache-dir", str(tmp_path / "cache")]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: shipped teacher file") and "SHA-256" in err and "reinstall" in err
    assert "Traceback" not in err


@pytest.mark.parametrize("extra, message", [
    (["--teacher", "nope"], "unknown teacher recipe 'nope'"),
    (["--teacher", "quick", "--teacher", "ensemble", "--ensemble-weights", "1"], "1 value(s) for 2 teacher(s)"),
    (["--teacher", "quick", "--ensemble-weights", "x"], "comma-separated numbers"),
])
def test_bad_teacher_choices_exit_2_before_any_study_exists(tmp_path, capsys, extra, message):
    args = ["--dataset", "tiny", "--budget", "150k", "--min-steps", "0", "--studies-dir", str(tmp_path), *extra]
    assert search_main(args) == 2
    assert message in capsys.readouterr().err
    assert not list(tmp_path.glob("*.db"))
