"""Benchmarks 2, 3 and 6 from the studies of benchmark 1 (``search_vs_random.py``):

2. proxy fidelity: ≥ 10 architectures spread over the union of the runs' fronts, each trained
   longer (``--epochs`` 5 on ``--train-subset`` 20,000 images, crop-flip, KD from the default teacher):
   Kendall τ between the search-time validation accuracy and the longer training's test
   accuracy; beside it, τ of training-free proxies (NASWOT, synflow) and of FLOPs and params;
3. what KD buys: the 3 most accurate front architectures also trained with labels only;
4. (benchmark 6) search vs hand design: the searched front's most accurate student under the
   budget beside the hand design ``mobilenet-5m``, trained identically.

Rows are appended to ``proxy_fidelity.csv`` as each training finishes; a re-run skips done rows.

    python benchmarks/proxy_fidelity.py --studies studies/bench-search-vs-random --n 10
"""

from __future__ import annotations

import argparse
import csv
import json
import platform
import time
from datetime import date
from itertools import combinations
from pathlib import Path

import optuna
import torch
from csv_rows import append_rows
from shards import shard_arg

from nas_kd.data import default_val_size, load_dataset, split_dataset
from nas_kd.distill.losses import KDSettings
from nas_kd.model.builder import build_student
from nas_kd.model.cost import count_cost
from nas_kd.model.spec import ArchSpec
from nas_kd.progress import Progress
from nas_kd.study.pareto import pareto_front
from nas_kd.teacher import load_teacher, teacher_logits
from nas_kd.train import TrainSettings, accuracy, train_model

HERE = Path(__file__).parent
ACTIVATIONS = (torch.nn.ReLU, torch.nn.ReLU6, torch.nn.Hardswish)


def kendall_tau(a: list[float], b: list[float]) -> float:
    """Kendall's τ-b (ties in either list handled)."""
    conc = disc = ties_a = ties_b = 0
    for i, j in combinations(range(len(a)), 2):
        da, db = a[i] - a[j], b[i] - b[j]
        if da == 0 and db == 0:
            continue
        if da == 0:
            ties_a += 1
        elif db == 0:
            ties_b += 1
        elif (da > 0) == (db > 0):
            conc += 1
        else:
            disc += 1
    denom = ((conc + disc + ties_a) * (conc + disc + ties_b)) ** 0.5
    return (conc - disc) / denom if denom else 0.0


def naswot(model: torch.nn.Module, x: torch.Tensor) -> float:
    """Mellor et al. 2021: log|det K| of the Hamming-similarity kernel of the batch's activation patterns."""
    codes: list[torch.Tensor] = []
    hooks = [m.register_forward_hook(lambda _m, _i, out: codes.append((out > 0).flatten(1).float()))
             for m in model.modules() if isinstance(m, ACTIVATIONS)]
    model.train()
    with torch.no_grad():
        model(x)
    for h in hooks:
        h.remove()
    c = torch.cat(codes, 1).double()
    k = c @ c.T + (1 - c) @ (1 - c).T
    return float(torch.linalg.slogdet(k)[1])


def synflow(model: torch.nn.Module, input_shape: tuple[int, int, int]) -> float:
    """Tanaka et al. 2020: Σ|θ ⊙ ∂R/∂θ| with |θ| weights and an all-ones input (batch norm in eval mode)."""
    model = model.double().eval()
    with torch.no_grad():
        for p in model.parameters():
            p.abs_()
    model.zero_grad()
    model(torch.ones(1, *input_shape, dtype=torch.double)).sum().backward()
    return float(sum((p.detach() * p.grad).abs().sum() for p in model.parameters() if p.grad is not None))


def candidates(studies: Path) -> list[dict]:
    """Every trained architecture of the studies (best search-time accuracy of each), with the
    runs' fronts marked."""
    by_spec: dict[str, dict] = {}
    for db in sorted(studies.glob("*.db")):
        if db.name.endswith(".running.db"):
            continue
        storage = f"sqlite:///{db}"
        for summary in optuna.get_all_study_summaries(storage):
            trials = [t for t in optuna.load_study(study_name=summary.study_name, storage=storage).trials
                      if t.user_attrs.get("status") == "trained"]
            front = {trials[i].number for i in pareto_front([(t.values[0], t.values[1]) for t in trials])}
            for t in trials:
                key = t.user_attrs["spec_json"]
                row = by_spec.setdefault(key, {"spec_json": key, "summary": t.user_attrs["summary"],
                                               "flops": t.user_attrs["flops"], "proxy_vals": [], "front": False,
                                               "warm_start": t.user_attrs.get("warm_start", "")})
                row["proxy_vals"].append(t.values[0])
                row["front"] |= t.number in front
    for row in by_spec.values():
        row["proxy_val"] = sum(row["proxy_vals"]) / len(row["proxy_vals"])
    return list(by_spec.values())


