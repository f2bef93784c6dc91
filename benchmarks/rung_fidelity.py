"""Proxy fidelity per rung (issue 19): does each rung rank the search's best students as export does?

From a finished study, the ``--top`` students by the search's final score (accuracy at the longest
rung each reached) are trained again through every rung exactly as the search trains them (same
split, steps, restarts, KD targets, seed), and once at export length (``--epochs`` on the whole
training split, crop-flip, clean cached targets, as ``nas_kd.export`` trains). Kendall τ and top-5
precision of each rung's validation accuracy against the export's test (and validation) accuracy
are printed; one CSV row per student is appended to ``rung_fidelity.csv``. Resumable (students in
the CSV are skipped) and shardable, so two single-thread processes split the work:

    python benchmarks/rung_fidelity.py --study-name fashion-mnist-5MFLOPs --shard 0/2 --threads 1 &
    python benchmarks/rung_fidelity.py --study-name fashion-mnist-5MFLOPs --shard 1/2 --threads 1
    python benchmarks/rung_fidelity.py --study-name fashion-mnist-5MFLOPs --summary
"""

from __future__ import annotations

import argparse
import csv
import tempfile
import time
from datetime import date
from pathlib import Path

import torch
from csv_rows import append_rows
from proxy_fidelity import kendall_tau

from nas_kd.model.builder import build_student
from nas_kd.model.spec import ArchSpec
from nas_kd.progress import Progress
from nas_kd.search.candidate import rung_length, trial_settings
from nas_kd.search.cli import parse_args
from nas_kd.search.flags import command_line
from nas_kd.search.prepare import prepare
from nas_kd.study.records import SETTINGS_ATTR, front_candidates, trial_records
from nas_kd.study.storage import open_named_study
from nas_kd.teacher import kd_targets, load_teacher
from nas_kd.train import TrainSettings, accuracy, train_model

HERE = Path(__file__).parent
NOT_REPLAYED = ("--storage", "--studies-dir", "--workers", "--threads", "--timeout", "--trials")


def replay_run(a: argparse.Namespace):  # noqa: ANN201 - (study, search Run, shard, shards)
    """What a ``replay_flags`` benchmark retrains from: the study, its search run rebuilt from the
    study's recorded flags at ``--threads``, and this process's shard of the students. The rebuilt run
    keeps its own (empty) study in a throwaway folder, not where the search once wrote."""
    torch.set_num_threads(a.threads)
    study = open_named_study(a.study_name, a.studies_dir, None)
    flags = {k: v for k, v in study.user_attrs[SETTINGS_ATTR]["flags"].items() if k not in NOT_REPLAYED}
    flags = {k: _flag_value(k, v) for k, v in flags.items()}
    scratch = tempfile.mkdtemp(prefix="replay-")
    cfg = parse_args([*command_line(flags), "--workers", "1", "--threads", str(a.threads), "--studies-dir", scratch])
    shard, shards = map(int, a.shard.split("/"))
    return study, prepare(cfg, Progress(quiet=True)), shard, shards


def _flag_value(flag: str, text: str) -> str | tuple[str, ...] | bool | None:
    """A recorded flag's text (search.flags.recorded_flags) back as a value command_line takes."""
    if text in ("yes", "no"):
        return text == "yes"
    if text == "none":
        return None
    return tuple(text.split(", ")) if flag in ("--teacher", "--teacher-weights") else text


def _rung_accuracies(run, spec: ArchSpec) -> list[float]:  # noqa: ANN001
    out = []
    for rung in range(run.cfg.rungs):
        steps, restarts = rung_length(run, rung)
        torch.manual_seed(run.cfg.seed)
        model = build_student(spec).to(memory_format=torch.channels_last)
        train_model(model, run.x_train, run.y_train, trial_settings(run.cfg, len(run.y_train)), kd=run.cfg.kd,
                    teacher_logits=run.teacher_logits, steps=steps, restarts=restarts)
        out.append(accuracy(model, run.split.x_val, run.split.y_val))
    return out


