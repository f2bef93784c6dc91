"""The one exception type a user sees: a message that says what was wrong and how to fix it."""


class UserError(Exception):
    """Bad input from the user: printed as one line, exit code 2, never a traceback."""


class TrialFailed(Exception):
    """One trial could not finish (non-finite loss, out of memory): fail the trial, not the study."""
