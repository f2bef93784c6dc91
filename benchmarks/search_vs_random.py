"""Benchmark 1: the default search vs Optuna's RandomSampler, at equal trials and equal wall-clock.

Each arm runs ``python -m nas_kd.search`` for the same ``--timeout`` per seed with identical trial
training; the hypervolume of the (validation accuracy, FLOPs) front is then read back from each
study at an equal number of trained trials (the fewest any run of that seed trained) and at an
equal wall-clock time (``--timeout`` after the run's first trial started).

Arms:
- ``default``: what ``python -m nas_kd.search`` does: TPE, the space's warm start, early stopping;
- ``warm``: TPE with the warm start, no early stopping (the default before early stopping was measured);
- ``tpe-cold``: TPE alone (isolates what the hand designs add);
- ``random``: ``--sampler random`` alone (pure random search).

Reference point of the hypervolume (the product's, as in the report): accuracy at chance level
(1/10), FLOPs at the budget. A student below chance or over budget is worth nothing.

    python benchmarks/search_vs_random.py --seeds 0 1 2 --timeout 480 --epochs 1 --train-subset 10000
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import subprocess
import sys
from datetime import date
from pathlib import Path

import optuna
from csv_rows import append_rows

from nas_kd.study.pareto import hypervolume

HERE = Path(__file__).parent
ARMS = {
    "default": ["--sampler", "tpe"],
    "warm": ["--sampler", "tpe", "--no-early-stop"],
    "tpe-cold": ["--sampler", "tpe", "--no-warm-start", "--no-early-stop"],
    "random": ["--sampler", "random", "--no-warm-start", "--no-early-stop"],
}


def run_arm(arm: str, seed: int, a: argparse.Namespace, studies: Path) -> str:
    name = f"{arm}-seed{seed}"
    db = studies / f"{name}.db"
    if not db.exists():  # a finished run is reused: the benchmark can be resumed
        cmd = [sys.executable, "-m", "nas_kd.search", *ARMS[arm], "--seed", str(seed), "--timeout", str(a.timeout),
               "--trials", "100000", "--budget", a.budget, "--epochs", str(a.epochs),
               "--train-subset", str(a.train_subset), "--min-steps", "0", "--threads", str(a.threads),
               "--studies-dir", str(studies), "--study-name", name]
        print("$", " ".join(cmd[1:]), flush=True)
        tmp_db = studies / f"{name}.running.db"
        tmp_db.unlink(missing_ok=True)
        cmd += ["--storage", f"sqlite:///{tmp_db}"]
        subprocess.run(cmd, check=True, env={**os.environ, "NAS_KD_PROGRESS": "lines"})
        tmp_db.rename(db)
    return f"sqlite:///{db}"


def timeline(storage: str, name: str) -> tuple[list[tuple[float, float, float]], float]:
    """(seconds after the first trial started, val accuracy, FLOPs) of each trained trial, in order
    of completion; and the budget."""
    study = optuna.load_study(study_name=name, storage=storage)
    trials = [t for t in study.trials if t.datetime_start is not None]
    t0 = min(t.datetime_start for t in trials)
    trained = sorted((t for t in trials if t.user_attrs.get("status") in ("trained", "duplicate")
                      and t.state == optuna.trial.TrialState.COMPLETE), key=lambda t: t.datetime_complete)
    budget = study.user_attrs["nas_kd.settings"]["config"]["budget_flops"]
    return [((t.datetime_complete - t0).total_seconds(), t.values[0], t.values[1]) for t in trained], budget


def hv(points: list[tuple[float, float, float]], budget: float, floor: float = 0.1) -> float:
    """Hypervolume as a fraction of the box (floor..100%) × (0..budget); the floor is chance level
    unless a sensitivity check raises it."""
    area = hypervolume([(acc, flops) for _, acc, flops in points], ref_accuracy=floor, ref_cost=budget)
    return area / ((1 - floor) * budget)


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    p.add_argument("--arms", nargs="+", default=list(ARMS), choices=list(ARMS))
    p.add_argument("--timeout", type=float, default=480)
    p.add_argument("--budget", default="5MFLOPs")
    p.add_argument("--epochs", type=float, default=1.0)
    p.add_argument("--train-subset", type=int, default=10000)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--studies", default="studies/bench-search-vs-random")
    p.add_argument("--out", default=str(HERE / "search_vs_random.csv"))
    a = p.parse_args()
    studies = Path(a.studies)
    studies.mkdir(parents=True, exist_ok=True)
    rows = []
    for seed in a.seeds:
        lines = {arm: timeline(run_arm(arm, seed, a, studies), f"{arm}-seed{seed}") for arm in a.arms}
        k = min(len(pts) for pts, _ in lines.values())
        for arm, (pts, budget) in lines.items():
            in_time = [pt for pt in pts if pt[0] <= a.timeout]
            rows.append({
                "date": date.today().isoformat(), "machine": f"{platform.node()} {a.threads} thread(s)",
                "arm": arm, "seed": seed, "timeout_s": a.timeout, "epochs": a.epochs, "train_subset": a.train_subset,
                "trained_in_time": len(in_time), "equal_trials_k": k,
                "hv_equal_time": round(hv(in_time, budget), 5), "hv_equal_trials": round(hv(pts[:k], budget), 5),
                # sensitivity: the floor at 70%, about the weakest accuracy worth keeping on this protocol
                "hv70_equal_time": round(hv(in_time, budget, 0.7), 5),
                "best_val_in_time": round(max((acc for _, acc, _ in in_time), default=0.0), 4),
            })
            print(rows[-1], flush=True)
    append_rows(Path(a.out), rows)
    print("\nmean hypervolume (fraction of the box), and ratio of means over random:")
    for key in ("hv_equal_time", "hv_equal_trials", "hv70_equal_time"):
        means = {arm: statistics.mean(r[key] for r in rows if r["arm"] == arm) for arm in a.arms}
        text = ", ".join(f"{arm} {m:.4f}" for arm, m in means.items())
        ratios = ", ".join(f"{arm}/random {m / means['random']:.3f}" for arm, m in means.items()
                           if "random" in means and arm != "random")
        print(f"  {key}: {text} | {ratios}")


if __name__ == "__main__":
    main()
