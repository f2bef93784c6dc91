"""``python -m nas_kd.search --budget 5MFLOPs``: find the best students that fit a compute budget.

Data flows one way: CLI → config → data, space, teacher → per trial: sample spec → count cost
(fvcore, milliseconds) → reject over-budget candidates untrained → train with KD → record in the
study → Pareto front table and files.
"""

from __future__ import annotations

import argparse
import os
import signal
import subprocess
import sys
import warnings
from pathlib import Path

import optuna
from sqlalchemy.exc import SQLAlchemyError  # Optuna's RDB storages raise these

from nas_kd import interrupts
from nas_kd.data import dataset_names
from nas_kd.distill.losses import KD_SEARCH, KDSettings, kd_loss_names
from nas_kd.errors import UserError
from nas_kd.model.cost import FLOP_CONVENTION
from nas_kd.progress import Progress, format_seconds
from nas_kd.quantity import format_quantity, parse_quantity
from nas_kd.search.config import SAMPLERS, SearchConfig
from nas_kd.search.loop import prepare, run_trials, trial_settings
from nas_kd.study.front import write_front
from nas_kd.study.records import front_records, trial_records
from nas_kd.study.storage import redact_url
from nas_kd.train.loop import TrainSettings


def parse_args(argv: list[str] | None) -> SearchConfig:
    p = argparse.ArgumentParser(
        prog="python -m nas_kd.search",
        description="Search for the most accurate student network within a compute budget, "
        "training every candidate with knowledge distillation from a teacher.",
        epilog=f"Cost convention: {FLOP_CONVENTION}.",
    )
    p.add_argument("--budget", default="5MFLOPs", help="FLOP budget, e.g. 5MFLOPs, 5M, 750k, 0.5G (default 5MFLOPs)")
    p.add_argument("--params", help="parameter budget, e.g. 50k (optional second constraint)")
    p.add_argument("--dataset", default="fashion-mnist",
                   help=f"one of {', '.join(dataset_names())}, or npz:PATH, folder:PATH, pkg.module:factory")
    p.add_argument("--data-dir", help="folder with the dataset's files (Fashion-MNIST: the four IDX .gz files)")
    p.add_argument("--space", default="default", help="search space: a YAML file or a name in search_spaces/")
    p.add_argument("--trials", type=int, default=40, help="candidates to train in this run (default 40)")
    p.add_argument("--timeout", type=float, help="stop starting new trials after this many seconds")
    p.add_argument("--study-name", help="study to create or resume (default: DATASET-BUDGET)")
    p.add_argument("--storage", help="Optuna storage URL (default: sqlite:///STUDIES_DIR/NAME.db)")
    p.add_argument("--studies-dir", default="studies", help="where studies and their outputs go")
    p.add_argument("--sampler", default="tpe", choices=SAMPLERS, help="tpe (default), random or nsga2")
    p.add_argument("--no-warm-start", dest="warm_start", action="store_false",
                   help="do not train the space's hand designs first (e.g. for a pure random-search baseline)")
    p.add_argument("--no-early-stop", dest="early_stop", action="store_false",
                   help="train every candidate to the end (by default one whose half-way accuracy, plus a "
                        "generous second-half gain, is below a cheaper trained one is stopped there)")
    p.add_argument("--seed", type=int, default=0, help="sampler and training seed (default 0)")
    p.add_argument("--epochs", type=float, default=2.0, help="training epochs per candidate (default 2)")
    p.add_argument("--min-steps", type=int, default=300,
                   help="SGD steps per candidate at least; small datasets get more epochs (default 300; 0: "
                   "exactly --epochs)")
    p.add_argument("--train-subset", type=int, default=20000,
                   help="training images per candidate, 0 = all (default 20000)")
    p.add_argument("--val-size", type=float, help="validation images (≥ 1) or fraction (< 1) carved from train")
    p.add_argument("--split-seed", type=int, default=0, help="seed of the train/validation split (default 0)")
    p.add_argument("--batch-size", type=int, default=128)
    p.add_argument("--lr", type=float, default=0.1, help="peak learning rate, one-cycle SGD (default 0.1)")
    p.add_argument("--kd", default="hinton", help=f"distillation loss: {', '.join(kd_loss_names())}; or search "
                   "(Optuna chooses loss, temperature and alpha per trial with the architecture)")
    p.add_argument("--temperature", type=float, default=4.0, help="KD temperature T (default 4)")
    p.add_argument("--alpha", type=float, default=0.9, help="KD weight; 0 = labels only (default 0.9)")
    p.add_argument("--teacher", action="append", default=[], metavar="TEACHER",
                   help="a recipe (e.g. strong, quick), a TorchScript file, an .onnx model, or "
                   "pkg.module:factory (with --teacher-weights); several times for an ensemble whose "
                   "logits are averaged (default: the dataset's default teacher)")
    p.add_argument("--teacher-weights", action="append", default=[], metavar="FILE",
                   help="state dict (loaded with weights_only=True) for each factory --teacher, in order")
    p.add_argument("--teacher-input", default="normalised", choices=("normalised", "raw"),
                   help="brought teachers get the split-normalised images (default) or raw [0, 1] pixels")
    p.add_argument("--ensemble-weights", help="comma-separated weight per --teacher, e.g. 2,1 (default: equal)")
    p.add_argument("--teacher-seed", type=int, default=0, help="seed of the default teacher (default 0)")
    p.add_argument("--cache-dir", help="teacher cache (default ~/.cache/nas_kd or $NAS_KD_CACHE_DIR)")
    p.add_argument("--device", default="auto", help="auto (CUDA if available), cpu or cuda")
    p.add_argument("--threads", type=int, help="CPU threads for PyTorch (default: all cores, shared by workers)")
    p.add_argument("--workers", type=int, default=1,
                   help="local worker processes sharing the study (default 1); on several machines, run the "
                   "same command with the same --storage on each")
    p.add_argument("--worker-index", type=int, help=argparse.SUPPRESS)
    a = p.parse_args(argv)
    if a.kd not in [*kd_loss_names(), KD_SEARCH]:
        raise UserError(f"unknown distillation loss {a.kd!r}: choose one of {', '.join(kd_loss_names())}, "
                        f"or {KD_SEARCH} (Optuna picks loss, temperature and alpha per trial)")
    if a.kd == KD_SEARCH and a.alpha == 0:
        raise UserError("--kd search chooses alpha per trial; for labels only use --alpha 0 without --kd search")
    return SearchConfig(
        dataset=a.dataset, data_dir=a.data_dir,
        budget_flops=parse_quantity(a.budget, what="--budget"),
        budget_params=parse_quantity(a.params, what="--params") if a.params else None,
        space=a.space, trials=a.trials, timeout=a.timeout, seed=a.seed, split_seed=a.split_seed,
        val_size=a.val_size, train_subset=a.train_subset or None, min_steps=a.min_steps,
        train=TrainSettings(epochs=a.epochs, batch_size=a.batch_size, lr=a.lr, seed=a.seed),
        kd=KDSettings(loss=a.kd, temperature=a.temperature, alpha=a.alpha),
        teachers=tuple(_absolute(t) for t in a.teacher), teacher_weights=_weights(a.ensemble_weights),
        teacher_files=tuple(_absolute(f) for f in a.teacher_weights), teacher_input=a.teacher_input,
        teacher_seed=a.teacher_seed, study_name=a.study_name, storage=a.storage,
        studies_dir=a.studies_dir, sampler=a.sampler, warm_start=a.warm_start,
        early_stop=a.early_stop, cache_dir=a.cache_dir, device=a.device,
        threads=a.threads, workers=a.workers, worker_index=a.worker_index,
    )


