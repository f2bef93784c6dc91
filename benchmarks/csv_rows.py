"""The one way benchmarks write their raw rows: CSV beside RESULTS.md."""

from __future__ import annotations

import csv
import fcntl
from pathlib import Path


def append_rows(out: Path, rows: list[dict]) -> None:
    """Add ``rows`` to ``out``. The header is the union of the file's columns and the new ones
    (earlier rows get blanks), and processes writing the same file at once take turns."""
    with Path(out).open("a+", newline="") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        f.seek(0)
        reader = csv.DictReader(f)
        old = list(reader)
        fields = list(reader.fieldnames or [])
        fields += [k for row in rows for k in row if k not in fields]
        fields = list(dict.fromkeys(fields))
        f.seek(0)
        f.truncate()
        w = csv.DictWriter(f, fieldnames=fields, restval="")
        w.writeheader()
        w.writerows([*old, *rows])


def write_rows(out: Path, rows: list[dict]) -> None:
    """Replace ``out`` with ``rows`` (benchmarks whose every run measures everything again)."""
    with Path(out).open("w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=list(rows[0]))
        w.writeheader()
        w.writerows(rows)
