"""One way for every command to end: 0 when done, 2 with one ``error:`` line for the user's mistake
or machine, 130 after a stop (Ctrl-C, SIGTERM, SIGHUP), never a traceback for either.

``run_command(body, ...)`` holds the stop handlers only while ``body`` runs, so ``main()`` called
from Python gives the caller's handlers back.
"""

from __future__ import annotations

import argparse
import os
import sys
import warnings
from collections.abc import Callable

from nas_kd import interrupts
from nas_kd.errors import UserError

Handler = Callable[[BaseException], int]


def quiet_libraries() -> None:
    """Library chatter a user cannot act on: deprecations inside fvcore/torch, Optuna's
    experimental-feature notes (heartbeats are used with ask/tell on purpose), its INFO lines."""
    import optuna

    warnings.filterwarnings("ignore", category=DeprecationWarning)
    warnings.filterwarnings("ignore", category=optuna.exceptions.ExperimentalWarning)
    warnings.filterwarnings("ignore", message="Heartbeat of storage is supposed to be used")
    optuna.logging.set_verbosity(optuna.logging.WARNING)


def run_command(body: Callable[[], int], *, on_interrupt: str | Callable[[], str],
                handlers: dict[type[BaseException], Handler] | None = None) -> int:
    """Run ``body`` (which parses arguments itself) and turn the known ways of failing into exit codes.

    ``on_interrupt`` is what the user reads after a stop (what was kept, how to resume); ``handlers``
    map further exception types (checked in order, before the generic ones) to an exit code."""
    with interrupts.installed():
        quiet_libraries()
        try:
            return body()
        except KeyboardInterrupt:
            message = on_interrupt() if callable(on_interrupt) else on_interrupt
            print(f"\ninterrupted: {message}", file=sys.stderr)
            return 130
        except Exception as err:
            for kind, handle in (handlers or {}).items():
                if isinstance(err, kind):
                    return handle(err)
            if isinstance(err, UserError):
                print(f"error: {err}", file=sys.stderr)
                return 2
            if isinstance(err, OSError):  # disk full, permissions, vanished folders: the machine, not a bug
                print(f"error: cannot write {err.filename or ''}: {err.strerror or err}", file=sys.stderr)
                return 2
            raise


def positive_int(what: str) -> Callable[[str], int]:
    """An argparse type: a whole number ≥ 1, else argparse's one-line usage error (exit 2)."""

    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{what} must be a whole number, got {text!r}") from None
        if value < 1:
            raise argparse.ArgumentTypeError(f"{what} must be at least 1, got {value}")
        return value

    return parse


def positive_float(what: str) -> Callable[[str], float]:
    """An argparse type: a finite number > 0, else argparse's one-line usage error (exit 2)."""

    def parse(text: str) -> float:
        try:
            value = float(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{what} must be a number, got {text!r}") from None
        if not 0 < value < float("inf"):
            raise argparse.ArgumentTypeError(f"{what} must be above 0, got {text!r}")
        return value

    return parse


def set_threads(threads: int | None) -> int:
    """PyTorch's CPU threads: ``threads``, or every core when not given."""
    import torch

    n = threads or os.cpu_count() or 1
    torch.set_num_threads(n)
    return n
