"""``python -m nas_kd.search --budget 5MFLOPs``: find the best students that fit a compute budget.

Data flows one way: CLI -> config -> data, space, teacher -> per trial: sample spec -> count cost
(fvcore, milliseconds) -> reject over-budget candidates untrained -> train with KD -> record in the
study -> Pareto front table and files. Every default here is ``SearchConfig``'s, except
``--workers``: one per core unless ``--threads`` is given (``workers.default_workers``).
"""

from __future__ import annotations

import argparse
import os
import re
import sys
from pathlib import Path
from typing import NoReturn

import optuna
from sqlalchemy.exc import SQLAlchemyError  # Optuna's RDB storages raise these

from nas_kd.cli.runner import positive_int, run_command
from nas_kd.data import dataset_names
from nas_kd.distill import KD_SEARCH, KDSettings, kd_loss_names, needs_features
from nas_kd.errors import UserError
from nas_kd.model.cost import FLOP_CONVENTION
from nas_kd.model.latency import parse_duration
from nas_kd.progress import Progress
from nas_kd.quantity import format_quantity, parse_bytes, parse_quantity
from nas_kd.search.config import OBJECTIVES, SAMPLERS, STORAGE_ENV, TAILS, SearchConfig
from nas_kd.search.run import WorkerFailed, run_search
from nas_kd.search.workers import default_workers
from nas_kd.study.records import TrialRecord
from nas_kd.study.storage import load_existing_study, redact_url
from nas_kd.train import TrainSettings

_D = SearchConfig()  # the defaults


class _Parser(argparse.ArgumentParser):
    """A mistake on the command line is one ``error:`` line and exit 2, like every other mistake
    (argparse would print its usage and raise SystemExit, even when main() is called from Python)."""

    def error(self, message: str) -> NoReturn:
        raise UserError(re.sub(r"^argument (\S+): (?=\1 )", "", message))


def build_parser() -> argparse.ArgumentParser:
    """Every flag of the search, in ``--help`` order."""
    p = _Parser(
        prog="python -m nas_kd.search",
        description="Search for the most accurate student network within a compute budget, "
        "training every candidate with knowledge distillation from a teacher.",
        epilog=f"Cost convention: {FLOP_CONVENTION}.",
    )
    for add in (_budget_and_data_flags, _study_flags, _training_flags, _teacher_flags, _machine_flags):
        add(p)
    return p


NO_TEACHER = "none"  # --teacher none: labels only


def parse_args(argv: list[str] | None) -> SearchConfig:
    a = build_parser().parse_args(argv)
    if a.kd not in [*kd_loss_names(), KD_SEARCH]:
        raise UserError(f"unknown distillation loss {a.kd!r}: choose one of {', '.join(kd_loss_names())}, "
                        f"or {KD_SEARCH} (Optuna picks loss, temperature and alpha per trial)")
    if a.kd == KD_SEARCH and a.alpha == 0:
        raise UserError("--kd search chooses alpha per trial; for labels only use --alpha 0 without --kd search")
    no_teacher = NO_TEACHER in a.teacher
    if no_teacher and len(a.teacher) > 1:
        raise UserError("--teacher none means no teacher: do not give other --teacher values with it")
    if no_teacher and (a.kd == KD_SEARCH or (a.alpha or 0) > 0):
        raise UserError("--teacher none trains from labels (with --self-distill, also from the student's own last "
                        "exit): drop --alpha and --kd search, which weigh a teacher")
    if a.self_distill and (a.kd == KD_SEARCH or needs_features(a.kd)):
        raise UserError(f"--self-distill distils soft outputs; --kd {a.kd} can choose or needs teacher features: "
                        "use a logit loss such as --kd hinton")
    alpha = 0.0 if no_teacher else (KDSettings().alpha if a.alpha is None else a.alpha)
    return SearchConfig(
        dataset=a.dataset, data_dir=a.data_dir,
        budget_flops=parse_quantity(a.budget, what="--budget"),
        budget_params=parse_quantity(a.params, what="--params") if a.params else None,
        budget_memory=parse_bytes(a.memory_budget, what="--memory-budget") if a.memory_budget else None,
        budget_size=parse_bytes(a.size_budget, what="--size-budget") if a.size_budget else None,
        budget_latency_us=parse_duration(a.latency_budget, what="--latency-budget") if a.latency_budget else None,
        objective=a.objective, latency_threads=a.latency_threads,
        space=a.space, trials=a.trials, timeout=a.timeout, promote_until=a.promote_until, tail=a.tail,
        seed=a.seed, split_seed=a.split_seed,
        val_size=a.val_size, train_subset=a.train_subset or None, min_steps=a.min_steps,
        train=TrainSettings(epochs=a.epochs, batch_size=a.batch_size, lr=a.lr, seed=a.seed),
        kd=KDSettings(loss=a.kd, temperature=a.temperature, alpha=alpha), self_distill=a.self_distill,
        teachers=() if no_teacher else tuple(_absolute(t) for t in a.teacher),
        teacher_weights=_weights(a.ensemble_weights),
        teacher_files=tuple(_absolute(f) for f in a.teacher_weights), teacher_input=a.teacher_input,
        teacher_seed=a.teacher_seed, study_name=a.study_name,
        storage=a.storage or os.environ.get(STORAGE_ENV) or None,
        studies_dir=a.studies_dir, sampler=a.sampler, warm_start=a.warm_start,
        early_stop=a.early_stop, rungs=a.rungs, eta=a.eta, cache_dir=a.cache_dir, device=a.device,
        threads=a.threads, workers=a.workers or default_workers(a.threads, a.device), worker_index=a.worker_index,
        run_id=a.run_id, run_trials=a.run_trials,
    )


