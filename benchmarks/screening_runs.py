"""What export screening saw (issue 19): every screened trial of the given studies, as one table.

``nas_kd.export`` keeps each screening run's result in the study's ``screening`` folder. This reads
them back beside the search's own score and rank, prints per study the Kendall τ between the
search's score and the 20-epoch screening accuracy, and writes one CSV row per screened trial:

    python benchmarks/screening_runs.py --studies-dir /work/runs/strat2 strat-seed0 strat-seed1

``--screen N [N ...]`` first screens those trials of the (one) named study exactly as the export's
screening would (same recipe, seed and folder, so an export reuses them): trials the export never
reaches, such as candidates the search did not promote. Two processes side by side share the work.
"""

from __future__ import annotations

import argparse
import json
from datetime import date
from pathlib import Path

from csv_rows import append_rows
from proxy_fidelity import kendall_tau

from nas_kd.cli.runner import set_threads
from nas_kd.errors import UserError
from nas_kd.export.pick import ranked_trials
from nas_kd.export.retrain import DEFAULT_KD_TARGETS
from nas_kd.export.screen import SCREEN_EPOCHS, screen_trials, screening_folder
from nas_kd.progress import Progress
from nas_kd.study.records import trial_records
from nas_kd.study.storage import open_named_study

HERE = Path(__file__).parent


def screened_rows(studies_dir: Path, name: str) -> list[dict]:
    """One row per screening result of study ``name``, best by the search's score first."""
    study = open_named_study(name, studies_dir=str(studies_dir), storage=None)
    ranked = ranked_trials(trial_records(study), "best", len(study.trials))
    rank = {r.number: i for i, r in enumerate(ranked, 1)}
    by_number = {r.number: r for r in ranked}
    rows = []
    for path in sorted(screening_folder(studies_dir, name).glob("trial*-*.json")):
        number = int(path.name.split("-")[0].removeprefix("trial"))
        record, result = by_number[number], json.loads(path.read_text())
        rows.append({"date": date.today().isoformat(), "study": name, "trial": number, "flops": record.flops,
                     "params": record.params, "search_rank": rank[number], "search_val": round(record.val_accuracy, 4),
                     "search_rung": record.rung,
                     "screen_val": round(result["val_accuracy"], 4), "screen_seconds": round(result["seconds"]),
                     "run": path.stem, "summary": record.summary})
    return sorted(rows, key=lambda r: r["search_rank"])


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("studies", nargs="+", help="study names")
    p.add_argument("--studies-dir", type=Path, required=True)
    p.add_argument("--out", type=Path, default=HERE / "screening_runs.csv")
    p.add_argument("--screen", type=int, nargs="+", metavar="N", help="first screen these trials (one study)")
    p.add_argument("--threads", type=int)
    a = p.parse_args()
    if a.screen:
        if len(a.studies) != 1:
            p.error(f"--screen names trials of one study, got {len(a.studies)} studies")
        set_threads(a.threads)
        name = a.studies[0]
        study = open_named_study(name, studies_dir=str(a.studies_dir), storage=None)
        records = {r.number: r for r in trial_records(study) if r.on_front_candidate}
        if missing := [n for n in a.screen if n not in records]:
            p.error(f"study {name!r} has no trained, in-budget trial {', '.join(map(str, missing))}")
        screen_trials(study, [records[n] for n in a.screen], screening_folder(a.studies_dir, name),
                      epochs=SCREEN_EPOCHS, augment=None, kd_targets_mode=DEFAULT_KD_TARGETS, data_dir=None,
                      cache_dir=None, progress=Progress())
    for name in a.studies:
        rows = screened_rows(a.studies_dir, name)
        for r in rows:
            print(f"{name} #{r['search_rank']:<2d} trial {r['trial']:<3d} {r['flops'] / 1e6:5.2f}M "
                  f"search {r['search_val']:.2%} (rung {r['search_rung']}) screen {r['screen_val']:.2%}")
        if len(rows) > 2:
            tau = kendall_tau([r["search_val"] for r in rows], [r["screen_val"] for r in rows])
            print(f"{name}: {len(rows)} screened, Kendall tau (search score vs screening) {tau:+.2f}")
        append_rows(a.out, rows)


if __name__ == "__main__":
    try:
        main()
    except UserError as err:  # a study that is not there, or cannot be read: one line, not a traceback
        raise SystemExit(f"{Path(__file__).name}: error: {err}") from None
