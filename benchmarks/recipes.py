"""Distillation recipes against plain KD at the same total training epochs (issue 21).

For each student (a study's trial, or ``--pick``), recipe and seed, ``nas_kd.export`` runs with
``--recipe R`` and per-training epochs chosen so every recipe trains ``--total-epochs`` in all:

- ``kd``, ``self``: one training of ``T`` epochs;
- ``ban`` with ``--generations K``: K generations of ``T / K`` epochs;
- ``takd``: the assistant and the student, ``T / 2`` each (a cached assistant is reused, and the row
  says so: its epochs were still spent once);
- ``dml`` with ``--peers K``: one training of ``T`` epochs whose every step trains K students (the
  data is seen as often as by ``kd``; the compute is K times; ``train_seconds`` shows it).

One row per export in ``benchmarks/recipes.csv``: test and validation accuracy, training seconds, and
the recipe's own figures (generations, peers, assistant, exits). Resumable: a row already in the CSV
is skipped, and an interrupted export resumes from its checkpoints (each export goes to its own
folder under ``--out``). Shardable, so two single-thread processes split the work:

    python benchmarks/recipes.py --study-name fm5-cold-bands --studies-dir /root/runs/studies \\
        --trials 36 31 --total-epochs 20 --seeds 0 1 --out /root/runs/recipes --shard 0/2 --threads 1 &
    python benchmarks/recipes.py ... --shard 1/2 --threads 1
    python benchmarks/recipes.py --summary
"""

from __future__ import annotations

import argparse
import csv
import json
from datetime import date
from pathlib import Path

from csv_rows import append_rows

from nas_kd.export import main as export_main

HERE = Path(__file__).parent
RECIPES = ("kd", "ban", "takd", "dml", "self")


def per_training_epochs(recipe: str, total: float, generations: int) -> float:
    """The ``--epochs`` of one training so the recipe trains ``total`` epochs in all."""
    return {"ban": total / generations, "takd": total / 2}.get(recipe, total)


def _extras(recipe: str, generations: int, peers: int, exits: bool) -> list[str]:
    return {"ban": ["--generations", str(generations)], "dml": ["--peers", str(peers)],
            "self": ["--exits"] if exits else []}.get(recipe, [])


def _row(card: dict, study: str, recipe: str, seed: int, total: float) -> dict:
    r = card.get("recipe", {"name": "kd"})
    row = {"date": date.today().isoformat(), "study": study, "trial": card["trial"], "flops": card["flops"],
           "recipe": recipe, "seed": seed, "total_epochs": total, "epochs_per_training": card["training"]["epochs"],
           "test_accuracy": round(card["test_accuracy"], 4), "val_accuracy": round(card["val_accuracy"], 4),
           "train_seconds": card["train_seconds"], "architecture": card["architecture"]}
    if recipe == "ban":
        row["generations_test"] = " ".join(f"{g['test_accuracy']:.4f}" for g in r["each_generation"])
        row["ensemble_test"] = round(r["ensemble"]["test_accuracy"], 4)
        row["train_seconds"] = round(sum(g["train_seconds"] for g in r["each_generation"]), 1)
    if recipe == "dml":
        row["peers_test"] = " ".join(f"{p['test_accuracy']:.4f}" for p in r["each_peer"])
    if recipe == "takd":
        a = r["assistant"]
        row.update(assistant_flops=a["flops"], assistant_test=round(a["test_accuracy"], 4),
                   assistant_from_cache=a["from_cache"])
        row["train_seconds"] = round(card["train_seconds"] + a["train_seconds"], 1)
    if recipe == "self":
        row["exits_test"] = " ".join(f"{e['test_accuracy']:.4f}" for e in r["each_exit"])
    return row


def _summary(out: Path) -> None:
    rows = list(csv.DictReader(out.open()))
    by = {}
    for r in rows:
        by.setdefault((r["study"], r["trial"], r["total_epochs"]), {}).setdefault(r["recipe"], []).append(r)
    for (study, trial, total), recipes in sorted(by.items()):
        kd = recipes.get("kd", [])
        base = sum(float(r["test_accuracy"]) for r in kd) / len(kd) if kd else None
        print(f"{study} trial {trial}, {total} epochs in all")
        for name in RECIPES:
            if name not in recipes:
                continue
            acc = [float(r["test_accuracy"]) for r in recipes[name]]
            secs = [float(r["train_seconds"]) for r in recipes[name]]
            mean = sum(acc) / len(acc)
            gain = f"{100 * (mean - base):+.2f} vs kd" if base is not None and name != "kd" else ""
            print(f"  {name:5s} test {mean:.2%} over {len(acc)} seed(s) {gain:14s} train {sum(secs) / len(secs):.0f} s")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--study-name")
    p.add_argument("--studies-dir", default="studies")
    p.add_argument("--trials", nargs="+", type=int, help="the students (trial numbers)")
    p.add_argument("--recipes", nargs="+", default=list(RECIPES), choices=RECIPES)
    p.add_argument("--total-epochs", type=float, default=20)
    p.add_argument("--generations", type=int, default=2)
    p.add_argument("--peers", type=int, default=2)
    p.add_argument("--self-exits", action="store_true", help="ship the self exports with their exits (--exits), "
                   "so their cards carry the early-exit table; the training and the final exit are the same")
    p.add_argument("--seeds", nargs="+", type=int, default=[0, 1])
    p.add_argument("--out", default="recipe-runs", help="folder for the export folders")
    p.add_argument("--cache-dir")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--shard", default="0/1")
    p.add_argument("--csv", default=str(HERE / "recipes.csv"))
    p.add_argument("--summary", action="store_true")
    a = p.parse_args()
    out_csv = Path(a.csv)
    if a.summary:
        _summary(out_csv)
        return
    if not a.study_name or not a.trials:
        p.error("--study-name and --trials are needed to run (or --summary)")
    shard, shards = map(int, a.shard.split("/"))
    done = {(r["study"], r["trial"], r["recipe"], r["seed"], r["total_epochs"])
            for r in csv.DictReader(out_csv.open())} if out_csv.exists() else set()
    jobs = [(t, r, s) for t in a.trials for r in a.recipes for s in a.seeds]
    for i, (trial, recipe, seed) in enumerate(jobs):
        key = (a.study_name, str(trial), recipe, str(seed), str(a.total_epochs))
        if i % shards != shard or key in done:
            continue
        folder = Path(a.out) / f"{a.study_name}-t{trial}-{recipe}-s{seed}-e{a.total_epochs:g}"
        epochs = per_training_epochs(recipe, a.total_epochs, a.generations)
        args = ["--study-name", a.study_name, "--studies-dir", a.studies_dir, "--trial", str(trial),
                "--recipe", recipe, *_extras(recipe, a.generations, a.peers, a.self_exits), "--epochs", f"{epochs:g}",
                "--seed", str(seed), "--threads", str(a.threads), "--out", str(folder),
                *(["--cache-dir", a.cache_dir] if a.cache_dir else [])]
        code = export_main(args)
        if code != 0:
            raise SystemExit(f"export {' '.join(args)} exited {code}")
        row = _row(json.loads((folder / "model_card.json").read_text()), a.study_name, recipe, seed, a.total_epochs)
        append_rows(out_csv, [row])
        print(row, flush=True)


if __name__ == "__main__":
    main()