def _budget_and_data_flags(p: argparse.ArgumentParser) -> None:
    budget = f"{format_quantity(_D.budget_flops)}FLOPs"
    p.add_argument("--budget", default=budget, help=f"FLOP budget, e.g. 5MFLOPs, 5M, 750k, 0.5G (default {budget})")
    p.add_argument("--params", help="parameter budget, e.g. 50k (optional second constraint)")
    p.add_argument("--memory-budget", help="int8 peak activation memory, e.g. 64kB, 256KiB (microcontrollers; "
                   "counted before training: see docs/spaces.md)")
    p.add_argument("--size-budget", help="int8 model size, e.g. 100kB (weights 1 byte, biases 4)")
    p.add_argument("--latency-budget", help="onnxruntime latency of one image on this machine, e.g. 300us, 0.3ms "
                   "(measured before training, cached per architecture)")
    p.add_argument("--objective", default=_D.objective, choices=OBJECTIVES,
                   help="the front's cost axis: flops (default) or latency (measured on this machine)")
    p.add_argument("--latency-threads", type=positive_int("--latency-threads"), default=_D.latency_threads,
                   help=f"onnxruntime threads when latency is measured (default {_D.latency_threads})")
    p.add_argument("--dataset", default=_D.dataset,
                   help=f"one of {', '.join(dataset_names())}, or npz:PATH, folder:PATH, pkg.module:factory")
    p.add_argument("--data-dir", help="folder with the dataset's files (Fashion-MNIST: the four IDX .gz files)")
    p.add_argument("--space", default=_D.space, help="search space: a YAML file or a name in search_spaces/")


