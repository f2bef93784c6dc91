"""Where would a candidate the search did not promote have stood? (issue 19)

Trains the named trials of a finished study through every rung exactly as the search trains them
(same split, steps, learning-rate restarts, KD targets and seed; ``rung_fidelity.py``'s replay), and
writes one CSV row per trial: the rung accuracies the search recorded beside the replayed ones. The
replayed rung 0 equals the recorded one when the replay is faithful; the replayed higher rungs of an
unpromoted candidate say where promotion would have put it among those that went up.

    python benchmarks/rung_replay.py --study-name strat-seed0 --studies-dir benchmarks/studies \
        --trials 16 23 22 --shard 0/2 --threads 1 &
    python benchmarks/rung_replay.py ... --shard 1/2 --threads 1
    python benchmarks/rung_replay.py --study-name strat-seed0 --studies-dir benchmarks/studies --summary

``--summary`` ranks the study's top-band candidates (above a third of the budget) by the longest rung
each reached in the search, then again with every replayed trial moved to its replayed top rung, each
time with Kendall τ against the 20-epoch screening of those screened (``screening_runs.csv``).
"""

from __future__ import annotations

import csv
from datetime import date
from pathlib import Path

import optuna
from csv_rows import append_rows
from proxy_fidelity import kendall_tau
from rung_fidelity import HERE, _rung_accuracies, replay_flags, replay_run

from nas_kd.errors import UserError
from nas_kd.model.spec import ArchSpec
from nas_kd.search.rungs import BAND_RATIO
from nas_kd.study.records import IDENTITY_ATTR, TrialRecord, front_candidates, trial_records
from nas_kd.study.storage import open_named_study


def _trained(study: optuna.Study) -> dict[int, TrialRecord]:
    return {r.number: r for r in front_candidates(trial_records(study))}


def _summary(out: Path, study: optuna.Study, screening: Path) -> None:
    budget = study.user_attrs[IDENTITY_ATTR]["budget_flops"]
    records = _trained(study)
    rows = list(csv.DictReader(out.open())) if out.exists() else []
    replayed = {int(r["trial"]): r for r in rows if r["study"] == study.study_name}
    top = max(r.rung for r in records.values())
    band = [n for n, r in records.items() if r.flops > budget / BAND_RATIO]  # promotion's top band

    def score(n: int, *, replay: bool) -> tuple[int, float]:
        if replay and n in replayed:
            return top, float(replayed[n][f"rung{top}"])
        return records[n].rung, records[n].val_accuracy

    screened = {int(r["trial"]): float(r["screen_val"]) for r in csv.DictReader(screening.open())
                if r["study"] == study.study_name} if screening.exists() else {}
    for replay in (False, True):
        print("with replayed trials at their top rung" if replay else "as the search left them")
        ranked = sorted(band, key=lambda n: [-v for v in score(n, replay=replay)])
        for i, n in enumerate(ranked, 1):
            rung, acc = score(n, replay=replay)
            mark = " (replayed)" if replay and n in replayed else ""
            seen = f", 20-epoch screening {screened[n]:.2%}" if n in screened else ""
            print(f"  {i:2d}. trial {n:3d} {records[n].flops / 1e6:5.2f}M rung {rung} {acc:.2%}{mark}{seen}")
        both = [n for n in ranked if n in screened]
        if len(both) > 1:  # the rank is (rung, accuracy): the search's own order
            position = [-ranked.index(n) for n in both]
            print(f"  Kendall tau against screening, the band's {len(both)} screened: "
                  f"{kendall_tau(position, [screened[n] for n in both]):+.2f}")


def main() -> None:
    p = replay_flags(__doc__.splitlines()[0], "rung_replay.csv")
    p.add_argument("--trials", type=int, nargs="+", metavar="N", help="the study's trial numbers to replay")
    p.add_argument("--screening", type=Path, default=HERE / "screening_runs.csv",
                   help="--summary: 20-epoch screening results to rank against (screening_runs.py's CSV)")
    a = p.parse_args()
    out = Path(a.out)
    study = open_named_study(a.study_name, a.studies_dir, None)
    if a.summary:
        _summary(out, study, a.screening)
        return
    if not a.trials:
        p.error("name the trials to replay with --trials N [N ...], or ask for --summary")
    records = _trained(study)
    unknown = [n for n in a.trials if n not in records]
    if unknown:
        p.error(f"study {a.study_name!r} has no trained, in-budget trial {', '.join(map(str, unknown))}")
    _, run, shard, shards = replay_run(a)
    done = {(r["study"], r["trial"]) for r in csv.DictReader(out.open())} if out.exists() else set()
    for i, number in enumerate(a.trials):
        if i % shards != shard or (a.study_name, str(number)) in done:
            continue
        record = records[number]
        rungs = _rung_accuracies(run, ArchSpec.from_dict(record.spec))
        row = {"date": date.today().isoformat(), "study": a.study_name, "trial": number, "flops": record.flops,
               "reached_rung": record.rung,
               **{f"recorded{k}": round(v, 4) for k, v in enumerate(record.rung_accuracies)},
               **{f"rung{k}": round(v, 4) for k, v in enumerate(rungs)}, "summary": record.summary}
        append_rows(out, [row])
        print(row, flush=True)


if __name__ == "__main__":
    try:
        main()
    except UserError as err:  # a study that is not there, or cannot be read: one line, not a traceback
        raise SystemExit(f"{Path(__file__).name}: error: {err}") from None
