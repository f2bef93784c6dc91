"""What every command shares: one runner for exit codes, interrupts, warnings and threads."""

from nas_kd.cli.runner import positive_int, run_command, set_threads

__all__ = ["positive_int", "run_command", "set_threads"]
