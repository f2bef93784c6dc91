"""Timing noise between processes: the same spec timed by ``measure_latency`` in ``--processes``
separate Python processes, one after another (each exports and times afresh, as a search worker
would). Prints each process's median and, per spec, the spread across processes (max/min - 1) and
their coefficient of variation; every process's row is appended to ``latency_noise.csv`` with its
group's spread and CV, under one ``run`` id.

Default specs: the default space's warm-start designs, at Fashion-MNIST's 1x28x28, 10 classes.

    python benchmarks/latency_noise.py --processes 5 --threads 1
    python benchmarks/latency_noise.py --specs "stem8/s2 | ds k3 c16 s2 x1 | fc | relu"
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from datetime import date
from pathlib import Path

from csv_rows import append_rows

HERE = Path(__file__).parent
SHAPE, CLASSES = (1, 28, 28), 10


def child(line: str, threads: int) -> None:
    """Time one spec in this process and print its Latency as JSON."""
    import torch

    from nas_kd.model.builder import build_student
    from nas_kd.model.latency import measure_latency
    from nas_kd.model.spec import parse_summary

    torch.set_num_threads(1)  # the export traces on one core; onnxruntime uses ``threads``
    lat = measure_latency(build_student(parse_summary(line, SHAPE[0], CLASSES)), SHAPE, threads=threads)
    print(json.dumps(lat.to_dict()))


def specs(a: argparse.Namespace) -> list[tuple[str, str]]:
    """(name, summary line) of every spec to time."""
    if a.specs:
        return [(f"spec{i}", line) for i, line in enumerate(a.specs)]
    from nas_kd.search.space import load_space

    return list(load_space(a.space).warm_start)


def time_in_processes(line: str, a: argparse.Namespace) -> list[dict]:
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    results = []
    for _ in range(a.processes):
        out = subprocess.run([sys.executable, __file__, "--child", line, "--threads", str(a.threads)],
                             capture_output=True, text=True, env=env, check=True)
        results.append(json.loads(out.stdout.strip().splitlines()[-1]))
    return results


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--processes", type=int, default=5)
    p.add_argument("--threads", type=int, default=1, help="onnxruntime intra-op threads")
    p.add_argument("--space", default="default", help="whose warm-start designs are the default specs")
    p.add_argument("--specs", nargs="*", help="summary lines to time instead of the warm-start designs")
    p.add_argument("--out", default=str(HERE / "latency_noise.csv"))
    p.add_argument("--child", help=argparse.SUPPRESS)
    a = p.parse_args()
    if a.child:
        child(a.child, a.threads)
        return
    from nas_kd.model.latency import format_duration, machine_id, machine_key

    machine, run = machine_id(), time.strftime("%Y%m%dT%H%M%S")
    for name, line in specs(a):
        results = time_in_processes(line, a)
        medians = [r["median_us"] for r in results]
        between = max(medians) / min(medians) - 1
        cv = statistics.stdev(medians) / statistics.mean(medians) if len(medians) > 1 else 0.0
        print(f"{name}: {', '.join(format_duration(m) for m in medians)}; across processes "
              f"max/min - 1 = {between:.1%}, CV {cv:.1%}  ({line})", flush=True)
        append_rows(Path(a.out), [
            {"run": run, "date": date.today().isoformat(), "name": name, "arch": line, "process": i,
             "median_us": round(r["median_us"], 2), "spread": round(r["spread"], 4), "runs": r["runs"],
             "stable": r["stable"], "threads": a.threads, "cpu": machine["cpu"],
             "machine_key": machine_key(a.threads, machine), "between_processes": round(between, 4),
             "cv": round(cv, 4)}
            for i, r in enumerate(results)])
    print(f"rows appended to {a.out}")


if __name__ == "__main__":
    main()
