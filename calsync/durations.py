"""Durations written as "90s", "15m", "24h", "7d" or "1h30m", and back.

The config file and the environment use this syntax for intervals, timeouts,
ages and alarm offsets. A bare whole number means seconds. No duration may
be longer than MAX_DURATION.
"""

from __future__ import annotations

import re
from datetime import timedelta

MAX_DURATION = timedelta(days=3650)  # About 10 years, longer than any interval, timeout, age or alarm needs.
_MAX_MILLISECONDS = MAX_DURATION // timedelta(milliseconds=1)

DURATION_SYNTAX = (
    'a whole number followed by d, h, m, s or ms, such as "90s", "15m", "1h30m" or "7d", '
    f'up to "{MAX_DURATION.days}d"'
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



class DurationTooLargeError(ValueError):
    """A well-formed duration that is longer than ``MAX_DURATION``."""


def parse_duration(text: str | int) -> timedelta:
    """Parse a duration such as "90s", "15m", "1h30m" or a number of seconds.

    Units must appear from largest to smallest, each at most once, and spaces
    may separate them ("1h 30m"). Raises DurationTooLargeError for a duration
    longer than MAX_DURATION, and ValueError for anything else that is not a
    duration, including negative numbers and booleans.
    """
    if isinstance(text, bool) or not isinstance(text, (str, int)):
        raise ValueError(f"invalid duration {text!r}: expected {DURATION_SYNTAX}")
    if isinstance(text, int):
        return _seconds(text)

    stripped = text.strip()
    if stripped.isdigit():
        return _from_milliseconds(_count(stripped, text) * 1000, text)

    match = _PATTERN.fullmatch(stripped)
    if not stripped or match is None:
        raise ValueError(f"invalid duration {text!r}: expected {DURATION_SYNTAX}")

    milliseconds = 0
    for unit, size in _UNITS:
        digits = match.group(unit)
        if digits is not None:
            milliseconds += _count(digits, text) * (size // timedelta(milliseconds=1))
    return _from_milliseconds(milliseconds, text)


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
    return _from_milliseconds(count * 1000, count)


def _count(digits: str, text: str | int) -> int:
    # int() rejects strings of more than sys.get_int_max_str_digits() digits (4300 by default),
    # and any count of more than 15 significant digits exceeds MAX_DURATION even in milliseconds.
    if len(digits.lstrip("0")) > 15:
        raise _too_large(text)
    return int(digits)


def _from_milliseconds(milliseconds: int, text: str | int) -> timedelta:
    if milliseconds > _MAX_MILLISECONDS:
        raise _too_large(text)
    return timedelta(milliseconds=milliseconds)


def _too_large(text: str | int) -> DurationTooLargeError:
    return DurationTooLargeError(f"duration {text!r} is too large: the maximum is {MAX_DURATION.days}d")
