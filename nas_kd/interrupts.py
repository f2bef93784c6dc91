"""Ctrl-C, SIGTERM and SIGHUP as one clean stop.

Python raises KeyboardInterrupt wherever the main thread happens to be. Inside a trial that is often
library code: a weakref callback (where the interrupt is printed and lost, so training goes on) or
a lazy import run through ``exec`` (where CPython remembers it and kills the process with SIGINT
even after we handled it, so the exit code is not ours). Both were seen on this machine when Ctrl-C
landed in a trial's first second. So while a network trains (and while search trials run), a stop
is only recorded, and raised by ``check()`` at points of our own: every training step, between the
stages of a trial. A second Ctrl-C stops at once. Everywhere else a stop raises at once, as usual.
"""

from __future__ import annotations

import signal
from collections.abc import Iterator
from contextlib import contextmanager

_deferring = False
_pending = False


def _on_stop(signum: int, frame: object) -> None:
    global _pending
    if _deferring and not _pending:
        _pending = True
        return
    _pending = False
    raise KeyboardInterrupt


@contextmanager
def installed() -> Iterator[None]:
    """Within this block, route Ctrl-C, SIGTERM (a scheduler's or ``kill``'s stop) and SIGHUP through
    ``_on_stop``; the caller's handlers come back afterwards (``main()`` may be called from Python).

    An ignored SIGINT stays ignored: a script that started us in the background wanted that."""
    stops = [signal.SIGINT, signal.SIGTERM] + ([signal.SIGHUP] if hasattr(signal, "SIGHUP") else [])
    saved = {s: signal.getsignal(s) for s in stops}
    if saved[signal.SIGINT] is signal.default_int_handler:
        signal.signal(signal.SIGINT, _on_stop)
    signal.signal(signal.SIGTERM, _on_stop)
    # A closed terminal (SIGHUP) stops cleanly too, and passes the stop on to local workers, which
    # sit in process groups of their own; nohup's ignored SIGHUP stays ignored.
    if saved.get(getattr(signal, "SIGHUP", None)) is signal.SIG_DFL:
        signal.signal(signal.SIGHUP, _on_stop)
    try:
        yield
    finally:
        for s, handler in saved.items():
            if handler is not None:  # None: set outside Python, cannot be put back
                signal.signal(s, handler)


@contextmanager
def deferred() -> Iterator[None]:
    """Within this block a stop is raised only by ``check()``."""
    global _deferring, _pending
    outer, _deferring = _deferring, True
    try:
        yield
    finally:
        _deferring = outer
        if _pending and not outer:  # stopped after the last check: still a stop
            _pending = False
            raise KeyboardInterrupt


def check() -> None:
    """Raise the stop recorded since the last check, if any."""
    global _pending
    if _pending:
        _pending = False
        raise KeyboardInterrupt
