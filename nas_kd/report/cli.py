"""``python -m nas_kd.report --study-name NAME``: write STUDIES_DIR/NAME/report.html (and pareto.png)."""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

from nas_kd.cli.runner import run_command
from nas_kd.report.page import write_report
from nas_kd.study.storage import check_study_name, open_named_study, redact_url

STORAGE_ENV = "NAS_KD_STORAGE"  # the storage URL when --storage is not given, as for the search


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m nas_kd.report",
                                description="Write a self-contained HTML report of a nas_kd search study.")
    p.add_argument("--study-name", required=True, help="the study to report on")
    p.add_argument("--studies-dir", default="studies", help="where studies and their outputs are (default studies)")
    p.add_argument("--storage", default=os.environ.get(STORAGE_ENV),
                   help=f"Optuna storage URL (default: ${STORAGE_ENV}, else sqlite:///STUDIES_DIR/NAME.db)")
    p.add_argument("--no-png", action="store_true", help="do not try to export pareto.png")
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    """Write the report of one study. Exit 0, or 2 with one ``error:`` line for a user mistake."""
    a = parse_args(argv)
    out_dir = Path(a.studies_dir) / a.study_name

    def body() -> int:
        study = open_named_study(check_study_name(a.study_name), a.studies_dir, a.storage)
        path = write_report(study, out_dir, png=not a.no_png)
        print(f"open: {path}")
        storage = a.storage or f"sqlite:///{Path(a.studies_dir) / (a.study_name + '.db')}"
        print(f"or browse the study live: optuna-dashboard {redact_url(storage)}")
        return 0

    def cannot_write(err: BaseException) -> int:
        reason = err.strerror if isinstance(err, OSError) and err.strerror else err
        print(f"error: cannot write the report into {out_dir}: {reason}", file=sys.stderr)
        return 2

    return run_command(body, on_interrupt="no report written (a previous report.html is unchanged)",
                       handlers={OSError: cannot_write})
