"""Counting FLOPs three ways on random specs of the default space: fvcore (what nas_kd uses),
thop, and the analytic formula; agreement and milliseconds per count (median).

    python benchmarks/counting.py --specs 60
"""

from __future__ import annotations

import argparse
import statistics
import time
from pathlib import Path

import optuna
import torch
from csv_rows import write_rows

from nas_kd.model.builder import build_student
from nas_kd.model.cost import analytic_flops, count_flops, count_thop
from nas_kd.search.space import load_space

HERE = Path(__file__).parent


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--specs", type=int, default=60)
    p.add_argument("--shape", default="1,28,28")
    p.add_argument("--out", default=str(HERE / "counting.csv"))
    a = p.parse_args()
    torch.set_num_threads(1)
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    shape = tuple(int(v) for v in a.shape.split(","))
    space = load_space("default")
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=0))
    rows = []
    for i in range(a.specs):
        spec = space.sample(study.ask(), shape, 10)
        model = build_student(spec)
        t0 = time.perf_counter()
        fv = count_flops(model, shape)
        t1 = time.perf_counter()
        th = count_thop(model, shape)
        t2 = time.perf_counter()
        an = analytic_flops(spec, shape)
        t3 = time.perf_counter()
        rows.append({"spec": i, "summary": spec.summary(), "fvcore": fv, "thop": th, "analytic": an,
                     "fvcore_ms": round(1e3 * (t1 - t0), 2), "thop_ms": round(1e3 * (t2 - t1), 2),
                     "analytic_ms": round(1e3 * (t3 - t2), 3)})
    write_rows(Path(a.out), rows)
    exact = sum(r["fvcore"] == r["analytic"] for r in rows)
    ratio = [r["thop"] / r["fvcore"] for r in rows]
    print(f"{len(rows)} random specs of the default space at {shape}")
    print(f"fvcore == analytic: {exact}/{len(rows)}")
    print(f"thop / fvcore: min {min(ratio):.3f}, median {statistics.median(ratio):.3f}, max {max(ratio):.3f} "
          "(thop also counts batch norm)")
    for k in ("fvcore_ms", "thop_ms", "analytic_ms"):
        print(f"{k[:-3]}: median {statistics.median(r[k] for r in rows):.2f} ms per count")


if __name__ == "__main__":
    main()
