"""Search without a teacher (issue 21, item 2): should ``--teacher none`` train each candidate from
labels alone, or with self-distillation (``--self-distill``: exits after every stage learning from
the last one)? The criterion is the search's: how each ranks and scores candidates at its rung lengths.

Random members of the default space between ``--low`` and ``--high`` FLOPs (the same seeded draws as
``space_choice.py``), each trained twice at the search's rung-2 length from labels only (no
teacher): plain, and with exits (scored at the last exit, as the search scores it). One row per
(member, mode) in ``teacherless.csv``; resumable and shardable.

    python benchmarks/teacherless.py --samples 8 --shard 0/2 --threads 1 &
    python benchmarks/teacherless.py --samples 8 --shard 1/2 --threads 1
    python benchmarks/teacherless.py --summary
"""

from __future__ import annotations

import argparse
import csv
import statistics
from datetime import date
from pathlib import Path

import torch
from csv_rows import append_rows
from proxy_fidelity import kendall_tau
from shards import shard_arg
from space_choice import SHAPE, draws_in_window

from nas_kd.data import default_val_size, load_dataset, split_dataset
from nas_kd.distill.exits import ExitStudent
from nas_kd.distill.losses import KDSettings
from nas_kd.model.builder import build_student
from nas_kd.model.cost import count_cost
from nas_kd.quantity import parse_quantity
from nas_kd.search.space import load_space
from nas_kd.train import TrainSettings, accuracy, train_model

HERE = Path(__file__).parent
MODES = ("labels", "self")


def train_one(spec, split, mode: str, steps: int, seed: int) -> tuple[float, float]:  # noqa: ANN001
    torch.manual_seed(seed)
    model = build_student(spec)
    trainee = ExitStudent(model) if mode == "self" and len(spec.stages) > 1 else model
    trainee = trainee.to(memory_format=torch.channels_last)
    settings = TrainSettings(batch_size=128, lr=0.1, seed=seed)
    result = train_model(trainee, split.x_train, split.y_train, settings, kd=KDSettings(alpha=0.0), steps=steps)
    return accuracy(model, split.x_val, split.y_val), result.seconds


def _summary(out: Path) -> None:
    rows = list(csv.DictReader(out.open()))
    by = {}
    for r in rows:
        by.setdefault(r["sample"], {})[r["mode"]] = float(r["val_accuracy"])
    pairs = [v for v in by.values() if all(m in v for m in MODES)]
    if not pairs:
        print("no complete pairs yet")
        return
    diff = [100 * (v["self"] - v["labels"]) for v in pairs]
    tau = kendall_tau([v["labels"] for v in pairs], [v["self"] for v in pairs])
    print(f"{len(pairs)} members: self - labels = {statistics.mean(diff):+.2f} points mean, "
          f"{statistics.median(diff):+.2f} median, {sum(d > 0 for d in diff)}/{len(diff)} better; "
          f"Kendall tau between the two rankings {tau:+.2f}")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--samples", type=int, default=8)
    p.add_argument("--low", default="0.3M")
    p.add_argument("--high", default="5M")
    p.add_argument("--steps", type=int, default=1350, help="the search's rung-2 length (150 x 9), one cycle")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--shard", default="0/1", type=shard_arg, metavar="K/N")
    p.add_argument("--out", default=str(HERE / "teacherless.csv"))
    p.add_argument("--summary", action="store_true")
    a = p.parse_args()
    out = Path(a.out)
    if a.summary:
        _summary(out)
        return
    torch.set_num_threads(a.threads)
    data = load_dataset("fashion-mnist")
    split = split_dataset(data, val_size=default_val_size(len(data.y_train)), seed=0)
    space = load_space("default")
    shard, shards = a.shard
    done = {(r["sample"], r["mode"], r["steps"]) for r in csv.DictReader(out.open())} if out.exists() else set()
    members = draws_in_window(space, a.seed, parse_quantity(a.low), parse_quantity(a.high))
    for i, spec in zip(range(a.samples), members, strict=False):
        if i % shards != shard:
            continue
        for mode in MODES:
            if (str(i), mode, str(a.steps)) in done:
                continue
            val, seconds = train_one(spec, split, mode, a.steps, a.seed)
            row = {"date": date.today().isoformat(), "space_sha256": space.sha256[:12], "sample": i, "mode": mode,
                   "steps": a.steps, "arch": spec.summary(), "flops": count_cost(build_student(spec), SHAPE).flops,
                   "val_accuracy": round(val, 4), "train_seconds": round(seconds, 1)}
            append_rows(out, [row])
            print(row, flush=True)


if __name__ == "__main__":
    main()
