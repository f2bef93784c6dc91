"""Does a weight-sharing supernet rank members as training them does? (issue 19, item 4)

The default search's setup (Fashion-MNIST, shipped teacher, its cached logits, 5 MFLOPs, seed 0)
is prepared as the search prepares it. Then, in one folder ``--out``:

- ``train``: a ``Supernet`` over the default space's full-rank ReLU members is trained by the sandwich
  rule (largest, smallest and 2 drawn members of a pool of ``--pool`` members under the budget, each
  step) for ``--epochs`` on the search's training images and targets. Checkpointed every epoch
  (rerun the same command to resume); a copy of the weights is kept after every epoch.
- ``truth --shard K/N``: ``--members`` members spread evenly (by index) over the pool's FLOP order
  are trained one by one exactly as a search trial, through every rung (rung k resumes rung k-1's
  checkpoint); each rung's validation accuracy is a row of ``supernet_rank.csv``. Resumable.
- ``rank``: each kept supernet copy's inherited-weight validation accuracy for the same members
  (batch norm re-estimated on 2,048 training images), then Kendall τ and top-3 precision of the
  inherited scores and of rung 0 against the top rung. Rung 0 is today's screen; the supernet is
  worth building if it ranks better for what it costs.

    python benchmarks/supernet_rank.py train --out /work/runs/supernet --threads 1 &
    python benchmarks/supernet_rank.py truth --out /work/runs/supernet --shard 0/2 --threads 1 &
    python benchmarks/supernet_rank.py truth --out /work/runs/supernet --shard 1/2 --threads 1
    python benchmarks/supernet_rank.py rank --out /work/runs/supernet

``--space benchmarks/spaces/shared.yaml`` measures the same on a space built for sharing (one block
kind, 4 stages, one activation), with its own ``--out`` and ``--csv``.
"""

from __future__ import annotations

import argparse
import csv
import json
import time
from dataclasses import replace
from datetime import date
from pathlib import Path

import torch
from csv_rows import append_rows
from proxy_fidelity import kendall_tau

from nas_kd.model.builder import build_student
from nas_kd.model.cost import analytic_flops
from nas_kd.model.spec import ArchSpec
from nas_kd.progress import Progress
from nas_kd.search.candidate import rung_length, trial_settings
from nas_kd.search.cli import parse_args
from nas_kd.search.prepare import prepare
from nas_kd.supernet.net import Supernet, SupernetShape
from nas_kd.supernet.train import Sandwich, inherited_accuracy, member_pool
from nas_kd.train import accuracy, train_model
from nas_kd.train.settings import steps_per_epoch

HERE = Path(__file__).parent
CALIBRATION_IMAGES = 2048


def _run(out: Path, threads: int, budget: str, space: str):  # noqa: ANN202 - a search Run
    torch.set_num_threads(threads)
    cfg = parse_args(["--budget", budget, "--space", space, "--studies-dir", str(out / "studies"),
                      "--study-name", "supernet-bench", "--workers", "1", "--threads", str(threads), "--seed", "0"])
    return prepare(cfg, Progress(quiet=True))


def _setup(a: argparse.Namespace):  # noqa: ANN202
    run = _run(Path(a.out), a.threads, a.budget, a.space)
    shape = SupernetShape.of(run.space, run.split.input_shape[0], run.split.num_classes)
    torch.manual_seed(run.cfg.seed)
    net = Supernet(shape)
    pool = member_pool(run.space, net, run.split.input_shape, run.cfg.budget_flops, a.pool, seed=run.cfg.seed)
    step = (len(pool) - 1) / (a.members - 1)
    members = [pool[round(i * step)] for i in range(a.members)]
    return run, net, pool, members


def _train(a: argparse.Namespace) -> None:
    run, net, pool, _ = _setup(a)
    out = Path(a.out)
    sandwich = Sandwich(net, pool, draws=2, seed=run.cfg.seed).to(memory_format=torch.channels_last)
    per_epoch = steps_per_epoch(len(run.y_train), run.cfg.train.batch_size)

    def keep(step: int, total: int, loss: float) -> None:
        if step % per_epoch == 0 or step == total:
            torch.save(net.state_dict(), out / f"supernet-step{step}.pt")
            print(f"step {step}/{total} loss {loss:.3f} at {time.perf_counter() - start:.0f} s", flush=True)

    start = time.perf_counter()
    settings = replace(run.cfg.train, epochs=a.epochs, lr=a.lr or run.cfg.train.lr)
    result = train_model(sandwich, run.x_train, run.y_train, settings, kd=run.cfg.kd,
                         teacher_logits=run.teacher_logits, on_step=keep, checkpoint=out / "supernet.ckpt")
    (out / "supernet-train.json").write_text(json.dumps({
        "epochs": a.epochs, "lr": settings.lr, "steps": result.steps, "seconds": round(result.seconds, 1),
        "pool": len(pool),
        "largest": pool[-1].summary(), "smallest": pool[0].summary(), "threads": a.threads}, indent=2))


