import os
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent

# The tiny dataset and its teacher recipes are a plugin (tests/tiny.py), so every process the tests
# start (CLI subprocesses, search workers) finds them by name: the environment is inherited.
os.environ["NAS_KD_PLUGINS"] = ",".join(filter(None, ["tests.tiny", os.environ.get("NAS_KD_PLUGINS")]))
os.environ["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))


@pytest.fixture(scope="session")
def cache_dir(tmp_path_factory):
    """One teacher cache for the whole session: the tiny teacher trains once."""
    return tmp_path_factory.mktemp("cache")


@pytest.fixture(scope="session", autouse=True)
def _teachers_are_trained_not_shipped(tmp_path_factory):
    """Tests train their tiny teachers (that is what most of them test): the shipped ones are hidden
    for the whole session (module fixtures included), except in tests marked ``shipped``."""
    os.environ["NAS_KD_SHIPPED_DIR"] = str(tmp_path_factory.mktemp("no-shipped-teachers"))
    yield
    os.environ.pop("NAS_KD_SHIPPED_DIR", None)


@pytest.fixture(autouse=True)
def _shipped_marker(request, monkeypatch):
    if request.node.get_closest_marker("shipped") is not None:
        monkeypatch.delenv("NAS_KD_SHIPPED_DIR")