def _absolute(path_or_name: str) -> str:
    """Files are recorded by absolute path, so export and workers find them from any folder."""
    return str(Path(path_or_name).resolve()) if Path(path_or_name).is_file() else path_or_name


def _weights(text: str | None) -> tuple[float, ...] | None:
    if text is None:
        return None
    try:
        return tuple(float(v) for v in text.split(","))
    except ValueError:
        raise UserError(f"--ensemble-weights must be comma-separated numbers, e.g. 2,1; got {text!r}") from None


def _worker_args(cfg: SearchConfig, index: int, trials: int, threads: int) -> list[str]:
    """The command line of one local worker: this run's settings, its share of trials and threads."""
    c = cfg
    args = ["--budget", str(c.budget_flops), "--dataset", c.dataset, "--space", c.space, "--trials", str(trials),
            "--study-name", c.name, "--storage", c.storage_url, "--studies-dir", c.studies_dir,
            "--sampler", c.sampler, "--seed", str(c.seed), "--epochs", str(c.train.epochs),
            "--train-subset", str(c.train_subset or 0), "--min-steps", str(c.min_steps),
            "--split-seed", str(c.split_seed),
            "--batch-size", str(c.train.batch_size), "--lr", str(c.train.lr), "--kd", c.kd.loss,
            "--temperature", str(c.kd.temperature), "--alpha", str(c.kd.alpha), "--teacher-seed", str(c.teacher_seed),
            "--device", c.device, "--threads", str(threads), "--worker-index", str(index)]
    if not c.early_stop:
        args.append("--no-early-stop")
    for recipe in c.teachers:
        args += ["--teacher", recipe]
    for file in c.teacher_files:
        args += ["--teacher-weights", file]
    args += ["--teacher-input", c.teacher_input]
    if c.teacher_weights is not None:
        args += ["--ensemble-weights", ",".join(map(str, c.teacher_weights))]
    for flag, value in (("--params", c.budget_params), ("--data-dir", c.data_dir), ("--timeout", c.timeout),
                        ("--val-size", c.val_size), ("--cache-dir", c.cache_dir)):
        if value is not None:
            args += [flag, str(value)]
    return args


