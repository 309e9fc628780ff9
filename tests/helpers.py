"""Helpers shared by the tests: parsing a feed with two parsers, waiting for threads, a clean environment."""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Callable

import icalendar
from ical.calendar_stream import IcsCalendarStream

MAX_LINE_OCTETS = 75


def parse_both(data: bytes) -> icalendar.Calendar:
    """Parse ``data`` with icalendar and the strict ``ical`` parser and return icalendar's result.

    Fails the test when either parser rejects the data, when icalendar records
    an error on any component, or when ``check_content_lines`` fails.
    """
    check_content_lines(data)

    calendar = icalendar.Calendar.from_ical(data)
    for component in calendar.walk():
        assert component.errors == [], f"icalendar reported errors in {component.name}: {component.errors}"

    IcsCalendarStream.calendar_from_ics(data.decode("utf-8"))
    return calendar


def check_content_lines(data: bytes) -> None:
    """Fail unless every line ends in CRLF, has at most 75 octets and is valid UTF-8 on its own.

    The last condition means that folding never split a multi-byte character.
    """
    assert data.endswith(b"\r\n"), f"data does not end with CRLF: {data[-20:]!r}"
    lines = data[:-2].split(b"\r\n")
    for number, line in enumerate(lines, start=1):
        assert b"\r" not in line, f"line {number} contains a bare CR: {line!r}"
        assert b"\n" not in line, f"line {number} contains a bare LF: {line!r}"
        assert len(line) <= MAX_LINE_OCTETS, f"line {number} has {len(line)} octets: {line!r}"
        line.decode("utf-8")


def environment_without_calsync() -> dict[str, str]:
    """Return this process's environment without CALSYNC_* and CASHFIN_* variables, for child processes."""
    return {key: value for key, value in os.environ.items() if not key.startswith(("CALSYNC_", "CASHFIN_"))}


def threads_end(threads_before: set[threading.Thread], timeout: float = 5.0) -> bool:
    """Wait up to ``timeout`` seconds per thread for every thread started since ``threads_before`` to finish."""
    for thread in set(threading.enumerate()) - threads_before:
        thread.join(timeout)
    return set(threading.enumerate()) <= threads_before


def wait_until(condition: Callable[[], bool], timeout: float = 5.0) -> None:
    """Poll ``condition`` until it is true; fail the test after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError("condition not met in time")
        time.sleep(0.01)
