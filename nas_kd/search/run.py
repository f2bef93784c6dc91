"""``run_search(cfg)``: prepare, run the trials here or in local workers, and write the front."""

from __future__ import annotations

import optuna

from nas_kd.model.cost import FLOP_CONVENTION
from nas_kd.model.latency import format_duration
from nas_kd.progress import Progress, format_seconds
from nas_kd.quantity import format_bytes, format_quantity
from nas_kd.search.candidate import trial_settings
from nas_kd.search.config import SearchConfig
from nas_kd.search.loop import TrialCounts, run_trials
from nas_kd.search.prepare import Run, prepare
from nas_kd.search.workers import run_workers
from nas_kd.study.front import write_front
from nas_kd.study.records import TrialRecord, front_records, trial_records
from nas_kd.study.storage import redact_url


class WorkerFailed(Exception):
    """A local worker exited with an error; ``code`` is the exit code the search ends with."""

    def __init__(self, code: int) -> None:
        super().__init__("a worker did not finish (see its lines above)")
        self.code = code


def run_search(cfg: SearchConfig, progress: Progress | None = None) -> list[TrialRecord]:
    """Run (or resume) the study described by ``cfg``; return the Pareto front records
    (none in a worker process: its parent writes the front)."""
    progress = progress or Progress()
    run = prepare(cfg, progress)
    _log_start(run, progress)
    if cfg.workers > 1:
        code = run_workers(cfg, progress)
        if code:
            raise WorkerFailed(code)
    else:
        _log_counts(run_trials(run, progress), progress)
    if cfg.worker_index is not None:
        return []
    front = front_records(trial_records(run.study))
    if front:
        write_front(front, cfg.out_dir)
    return front


def _log_start(run: Run, progress: Progress) -> None:
    cfg = run.cfg
    n_before = sum(t.state != optuna.trial.TrialState.WAITING for t in run.study.trials)  # not warm starts
    progress.log(
        f"study {cfg.name!r} in {redact_url(cfg.storage_url)} ({'resuming, ' if n_before else ''}"
        f"{n_before} trials so far) | budget {format_quantity(cfg.budget_flops)} FLOPs"
        + (f", {format_quantity(cfg.budget_params)} params" if cfg.budget_params else "")
        + (f", {format_bytes(cfg.budget_memory)} int8 peak memory" if cfg.budget_memory else "")
        + (f", {format_bytes(cfg.budget_size)} int8 size" if cfg.budget_size else "")
        + (f", {format_duration(cfg.budget_latency_us)} latency" if cfg.budget_latency_us else "")
        + (" | front: accuracy against latency" if cfg.objective == "latency" else "")
        + f" | {cfg.kd.describe()} | {trial_settings(cfg, len(run.y_train)).epochs:.3g} epochs on "
        f"{len(run.y_train)} images"
    )
    progress.log(f"cost convention: {FLOP_CONVENTION}")


def _log_counts(counts: TrialCounts, progress: Progress) -> None:
    n = counts.trained
    progress.log(
        f"ran {n} trained trials in {format_seconds(counts.seconds)} "
        f"({counts.seconds / max(1, n):.1f} s per trial, {counts.train_seconds / max(1, n):.1f} s of it "
        f"training), skipped {counts.skipped} over budget"
        + (f", {counts.duplicates} repeated architectures reused" if counts.duplicates else "")
        + (f", {counts.failed} failed" if counts.failed else "")
        + (f", {counts.stopped} stopped half-way" if counts.stopped else "")
        + (f", {counts.promoted} promoted to a longer rung" if counts.promoted else "")
    )
