"""Benchmark 1: the default search vs random search, at equal wall-clock, over several seeds.

The search arms (``default``, ``cold``) run ``python -m nas_kd.search`` exactly as a user runs it:
the default budget, protocol and ``--trials`` (40), its workers included, until it finishes (since
2026-12-05 that includes its promotions past the quota until ``--promote-until``, 19 minutes). The
random arms run for ``--timeout`` seconds per seed (20 minutes: the default search's limit), as
many candidates as fit. So "equal wall-clock" is the random arm's time: a search that finished
earlier keeps its front from then on. ``--search-timeout`` instead holds the search arms to the
same ``--timeout`` with unlimited trials (the protocol of the rows before 2026-12-04).

A study's front at time t is made of what it knew
then: each candidate's accuracy at the longest rung it had finished (promotions are read from
``NAME.rungs``). Reported per seed: the hypervolume at equal wall-clock, and the wall-clock each
arm needed to reach random search's final hypervolume (Yang et al. 2020: ratios of hypervolumes
saturate near 1; the time to reach a level does not).

Arms:
- ``default``: ``python -m nas_kd.search`` as it is (its default sampler, warm start, rungs, one worker per core);
- ``cold``: the same without the warm start (``--no-warm-start``): the search on its own (random
  sampling with the default rungs and promotion bands, MO-ASHA's own setting, from 2026-12-04; the
  stratified sampler since 2026-12-06, so ``cold`` rows from then on are ``strat``'s);
- ``tpe``: the same with TPE told rung 0 (the default sampler before 2026-12-04);
- ``cold2``: ``cold`` with one rung fewer, the first at the default's rung 1, the top unchanged
  (the lever tried on 2026-12-05: a first rung long enough to rank);
- ``strat``: ``cold`` with ``--sampler stratified`` (the default since 2026-12-06): candidate N a
  random member of FLOP band ``band_of(N, K)``, cheapest band first (random draws put 1.6% of the
  members under 0.4 MFLOPs); one turn per band until stop 37, the top band two since; with
  ``--tail rungs`` (the default's tail until 2026-12-07), so ``strat`` keeps its rows' meaning;
- ``local``: ``strat`` (its tail too) whose top band's second turn is local search around its best (stop 39);
- ``bandtail``: ``strat`` with ``--tail top-band`` (stop 42; the default since 2026-12-07, stop 43):
  the time left after the candidates goes to the top third of the budget first, so ``cold`` rows from
  then on are ``bandtail``'s;
- ``random``: random search: random sampling, no warm start, every candidate trained to the length
  of the default's longest rung (``--rungs 1``), so its front is read at the same fidelity as the
  default's top.

Reference point (as in the report): accuracy at chance level (1/10), FLOPs at the budget.

    python benchmarks/search_vs_random.py --seeds 0 1 2 3 4 --timeout 1200
"""

from __future__ import annotations

import argparse
import math
import os
import platform
import statistics
import subprocess
import sys
from datetime import date
from pathlib import Path

import optuna
import pandas as pd
from csv_rows import append_rows

from nas_kd.search.config import SearchConfig
from nas_kd.study.pareto import hypervolume
from nas_kd.study.records import RUNGS_SUFFIX, Attr, is_feasible, is_trained

HERE = Path(__file__).parent
_D = SearchConfig()
TOP_EPOCHS = _D.train.epochs * _D.eta ** (_D.rungs - 1)  # the default's longest rung, in epochs
ARMS = {
    "default": [],
    "cold": ["--no-warm-start"],
    "tpe": ["--sampler", "tpe", "--no-warm-start"],
    # the same top length in 2 rungs: the first at the default's rung 1 (it ranks at tau 0.69, rung 0 at 0.33)
    "cold2": ["--no-warm-start", "--rungs", str(_D.rungs - 1), "--epochs", f"{_D.train.epochs * _D.eta:g}",
              "--min-steps", str(_D.min_steps * _D.eta)],
    # the lever tried on 2026-12-06: candidates spread over FLOP bands by construction, cheapest first
    "strat": ["--no-warm-start", "--sampler", "stratified", "--tail", "rungs"],
    # the lever named on 2026-12-06 (stop 39): the top band's second turn is local search around its best
    "local": ["--no-warm-start", "--sampler", "local", "--tail", "rungs"],
    # the lever named on 2026-12-07 (stop 42): the time left after the candidates goes to the top band first
    "bandtail": ["--no-warm-start", "--sampler", "stratified", "--tail", "top-band"],
    "random": ["--sampler", "random", "--no-warm-start", "--rungs", "1", "--no-early-stop",
               "--epochs", f"{TOP_EPOCHS:g}", "--min-steps", str(_D.min_steps * _D.eta ** (_D.rungs - 1))],
}


# run as shipped: --trials 40, until done
SEARCH_ARMS = ("default", "cold", "tpe", "cold2", "strat", "local", "bandtail")


