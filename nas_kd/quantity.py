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
    """Short human form: 4_812_300 -> '4.81M', 750_000 -> '750k', 999_576 -> '1M'."""
    value = float(f"{value:.3g}")  # rounded before the suffix is chosen: 999_576 is 1M, never '1e+03k'
    for suffix, scale in (("G", 1e9), ("M", 1e6), ("k", 1e3)):
        if abs(value) >= scale:
            return f"{value / scale:.3g}{suffix}"
    return f"{value:.0f}"


_BYTE_SUFFIX = {"": 1, "k": 1000, "m": 1000**2, "ki": 1024, "mi": 1024**2}
_BYTES = re.compile(r"^\s*(?P<num>\d+(?:\.\d*)?|\.\d+)\s*(?P<suffix>[km]i?)?\s*(?P<unit>b|bytes?)?\s*$", re.IGNORECASE)


def parse_bytes(text: str, *, what: str = "memory budget") -> int:
    """Bytes written as ``64kB``, ``0.5MB``, ``65536`` or ``64KiB``: k and M are 1000 and 1000²
    (a budget read as the stricter figure when a datasheet's "KB" means 1024), KiB and MiB 1024 and 1024².

    Raises UserError with examples when ``text`` cannot be read or is under one byte."""
    match = _BYTES.match(str(text))
    if match is None:
        raise UserError(f"cannot read {what} {text!r}: write bytes with an optional k/M/KiB/MiB suffix, "
                        "e.g. 64kB, 0.5MB, 256KiB, 65536")
    value = float(match["num"]) * _BYTE_SUFFIX[(match["suffix"] or "").lower()]
    if value < 1:
        raise UserError(f"{what} {text!r} must be at least 1 byte")
    return int(round(value))


def format_bytes(value: float) -> str:
    """Short human form in SI units: 65_536 -> '65.5 kB', 900 -> '900 B'."""
    for suffix, scale in (("MB", 1e6), ("kB", 1e3)):
        if abs(value) >= scale:
            return f"{value / scale:.3g} {suffix}"
    return f"{value:.0f} B"
