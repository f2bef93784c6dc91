"""A test plugin (``NAS_KD_PLUGINS=tests.tiny,tests.hold``): a search process holds each candidate
just before it trains - its trial RUNNING, its heartbeat beating - for as long as the file named
by ``NAS_KD_TEST_HOLD`` exists. A test can then stop a worker exactly while it trains a chosen
trial, however fast or slow the machine is, and let the others go on by deleting the file."""

from __future__ import annotations

import os
import time
from pathlib import Path

import nas_kd.search.loop as trial_loop

_train_candidate = trial_loop.train_candidate


def _held(*args, **kwargs):  # noqa: ANN002, ANN003, ANN202 - train_candidate's own arguments
    hold = os.environ.get("NAS_KD_TEST_HOLD")
    while hold and Path(hold).exists():
        time.sleep(0.05)
    return _train_candidate(*args, **kwargs)


trial_loop.train_candidate = _held