def run_arm(arm: str, seed: int, a: argparse.Namespace, studies: Path) -> str:
    """The arm's study URL; a finished run is reused, so the benchmark resumes where it stopped."""
    name = f"{arm}-seed{seed}"
    db = studies / f"{name}.db"
    if not db.exists():
        tmp_db = studies / f"{name}.running.db"
        tmp_db.unlink(missing_ok=True)
        timed = a.search_timeout or arm not in SEARCH_ARMS
        length = ["--timeout", str(a.timeout), "--trials", "100000"] if timed else []
        cmd = [sys.executable, "-m", "nas_kd.search", *ARMS[arm], "--seed", str(seed), *length,
               "--budget", a.budget, "--studies-dir", str(studies), "--study-name", name]
        print("$", " ".join(cmd[1:]), flush=True)
        env = {**os.environ, "NAS_KD_PROGRESS": "lines", "NAS_KD_STORAGE": f"sqlite:///{tmp_db}"}
        subprocess.run(cmd, check=True, env=env)
        tmp_db.rename(db)
    return f"sqlite:///{db}"


def timeline(storage: str, name: str) -> tuple[list[tuple[float, int, float, float]], float]:
    """(seconds after the run's first trial started, candidate, accuracy, FLOPs) for every finished
    rung in order of completion; and the budget."""
    study = optuna.load_study(study_name=name, storage=storage)
    started = [t.datetime_start for t in study.trials if t.datetime_start is not None]
    t0 = min(started)
    events = [(t.datetime_complete, t.number, t.values[0], t.user_attrs[Attr.FLOPS])
              for t in study.trials if is_trained(t) and is_feasible(t)]
    try:
        rungs = optuna.load_study(study_name=name + RUNGS_SUFFIX, storage=storage)
        # a promotion records its cost axis (Attr.COST), not FLOPs: take them from its candidate
        flops = {n: f for _, n, _, f in events}
        events += [(t.datetime_complete, t.user_attrs[Attr.SOURCE], t.values[0], flops[t.user_attrs[Attr.SOURCE]])
                   for t in rungs.trials if t.state == optuna.trial.TrialState.COMPLETE]
    except KeyError:
        pass
    budget = float(study.user_attrs["nas_kd.identity"]["budget_flops"])
    return sorted(((when - t0).total_seconds(), n, acc, flops) for when, n, acc, flops in events), budget


def hv_curve(events: list[tuple[float, int, float, float]], budget: float) -> list[tuple[float, float]]:
    """(time, hypervolume as a fraction of the box (10%..100%) x (0..budget)) after each event; a
    candidate counts with its latest (longest-rung) accuracy."""
    latest: dict[int, tuple[float, float]] = {}
    curve = []
    for seconds, n, acc, flops in events:
        latest[n] = (acc, flops)
        area = hypervolume(list(latest.values()), ref_accuracy=0.1, ref_cost=budget)
        curve.append((seconds, area / (0.9 * budget)))
    return curve


def hv_at(curve: list[tuple[float, float]], seconds: float) -> float:
    return max((hv for t, hv in curve if t <= seconds), default=0.0)


def time_to(curve: list[tuple[float, float]], level: float) -> float | None:
    return next((t for t, hv in curve if hv >= level), None)


FRONT_LEVELS = (0.5e6, 1e6, 2e6, 3e6, 5e6)  # --fronts: best accuracy at or under each cost


def best_under(events: list[tuple[float, int, float, float]], seconds: float) -> list[float]:
    """The best accuracy at or under each of ``FRONT_LEVELS`` FLOPs, each candidate at the longest
    rung it had finished by ``seconds`` (where one front beats another, not only by how much)."""
    latest = {n: (acc, flops) for t, n, acc, flops in events if t <= seconds}
    return [max((acc for acc, flops in latest.values() if flops <= level), default=0.0) for level in FRONT_LEVELS]


def fully_trained(storage: str, name: str, seconds: float) -> list[tuple[float, float]]:
    """(accuracy, FLOPs) of every candidate trained to the top length by ``seconds``: a search's
    promotions to its top rung, or a one-rung run's candidates."""
    events, _ = timeline(storage, name)
    t0 = min(t.datetime_start for t in optuna.load_study(study_name=name, storage=storage).trials
             if t.datetime_start is not None)
    try:
        rungs = optuna.load_study(study_name=name + RUNGS_SUFFIX, storage=storage).trials
    except KeyError:
        rungs = []
    done = [t for t in rungs if t.state == optuna.trial.TrialState.COMPLETE
            and (t.datetime_complete - t0).total_seconds() <= seconds]
    if not done:  # one rung: every candidate trained to the top length
        return [(acc, flops) for t, _, acc, flops in events if t <= seconds]
    top = max(t.user_attrs[Attr.RUNG] for t in done)
    flops = {n: f for _, n, _, f in events}
    return [(t.values[0], flops[t.user_attrs[Attr.SOURCE]]) for t in done if t.user_attrs[Attr.RUNG] == top]


