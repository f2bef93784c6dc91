"""NAS_KD_PLUGINS: modules imported before a dataset or teacher-recipe lookup, which register their
own datasets and recipes; a plugin that cannot be imported is one error line, exit 2."""

import os
import subprocess
import sys

import pytest

from nas_kd import plugins
from nas_kd.data import Dataset, load_dataset
from nas_kd.data import registry as data_registry
from nas_kd.errors import UserError
from nas_kd.teacher import default_teacher, recipes_for
from nas_kd.teacher import recipes as recipes_mod

PLUGIN = '''
import torch
from nas_kd.data import Dataset, register_dataset
from nas_kd.teacher import TeacherRecipe, register_recipes
from nas_kd.train import TrainSettings

@register_dataset("two-blobs")
def _blobs(data_dir):
    g = torch.Generator().manual_seed(0)
    y = torch.randint(0, 2, (40,), generator=g)
    x = torch.rand(40, 1, 4, 4, generator=g) * 0.5 + y.view(-1, 1, 1, 1) * 0.5
    return Dataset("two-blobs", x[:30], y[:30], x[30:], y[30:], num_classes=2)

register_recipes("two-blobs", {"small": TeacherRecipe({"arch": "resnet", "width": 4, "blocks": [1]},
                                                      TrainSettings(epochs=1))}, default=(("small",), None))
'''


@pytest.fixture
def plugin(tmp_path, monkeypatch):
    (tmp_path / "blobs_plugin.py").write_text(PLUGIN)
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.setenv("NAS_KD_PLUGINS", f"{os.environ['NAS_KD_PLUGINS']}, blobs_plugin")
    yield
    data_registry._NAMED.pop("two-blobs", None)
    recipes_mod.RECIPES.pop("two-blobs", None)
    recipes_mod.DEFAULT_TEACHER.pop("two-blobs", None)
    sys.modules.pop("blobs_plugin", None)
    plugins._loaded.discard("blobs_plugin")


def test_a_plugin_registers_a_dataset_and_its_teacher_recipes(plugin):
    data = load_dataset("two-blobs")
    assert isinstance(data, Dataset) and data.input_shape == (1, 4, 4) and len(data.y_test) == 10
    assert list(recipes_for("two-blobs")) == ["small"] and default_teacher("two-blobs") == (("small",), None)


def test_without_the_plugin_its_names_are_unknown(monkeypatch):
    monkeypatch.setenv("NAS_KD_PLUGINS", "")
    with pytest.raises(UserError, match="unknown dataset 'two-blobs'"):
        load_dataset("two-blobs")


def test_a_plugin_that_cannot_be_imported_is_one_error_line_and_exit_2(tmp_path):
    env = {**os.environ, "NAS_KD_PLUGINS": "tests.tiny,no_such_plugin_module"}
    run = subprocess.run([sys.executable, "-m", "nas_kd.teacher", "show", "--dataset", "tiny",
                          "--cache-dir", str(tmp_path)], env=env, capture_output=True, text=True, timeout=300)
    assert run.returncode == 2
    assert run.stderr.startswith("error: cannot import plugin 'no_such_plugin_module' listed in NAS_KD_PLUGINS")
    assert run.stderr.count("\n") == 1 and "Traceback" not in run.stderr
