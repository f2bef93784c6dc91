"""Does NASWOT rank the random members of "Which space?" as their short KD training does?

Scores every non-hand-design row of ``space_choice.csv`` with ``proxy_fidelity.naswot`` on 128
training images (untrained networks, seed 0) and prints Spearman's ρ of the score, of parameters and
of FLOPs with the 400-step validation accuracy. Writes ``naswot_random.csv``. Seconds, one thread.

    PYTHONPATH=. python benchmarks/naswot_random.py
"""

from __future__ import annotations

from pathlib import Path

import pandas as pd
import torch
from proxy_fidelity import naswot

from nas_kd.data import load_dataset, split_dataset
from nas_kd.model.builder import build_student
from nas_kd.model.spec import parse_summary

HERE = Path(__file__).resolve().parent


def main() -> None:
    torch.set_num_threads(1)
    rows = pd.read_csv(HERE / "space_choice.csv")
    rows = rows[~rows.space.str.startswith("hand")].copy()
    x = split_dataset(load_dataset("fashion-mnist"), val_size=5000, seed=0).x_train[:128]
    scores = []
    for arch in rows.arch:
        torch.manual_seed(0)
        scores.append(naswot(build_student(parse_summary(arch, 1, 10)), x))
    rows["naswot"] = scores
    rows[["space", "arch", "flops", "params", "val_accuracy", "naswot"]].to_csv(HERE / "naswot_random.csv", index=False)
    for col in ("naswot", "params", "flops"):
        print(f"{col:7s} vs 400-step accuracy: Spearman {rows[col].corr(rows.val_accuracy, method='spearman'):+.2f}"
              f" ({len(rows)} members, 3.5-5 MFLOPs)")


if __name__ == "__main__":
    main()
