import os

import pytest


@pytest.fixture(scope="session")
def cache_dir(tmp_path_factory):
    """One teacher cache for the whole session: the tiny teacher trains once (~2 s)."""
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
