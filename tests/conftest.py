import pytest


@pytest.fixture(scope="session")
def cache_dir(tmp_path_factory):
    """One teacher cache for the whole session: the tiny teacher trains once (~2 s)."""
    return tmp_path_factory.mktemp("cache")