def _truth(a: argparse.Namespace) -> None:
    run, _, _, members = _setup(a)
    out, csv_path = Path(a.out), Path(a.csv)
    shard, shards = map(int, a.shard.split("/"))
    done = {r["summary"] for r in csv.DictReader(csv_path.open())} if csv_path.exists() else set()
    for i, spec in enumerate(members):
        if i % shards != shard or spec.summary() in done:
            continue
        torch.manual_seed(run.cfg.seed)
        model = build_student(spec).to(memory_format=torch.channels_last)
        ckpt = out / f"truth-{i}.ckpt"
        ckpt.unlink(missing_ok=True)
        scores, seconds = [], 0.0
        for rung in range(run.cfg.rungs):
            steps, restarts = rung_length(run, rung)
            result = train_model(model, run.x_train, run.y_train, trial_settings(run.cfg, len(run.y_train)),
                                 kd=run.cfg.kd, teacher_logits=run.teacher_logits, checkpoint=ckpt, steps=steps,
                                 restarts=restarts)
            scores.append(accuracy(model, run.split.x_val, run.split.y_val))
            seconds = result.seconds
        row = {"date": date.today().isoformat(), "member": i, "flops": analytic_flops(spec, run.split.input_shape),
               **{f"rung{k}": round(s, 4) for k, s in enumerate(scores)}, "train_seconds": round(seconds, 1),
               "summary": spec.summary(), "spec": spec.to_json()}
        append_rows(csv_path, [row])
        print(row, flush=True)


def _rank(a: argparse.Namespace) -> None:
    run, net, _, _ = _setup(a)
    out = Path(a.out)
    rows = sorted(csv.DictReader(Path(a.csv).open()), key=lambda r: int(r["member"]))
    specs = [ArchSpec.from_json(r["spec"]) for r in rows]
    top_rung = max(int(k[4:]) for k in rows[0] if k.startswith("rung"))
    truth = [float(r[f"rung{top_rung}"]) for r in rows]
    g = torch.Generator().manual_seed(0)
    x_calib = run.x_train[torch.randperm(len(run.x_train), generator=g)[:CALIBRATION_IMAGES]]
    print(f"{len(rows)} members, truth = rung {top_rung} (validation accuracy)")
    flops = [float(r["flops"]) for r in rows]
    _line("FLOPs alone", flops, truth)
    for k in range(top_rung):
        _line(f"rung {k}", [float(r[f"rung{k}"]) for r in rows], truth)
    copies = sorted(out.glob("supernet-step*.pt"), key=lambda p: int(p.stem.removeprefix("supernet-step")))
    for copy in copies:
        net.load_state_dict(torch.load(copy))
        start = time.perf_counter()
        scores = [inherited_accuracy(net, s, x_calib, run.split.x_val, run.split.y_val) for s in specs]
        each = (time.perf_counter() - start) / len(specs)
        _line(f"supernet after {copy.stem.removeprefix('supernet-')} ({each:.1f} s a member)", scores, truth)
        print("   inherited:", " ".join(f"{s:.3f}" for s in scores))


def _line(name: str, score: list[float], truth: list[float]) -> None:
    best = set(sorted(range(len(truth)), key=lambda i: -truth[i])[:3])
    top = set(sorted(range(len(score)), key=lambda i: -score[i])[:3])
    print(f"{name:52s} Kendall tau {kendall_tau(score, truth):+.2f}  top-3 precision {len(top & best) / 3:.2f}")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("what", choices=("train", "truth", "rank"))
    p.add_argument("--out", required=True)
    p.add_argument("--budget", default="5MFLOPs")
    p.add_argument("--space", default="default", help="the search space (a name, or a YAML path such as "
                   "benchmarks/spaces/shared.yaml); give each space its own --out and --csv")
    p.add_argument("--pool", type=int, default=1000, help="members under the budget the sandwich draws from")
    p.add_argument("--members", type=int, default=12, help="members trained for the truth")
    p.add_argument("--epochs", type=float, default=3.0, help="supernet training epochs")
    p.add_argument("--lr", type=float, help="supernet peak learning rate (default: the search's); the sandwich "
                   "sums 4 members' losses, so its gradients are about 4x one member's")
    p.add_argument("--shard", default="0/1")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--csv", default=str(HERE / "supernet_rank.csv"))
    a = p.parse_args()
    Path(a.out).mkdir(parents=True, exist_ok=True)
    {"train": _train, "truth": _truth, "rank": _rank}[a.what](a)


if __name__ == "__main__":
    main()
