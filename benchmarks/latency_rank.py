"""How well FLOPs rank students by measured latency: random members of a search space within the
FLOP budget, each counted (fvcore FLOPs, parameters) and timed on this CPU by
``nas_kd.model.latency.measure_latency`` (onnxruntime, batch 1, ``--threads``, the stated rule).

``RandomSampler(--seed)`` draws architectures at Fashion-MNIST's 1x28x28, 10 classes; those over
``--budget`` analytic FLOPs are skipped untimed. Prints Spearman's ρ and Kendall's τ-b of FLOPs
(and of parameters) with latency, and writes every row to ``latency_rank.csv`` (replaced per run).
Nothing is trained; about a third of a second per student on one quiet core.

    python benchmarks/latency_rank.py --samples 100 --seed 0 --budget 5M --threads 1
"""

from __future__ import annotations

import argparse
import time
from datetime import date
from pathlib import Path

import optuna
import pandas as pd
import torch
from csv_rows import write_rows
from proxy_fidelity import kendall_tau
from space_choice import SHAPE, draws_in_window

from nas_kd.model.builder import build_student
from nas_kd.model.cost import count_cost
from nas_kd.model.latency import format_duration, machine_id, machine_key, measure_latency
from nas_kd.quantity import parse_quantity
from nas_kd.search.space import load_space

HERE = Path(__file__).parent


def spearman(a: list[float], b: list[float]) -> float:
    """Spearman's ρ: Pearson's correlation of average ranks (pandas; scipy is not needed)."""
    return float(pd.Series(a).corr(pd.Series(b), method="spearman"))


def measure_rows(a: argparse.Namespace) -> list[dict]:
    """One row per drawn member within the budget: summary, cost, latency."""
    space = load_space(a.space)
    machine = machine_id()
    common = {"date": date.today().isoformat(), "space": space.name, "space_sha256": space.sha256[:12],
              "seed": a.seed, "budget": a.budget, "threads": a.threads, "cpu": machine["cpu"],
              "machine_key": machine_key(a.threads, machine)}
    rows = []
    members = draws_in_window(space, a.seed, 0, parse_quantity(a.budget))
    for i, spec in zip(range(a.samples), members, strict=False):
        model = build_student(spec)
        cost = count_cost(model, SHAPE)
        lat = measure_latency(model, SHAPE, threads=a.threads)
        rows.append({**common, "sample": i, "arch": spec.summary(), "flops": cost.flops, "params": cost.params,
                     "latency_us": round(lat.median_us, 2), "spread": round(lat.spread, 4), "runs": lat.runs,
                     "stable": lat.stable})
        print(f"{time.strftime('%H:%M:%S')} {i:3d} {cost.flops / 1e6:5.2f}M {format_duration(lat.median_us):>9} "
              f"±{lat.spread:.0%}  {spec.summary()}", flush=True)
    return rows


def report(rows: list[dict]) -> None:
    lat = [r["latency_us"] for r in rows]
    print(f"\n{len(rows)} students on {rows[0]['cpu']}, {rows[0]['threads']} thread(s): latency "
          f"{format_duration(min(lat))} to {format_duration(max(lat))}; "
          f"{sum(not r['stable'] for r in rows)} stopped at a ceiling before the median settled")
    for column in ("flops", "params"):
        values = [float(r[column]) for r in rows]
        print(f"  {column:<6} vs latency: Spearman ρ {spearman(values, lat):+.3f}, "
              f"Kendall τ-b {kendall_tau(values, lat):+.3f}")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--samples", type=int, default=100, help="timed members of the space")
    p.add_argument("--seed", type=int, default=0, help="the random sampler's seed")
    p.add_argument("--budget", default="5M", help="analytic FLOP ceiling of the drawn members")
    p.add_argument("--threads", type=int, default=1, help="onnxruntime intra-op threads")
    p.add_argument("--space", default="default")
    p.add_argument("--out", default=str(HERE / "latency_rank.csv"))
    a = p.parse_args()
    torch.set_num_threads(1)  # export and counting only: one core, whatever the timing uses
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    rows = measure_rows(a)
    if len(rows) < 2:
        raise SystemExit(f"only {len(rows)} member(s) within {a.budget}: nothing to correlate")
    write_rows(Path(a.out), rows)
    report(rows)
    print(f"rows: {a.out}")


if __name__ == "__main__":
    main()
