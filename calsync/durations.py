"""Durations written as "90s", "15m", "24h", "7d" or "1h30m", and back.

The config file and the environment use this syntax for intervals, timeouts,
ages and alarm offsets. A bare whole number means seconds.
"""

from __future__ import annotations

import re
from datetime import timedelta

DURATION_SYNTAX = (
    'a whole number followed by d, h, m, s or ms, such as "90s", "15m", "1h30m" or "7d"'
)

_PATTERN = re.compile(
    r"(?:(?P<d>\d+)d\s*)?"
    r"(?:(?P<h>\d+)h\s*)?"
    r"(?:(?P<m>\d+)m(?!s)\s*)?"
    r"(?:(?P<s>\d+)s\s*)?"
    r"(?:(?P<ms>\d+)ms)?"
)

_UNITS = (
    ("d", timedelta(days=1)),
    ("h", timedelta(hours=1)),
    ("m", timedelta(minutes=1)),
    ("s", timedelta(seconds=1)),
    ("ms", timedelta(milliseconds=1)),
)


def parse_duration(text: str | int) -> timedelta:
    """Parse a duration such as "90s", "15m", "1h30m" or a number of seconds.

    Units must appear from largest to smallest, each at most once, and spaces
    may separate them ("1h 30m"). Raises ValueError for anything else,
    including negative numbers and booleans.
    """
    if isinstance(text, bool) or not isinstance(text, (str, int)):
        raise ValueError(f"invalid duration {text!r}: expected {DURATION_SYNTAX}")
    if isinstance(text, int):
        return _seconds(text)

    stripped = text.strip()
    if stripped.isdigit():
        return _seconds(int(stripped))

    match = _PATTERN.fullmatch(stripped)
    if not stripped or match is None:
        raise ValueError(f"invalid duration {text!r}: expected {DURATION_SYNTAX}")

    total = timedelta()
    for unit, size in _UNITS:
        count = match.group(unit)
        if count is not None:
            total += _multiply(size, int(count), text)
    return total


def format_duration(value: timedelta) -> str:
    """Format a duration in the syntax that parse_duration reads, such as "1h30m".

    The value is rounded to the nearest millisecond. Zero is "0s". Raises
    ValueError for a negative duration, which parse_duration would reject.
    """
    if value < timedelta():
        raise ValueError(f"cannot format the negative duration {value}")

    remaining = round(value / timedelta(milliseconds=1))
    parts = []
    for unit, size in _UNITS:
        count, remaining = divmod(remaining, size // timedelta(milliseconds=1))
        if count:
            parts.append(f"{count}{unit}")
    return "".join(parts) or "0s"


def _seconds(count: int) -> timedelta:
    if count < 0:
        raise ValueError(f"invalid duration {count}: a duration cannot be negative")
    return _multiply(timedelta(seconds=1), count, count)


def _multiply(size: timedelta, count: int, text: str | int) -> timedelta:
    try:
        return size * count
    except OverflowError:
        raise ValueError(f"invalid duration {text!r}: too large") from None
