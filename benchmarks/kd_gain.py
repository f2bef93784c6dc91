"""What distillation buys at export time: one architecture trained exactly as ``nas_kd.export.cli``
trains it (whole training split, one-cycle SGD, same epochs, seed and augmentation), with the
default teacher vs labels only. Evaluates once on the test set; appends one row per run to a CSV.

    python benchmarks/kd_gain.py --design mobilenet-5m --mode labels --seed 0
    python benchmarks/kd_gain.py --design mobilenet-5m --mode kd --seed 0 --kd-targets views
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import platform
import time
from datetime import date
from pathlib import Path

import torch
from csv_rows import append_rows

from nas_kd.data import default_val_size, load_dataset, split_dataset
from nas_kd.distill.losses import KDSettings
from nas_kd.model.builder import build_student
from nas_kd.model.cost import count_cost
from nas_kd.model.spec import ArchSpec, parse_summary
from nas_kd.progress import Progress
from nas_kd.teacher import kd_targets, load_teacher
from nas_kd.train import TrainSettings, accuracy, train_model

HERE = Path(__file__).parent


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--design", help="a name in benchmarks/hand_designs.json")
    p.add_argument("--spec", help="or a spec JSON file (e.g. an export's spec.json)")
    p.add_argument("--line", help="or an architecture line, e.g. 'stem24/s1 | ds k3 c32 s2 x1 | fc | relu'")
    p.add_argument("--checkpoint", help="checkpoint file: saved every epoch, and the same command resumes from it")
    p.add_argument("--mode", choices=("kd", "labels"), required=True)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--epochs", type=float, default=20)
    p.add_argument("--augment", default="crop-flip")
    p.add_argument("--kd-targets", default="clean")
    p.add_argument("--teacher", action="append", default=[])
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--train-subset", type=int, help="train on a fixed subset (a reduced protocol)")
    p.add_argument("--targets-cache", help="where the subset's teacher targets are cached (not the teacher cache)")
    p.add_argument("--out", default=str(HERE / "kd_gain.csv"))
    a = p.parse_args()
    torch.set_num_threads(a.threads)
    if a.spec:
        spec = ArchSpec.from_json(Path(a.spec).read_text())
        name = a.spec
    elif a.line:
        spec, name = parse_summary(a.line, 1, 10), a.line
    else:
        spec = ArchSpec.from_dict(json.loads((HERE / "hand_designs.json").read_text())[a.design])
        name = a.design
    data = load_dataset("fashion-mnist")
    split = split_dataset(data, val_size=default_val_size(len(data.y_train)), seed=0)
    full_split = split
    if a.train_subset:
        idx = split.subset_index(a.train_subset, 0)
        split = dataclasses.replace(split, x_train=split.x_train[idx], y_train=split.y_train[idx])
    progress = Progress()
    kd = KDSettings(alpha=0.0)
    teacher = None
    if a.mode == "kd":
        kd = KDSettings()
        teacher = load_teacher(full_split, tuple(a.teacher), progress=progress, train=False)
    settings = TrainSettings(epochs=a.epochs, batch_size=128, lr=0.1, augment=a.augment, seed=a.seed)
    torch.manual_seed(a.seed)
    model = build_student(spec).to(memory_format=torch.channels_last)
    start = time.perf_counter()
    targets = kd_targets(teacher, split, a.kd_targets, a.augment, cache_dir=a.targets_cache) if teacher else {}
    targets_seconds = time.perf_counter() - start
    start = time.perf_counter()

    def on_step(step: int, total: int, loss: float) -> None:
        progress.status(f"{a.mode} seed {a.seed}: step {step}/{total} loss {loss:.3f} "
                        f"{time.perf_counter() - start:.0f}s")

    result = train_model(model, split.x_train, split.y_train, settings, kd=kd, on_step=on_step,
                         checkpoint=Path(a.checkpoint) if a.checkpoint else None, **targets)
    row = {
        "date": date.today().isoformat(), "machine": f"{platform.node()} {torch.get_num_threads()} thread(s)",
        "design": name, "flops": count_cost(build_student(spec), split.input_shape).flops, "mode": a.mode,
        "kd_targets": a.kd_targets if teacher else "", "teacher": teacher.info.key if teacher else "",
        "augment": a.augment, "epochs": a.epochs, "seed": a.seed, "train_images": len(split.y_train),
        "val_accuracy": round(accuracy(model, split.x_val, split.y_val), 4),
        "test_accuracy": round(accuracy(model, split.x_test, split.y_test), 4),
        "targets_seconds": round(targets_seconds, 1), "train_seconds": round(result.seconds, 1),
        "seconds_per_epoch": round(result.seconds / a.epochs, 1),
    }
    append_rows(Path(a.out), [row])
    print(json.dumps(row))


if __name__ == "__main__":
    main()