def selection(arms: dict[str, list[tuple[float, float]]]) -> None:
    """Does screening choose better students than drawing them? Each arm's fully trained students,
    as residuals from one least-squares line of accuracy on log FLOPs fitted to all of them."""
    points = [(math.log(f), a) for students in arms.values() for a, f in students]
    mx, my = statistics.mean(x for x, _ in points), statistics.mean(y for _, y in points)
    slope = sum((x - mx) * (y - my) for x, y in points) / sum((x - mx) ** 2 for x, _ in points)
    for arm, students in arms.items():
        residual = statistics.mean(a - my - slope * (math.log(f) - mx) for a, f in students)
        median = statistics.median(f for _, f in students) / 1e6
        print(f"  {arm:14s} {len(students):2d} students at the top length, median {median:.2f}M FLOPs, "
              f"mean residual {residual * 100:+.2f} points (line: {slope * 100:.2f} points per e-fold of FLOPs)")


def recorded_random_hv(csv: Path, seed: int, protocol: str, timeout: float) -> float | None:
    """Random search's final hypervolume for ``seed`` as recorded in ``csv`` by the latest run of
    the same protocol and timeout, so a new search arm need not rerun it (its draws depend on the
    seed only: per trial number since 2026-12-05, from Optuna's own stream before)."""
    if not csv.exists():
        return None
    rows = [r for r in pd.read_csv(csv).to_dict("records") if r["arm"] == "random" and r["seed"] == seed
            and r.get("protocol") == protocol and r["timeout_s"] == timeout]
    return float(rows[-1]["hv_equal_time"]) if rows else None


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2, 3, 4])
    p.add_argument("--arms", nargs="+", default=list(ARMS), choices=list(ARMS))
    p.add_argument("--timeout", type=float, default=1200, help="seconds each random arm runs")
    p.add_argument("--search-timeout", action="store_true",
                   help="also hold the search arms to --timeout with unlimited trials (the older protocol)")
    p.add_argument("--budget", default="5MFLOPs")
    p.add_argument("--studies", default="studies/bench-search-vs-random")
    p.add_argument("--out", default=str(HERE / "search_vs_random.csv"))
    p.add_argument("--fronts", action="store_true",
                   help="only print each finished arm's best accuracy under 0.5/1/2/3/5 MFLOPs at --timeout")
    p.add_argument("--selection", action="store_true",
                   help="only print, per seed, how good each finished arm's fully trained students are for their FLOPs")
    a = p.parse_args()
    if a.selection:
        for seed in a.seeds:
            dbs = {arm: Path(a.studies) / f"{arm}-seed{seed}.db" for arm in a.arms}
            print(f"seed {seed}:")
            selection({arm: fully_trained(f"sqlite:///{db}", f"{arm}-seed{seed}", a.timeout)
                       for arm, db in dbs.items() if db.exists()})
        return
    if a.fronts:
        for seed in a.seeds:
            for arm in a.arms:
                db = Path(a.studies) / f"{arm}-seed{seed}.db"
                if db.exists():
                    events, _ = timeline(f"sqlite:///{db}", f"{arm}-seed{seed}")
                    best = best_under(events, a.timeout)
                    print(f"seed {seed} {arm:8s} " + " | ".join(
                        f"≤{level / 1e6:g}M {acc:.2%}" for level, acc in zip(FRONT_LEVELS, best, strict=True)))
        return
    studies = Path(a.studies)
    studies.mkdir(parents=True, exist_ok=True)
    protocol = ("rungs, search timed" if a.search_timeout
                else f"rungs, search as shipped, promote-until {_D.promote_until:g}")
    rows = []
    for seed in a.seeds:
        curves = {arm: hv_curve(*timeline(run_arm(arm, seed, a, studies), f"{arm}-seed{seed}")) for arm in a.arms}
        target = (hv_at(curves["random"], a.timeout) if "random" in curves
                  else recorded_random_hv(Path(a.out), seed, protocol, a.timeout))
        for arm, curve in curves.items():
            reach = time_to(curve, target) if target else None
            rows.append({
                "date": date.today().isoformat(), "machine": f"{platform.node()} {os.cpu_count()} cores",
                "protocol": protocol,
                "arm": arm, "seed": seed, "timeout_s": a.timeout,
                "events": len([t for t, _ in curve if t <= a.timeout]),
                "last_event_s": round(max((t for t, _ in curve), default=0.0), 1),
                "hv_equal_time": round(hv_at(curve, a.timeout), 5),
                "random_final_hv": round(target, 5) if target else "",
                "seconds_to_random_final_hv": round(reach, 1) if reach is not None else "",
            })
            print(rows[-1], flush=True)
    append_rows(Path(a.out), rows)
    print("\nper arm: mean hypervolume at equal time; median time to random's final hypervolume / timeout")
    for arm in a.arms:
        mine = [r for r in rows if r["arm"] == arm]
        times = [r["seconds_to_random_final_hv"] for r in mine if r["seconds_to_random_final_hv"] != ""]
        share = statistics.median(times) / a.timeout if times else float("nan")
        print(f"  {arm:12s} hv {statistics.mean(r['hv_equal_time'] for r in mine):.4f} | reached random's final hv "
              f"in {len(times)}/{len(mine)} seeds, median {share:.2f} of the time")


if __name__ == "__main__":
    main()
