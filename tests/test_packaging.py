"""The wheel is what a user installs: it must hold every module, the default space and the shipped
teachers, and ``python -m nas_kd.search`` must run from it outside the checkout."""

import json
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


def _source_copy(dest: Path) -> Path:
    """The checkout's files as git sees them (tracked or not ignored), without build leftovers."""
    listed = subprocess.run(["git", "ls-files", "--cached", "--others", "--exclude-standard"], cwd=ROOT,
                            check=True, capture_output=True, text=True).stdout.splitlines()
    for name in listed:
        if (ROOT / name).is_file():
            (dest / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(ROOT / name, dest / name)
    return dest


@pytest.fixture(scope="module")
def wheel(tmp_path_factory) -> Path:
    src = _source_copy(tmp_path_factory.mktemp("src"))
    out = tmp_path_factory.mktemp("wheel")
    subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q", "-w", str(out),
                    str(src)], check=True, capture_output=True, timeout=300)
    return next(out.glob("nas_kd-*.whl"))


def test_the_wheel_holds_every_module_the_default_space_and_the_shipped_teachers(wheel):
    names = set(zipfile.ZipFile(wheel).namelist())
    modules = {str(p.relative_to(ROOT)) for p in (ROOT / "nas_kd").rglob("*.py")}
    assert modules - names == set(), "modules missing from the wheel (add the subpackage to pyproject's packages)"
    spaces = {f"nas_kd/search_spaces/{p.name}" for p in (ROOT / "search_spaces").glob("*.yaml")}
    assert "nas_kd/search_spaces/default.yaml" in spaces and spaces <= names
    manifest = json.loads((ROOT / "nas_kd/shipped_teachers/MANIFEST.json").read_text())
    shipped = {f"nas_kd/shipped_teachers/{key}/{member}.pt" for key, members in manifest.items() for member in members}
    assert shipped and shipped <= names
    logits = json.loads((ROOT / "nas_kd/shipped_teachers/logits/MANIFEST.json").read_text())
    assert {f"nas_kd/shipped_teachers/logits/{name}" for name in logits} <= names
    assert not any(n.startswith("tests/") for n in names)


def test_a_search_runs_from_the_installed_wheel_outside_the_checkout(wheel, tmp_path):
    venv = tmp_path / "venv"
    clean = {"PATH": "/usr/bin:/bin", "HOME": str(tmp_path)}  # no PYTHONPATH (the tests' own points at the checkout)
    # The venv sees the machine's torch, optuna, ... but its own nas_kd: the wheel's, not the checkout's
    # (forced: pip would take the editable install it can also see for the same version).
    subprocess.run([sys.executable, "-m", "venv", "--system-site-packages", str(venv)], check=True, timeout=120)
    python = venv / "bin" / "python"
    subprocess.run([python, "-m", "pip", "install", "-q", "--no-deps", "--no-build-isolation", "--force-reinstall",
                    str(wheel)], check=True, capture_output=True, timeout=300, env=clean)
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    where = subprocess.run([python, "-c", "import nas_kd; print(nas_kd.__file__)"], cwd=elsewhere, check=True,
                           capture_output=True, text=True, env=clean).stdout
    assert str(venv) in where
    run = subprocess.run([python, "-m", "nas_kd.search", "--dataset", "digits", "--budget", "300k", "--trials", "2",
                          "--promote-until", "0",
                          "--cache-dir", str(tmp_path / "cache")],
                         cwd=elsewhere, capture_output=True, text=True, timeout=600, env=clean)
    assert run.returncode == 0, run.stderr
    assert "front written to studies/digits-300kFLOPs/front.csv" in run.stdout
    assert (elsewhere / "studies" / "digits-300kFLOPs.db").exists()
