"""Which TPE? The default (models each candidate's longest rung) against ``--sampler tpe-rung0``
(rung 0 only), from finished cold searches run with the same command apart from ``--sampler``
and ``--seed``:

    python -m nas_kd.search --budget 5MFLOPs --no-warm-start --sampler S --seed K \\
        --studies-dir DIR --study-name NAME

For each study: its wall-clock, the hypervolume of its front (each candidate at its longest rung;
box 10%..100% accuracy x 0..budget FLOPs, as ``search_vs_random.py``) at the end and at the
shortest study's wall-clock, the best accuracy at <= 1 MFLOP and <= the budget, and how many
candidates reached the last rung above budget/3. One CSV row per study in ``sampler_ab.csv``.

    python benchmarks/sampler_ab.py --studies-dir DIR NAME [NAME ...]
"""

from __future__ import annotations

import argparse
from datetime import date
from pathlib import Path

from csv_rows import append_rows
from search_vs_random import hv_at, hv_curve, timeline

from nas_kd.study.records import SETTINGS_ATTR, trial_records
from nas_kd.study.storage import open_named_study

HERE = Path(__file__).parent


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("names", nargs="+")
    p.add_argument("--studies-dir", default="studies")
    p.add_argument("--out", default=str(HERE / "sampler_ab.csv"))
    a = p.parse_args()
    curves, rows = {}, []
    for name in a.names:
        events, budget = timeline(f"sqlite:///{Path(a.studies_dir) / name}.db", name)
        curves[name] = hv_curve(events, budget)
        study = open_named_study(name, a.studies_dir, None)
        flags = study.user_attrs[SETTINGS_ATTR]["flags"]
        records = [r for r in trial_records(study) if r.rung_accuracies]
        top = max(len(r.rung_accuracies) for r in records)

        def best(limit: float, records: list = records) -> float:
            return max((r.rung_accuracies[-1] for r in records if r.flops <= limit), default=0.0)

        rows.append({"date": date.today().isoformat(), "study": name, "sampler": flags.get("--sampler"),
                     "seed": flags.get("--seed"), "seconds": round(events[-1][0], 1),
                     "hv_final": round(curves[name][-1][1], 5), "hv_common_time": None,
                     "best_1M": round(best(1e6), 4), "best_budget": round(best(budget), 4),
                     "top_rung_above_third": sum(len(r.rung_accuracies) == top and r.flops > budget / 3
                                                 for r in records),
                     "promotions": sum(len(r.rung_accuracies) - 1 for r in records)})
    common = min(r["seconds"] for r in rows)
    for row in rows:
        row["hv_common_time"] = round(hv_at(curves[row["study"]], common), 5)
        print(row)
    append_rows(Path(a.out), rows)


if __name__ == "__main__":
    main()
