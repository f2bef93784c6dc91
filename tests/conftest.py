import json
import os
import shutil
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
PACKAGE_SHIPPED = ROOT / "nas_kd" / "shipped_teachers"
TINY_SHIPPED = ROOT / "tests" / "fixtures" / "shipped"  # the tiny teacher and its logits, shipped-style

# The tiny dataset and its teacher recipes are a plugin (tests/tiny.py), so every process the tests
# start (CLI subprocesses, search workers) finds them by name: the environment is inherited.
os.environ["NAS_KD_PLUGINS"] = ",".join(filter(None, ["tests.tiny", os.environ.get("NAS_KD_PLUGINS")]))
os.environ["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))


@pytest.fixture(scope="session")
def cache_dir(tmp_path_factory):
    """One teacher cache for the whole session: the tiny teacher trains once."""
    return tmp_path_factory.mktemp("cache")


@pytest.fixture(scope="module")
def study_dir(tmp_path_factory, cache_dir):
    """A real tiny study named ``ex`` (two trials) to export from; one per test module."""
    from nas_kd.search.cli import main as search_main

    root = tmp_path_factory.mktemp("export")
    args = ["--dataset", "tiny", "--budget", "150k", "--min-steps", "0",
            "--epochs", "4", "--batch-size", "32", "--trials", "2", "--promote-until", "0",
            "--studies-dir", str(root), "--cache-dir", str(cache_dir), "--study-name", "ex", "--threads", "2"]
    assert search_main(args) == 0
    return root


@pytest.fixture(scope="session", autouse=True)
def _teachers_are_trained_not_shipped(tmp_path_factory):
    """Tests train their tiny teachers (that is what most of them test): the shipped ones are hidden
    for the whole session (module fixtures included), except in tests marked ``shipped``."""
    os.environ["NAS_KD_SHIPPED_DIR"] = str(tmp_path_factory.mktemp("no-shipped-teachers"))
    yield
    os.environ.pop("NAS_KD_SHIPPED_DIR", None)


@pytest.fixture(scope="session")
def shipped_teachers(tmp_path_factory):
    """The package's shipped teachers plus the tiny fixture's, in one folder like the package's."""
    folder = tmp_path_factory.mktemp("shipped") / "shipped_teachers"
    shutil.copytree(PACKAGE_SHIPPED, folder)
    shutil.copytree(TINY_SHIPPED, folder, dirs_exist_ok=True, ignore=shutil.ignore_patterns("MANIFEST.json"))
    for manifest in TINY_SHIPPED.rglob("MANIFEST.json"):
        merged = folder / manifest.relative_to(TINY_SHIPPED)
        entries = json.loads(merged.read_text()) if merged.exists() else {}
        merged.write_text(json.dumps({**entries, **json.loads(manifest.read_text())}, indent=2, sort_keys=True))
    return folder


@pytest.fixture(autouse=True)
def _shipped_marker(request, monkeypatch):
    """Tests marked ``shipped`` see the shipped teachers (the package's and the tiny one)."""
    if request.node.get_closest_marker("shipped") is not None:
        monkeypatch.setenv("NAS_KD_SHIPPED_DIR", str(request.getfixturevalue("shipped_teachers")))
