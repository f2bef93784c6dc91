"""The front's files: ``front.csv`` (one row a point, the spec as JSON) and ``front.json``."""

from __future__ import annotations

import json
from pathlib import Path

from nas_kd.files import atomic_path, write_json
from nas_kd.study.records import TrialRecord


def write_front(records: list[TrialRecord], out_dir: Path) -> tuple[Path, Path]:
    """Write the front as CSV and JSON into ``out_dir``."""
    import pandas as pd

    rows = [r.to_dict() for r in records]
    csv_path, json_path = out_dir / "front.csv", out_dir / "front.json"
    table = pd.DataFrame(rows, columns=list(TrialRecord.__dataclass_fields__))
    table = table.drop(columns=["spec", "kd"]).assign(
        kd=[r.kd_text for r in records], spec=[json.dumps(r["spec"], sort_keys=True) for r in rows])
    with atomic_path(csv_path) as tmp:
        table.to_csv(tmp, index=False)
    write_json(json_path, rows)
    return csv_path, json_path
