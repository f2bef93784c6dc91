"""A user's own data (npz, image folder, factory) and own teacher (TorchScript, ONNX, factory):
each drives a real 2-trial search on small data; bad ones are refused with exit 2 and one line."""

import sys

import numpy as np
import optuna
import pytest
import torch
from torch import nn

from nas_kd.data import load_dataset, split_dataset
from nas_kd.search.cli import main
from nas_kd.search.config import SearchConfig
from nas_kd.teacher import load_or_train_teacher


def _patterns(n, size, channels, classes, seed=0):
    """A learnable set: class k brightens a class-specific square; uint8, channels last."""
    rng = np.random.default_rng(seed)
    y = rng.integers(0, classes, n)
    x = rng.normal(0.3, 0.15, (n, size, size, channels))
    step = max(1, size // classes)
    for i, k in enumerate(y):
        r = (k * step) % (size - 2)
        x[i, r : r + 3, r : r + 3, :] += 0.6
    return (np.clip(x, 0, 1) * 255).astype(np.uint8), y


def _search(tmp_path, *extra, name="byo", budget="200k", min_steps="0"):
    return main(["--budget", budget, "--trials", "2",
                 "--promote-until", "0", "--epochs", "1", "--batch-size", "32", "--threads", "2",
                 *(["--min-steps", min_steps] if min_steps else []),
                 "--studies-dir", str(tmp_path / "studies"), "--cache-dir", str(tmp_path / "cache"),
                 "--study-name", name, *extra])


def _study(tmp_path, name="byo"):
    return optuna.load_study(study_name=name, storage=f"sqlite:///{tmp_path / 'studies' / (name + '.db')}")


def _trained(study):
    return [t for t in study.trials if t.user_attrs.get("status") == "trained"]


def test_npz_8x8_grayscale_3_classes_with_its_own_test_set(tmp_path, capsys):
    x, y = _patterns(300, 8, 1, 3)
    xt, yt = _patterns(60, 8, 1, 3, seed=1)
    path = tmp_path / "small.npz"
    np.savez(path, x=x[..., 0], y=y + 10, x_test=xt[..., 0], y_test=yt + 10)  # labels need not start at 0
    data = load_dataset(f"npz:{path}")
    assert data.input_shape == (1, 8, 8) and data.num_classes == 3 and len(data.y_test) == 60
    assert int(data.y_train.max()) == 2 and 0 <= float(data.x_train.min()) and float(data.x_train.max()) <= 1
    assert _search(tmp_path, "--dataset", f"npz:{path}", budget="100k", min_steps=None) == 0  # the default
    study = _study(tmp_path)
    assert len(_trained(study)) == 2
    # 1 epoch of 255 images (300 minus 45 for validation) is 7 steps: the default --min-steps 150 makes it 21.4
    assert study.user_attrs["nas_kd.identity"]["min_steps"] == SearchConfig().min_steps == 150
    assert "21.4 epochs on 255 images" in capsys.readouterr().err
    assert all(t.user_attrs["spec"]["in_channels"] == 1 and t.user_attrs["spec"]["num_classes"] == 3
               for t in _trained(study))
    teacher = study.user_attrs["nas_kd.teacher"]
    assert teacher["val_accuracy"] > 1 / 3  # the generic teacher trained for this data


def test_npz_32x32_rgb_10_classes_channels_last(tmp_path):
    x, y = _patterns(400, 32, 3, 10)
    path = tmp_path / "rgb.npz"
    np.savez(path, x=x, y=y)
    data = load_dataset(f"npz:{path}")
    assert data.input_shape == (3, 32, 32) and data.num_classes == 10 and len(data.y_test) == 80  # 20% held out
    assert _search(tmp_path, "--dataset", f"npz:{path}", "--alpha", "0", budget="1M") == 0
    for t in _trained(_study(tmp_path)):
        assert t.user_attrs["spec"]["in_channels"] == 3 and t.user_attrs["flops"] <= 1_000_000


def test_image_folder_with_train_and_test(tmp_path):
    from PIL import Image

    x, y = _patterns(150, 10, 3, 3)
    for split, (xs, ys) in {"train": (x[:120], y[:120]), "test": (x[120:], y[120:])}.items():
        for i, (img, label) in enumerate(zip(xs, ys, strict=True)):
            folder = tmp_path / "imgs" / split / f"class_{label}"
            folder.mkdir(parents=True, exist_ok=True)
            Image.fromarray(img).save(folder / f"{i}.png")
    data = load_dataset(f"folder:{tmp_path / 'imgs'}")
    assert data.input_shape == (3, 10, 10) and data.num_classes == 3 and len(data.y_test) == 30
    first = (data.x_train[0].permute(1, 2, 0) * 255).round().byte().numpy()  # a class_0 image, pixels intact
    assert data.y_train[0] == 0 and any(np.array_equal(first, img) for img in x[:120][y[:120] == 0])
    assert _search(tmp_path, "--dataset", f"folder:{tmp_path / 'imgs'}", "--alpha", "0", budget="300k") == 0
    assert len(_trained(_study(tmp_path))) == 2


def test_dataset_factory(tmp_path, monkeypatch):
    (tmp_path / "my_data.py").write_text(
        "import torch\n"
        "def make():\n"
        "    g = torch.Generator().manual_seed(0)\n"
        "    y = torch.randint(0, 2, (200,), generator=g)\n"
        "    x = torch.rand(200, 1, 8, 8, generator=g) * 0.5 + y.view(-1, 1, 1, 1) * 0.5\n"
        "    return (x[:160], y[:160]), (x[160:], y[160:])\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    data = load_dataset("my_data:make")
    assert data.input_shape == (1, 8, 8) and data.num_classes == 2 and len(data.y_test) == 40
    assert _search(tmp_path, "--dataset", "my_data:make", "--alpha", "0", budget="100k") == 0


@pytest.mark.parametrize("make, message", [
    (lambda p: np.savez(p, images=np.zeros((4, 8, 8))), "must hold arrays 'x' and 'y'"),
    (lambda p: np.savez(p, x=np.zeros((4, 8, 8)), y=np.zeros(4)), "at least 2"),
    (lambda p: np.savez(p, x=np.zeros((4, 8, 8)), y=np.arange(3)), "4 images but 3 labels"),
    (lambda p: p.write_bytes(b"not a zip"), "cannot read"),
])
def test_bad_npz_files_exit_2_with_one_line(tmp_path, capsys, make, message):
    path = tmp_path / "bad.npz"
    make(path)
    assert _search(tmp_path, "--dataset", f"npz:{path}", "--alpha", "0") == 2
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err and err.count("\n") == 1


# --- teachers ------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def tiny_teacher(tmp_path_factory):
    split = split_dataset(load_dataset("tiny"), val_size=58, seed=0)
    teacher = load_or_train_teacher(split, cache_dir=tmp_path_factory.mktemp("tcache"))
    return split, teacher.model.eval()


def _tiny_search(tmp_path, *extra, name="t"):
    return _search(tmp_path, "--dataset", "tiny", "--budget", "150k", *extra, name=name)


def test_torchscript_teacher_drives_a_search(tmp_path, tiny_teacher):
    split, model = tiny_teacher
    path = tmp_path / "teacher.ts"
    torch.jit.trace(model, split.x_val[:2]).save(str(path))
    assert _tiny_search(tmp_path, "--teacher", str(path)) == 0
    recorded = _study(tmp_path, "t").user_attrs["nas_kd.teacher"]
    assert recorded["key"].startswith("torchscript-teacher.ts-")
    expected = (model(split.x_val).argmax(1) == split.y_val).float().mean().item()
    assert recorded["val_accuracy"] == pytest.approx(expected)


def test_onnx_teacher_drives_a_search_with_the_same_logits(tmp_path, tiny_teacher, capsys):
    from nas_kd.teacher.external import OnnxTeacher

    split, model = tiny_teacher
    path = tmp_path / "teacher.onnx"
    torch.onnx.export(model, (split.x_val[:2],), str(path), input_names=["x"], output_names=["logits"],
                      dynamic_axes={"x": {0: "n"}, "logits": {0: "n"}}, dynamo=False)
    assert torch.allclose(OnnxTeacher(path)(split.x_val), model(split.x_val), atol=1e-4)
    assert _tiny_search(tmp_path, "--teacher", str(path)) == 0
    assert _study(tmp_path, "t").user_attrs["nas_kd.teacher"]["key"].startswith("onnx-teacher.onnx-")
    # an ONNX teacher has no reachable intermediate layers: feature losses say so
    assert _tiny_search(tmp_path, "--teacher", str(path), "--kd", "attention", name="feat") == 2
    assert "needs the teacher's intermediate features" in capsys.readouterr().err


def test_factory_teacher_with_weights_only_state_dict(tmp_path, tiny_teacher, monkeypatch):
    split, model = tiny_teacher
    torch.save(model.state_dict(), tmp_path / "w.pt")
    (tmp_path / "my_teacher.py").write_text(
        "from nas_kd.teacher.nets import build_teacher\n"
        "def make():\n"
        "    return build_teacher({'arch': 'resnet', 'width': 8, 'blocks': [1, 1]}, 1, 4)\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    assert _tiny_search(tmp_path, "--teacher", "my_teacher:make", "--teacher-weights", str(tmp_path / "w.pt")) == 0
    recorded = _study(tmp_path, "t").user_attrs["nas_kd.teacher"]
    assert recorded["key"].startswith("factory-my_teacher-make-") and recorded["flops"] > 0


class _Wrong(nn.Module):
    def __init__(self, inner, mode):
        super().__init__()
        self.inner, self.mode = inner, mode

    def forward(self, x):
        out = self.inner(x)
        if self.mode == "classes":
            return torch.cat([out, out[:, :1]], 1)
        if self.mode == "shape":
            return out.unsqueeze(1)
        return -out  # confidently wrong: worse than chance


@pytest.mark.parametrize("mode, message", [
    ("classes", "expected logits [batch, 4]"),
    ("shape", "expected logits [batch, 4]"),
    ("chance", "no better than chance"),
])
def test_unfit_teachers_are_refused(tmp_path, tiny_teacher, capsys, mode, message):
    split, model = tiny_teacher
    path = tmp_path / f"{mode}.ts"
    torch.jit.trace(_Wrong(model, mode), split.x_val[:2]).save(str(path))
    assert _tiny_search(tmp_path, "--teacher", str(path)) == 2
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err


def test_corrupt_and_unsafe_teacher_files_are_refused(tmp_path, tiny_teacher, capsys, monkeypatch):
    split, model = tiny_teacher
    (tmp_path / "bad.onnx").write_bytes(b"garbage")
    assert _tiny_search(tmp_path, "--teacher", str(tmp_path / "bad.onnx")) == 2
    assert "cannot load ONNX teacher" in capsys.readouterr().err
    (tmp_path / "bad.ts").write_bytes(b"garbage")
    assert _tiny_search(tmp_path, "--teacher", str(tmp_path / "bad.ts")) == 2
    assert "is not a TorchScript file" in capsys.readouterr().err
    torch.save(model, tmp_path / "pickled_module.pt")  # a whole pickled object, not a state dict
    (tmp_path / "fac.py").write_text("import torch.nn as nn\ndef make():\n    return nn.Linear(2, 2)\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    pickled = str(tmp_path / "pickled_module.pt")
    assert _tiny_search(tmp_path, "--teacher", "fac:make", "--teacher-weights", pickled) == 2
    assert "weights_only=True" in capsys.readouterr().err
    assert _tiny_search(tmp_path, "--teacher", "fac:make") == 2
    assert "--teacher-weights is given 0 time(s) for 1 factory" in capsys.readouterr().err
    assert _tiny_search(tmp_path, "--teacher", str(tmp_path / "missing.onnx")) == 2
    assert "does not exist" in capsys.readouterr().err
    sys.modules.pop("fac", None)
