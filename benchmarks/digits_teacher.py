"""Is the digits teacher clearly better than the students it teaches? The default digits teacher's
test accuracy beside the best student of a default search, exported with the default settings with
KD and from labels only (2 seeds), exactly as a user runs them. Writes ``digits_teacher.csv``.

    python benchmarks/digits_teacher.py            # about 4 minutes on this machine
"""

from __future__ import annotations

import argparse
import json
import platform
import subprocess
import sys
import tempfile
from datetime import date
from pathlib import Path

from csv_rows import write_rows

HERE = Path(__file__).parent


def _run(*args: str) -> None:
    subprocess.run([sys.executable, "-m", *args], check=True, stdout=subprocess.DEVNULL)


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--budget", default="100k")
    p.add_argument("--trials", default="20")
    p.add_argument("--seeds", type=int, default=2)
    p.add_argument("--out", type=Path, default=HERE / "digits_teacher.csv")
    a = p.parse_args()
    base = {"date": date.today().isoformat(), "machine": f"{platform.machine()} 1 thread", "budget": a.budget}
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        _run("nas_kd.search", "--dataset", "digits", "--budget", a.budget, "--trials", a.trials, "--threads", "1",
             "--studies-dir", tmp, "--study-name", "digits")
        for seed in range(a.seeds):
            out = Path(tmp) / f"export-{seed}"
            _run("nas_kd.export.cli", "--study-name", "digits", "--studies-dir", tmp, "--ablation", "--seed", str(seed),
                 "--threads", "1", "--out", str(out))
            card = json.loads((out / "model_card.json").read_text())
            t, ab = card["teacher"], card["ablation"]
            rows.append({**base, "seed": seed, "trial": card["trial"], "architecture": card["architecture"],
                         "flops": card["flops"], "epochs": card["training"]["epochs"],
                         "teacher": t["key"], "teacher_flops": t["flops"], "teacher_val": round(t["val_accuracy"], 4),
                         "teacher_test": round(t["test_accuracy"], 4),
                         "kd_val": round(card["val_accuracy"], 4), "kd_test": round(card["test_accuracy"], 4),
                         "labels_val": round(ab["labels_only_val_accuracy"], 4),
                         "labels_test": round(ab["labels_only_test_accuracy"], 4)})
            print(rows[-1], flush=True)
    write_rows(a.out, rows)
    kd = sum(r["kd_test"] for r in rows) / len(rows)
    labels = sum(r["labels_test"] for r in rows) / len(rows)
    print(f"teacher test {rows[0]['teacher_test']:.2%} | best student ({rows[0]['flops']} FLOPs) KD {kd:.2%}, "
          f"labels only {labels:.2%} (mean of {len(rows)} seeds): KD {100 * (kd - labels):+.2f} points")


if __name__ == "__main__":
    main()
