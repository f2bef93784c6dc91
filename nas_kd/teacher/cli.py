"""``python -m nas_kd.teacher``: train (or resume) a teacher, show it, or ship it (maintainers).

``python -m nas_kd.teacher train --dataset fashion-mnist`` trains (or resumes) a teacher;
``python -m nas_kd.teacher show --dataset fashion-mnist`` describes it and measures its test accuracy.
"""

from __future__ import annotations

import argparse
import json

from nas_kd.cli.runner import positive_int, run_command, set_threads
from nas_kd.data import Split, dataset_names, default_val_size, load_dataset, split_dataset
from nas_kd.errors import UserError
from nas_kd.progress import Progress, format_seconds
from nas_kd.quantity import format_quantity
from nas_kd.teacher.cache import TeacherCache, teacher_key
from nas_kd.teacher.load import Teacher, load_teacher
from nas_kd.teacher.members import load_or_train_member
from nas_kd.teacher.recipes import find_recipe
from nas_kd.teacher.ship import ship
from nas_kd.train import accuracy

STOPPED = "progress is checkpointed every epoch; run the same command to resume"


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m nas_kd.teacher", description="Train or inspect a default teacher.")
    p.add_argument("command", choices=("train", "show", "ship"),
                   help="train (or resume) a teacher; show it and measure its test accuracy; ship: copy a "
                   "trained teacher into the package (maintainers)")
    p.add_argument("--dataset", default="fashion-mnist",
                   help=f"one of {', '.join(dataset_names())}, or npz:PATH, folder:PATH, pkg.module:factory")
    p.add_argument("--recipe", action="append", default=[],
                   help="teacher recipe (default: the dataset's default); several: an averaged ensemble")
    p.add_argument("--seed", type=int, default=0, help="teacher seed (default 0)")
    p.add_argument("--data-dir")
    p.add_argument("--val-size", type=float)
    p.add_argument("--split-seed", type=int, default=0)
    p.add_argument("--cache-dir", help="teacher cache (default ~/.cache/nas_kd or $NAS_KD_CACHE_DIR)")
    p.add_argument("--member", type=int, help="train only this ensemble member (run several in parallel)")
    p.add_argument("--threads", type=positive_int("--threads"), help="PyTorch CPU threads (default: every core)")
    return p


def main(argv: list[str] | None = None) -> int:
    """Run the command with ``argv`` (default: sys.argv); 0 when done, 2 on a mistake, 130 after a stop."""
    return run_command(lambda: _run(parser().parse_args(argv)), on_interrupt=STOPPED)


def _run(args: argparse.Namespace) -> int:
    set_threads(args.threads)
    split = _split_for(args)
    progress = Progress()
    if len(args.recipe) > 1 and args.member is not None:
        raise UserError("--member takes one --recipe")
    if args.command == "train" and args.member is not None:
        return _train_one_member(split, args, progress)
    teacher = load_teacher(split, tuple(args.recipe), seed=args.seed, cache_dir=args.cache_dir,
                           progress=progress, train=args.command == "train")
    if args.command == "ship":  # a default of several recipes ships each of them, then its logits
        ship(teacher, split, tuple(args.recipe), seed=args.seed, cache_dir=args.cache_dir)
    elif args.command == "train":
        info = teacher.info
        print(f"teacher {info.key}: {len(info.members)} member(s), trained in "
              f"{format_seconds(info.train_seconds)}; val {info.val_accuracy:.2%}, test {info.test_accuracy:.2%}")
    else:
        _show(teacher, split)
    return 0


def _split_for(args: argparse.Namespace) -> Split:
    data = load_dataset(args.dataset, args.data_dir)
    val = args.val_size if args.val_size is not None else default_val_size(len(data.y_train))
    return split_dataset(data, val_size=val, seed=args.split_seed)


def _train_one_member(split: Split, args: argparse.Namespace, progress: Progress) -> int:
    dataset = split.description["dataset"]
    name, rec = find_recipe(dataset, args.recipe[0] if args.recipe else None, len(split.y_train))
    if not 0 <= args.member < rec.members:
        raise UserError(f"--member must be in 0..{rec.members - 1} for recipe {name!r}")
    key = teacher_key(dataset, name, rec, split, args.seed)
    _, info = load_or_train_member(split, rec, key=key, index=args.member, seed=args.seed,
                                   cache=TeacherCache.at(args.cache_dir), progress=progress)
    print(f"member {args.member}: val {info['val_accuracy']:.2%}, test {info['test_accuracy']:.2%}, "
          f"{format_seconds(info['train_seconds'])}")
    return 0


def _show(teacher: Teacher, split: Split) -> None:
    """What the teacher is, what it costs, and its test accuracy measured afresh."""
    info, members = teacher.info, teacher.info.members
    print(f"teacher: {info.key}")
    averaged = " (logits averaged)" if len(members) > 1 else ""
    if info.parts:
        averaged = f" (logits averaged; recipes {info.recipe_name} weighted {list(info.weights)})"
    archs = dict.fromkeys(json.dumps(m["arch"]) for m in members)
    print(f"architecture: {len(members)} member(s) of {' / '.join(archs)}{averaged}")
    print(f"weights: {'shipped with nas_kd' if info.shipped else 'trained on this machine'} "
          f"({', '.join(str(m['params'] * 4 // 1024) + ' KiB' for m in members)} of float32)")
    print(f"FLOPs: {format_quantity(info.flops)} ({info.flops}; 1 multiply-add = 1 FLOP, fvcore)"
          if info.flops else "FLOPs: not counted (an ONNX or TorchScript teacher)")
    print(f"params: {format_quantity(info.params)} ({info.params})")
    print(f"sha256: {info.sha256}")
    print(f"training time: {format_seconds(info.train_seconds)}; validation accuracy: {info.val_accuracy:.2%}")
    print(f"test accuracy: {accuracy(teacher.model, split.x_test, split.y_test):.2%}")