def pick(rows: list[dict], n: int) -> list[dict]:
    """``n`` front architectures spread evenly over FLOPs (cheapest to costliest), plus the hand designs."""
    front = sorted((r for r in rows if r["front"]), key=lambda r: r["flops"])
    if len(front) <= n:
        chosen = front
    else:
        chosen = [front[round(i * (len(front) - 1) / (n - 1))] for i in range(n)]
    for r in rows:
        if r["warm_start"] and r not in chosen:
            chosen.append(r)
    return chosen


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--studies", default="studies/bench-search-vs-random")
    p.add_argument("--n", type=int, default=10)
    p.add_argument("--epochs", type=float, default=5)
    p.add_argument("--train-subset", type=int, default=20000)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--out", default=str(HERE / "proxy_fidelity.csv"))
    p.add_argument("--shard", default="0/1", type=shard_arg, metavar="K/N",
                   help="run every N-th job from the K-th (one process per core)")
    a = p.parse_args()
    shard, shards = a.shard
    torch.set_num_threads(a.threads)
    out = Path(a.out)
    done = {(r["spec_json"], r["mode"]) for r in csv.DictReader(out.open())} if out.exists() else set()
    rows = candidates(Path(a.studies))
    chosen = pick(rows, a.n)
    top3 = sorted((r for r in chosen if r["front"]), key=lambda r: -r["proxy_val"])[:3]
    data = load_dataset("fashion-mnist")
    split = split_dataset(data, val_size=default_val_size(len(data.y_train)), seed=0)
    teacher = load_teacher(split, (), progress=Progress(), train=False)
    idx = split.subset_index(a.train_subset, 0)
    x, y, logits = split.x_train[idx], split.y_train[idx], teacher_logits(teacher, split)[idx]
    probe = x[:64]
    jobs = [(r, "kd") for r in chosen] + [(r, "labels") for r in top3]
    print(f"{len(rows)} trained architectures, {sum(r['front'] for r in rows)} on a front; training {len(jobs)}")
    for r, mode in jobs[shard::shards]:
        if (r["spec_json"], mode) in done:
            continue
        spec = ArchSpec.from_json(r["spec_json"])
        torch.manual_seed(0)
        zero_cost = {"naswot": naswot(build_student(spec), probe),
                     "synflow": synflow(build_student(spec), split.input_shape)}
        torch.manual_seed(0)
        model = build_student(spec).to(memory_format=torch.channels_last)
        settings = TrainSettings(epochs=a.epochs, batch_size=128, lr=0.1, augment="crop-flip", seed=0)
        kd = KDSettings() if mode == "kd" else KDSettings(alpha=0.0)
        start = time.perf_counter()
        train_model(model, x, y, settings, kd=kd, teacher_logits=logits if mode == "kd" else None)
        row = {
            "date": date.today().isoformat(), "machine": f"{platform.node()} {a.threads} thread(s)",
            "summary": r["summary"], "flops": r["flops"], "params": count_cost(model, split.input_shape).params,
            "front": r["front"], "warm_start": r["warm_start"], "top3": r in top3, "mode": mode,
            "epochs": a.epochs, "train_subset": a.train_subset,
            "proxy_val": round(r["proxy_val"], 4), "proxy_runs": len(r["proxy_vals"]),
            "val_accuracy": round(accuracy(model, split.x_val, split.y_val), 4),
            "test_accuracy": round(accuracy(model, split.x_test, split.y_test), 4),
            "naswot": round(zero_cost["naswot"], 3), "synflow": f"{zero_cost['synflow']:.4e}",
            "train_seconds": round(time.perf_counter() - start, 1), "spec_json": r["spec_json"],
        }
        print(json.dumps({k: v for k, v in row.items() if k != "spec_json"}), flush=True)
        append_rows(out, [row])
    if shard == 0:
        summarise(out)


def summarise(out: Path) -> None:
    rows = list(csv.DictReader(out.open()))
    kd = [r for r in rows if r["mode"] == "kd"]
    searched = [r for r in kd if r["front"] == "True"]
    full = [float(r["test_accuracy"]) for r in searched]
    print(f"\nbenchmark 2: Kendall τ with the longer training's test accuracy, {len(searched)} front architectures")
    for name in ("proxy_val", "naswot", "synflow", "flops", "params"):
        print(f"  {name:<10s} τ = {kendall_tau([float(r[name]) for r in searched], full):+.3f}")
    print("benchmark 3: what KD buys (test accuracy, KD vs labels only)")
    labels = {r["spec_json"]: r for r in rows if r["mode"] == "labels"}
    for r in kd:
        if r["spec_json"] in labels:
            lab = float(labels[r["spec_json"]]["test_accuracy"])
            print(f"  {int(r['flops']) / 1e6:5.2f} MFLOPs  KD {float(r['test_accuracy']):.2%}  labels {lab:.2%}  "
                  f"gain {float(r['test_accuracy']) - lab:+.2%}  {r['summary']}")
    print("benchmark 6: search vs hand design (identical training)")
    found = [r for r in searched if not r["warm_start"]]  # a sampled architecture, not a hand design
    best = max(found, key=lambda r: float(r["proxy_val"]), default=None)
    for r in [best, *[r for r in kd if r["warm_start"]]]:
        if r:
            print(f"  {r['warm_start'] or 'searched (best proxy)':<22s} {int(r['flops']) / 1e6:5.2f} MFLOPs  "
                  f"test {float(r['test_accuracy']):.2%}  {r['summary']}")


if __name__ == "__main__":
    main()
