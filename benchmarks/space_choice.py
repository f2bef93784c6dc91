"""Which search space should be the default: random members of each candidate space near the FLOP
budget, each trained briefly with KD, compared by their accuracy distribution (TinyNAS' criterion:
a space whose random members in the budget are more accurate holds better designs for the search
to find), and by what a trial costs.

For each space, ``RandomSampler(seed)`` draws architectures at Fashion-MNIST's 1x28x28; those
outside ``--low``..``--high`` analytic FLOPs are rejected untrained. The first ``--samples``
accepted are trained for ``--steps`` SGD steps on the whole training split (the search's default
validation split, seed 0), hinton KD (T=4, alpha=0.9) against the shipped default teacher's
cached logits, and scored on validation. The hand designs named by ``--designs`` (looked up in the
spaces' warm starts) are trained the same way, as reference points.

Each trained row is appended to ``space_choice.csv`` at once; a row already there (same space
file hash, seed, steps and sample) is not trained again, so a stopped run resumes where it was.

    nohup python benchmarks/space_choice.py --samples 12 --threads 1 > space_choice.log 2>&1 &

``--shard K/N`` trains only every N-th row from the K-th (0-based), so N processes side by side share
one run (and one ``--out``) without training a row twice.
"""

from __future__ import annotations

import argparse
import csv
import platform
import statistics
import time
from collections.abc import Iterator
from datetime import date
from pathlib import Path

import optuna
import torch
from csv_rows import append_rows
from shards import shard_arg

from nas_kd.data import Split, default_val_size, load_dataset, split_dataset
from nas_kd.distill.losses import KDSettings
from nas_kd.model.builder import build_student
from nas_kd.model.cost import analytic_flops, count_cost
from nas_kd.model.spec import ArchSpec, parse_summary
from nas_kd.quantity import parse_quantity
from nas_kd.search.space import SearchSpace, load_space
from nas_kd.teacher import load_teacher, teacher_logits
from nas_kd.train import TrainSettings, accuracy, train_model

HERE = Path(__file__).parent
ROOT = HERE.parent
CANDIDATES = [ROOT / "search_spaces" / "default-v1.yaml",
              *(HERE / "spaces" / f"{name}.yaml" for name in ("growing", "growing-plain", "growing-plain-pruned",
                                                             "default-v1-pruned"))]
SHAPE = (1, 28, 28)
MAX_DRAWS = 100_000  # a space whose members almost never land in the window is reported, not looped on


def draws_in_window(space: SearchSpace, seed: int, low: int, high: int) -> Iterator[ArchSpec]:
    """The space's random members with ``low`` ≤ FLOPs ≤ ``high``, in the order the seeded sampler
    draws them (the same sequence on every run, so sample numbers are stable across resumes)."""
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=seed))
    for _ in range(MAX_DRAWS):
        spec = space.sample(study.ask(), SHAPE, 10)
        if low <= analytic_flops(spec, SHAPE) <= high:
            yield spec
    print(f"{space.name}: stopped after {MAX_DRAWS} draws", flush=True)


def train_row(spec: ArchSpec, split: Split, logits: torch.Tensor, a: argparse.Namespace) -> dict:
    """Train one student for ``a.steps`` steps with KD and return its measured columns."""
    torch.manual_seed(a.seed)
    model = build_student(spec).to(memory_format=torch.channels_last)
    settings = TrainSettings(batch_size=a.batch_size, lr=a.lr, seed=a.seed)
    result = train_model(model, split.x_train, split.y_train, settings, kd=KDSettings(), teacher_logits=logits,
                         steps=a.steps)
    cost = count_cost(build_student(spec), SHAPE)
    return {"arch": spec.summary(), "flops": cost.flops, "params": cost.params,
            "val_accuracy": round(accuracy(model, split.x_val, split.y_val), 4),
            "train_seconds": round(result.seconds, 1)}


def warm_starts(a: argparse.Namespace) -> dict[str, str]:
    """The given spaces' warm-start designs by name; exits with a message if ``--designs`` names
    one they do not have (checked before anything trains, so a typo costs nothing)."""
    designs = {name: line for p in a.spaces for name, line in load_space(str(p)).warm_start}
    missing = [name for name in a.designs if name not in designs]
    if missing:
        raise SystemExit(f"--designs: {', '.join(missing)} not among the spaces' warm starts "
                         f"({', '.join(designs) or 'none'}); name some of those, or pass --designs alone for none")
    return designs