def _study_flags(p: argparse.ArgumentParser) -> None:
    p.add_argument("--trials", type=positive_int("--trials"), default=_D.trials,
                   help=f"candidates to train in this run (default {_D.trials})")
    p.add_argument("--timeout", type=float, help="stop starting new trials this many seconds after the command "
                   "started (data and teacher loading included)")
    p.add_argument("--promote-until", type=float, default=_D.promote_until, metavar="SECONDS",
                   help="once every candidate is trained, keep promoting the rest of each rung, best first, "
                   "while a promotion is expected to end this many seconds after the command started "
                   f"(default {_D.promote_until:g}: the default search's 20 minutes, a minute spare; "
                   "0: stop after the last candidate and its due promotions)")
    p.add_argument("--tail", default=_D.tail, choices=TAILS,
                   help="the order of those promotions: top-band (default): the top third of the budget's results "
                   "first, then the rest, each highest rung first with the cost bands taking turns; rungs: no band "
                   "first (short rungs rank the largest students worst; see benchmarks/RESULTS.md)")
    p.add_argument("--study-name", help="study to create or resume (default: DATASET-BUDGET)")
    p.add_argument("--storage", help=f"Optuna storage URL (default: ${STORAGE_ENV} if set, else "
                   "sqlite:///STUDIES_DIR/NAME.db). A password on the command line is visible to other users "
                   f"of this machine: set {STORAGE_ENV} instead, or give a URL without a password and keep it "
                   "in ~/.pgpass (PostgreSQL's libpq reads it)")
    p.add_argument("--studies-dir", default=_D.studies_dir, help="where studies and their outputs go")
    p.add_argument("--sampler", default=_D.sampler, choices=SAMPLERS,
                   help="stratified (default: random members spread over FLOP bands, cheapest first, the top band "
                   "twice; with rungs, MO-ASHA), local (stratified, but the top band's second turn changes one knob "
                   "of one of its 3 best candidates once 4 are scored), random (plain random members), tpe (TPE "
                   "told rung 0), tpe-rungs (TPE modelling each candidate's longest rung) or nsga2")
    p.add_argument("--no-warm-start", dest="warm_start", action="store_false",
                   help="do not train the space's hand designs first (e.g. for a pure random-search baseline)")
    p.add_argument("--rungs", type=int, default=_D.rungs,
                   help=f"training lengths (default {_D.rungs}): every candidate trains --epochs first; the best "
                   "1/ETA of each rung's results (by Pareto rank, spread kept) go on from their checkpoint to "
                   "ETA times as many steps in all. 1: one length for every candidate")
    p.add_argument("--eta", type=int, default=_D.eta, help=f"steps grow ETA-fold per rung (default {_D.eta})")
    p.add_argument("--no-early-stop", dest="early_stop", action="store_false",
                   help="with --rungs 1: train every candidate to the end (by default one whose half-way "
                        "accuracy, plus a generous second-half gain, is below a cheaper trained one is stopped)")
    p.add_argument("--seed", type=int, default=_D.seed, help=f"sampler and training seed (default {_D.seed})")


def _training_flags(p: argparse.ArgumentParser) -> None:
    t = _D.train
    p.add_argument("--epochs", type=float, default=t.epochs,
                   help=f"training epochs per candidate, in its first rung (default {t.epochs:g})")
    p.add_argument("--min-steps", type=int, default=_D.min_steps,
                   help=f"SGD steps per candidate at least; small datasets get more epochs (default {_D.min_steps}; "
                   "0: exactly --epochs)")
    p.add_argument("--train-subset", type=int, default=_D.train_subset,
                   help="training images per candidate, 0 = all (default: all)")
    p.add_argument("--val-size", type=float, help="validation images (≥ 1) or fraction (< 1) carved from train")
    p.add_argument("--split-seed", type=int, default=_D.split_seed,
                   help=f"seed of the train/validation split (default {_D.split_seed})")
    p.add_argument("--batch-size", type=int, default=t.batch_size)
    p.add_argument("--lr", type=float, default=t.lr, help=f"peak learning rate, one-cycle SGD (default {t.lr:g})")


def _teacher_flags(p: argparse.ArgumentParser) -> None:
    kd = _D.kd
    p.add_argument("--kd", default=kd.loss, help=f"distillation loss: {', '.join(kd_loss_names())}; or search "
                   "(Optuna chooses loss, temperature and alpha per trial with the architecture)")
    p.add_argument("--temperature", type=float, default=kd.temperature,
                   help=f"KD temperature T (default {kd.temperature:g})")
    p.add_argument("--alpha", type=float,
                   help=f"KD weight; 0 = labels only (default {kd.alpha:g}; 0 with --teacher none)")
    p.add_argument("--self-distill", action="store_true",
                   help="train each candidate with an exit after every stage but the last, learning from its last "
                   "exit (Be Your Own Teacher); it is scored, costed and exported without them (see docs/search.md)")
    p.add_argument("--teacher", action="append", default=[], metavar="TEACHER",
                   help="none (labels only, no teacher trained or loaded), a recipe (e.g. strong, quick), a "
                   "TorchScript file, an .onnx model, or "
                   "pkg.module:factory (with --teacher-weights); several times for an ensemble whose "
                   "logits are averaged (default: the dataset's default teacher)")
    p.add_argument("--teacher-weights", action="append", default=[], metavar="FILE",
                   help="state dict (loaded with weights_only=True) for each factory --teacher, in order")
    p.add_argument("--teacher-input", default=_D.teacher_input, choices=("normalised", "raw"),
                   help="brought teachers get the split-normalised images (default) or raw [0, 1] pixels")
    p.add_argument("--ensemble-weights", help="comma-separated weight per --teacher, e.g. 2,1 (default: equal)")
    p.add_argument("--teacher-seed", type=int, default=_D.teacher_seed,
                   help=f"seed of the default teacher (default {_D.teacher_seed})")
    p.add_argument("--cache-dir", help="teacher cache (default ~/.cache/nas_kd or $NAS_KD_CACHE_DIR)")


