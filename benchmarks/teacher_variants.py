"""Teacher variants on the validation split (selection) and the test set: the shipped strong
members alone and averaged, with the quick teacher added, each with and without horizontal-flip
test-time averaging. Writes one row per (variant, split) to ``teacher_variants.csv``.

    python benchmarks/teacher_variants.py --threads 2
"""

from __future__ import annotations

import argparse
import platform
from datetime import date
from pathlib import Path

import torch
from csv_rows import write_rows

from nas_kd.data import default_val_size, load_dataset, split_dataset
from nas_kd.teacher import load_teacher
from nas_kd.train import predict_logits

HERE = Path(__file__).parent
VARIANTS = {"member 0": [0], "member 1": [1], "quick": [2], "strong (shipped)": [0, 1], "strong + quick": [0, 1, 2]}


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--out", default=str(HERE / "teacher_variants.csv"))
    a = p.parse_args()
    torch.set_num_threads(a.threads)
    data = load_dataset("fashion-mnist")
    split = split_dataset(data, val_size=default_val_size(len(data.y_train)), seed=0)
    strong = load_teacher(split, ("strong",), train=False)
    quick = load_teacher(split, ("quick",), train=False)
    members = [*strong.model.members, quick.model]
    rows = []
    for name, x, y in (("val", split.x_val, split.y_val), ("test", split.x_test, split.y_test)):
        for flip in (False, True):
            logits = [predict_logits(m, x) + (predict_logits(m, torch.flip(x, dims=[3])) if flip else 0)
                      for m in members]
            for variant, idx in VARIANTS.items():
                acc = (sum(logits[i] for i in idx).argmax(1) == y).float().mean().item()
                rows.append({"date": date.today().isoformat(), "machine": f"{platform.node()} {a.threads} thread(s)",
                             "variant": variant, "flip_averaged": flip, "split": name, "accuracy": round(acc, 4)})
                print(rows[-1], flush=True)
    write_rows(Path(a.out), rows)


if __name__ == "__main__":
    main()
