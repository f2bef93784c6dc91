"""The search: prepare a run, ask the study for candidates, train them, keep the front.

``python -m nas_kd.search`` is the command; ``main(argv)`` runs it from Python, ``run_search(cfg)``
runs a ``SearchConfig``. The modules, in the order a run goes through them: ``cli`` (flags ->
``config``), ``run`` (the whole run), ``prepare`` (data, study, teacher), ``workers`` (local
processes, started with ``flags``), ``loop`` (the trials), ``candidate`` (count, train, save one),
``early_stop`` and ``heartbeat`` (their policies), ``space`` (what is sampled).
"""

from nas_kd.search.cli import main
from nas_kd.search.config import SearchConfig
from nas_kd.search.run import run_search

__all__ = ["SearchConfig", "main", "run_search"]
