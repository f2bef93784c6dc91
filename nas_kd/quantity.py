"""Parse budgets written the way people write them: ``5MFLOPs``, ``5M``, ``750k``, ``0.5G``, ``50k``."""

from __future__ import annotations

import re

from nas_kd.errors import UserError

_SUFFIX = {"": 1.0, "k": 1e3, "m": 1e6, "g": 1e9}
_PATTERN = re.compile(
    r"^\s*(?P<num>\d+(?:\.\d*)?|\.\d+)(?:e(?P<exp>[+-]?\d+))?\s*(?P<suffix>[kmg]?)\s*"
    r"(?P<unit>flops?|macs?|params?|parameters?)?\s*$",
    re.IGNORECASE,
)


def parse_quantity(text: str, *, what: str = "budget") -> int:
    """Return the count written in ``text`` (k = 10^3, M = 10^6, G = 10^9; case-insensitive).

    Raises UserError with an example of the accepted forms when ``text`` cannot be read.
    """
    match = _PATTERN.match(str(text))
    if match is None:
        raise UserError(
            f"cannot read {what} {text!r}: write a number with an optional k/M/G suffix, "
            "e.g. 5MFLOPs, 5M, 750k, 0.5G (parameters: 50k)"
        )
    value = float(match["num"]) * 10 ** int(match["exp"] or 0) * _SUFFIX[match["suffix"].lower()]
    if value < 1:
        raise UserError(f"{what} {text!r} must be at least 1")
    return int(round(value))


def format_quantity(value: float) -> str:
    """Short human form: 4_812_300 -> '4.81M', 750_000 -> '750k'."""
    for suffix, scale in (("G", 1e9), ("M", 1e6), ("k", 1e3)):
        if abs(value) >= scale:
            return f"{value / scale:.3g}{suffix}"
    return f"{value:.0f}"
