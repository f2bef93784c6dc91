"""Heartbeats for trials run with ask/tell, which Optuna does not record by itself.

A trial whose process stops beating (killed, crashed, lost its machine) is failed by the next
process that asks the study for a trial, once the storage's grace period has passed.
"""

from __future__ import annotations

import threading

import optuna


class Heartbeat:
    """Records ``trial``'s heartbeat from a background thread while the block runs (from the ask to the tell)."""

    def __init__(self, study: optuna.Study, trial: optuna.Trial) -> None:
        storage = study._storage  # noqa: SLF001 - Optuna exposes no public handle for ask/tell heartbeats
        self._enabled = _heartbeat_enabled(storage)
        self._storage, self._trial_id = storage, trial._trial_id  # noqa: SLF001
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._beat, daemon=True)

    def _beat(self) -> None:
        interval = self._storage.get_heartbeat_interval() or 60
        while not self._stop.wait(interval):
            try:
                self._storage.record_heartbeat(self._trial_id)
            except Exception:  # noqa: BLE001 - a missed beat must not kill training
                pass

    def __enter__(self) -> Heartbeat:
        if self._enabled:
            self._storage.record_heartbeat(self._trial_id)
            self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()


def _heartbeat_enabled(storage: object) -> bool:
    # RDB storages come wrapped in Optuna's cache layer, which forwards the heartbeat methods.
    return hasattr(storage, "record_heartbeat") and bool(storage.get_heartbeat_interval())


def fail_stale(study: optuna.Study) -> None:
    """Fail trials whose process stopped sending heartbeats; a no-op on storages without them."""
    optuna.storages.fail_stale_trials(study)
