"""Does training in rungs cost accuracy? A promoted candidate against the same one trained straight.

The search trains a candidate that reaches the top rung in segments: rung 0, then each promotion
resumes from the checkpoint and restarts the one-cycle schedule (``nas_kd.train.schedule``). Random
search trains its candidates straight through one cycle of the same length. If the restarts cost
accuracy, the search's front sits lower than random search's for the same students, whatever it
chooses to promote. For a finished study's ``--top`` students (the search's final score), each is
trained to the top rung's length under each ``--schedules`` (same split, KD targets and seed as the
search) and its validation accuracy recorded, one CSV row per (student, schedule) in
``rung_schedule.csv``. ``restarts`` replays the search exactly, and ``rung_fidelity.py`` has already
done so for the same students (reproducing all 10 final scores of ``cold-seed4`` to the digit), so by
default only ``straight`` is trained and ``--summary`` reads restarts' scores from ``rung_fidelity.csv``.
The other schedules are this benchmark's alone: it swaps the trainer's ``one_cycle`` for them (the
search was not changed, since none of them measured better than one cycle straight; RESULTS.md).
Resumable and shardable like ``rung_fidelity.py``:

    python benchmarks/rung_schedule.py --study-name cold-seed4 --studies-dir benchmarks/studies --shard 0/2 &
    python benchmarks/rung_schedule.py --study-name cold-seed4 --studies-dir benchmarks/studies --shard 1/2
    python benchmarks/rung_schedule.py --study-name cold-seed4 --studies-dir benchmarks/studies --schedules wsd
    python benchmarks/rung_schedule.py --study-name cold-seed4 --summary
"""

from __future__ import annotations

import csv
import statistics
import time
from datetime import date
from pathlib import Path

import torch
from csv_rows import append_rows
from proxy_fidelity import kendall_tau
from rung_fidelity import _top, replay_flags, replay_run

from nas_kd.model.builder import build_student
from nas_kd.model.spec import ArchSpec
from nas_kd.search.candidate import rung_length, trial_settings
from nas_kd.train import accuracy, loop, train_model
from nas_kd.train.schedule import WARM_UP, one_cycle

HERE = Path(__file__).parent
# restarts-halfpeak / -quarterpeak / -2xpeak: each promotion restarts one-cycle at half / a quarter /
# twice the peak rate.
# wsd / wsd50: warm-up, stable, decay (Hagele et al. 2024) annealing over the last 20% / 50%, trained
# straight: a promotion resumed from its rung's pre-anneal state would train exactly so.
SCHEDULES = ("restarts", "straight", "restarts-halfpeak", "restarts-quarterpeak", "restarts-2xpeak", "wsd", "wsd50")
PEAKS = {"restarts-halfpeak": 0.5, "restarts-quarterpeak": 0.25, "restarts-2xpeak": 2.0}


def _restart_peak(factor: float):  # noqa: ANN202 - a one_cycle stand-in
    """One-cycle whose later segments (the promotions' restarts) peak at ``factor`` times the rate."""
    calls = []

    def schedule(opt: torch.optim.Optimizer, lr: float, steps: int) -> torch.optim.lr_scheduler.OneCycleLR:
        calls.append(steps)
        if len(calls) == 1:
            return one_cycle(opt, lr, steps)
        return one_cycle(opt, lr * factor, steps)
    return schedule


def _wsd(warm_up: int, anneal: float):  # noqa: ANN202 - a one_cycle stand-in
    """WSD over one run: linear warm-up over ``warm_up`` steps from lr/25, the peak held, then a 1-sqrt
    anneal over the last ``anneal`` of the run (momentum held at its setting)."""
    def schedule(opt: torch.optim.Optimizer, lr: float, steps: int) -> torch.optim.lr_scheduler.LambdaLR:
        decay = max(1, round(anneal * steps))

        def factor(step: int) -> float:
            if step < warm_up:
                return 1 / 25 + (1 - 1 / 25) * step / warm_up
            return 1 - min(1.0, max(0, step - (steps - decay)) / decay) ** 0.5

        for group in opt.param_groups:
            group["initial_lr"] = lr
        return torch.optim.lr_scheduler.LambdaLR(opt, factor)
    return schedule