def _run_workers(cfg: SearchConfig, progress: Progress) -> int:
    """Start ``cfg.workers`` processes on this machine that share the study; wait for all of them."""
    cores = os.cpu_count() or 1
    threads = cfg.threads or max(1, cores // cfg.workers)
    shares = [cfg.trials // cfg.workers + (i < cfg.trials % cfg.workers) for i in range(cfg.workers)]
    progress.log(f"starting {cfg.workers} workers ({threads} thread(s) each; trials {shares})")
    env = {**os.environ, "NAS_KD_PROGRESS": "lines"}
    # Each worker gets its own process group, so a terminal's Ctrl-C reaches only this process,
    # which stops every worker exactly once, with SIGTERM: a worker started from a script's
    # background job inherits an ignored SIGINT, but never an ignored SIGTERM.
    group = {} if os.name != "posix" else (
        {"process_group": 0} if sys.version_info >= (3, 11) else {"preexec_fn": os.setpgrp})
    procs = [
        subprocess.Popen([sys.executable, "-m", "nas_kd.search", *_worker_args(cfg, i, n, threads)], env=env,
                         **group)
        for i, n in enumerate(shares) if n > 0
    ]
    try:
        codes = [p.wait() for p in procs]
    except KeyboardInterrupt:
        _stop_workers(procs)
        raise
    for i, code in enumerate(codes):
        if code < 0:
            progress.log(f"worker {i} was stopped by signal {-code}; its running trial is failed by the "
                         "heartbeat check, finished trials are kept")
    bad = [c for c in codes if c != 0]
    if not bad:
        return 0
    return 2 if 2 in bad else 1


def _stop_workers(procs: list[subprocess.Popen]) -> None:
    """Each worker fails its running trial and exits; a second Ctrl-C meanwhile stops them at once."""
    for attempt in range(2):
        for p in procs:
            if p.poll() is None:
                p.send_signal(signal.SIGTERM)
        try:
            for p in procs:
                p.wait()
            return
        except KeyboardInterrupt:
            if attempt:
                raise


def run_search(cfg: SearchConfig, progress: Progress | None = None) -> list:
    """Run (or resume) the study described by ``cfg``; return the Pareto front records."""
    progress = progress or Progress()
    run = prepare(cfg, progress)
    n_before = sum(t.state != optuna.trial.TrialState.WAITING for t in run.study.trials)  # not warm starts
    progress.log(
        f"study {cfg.name!r} in {redact_url(cfg.storage_url)} ({'resuming, ' if n_before else ''}"
        f"{n_before} trials so far) | budget {format_quantity(cfg.budget_flops)} FLOPs"
        + (f", {format_quantity(cfg.budget_params)} params" if cfg.budget_params else "")
        + f" | {cfg.kd.describe()} | {trial_settings(cfg, len(run.y_train)).epochs:.3g} epochs on "
        f"{len(run.y_train)} images"
    )
    progress.log(f"cost convention: {FLOP_CONVENTION}")
    if cfg.workers > 1:
        code = _run_workers(cfg, progress)
        if code:
            raise WorkerFailed(code)
    else:
        stats = run_trials(run, progress)
        n = stats["trained"]
        progress.log(
            f"ran {n} trained trials in {format_seconds(stats['seconds'])} "
            f"({stats['seconds'] / max(1, n):.1f} s per trial, {stats['train_seconds'] / max(1, n):.1f} s of it "
            f"training), skipped {stats['skipped']} over budget"
            + (f", {stats['duplicates']} repeated architectures reused" if stats["duplicates"] else "")
            + (f", {stats['failed']} failed" if stats["failed"] else "")
            + (f", {stats['stopped']} stopped half-way" if stats["stopped"] else "")
        )
    if cfg.worker_index is not None:
        return []
    front = front_records(trial_records(run.study))
    if front:
        write_front(front, cfg.out_dir)
    return front


class WorkerFailed(Exception):
    def __init__(self, code: int) -> None:
        super().__init__("a worker did not finish (see its lines above)")
        self.code = code


def format_front(front: list, budget_flops: int) -> str:
    """The front as a readable table (cheapest first)."""
    lines = [
        f"Pareto front: validation accuracy vs FLOPs (budget {format_quantity(budget_flops)}; "
        "1 multiply-add = 1 FLOP, fvcore)",
        f"{'trial':>5}  {'val acc':>7}  {'FLOPs':>7}  {'params':>7}  {'train s':>7}  architecture",
    ]
    for r in front:
        lines.append(
            f"{r.number:>5}  {r.val_accuracy:7.2%}  {format_quantity(r.flops):>7}  {format_quantity(r.params):>7}  "
            f"{(r.train_seconds or 0):7.1f}  {r.summary}" + (f"  [{r.kd_text}]" if r.kd else "")
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    with interrupts.installed():  # a stop is a clean exit 130, with no work lost
        return _main(argv)


def _main(argv: list[str] | None) -> int:
    warnings.filterwarnings("ignore", category=optuna.exceptions.ExperimentalWarning)
    warnings.filterwarnings("ignore", category=DeprecationWarning)
    # ask/tell with heartbeats is supported here: trial_loop records them itself while a trial trains
    warnings.filterwarnings("ignore", message="Heartbeat of storage is supposed to be used")
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    cfg = None
    try:
        cfg = parse_args(argv)
        return _search_and_show(cfg)
    except UserError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        where = f" (study {cfg.name})" if cfg else ""
        print(f"\ninterrupted: finished trials are saved{where}; run the same command to resume", file=sys.stderr)
        return 130
    except WorkerFailed as err:
        print(f"error: {err}; finished trials are saved, run the same command to resume", file=sys.stderr)
        return err.code
    except OSError as err:  # disk full, permissions, vanished folders: the user's machine, not a bug
        print(f"error: cannot write {err.filename or ''}: {err.strerror or err}; finished trials are saved",
              file=sys.stderr)
        return 2
    except (optuna.exceptions.StorageInternalError, SQLAlchemyError) as err:
        reason = redact_url(str(err).splitlines()[0])
        print(f"error: the study storage failed ({reason}); finished trials are saved", file=sys.stderr)
        return 2


def _search_and_show(cfg: SearchConfig) -> int:
    """Run the search, then print its front and write its report (the parent process only)."""
    prefix = f"[worker {cfg.worker_index}] " if cfg.worker_index is not None else ""
    front = run_search(cfg, Progress(prefix=prefix))
    if cfg.worker_index is not None:
        return 0
    if not front:
        print("no trained candidate fits the budget yet: run more trials", file=sys.stderr)
        _write_report(cfg)
        return 0
    print(format_front(front, cfg.budget_flops))
    print(f"front written to {cfg.out_dir / 'front.csv'} and {cfg.out_dir / 'front.json'}")
    _write_report(cfg)
    return 0


def _write_report(cfg: SearchConfig) -> None:
    """The finished study's HTML report; failing to write it is a note, never a failed search."""
    try:
        from nas_kd.report.page import write_report
        from nas_kd.study.storage import load_existing_study

        print(f"report: {write_report(load_existing_study(cfg.name, cfg.storage_url), cfg.out_dir)}")
    except Exception as err:  # noqa: BLE001
        print(f"note: no report written ({type(err).__name__}: {err})", file=sys.stderr)


if __name__ == "__main__":
    sys.exit(main())