def jobs(a: argparse.Namespace, designs: dict[str, str]) -> Iterator[tuple[str, str, str, ArchSpec]]:
    """(space file name, space hash, sample label, spec) of every row the run asks for: each space's
    first ``a.samples`` members in the window, then the named hand designs (``designs``: name → line)."""
    spaces = {Path(p).stem: load_space(str(p)) for p in a.spaces}  # by file name: default-v1 says "default"
    low, high = parse_quantity(a.low), parse_quantity(a.high)
    for label, space in spaces.items():
        members = draws_in_window(space, a.seed, low, high)
        for i, spec in zip(range(a.samples), members, strict=False):
            yield label, space.sha256[:12], str(i), spec
    for name in a.designs:
        yield "hand", "", name, parse_summary(designs[name], SHAPE[0], 10)


def done_keys(out: Path) -> set[tuple[str, ...]]:
    if not out.exists():
        return set()
    with out.open(newline="") as f:
        return {(r["space_sha256"], r["seed"], r["steps"], r["sample"]) for r in csv.DictReader(f)}


def summary(out: Path, a: argparse.Namespace) -> None:
    """Per space: how many rows, median / 75th percentile / max validation accuracy, mean seconds."""
    wanted = {load_space(str(p)).sha256[:12] for p in a.spaces} | {""}
    with out.open(newline="") as f:
        rows = [r for r in csv.DictReader(f)
                if r["space_sha256"] in wanted and r["seed"] == str(a.seed) and r["steps"] == str(a.steps)]
    print(f"\n{'space':<20} {'n':>3} {'median':>7} {'p75':>7} {'max':>7} {'mean s':>7} {'mean MFLOPs':>11}")
    for space in dict.fromkeys(r["space"] for r in rows):
        mine = [r for r in rows if r["space"] == space]
        acc = [float(r["val_accuracy"]) for r in mine]
        p75 = statistics.quantiles(acc, n=4, method="inclusive")[2] if len(acc) > 1 else acc[0]
        print(f"{space:<20} {len(acc):>3} {statistics.median(acc):>7.2%} {p75:>7.2%} {max(acc):>7.2%} "
              f"{statistics.mean(float(r['train_seconds']) for r in mine):>7.1f} "
              f"{statistics.mean(int(r['flops']) for r in mine) / 1e6:>11.2f}")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--spaces", nargs="+", default=[str(c) for c in CANDIDATES])
    p.add_argument("--samples", type=int, default=12, help="trained members per space")
    p.add_argument("--designs", nargs="*", default=["mobilenet-5m", "mobilenet-4m-wide"],
                   help="warm-start names of the given spaces, trained as reference points")
    p.add_argument("--low", default="3.5M")
    p.add_argument("--high", default="5M")
    p.add_argument("--steps", type=int, default=400)
    p.add_argument("--batch-size", type=int, default=128)
    p.add_argument("--lr", type=float, default=0.1)
    p.add_argument("--seed", type=int, default=0, help="sampler seed and every training's seed")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--out", default=str(HERE / "space_choice.csv"))
    p.add_argument("--shard", default=(0, 1), type=shard_arg, metavar="K/N",
                   help="train rows K, K+N, K+2N, ... of the run (0-based; default 0/1: all)")
    a = p.parse_args()
    shard, shards = a.shard
    torch.set_num_threads(a.threads)
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    out = Path(a.out)
    done = done_keys(out)
    designs = warm_starts(a)  # before any training, so a misnamed design costs nothing
    split = logits = None
    for i, (space_name, sha, sample, spec) in enumerate(jobs(a, designs)):
        if i % shards != shard or (sha, str(a.seed), str(a.steps), sample) in done:
            continue
        if split is None:  # data and teacher only once there is something to train
            data = load_dataset("fashion-mnist")
            split = split_dataset(data, val_size=default_val_size(len(data.y_train)), seed=0)
            logits = teacher_logits(load_teacher(split, train=False), split)
        row = {"date": date.today().isoformat(), "machine": f"{platform.node()} {a.threads} thread(s)",
               "space": space_name, "space_sha256": sha, "seed": a.seed, "steps": a.steps,
               "batch_size": a.batch_size, "lr": a.lr, "sample": sample, **train_row(spec, split, logits, a)}
        append_rows(out, [row])
        print(f"{time.strftime('%H:%M:%S')} {space_name} {sample}: {row['val_accuracy']:.2%} "
              f"{row['flops'] / 1e6:.2f}M {row['train_seconds']}s  {row['arch']}", flush=True)
    if out.exists():
        summary(out, a)


if __name__ == "__main__":
    main()