def _train(run, spec: ArchSpec, schedule: str) -> tuple[float, float]:  # noqa: ANN001 - a search Run
    steps, restarts = rung_length(run, run.cfg.rungs - 1)
    torch.manual_seed(run.cfg.seed)
    model = build_student(spec).to(memory_format=torch.channels_last)
    loop.one_cycle = one_cycle
    if schedule in PEAKS:
        loop.one_cycle = _restart_peak(PEAKS[schedule])
    elif schedule.startswith("wsd"):
        loop.one_cycle = _wsd(max(1, round(WARM_UP * rung_length(run, 0)[0])), 0.5 if schedule == "wsd50" else 0.2)
    start = time.perf_counter()
    train_model(model, run.x_train, run.y_train, trial_settings(run.cfg, len(run.y_train)), kd=run.cfg.kd,
                teacher_logits=run.teacher_logits, steps=steps, restarts=restarts if "restarts" in schedule else ())
    return accuracy(model, run.split.x_val, run.split.y_val), time.perf_counter() - start


def _summary(out: Path, study_name: str) -> None:
    """Per schedule: the mean accuracy against restarts' (the search's own, as ``rung_fidelity.py``
    replayed it for the same students), and Kendall tau against its 20-epoch export test."""
    rows = [r for r in csv.DictReader(out.open()) if r["study"] == study_name]
    fidelity = {r["trial"]: r for r in csv.DictReader((HERE / "rung_fidelity.csv").open()) if r["study"] == study_name}
    by = {(r["trial"], r["schedule"]): float(r["val_accuracy"]) for r in rows}
    top = max(int(c[4:]) for c in next(iter(fidelity.values())) if c.startswith("rung") and c[4:].isdigit())
    by.update({(t, "restarts"): float(r[f"rung{top}"]) for t, r in fidelity.items()})
    print(f"{study_name}: {len({r['trial'] for r in rows})} students, at rung {top}")
    for schedule in SCHEDULES:
        trials = [t for t in fidelity if (t, schedule) in by]
        if not trials:
            continue
        gains = [by[t, schedule] - by[t, "restarts"] for t in trials]
        tau = kendall_tau([by[t, schedule] for t in trials], [float(fidelity[t]["export_test"]) for t in trials])
        mean = statistics.mean(by[t, schedule] for t in trials)
        print(f"{schedule:9s} n={len(trials):2d} mean {mean:.2%}, minus restarts {statistics.mean(gains) * 100:+.2f} "
              f"points (higher on {sum(g > 0 for g in gains)}), Kendall tau vs 20-epoch export test {tau:+.2f}")


def main() -> None:
    p = replay_flags(__doc__.splitlines()[0], "rung_schedule.csv")
    p.add_argument("--schedules", nargs="+", choices=SCHEDULES, default=["straight"])
    a = p.parse_args()
    out = Path(a.out)
    if a.summary:
        _summary(out, a.study_name)
        return
    study, run, shard, shards = replay_run(a)
    top = run.cfg.rungs - 1
    done = {(r["study"], r["trial"], r["schedule"]) for r in csv.DictReader(out.open())} if out.exists() else set()
    jobs = [(record, s) for record in _top(study, a.top) for s in a.schedules]
    for i, (record, schedule) in enumerate(jobs):
        if i % shards != shard or (a.study_name, str(record.number), schedule) in done:
            continue
        val, seconds = _train(run, ArchSpec.from_dict(record.spec), schedule)
        row = {"date": date.today().isoformat(), "study": a.study_name, "trial": record.number,
               "flops": record.flops, "schedule": schedule, "rung": top, "steps": rung_length(run, top)[0],
               "val_accuracy": round(val, 4), "search_score": round(record.val_accuracy, 4),
               "reached_top": record.rung == top, "seconds": round(seconds, 1), "summary": record.summary}
        append_rows(out, [row])
        print(row, flush=True)


if __name__ == "__main__":
    main()