def _export_length(run, spec: ArchSpec, epochs: float) -> tuple[float, float, float]:  # noqa: ANN001
    cfg = run.cfg
    teacher = load_teacher(run.split, cfg.teachers, cfg.teacher_weights, seed=cfg.teacher_seed, cache_dir=cfg.cache_dir,
                           train=False, weight_files=cfg.teacher_files, teacher_input=cfg.teacher_input)
    targets = kd_targets(teacher, run.split, "clean", "crop-flip", cache_dir=cfg.cache_dir)
    torch.manual_seed(run.cfg.seed)
    model = build_student(spec).to(memory_format=torch.channels_last)
    settings = TrainSettings(epochs=epochs, batch_size=128, lr=0.1, augment="crop-flip", seed=run.cfg.seed)
    start = time.perf_counter()
    train_model(model, run.split.x_train, run.split.y_train, settings, kd=run.cfg.kd, **targets)
    return (accuracy(model, run.split.x_val, run.split.y_val), accuracy(model, run.split.x_test, run.split.y_test),
            time.perf_counter() - start)


def replay_flags(description: str, csv_name: str) -> argparse.ArgumentParser:
    """The flags of a benchmark that retrains a finished study's ``--top`` students, sharded, into a CSV."""
    p = argparse.ArgumentParser(description=description)
    p.add_argument("--study-name", required=True)
    p.add_argument("--studies-dir", default="studies")
    p.add_argument("--top", type=int, default=10)
    p.add_argument("--shard", default="0/1")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--summary", action="store_true")
    p.add_argument("--out", default=str(HERE / csv_name))
    return p


def _top(study, n: int) -> list:  # noqa: ANN001
    done = sorted(front_candidates(trial_records(study)), key=lambda r: -r.val_accuracy)
    return done[:n]


def _summary(out: Path, study_name: str) -> None:
    rows = [r for r in csv.DictReader(out.open()) if r["study"] == study_name]
    export = [float(r["export_test"]) for r in rows]
    best5 = set(sorted(range(len(rows)), key=lambda i: -export[i])[:5])
    print(f"{len(rows)} students of {study_name}; export = {rows[0]['export_epochs']} epochs" if rows else "no rows")
    for column in sorted(c for c in rows[0] if c.startswith("rung")) + ["final_score"] if rows else []:
        score = [float(r[column]) for r in rows]
        top5 = set(sorted(range(len(rows)), key=lambda i: -score[i])[:5])
        print(f"{column:12s} Kendall tau vs export test {kendall_tau(score, export):+.2f}, "
              f"vs export val {kendall_tau(score, [float(r['export_val']) for r in rows]):+.2f}; "
              f"top-5 precision {len(top5 & best5) / 5:.1f}")
    _screening(rows)


def _screening(rows: list[dict]) -> None:
    """What ``nas_kd.export --screen K`` would ship, read off these rows: of the K best by final score,
    the highest export-length validation accuracy; its export test against plain ``--pick best``'s."""
    ranked = sorted(rows, key=lambda r: (-float(r["final_score"]), float(r["flops"])))
    for k in range(2, min(len(ranked), 5) + 1):
        pool = ranked[:k]
        pick = max(pool, key=lambda r: (float(r["export_val"]), -float(r["flops"])))
        best = max(float(r["export_test"]) for r in pool)
        print(f"--screen {k}: ships trial {pick['trial']} (export val {float(pick['export_val']):.2%}, test "
              f"{float(pick['export_test']):.2%}); --pick best ships trial {ranked[0]['trial']} (test "
              f"{float(ranked[0]['export_test']):.2%}); the best test among the {k}: {best:.2%}")


def main() -> None:
    p = replay_flags(__doc__.splitlines()[0], "rung_fidelity.csv")
    p.add_argument("--epochs", type=float, default=20)
    a = p.parse_args()
    out = Path(a.out)
    if a.summary:
        _summary(out, a.study_name)
        return
    study, run, shard, shards = replay_run(a)
    done = {(r["study"], r["trial"]) for r in csv.DictReader(out.open())} if out.exists() else set()
    for i, record in enumerate(_top(study, a.top)):
        if i % shards != shard or (a.study_name, str(record.number)) in done:
            continue
        spec = ArchSpec.from_dict(record.spec)
        rungs = _rung_accuracies(run, spec)
        val, test, seconds = _export_length(run, spec, a.epochs)
        row = {"date": date.today().isoformat(), "study": a.study_name, "trial": record.number,
               "flops": record.flops, "final_score": record.val_accuracy, "reached_rung": record.rung,
               **{f"rung{k}": round(v, 4) for k, v in enumerate(rungs)}, "export_epochs": a.epochs,
               "export_val": round(val, 4), "export_test": round(test, 4), "export_seconds": round(seconds, 1),
               "summary": record.summary}
        append_rows(out, [row])
        print(row)


if __name__ == "__main__":
    main()