def _machine_flags(p: argparse.ArgumentParser) -> None:
    p.add_argument("--device", default=_D.device, help="auto (CUDA if available), cpu or cuda")
    p.add_argument("--threads", type=positive_int("--threads"),
                   help="CPU threads for PyTorch in each worker (default: the cores shared evenly by the "
                   "workers; --threads alone runs one process with that many)")
    p.add_argument("--workers", type=positive_int("--workers"),
                   help="local worker processes sharing the study (default: one single-thread worker per core "
                   "on CPU, 1 with --threads or on a GPU; 1: trials run in this process); on several machines, "
                   "run the same command with the same --storage on each")
    p.add_argument("--worker-index", type=int, help=argparse.SUPPRESS)
    p.add_argument("--run-id", help=argparse.SUPPRESS)
    p.add_argument("--run-trials", type=int, help=argparse.SUPPRESS)


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


def format_front(front: list[TrialRecord], budget_flops: int) -> str:
    """The front as a readable table (cheapest first)."""
    lines = [
        f"Pareto front: validation accuracy vs FLOPs (budget {format_quantity(budget_flops)}; "
        "1 multiply-add = 1 FLOP, fvcore; at the longest rung each reached)",
        f"{'trial':>5}  {'val acc':>7}  {'rung':>4}  {'FLOPs':>7}  {'params':>7}  {'train s':>7}  architecture",
    ]
    for r in front:
        lines.append(
            f"{r.number:>5}  {r.val_accuracy:7.2%}  {r.rung:>4}  {format_quantity(r.flops):>7}  "
            f"{format_quantity(r.params):>7}  {(r.train_seconds or 0):7.1f}  {r.summary}"
            + (f"  [{r.kd_text}]" if r.kd else "")
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    """Run the search command: exit 0, 2 after a mistake or a failed machine/storage, 130 after a stop."""
    parsed: list[SearchConfig] = []

    def body() -> int:
        parsed.append(parse_args(argv))
        return _search_and_show(parsed[0])

    def on_interrupt() -> str:
        where = f" (study {parsed[0].name})" if parsed else ""
        return f"finished trials are saved{where}; run the same command to resume"

    return run_command(body, on_interrupt=on_interrupt, handlers={
        WorkerFailed: _worker_failed, OSError: _cannot_write,
        optuna.exceptions.StorageInternalError: _storage_failed, SQLAlchemyError: _storage_failed,
    })


def _worker_failed(err: BaseException) -> int:
    print(f"error: {err}; finished trials are saved, run the same command to resume", file=sys.stderr)
    return err.code if isinstance(err, WorkerFailed) else 1


def _cannot_write(err: BaseException) -> int:
    """Disk full, permissions, vanished folders: the user's machine, not a bug."""
    assert isinstance(err, OSError)
    print(f"error: cannot write {err.filename or ''}: {err.strerror or err}; finished trials are saved",
          file=sys.stderr)
    return 2


def _storage_failed(err: BaseException) -> int:
    reason = redact_url(str(err).splitlines()[0]) if str(err) else type(err).__name__
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
    else:
        print(format_front(front, cfg.budget_flops))
        print(f"front written to {cfg.out_dir / 'front.csv'} and {cfg.out_dir / 'front.json'}")
    _write_report(cfg)
    return 0


def _write_report(cfg: SearchConfig) -> None:
    """The finished study's HTML report; failing to write it is a note, never a failed search.

    Imported here, not at the top: plotly loads only in the process that writes a report (never
    in a worker), and a report module that cannot load is one more reason for the note."""
    try:
        from nas_kd.report.page import write_report

        print(f"report: {write_report(load_existing_study(cfg.name, cfg.storage_url), cfg.out_dir)}")
    except Exception as err:  # noqa: BLE001
        print(f"note: no report written ({type(err).__name__}: {err})", file=sys.stderr)


if __name__ == "__main__":
    sys.exit(main())
