"""``--workers N``: local processes that share one study, started with the parent's settings.

Each worker is ``python -m nas_kd.search`` with the parent's flags, its share of the trials and
threads, and a hidden ``--worker-index``. The storage URL (which may hold a password) is handed
over in the environment, never on the command line, where any local user could read it.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import uuid

import torch

from nas_kd.progress import Progress
from nas_kd.search.config import STORAGE_ENV, SearchConfig
from nas_kd.search.flags import command_line, flag_values


def default_workers(threads: int | None, device: str) -> int:
    """How many local workers a search runs when ``--workers`` is not given.

    One single-thread worker per core: the small students a search trains keep one thread busy
    but scale poorly over several, so processes side by side train more samples a second than
    one process with every core's thread (``benchmarks/throughput.py`` measures both). Given
    ``--threads``, the user chose one process with that many; a GPU is shared best by one process."""
    if threads is not None or device.startswith("cuda") or (device == "auto" and torch.cuda.is_available()):
        return 1
    return os.cpu_count() or 1


def run_workers(cfg: SearchConfig, progress: Progress) -> int:
    """Start ``cfg.workers`` processes that share the study and wait for all of them.

    Returns 0 when every worker finished, 2 when one stopped on a user error, else 1."""
    threads = cfg.training_threads
    shares = [cfg.trials // cfg.workers + (i < cfg.trials % cfg.workers) for i in range(cfg.workers)]
    progress.log(f"starting {cfg.workers} workers ({threads} thread(s) each; trials {shares}, and a worker "
                 "done early trains more while the run is short)")
    env = {**os.environ, "NAS_KD_PROGRESS": "lines", STORAGE_ENV: cfg.storage_url}
    # Each worker gets its own process group, so a terminal's Ctrl-C reaches only this process,
    # which stops every worker exactly once, with SIGTERM: a worker started from a script's
    # background job inherits an ignored SIGINT, but never an ignored SIGTERM.
    group = {} if os.name != "posix" else (
        {"process_group": 0} if sys.version_info >= (3, 11) else {"preexec_fn": os.setpgrp})
    run_id = uuid.uuid4().hex
    procs = [subprocess.Popen([sys.executable, "-m", "nas_kd.search", *worker_args(cfg, i, n, threads, run_id)],
                              env=env, **group)
             for i, n in enumerate(shares) if n > 0]
    try:
        codes = [p.wait() for p in procs]
    except KeyboardInterrupt:
        _stop(procs)
        raise
    for i, code in enumerate(codes):
        if code < 0:
            progress.log(f"worker {i} was stopped by signal {-code}; its running trial is failed by the "
                         "heartbeat check (a hand design is queued again), finished trials are kept")
    bad = [c for c in codes if c != 0]
    if not bad:
        return 0
    return 2 if 2 in bad else 1


def worker_args(cfg: SearchConfig, index: int, trials: int, threads: int, run_id: str) -> list[str]:
    """The command line of one local worker: this run's flags, its share of trials and threads, and
    the run it belongs to (a worker done with its share trains more while the run is short of its
    ``--trials``: promotions make shares uneven). No ``--storage``: the worker reads the URL from
    ``NAS_KD_STORAGE``."""
    return command_line({**flag_values(cfg), "--storage": None, "--workers": None, "--trials": str(trials),
                         "--threads": str(threads), "--worker-index": str(index), "--run-id": run_id,
                         "--run-trials": str(cfg.trials)})


def _stop(procs: list[subprocess.Popen]) -> None:
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
