"""Pruning a bigger student vs the search's own student at a smaller budget (issue 20), at the same
total training epochs, on the same study and teacher:

- ``prune``: the study's best student (or ``--prune-pick``, ``--prune-trial``) trained
  ``EPOCHS - STEPS·FINETUNE`` epochs, then pruned to ``--to`` in ``--steps`` steps with
  ``--finetune-epochs`` of KD fine-tuning after each (``python -m nas_kd.compress``);
- ``search``: the study's most accurate student at or under ``--to`` (``--pick max-acc-under:TO``),
  exported with ``EPOCHS`` epochs (``python -m nas_kd.export``).

One row per arm and seed (FLOPs, params, accuracies, training seconds) is printed and appended to
the CSV. Each run's export folder is kept in the work folder; a finished one is not run again and
an interrupted one resumes from its per-epoch checkpoints, so the same command picks up where it stopped.

    python benchmarks/prune_vs_search.py --study-name fashion-mnist-5MFLOPs --to 1M --threads 1
"""

from __future__ import annotations

import argparse
import csv
import json
import platform
import sys
from datetime import date
from pathlib import Path

from csv_rows import append_rows

from nas_kd.compress import main as compress_main
from nas_kd.export import main as export_main

HERE = Path(__file__).parent
ARMS = ("prune", "search")
KEY = ("study", "arm", "seed", "to", "total_epochs", "steps", "finetune_epochs")  # what makes a row the same run


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--study-name", default="fashion-mnist-5MFLOPs")
    p.add_argument("--studies-dir", default="studies")
    p.add_argument("--to", default="1M", help="the smaller FLOP budget (default 1M)")
    p.add_argument("--epochs", type=float, default=100, help="total training epochs of each arm (default 100)")
    p.add_argument("--steps", type=int, default=3, help="pruning steps (default 3)")
    p.add_argument("--finetune-epochs", type=float, default=10, help="fine-tuning epochs per step (default 10)")
    which = p.add_mutually_exclusive_group()
    which.add_argument("--prune-pick", default="best", help="which student is pruned (default: the study's best)")
    which.add_argument("--prune-trial", type=int, help="or the trial with this number")
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1])
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--cache-dir")
    p.add_argument("--data-dir")
    p.add_argument("--work-dir", help="the runs' export folders (default STUDIES_DIR/NAME/prune-vs-search-TO)")
    p.add_argument("--csv", default=str(HERE / "prune_vs_search.csv"))
    return p


def main(argv: list[str] | None = None) -> int:
    a = parser().parse_args(argv)
    start_epochs = a.epochs - a.steps * a.finetune_epochs
    if start_epochs <= 0:
        print(f"error: --steps x --finetune-epochs ({a.steps * a.finetune_epochs:g}) must be below --epochs "
              f"({a.epochs:g}): the pruned student needs a training before its first step", file=sys.stderr)
        return 2
    work = Path(a.work_dir) if a.work_dir else Path(a.studies_dir) / a.study_name / f"prune-vs-search-{a.to}"
    for seed in a.seeds:
        for arm in ARMS:
            folder = work / (f"{arm}-seed{seed}-{a.epochs:g}ep"
                             + (f"-{a.steps}x{a.finetune_epochs:g}" if arm == "prune" else ""))
            if not (folder / "model_card.json").exists():
                code = _run(arm, seed, start_epochs, folder, a)
                if code != 0:
                    return code
            row = _row(arm, seed, json.loads((folder / "model_card.json").read_text()), a)
            if not _recorded(Path(a.csv), row):
                append_rows(Path(a.csv), [row])
            print(json.dumps(row))
    return 0


def _run(arm: str, seed: int, start_epochs: float, folder: Path, a: argparse.Namespace) -> int:
    common = ["--study-name", a.study_name, "--studies-dir", a.studies_dir, "--seed", str(seed),
              "--threads", str(a.threads), "--out", str(folder)]
    for flag, value in (("--cache-dir", a.cache_dir), ("--data-dir", a.data_dir)):
        common += [flag, value] if value else []
    if arm == "search":
        # --screen 1: both arms train EPOCHS in total, as before export screened by default
        return export_main([*common, "--pick", f"max-acc-under:{a.to}", "--epochs", f"{a.epochs:g}", "--screen", "1"])
    which = ["--pick", a.prune_pick] if a.prune_trial is None else ["--trial", str(a.prune_trial)]
    return compress_main([*common, *which, "--to", a.to, "--epochs", f"{start_epochs:g}",
                          "--steps", str(a.steps), "--finetune-epochs", f"{a.finetune_epochs:g}"])


def _row(arm: str, seed: int, card: dict, a: argparse.Namespace) -> dict:
    start = (card.get("pruning") or {}).get("start") or {}
    pruned = arm == "prune"
    return {
        "date": date.today().isoformat(), "machine": f"{platform.node()} {a.threads} thread(s)",
        "study": a.study_name, "arm": arm, "seed": seed, "to": a.to, "total_epochs": f"{a.epochs:g}",
        "steps": a.steps if pruned else "", "finetune_epochs": f"{a.finetune_epochs:g}" if pruned else "",
        "trial": card["trial"], "architecture": card["architecture"], "flops": card["flops"], "params": card["params"],
        "val_accuracy": round(card["val_accuracy"], 4), "test_accuracy": round(card["test_accuracy"], 4),
        "train_seconds": round(card["train_seconds"], 1),
        "start_flops": start.get("flops", ""), "start_test_accuracy": round(start["test_accuracy"], 4) if start else "",
    }


def _recorded(path: Path, row: dict) -> bool:
    """Whether the CSV already has this run's row (a rerun after a finished run adds none)."""
    if not path.exists():
        return False
    with path.open(newline="") as f:
        return any(all(str(old.get(k, "")) == str(row[k]) for k in KEY) for old in csv.DictReader(f))


if __name__ == "__main__":
    sys.exit(main())
