"""Every core busy: one process with all threads vs one single-thread process per core (issue 19, item 6).

For each student, training samples/s (batch 128, channels-last, SGD steps on random 28×28 images, as a
search trial trains) is measured three ways in one run, so the machine's load is shared alike:
one process using every core's thread, one single-thread process alone, and one single-thread process
per core side by side (their samples/s summed).

    python benchmarks/throughput.py --steps 150

Prints the figures and appends one row per (student, layout) to ``throughput.csv`` (or ``--out``).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from datetime import date
from pathlib import Path

from csv_rows import append_rows

HERE = Path(__file__).parent
SMALL = {"activation": "relu", "classifier_rank": None, "head_channels": 0, "in_channels": 1, "num_classes": 10,
         "stages": [{"block": "ds", "channels": 16, "depth": 1, "expansion": 1, "kernel": 3, "pointwise_rank": None,
                     "stride": 2}, {"block": "ds", "channels": 32, "depth": 1, "expansion": 1, "kernel": 3,
                                    "pointwise_rank": None, "stride": 2}], "stem_channels": 8, "stem_stride": 2}


def _students() -> dict[str, dict]:
    designs = json.loads((HERE / "hand_designs.json").read_text())
    return {"mobilenet-4m-wide": designs["mobilenet-4m-wide"], "mobilenet-1m": designs["mobilenet-1m"],
            "small-ds": SMALL}


def _measure(spec_json: str, threads: int, steps: int) -> float:
    """Samples/s of ``steps`` training steps after 10 warm-up steps (run in a child process)."""
    import torch

    from nas_kd.model.builder import build_student
    from nas_kd.model.spec import ArchSpec

    torch.set_num_threads(threads)
    torch.manual_seed(0)
    model = build_student(ArchSpec.from_json(spec_json)).to(memory_format=torch.channels_last).train()
    opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9, nesterov=True)
    x = torch.randn(128, 1, 28, 28).contiguous(memory_format=torch.channels_last)
    y = torch.randint(0, 10, (128,))
    for i in range(10 + steps):
        if i == 10:
            start = time.perf_counter()
        loss = torch.nn.functional.cross_entropy(model(x), y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
    return 128 * steps / (time.perf_counter() - start)


def _run(spec: dict, threads: int, steps: int, copies: int) -> list[float]:
    code = (f"import sys; sys.path.insert(0, {str(HERE)!r}); from throughput import _measure; "
            "print(_measure(sys.argv[1], int(sys.argv[2]), int(sys.argv[3])))")
    procs = [subprocess.Popen([sys.executable, "-c", code, json.dumps(spec), str(threads), str(steps)],
                              stdout=subprocess.PIPE, text=True) for _ in range(copies)]
    return [float(p.communicate()[0]) for p in procs]


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--steps", type=int, default=150)
    p.add_argument("--out", default=str(HERE / "throughput.csv"))
    a = p.parse_args()
    cores = os.cpu_count() or 1
    rows = []
    for name, spec in _students().items():
        together = _run(spec, cores, a.steps, 1)[0]
        alone = _run(spec, 1, a.steps, 1)[0]
        side_by_side = sum(_run(spec, 1, a.steps, cores))
        print(f"{name:18s} 1 proc x {cores} threads {together:7.0f}/s | 1 thread alone {alone:7.0f}/s | "
              f"{cores} procs x 1 thread {side_by_side:7.0f}/s  ({side_by_side / together:.2f}x)")
        for layout, value in ((f"1x{cores}", together), ("1x1", alone), (f"{cores}x1", side_by_side)):
            rows.append({"date": str(date.today()), "student": name, "layout": layout, "samples_per_s": round(value),
                         "ratio_to_one_process": round(value / together, 3), "steps": a.steps})
    append_rows(Path(a.out), rows)


if __name__ == "__main__":
    main()
