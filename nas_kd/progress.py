"""A live one-line status on a terminal; plain timestamped lines when output is a log file."""

from __future__ import annotations

import os
import shutil
import sys
import time
from typing import TextIO


def format_seconds(seconds: float) -> str:
    seconds = int(seconds)
    h, rem = divmod(seconds, 3600)
    return f"{h}:{rem // 60:02d}:{rem % 60:02d}" if h else f"{rem // 60:02d}:{rem % 60:02d}"


class Progress:
    """``status`` redraws a single line (throttled); ``log`` prints a line that stays."""

    def __init__(
        self, stream: TextIO | None = None, *, quiet: bool = False, log_every: float = 30.0, prefix: str = ""
    ) -> None:
        self.stream = stream or sys.stderr
        self.live = self.stream.isatty() and os.environ.get("NAS_KD_PROGRESS") != "lines"
        self.prefix = prefix
        self.log_every = log_every  # when not a terminal, a status line is logged this often
        self.quiet = quiet
        self._last_draw = 0.0
        self._drawn = False

    def status(self, text: str, *, force: bool = False) -> None:
        if self.quiet:
            return
        now = time.monotonic()
        if not force and now - self._last_draw < (0.2 if self.live else self.log_every):
            return
        self._last_draw = now
        if not self.live:
            self.log(text)
            return
        width = shutil.get_terminal_size((120, 20)).columns - 1
        self.stream.write("\r\x1b[2K" + (self.prefix + text)[:width])
        self.stream.flush()
        self._drawn = True

    def log(self, text: str) -> None:
        if self.quiet:
            return
        if self._drawn:
            self.stream.write("\r\x1b[2K")
            self._drawn = False
        self.stream.write(self.prefix + text + "\n")
        self.stream.flush()


def elapsed_and_left(done: float, total: float, elapsed: float, busy: float | None = None) -> str:
    """``elapsed 01:02, about 10:11 left``: the time left extrapolated from the rate so far (``done``
    steps in ``busy`` seconds, by default all of ``elapsed``), once enough steps ran for a rate (a
    run's first steps also pay its start-up, which would inflate it)."""
    text = f"elapsed {format_seconds(elapsed)}"
    if max(3, 0.01 * total) <= done < total:
        text += f", about {format_seconds((elapsed if busy is None else busy) * (total - done) / done)} left"
    return text
