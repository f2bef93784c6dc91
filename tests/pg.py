"""A real PostgreSQL server for tests: initdb in a temporary folder, listening on 127.0.0.1 only."""

from __future__ import annotations

import glob
import os
import shutil
import socket
import subprocess
import tempfile
from contextlib import contextmanager
from pathlib import Path


def pg_bin() -> Path | None:
    found = sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"))
    return Path(found[-1]).parent if found else None


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextmanager
def postgres_server():
    """Yield a ``postgresql://`` URL of a fresh database; stop the server and delete it afterwards."""
    bindir = pg_bin()
    # Not under pytest's tmp_path: that is private to root, and initdb refuses to run as root, so
    # the server runs as Debian's 'postgres' user in a folder of its own.
    folder = Path(tempfile.mkdtemp(prefix="nas_kd_pg_"))
    data = folder / "pgdata"
    port = _free_port()
    as_user = ["runuser", "-u", "postgres", "--"] if os.geteuid() == 0 else []
    if as_user:
        shutil.chown(folder, "postgres")
    run = lambda *cmd: subprocess.run([*as_user, *cmd], check=True, capture_output=True, timeout=120)  # noqa: E731
    run(str(bindir / "initdb"), "-D", str(data), "-U", "postgres", "--auth=trust")
    run(str(bindir / "pg_ctl"), "-D", str(data), "-l", str(folder / "pg.log"), "-w", "-o",
        f"-c listen_addresses=127.0.0.1 -p {port} -k {folder}", "start")
    try:
        run(str(bindir / "createdb"), "-h", "127.0.0.1", "-p", str(port), "-U", "postgres", "nas_kd")
        yield f"postgresql://postgres:s3cret-pw@127.0.0.1:{port}/nas_kd"  # trust auth: password unused
    finally:
        subprocess.run([*as_user, str(bindir / "pg_ctl"), "-D", str(data), "stop", "-m", "fast"],
                       capture_output=True, timeout=60)
        shutil.rmtree(folder, ignore_errors=True)
