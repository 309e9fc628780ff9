"""Faults that the sandbox Cashfin API can inject into its responses.

A ``Fault`` describes one misbehaviour, such as a 503, a connection reset or
a list page that repeats rows, and which requests it hits: an endpoint,
request numbers, a booking id and a maximum number of times. A
``FaultRegistry`` contains the faults of one sandbox. It is safe to use from
any thread while requests are in flight, and each fault counts how often it
fired, so that tests can assert it.

Request numbers count arrivals per endpoint (``list`` and ``details``
separately) from 1. They restart when the sandbox starts and when
``Sandbox.reset_counts()`` is called.
"""

from __future__ import annotations

import logging
import re
import socket
import struct
import threading
from collections import Counter
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from typing import Any

from waitress.channel import ClientDisconnected

logger = logging.getLogger(__name__)

ENDPOINTS = ("list", "details", "any")

# Kinds that replace the whole response. When several match a request, the first one added wins.
RESPONSE_KINDS = (
    "429",
    "500",
    "502",
    "503",
    "reset",
    "not-json",
    "success-false",
    "not-found",
    "unauthorized",
)
# Kinds that delay the response. Every matching one applies, and the delays add up.
DELAY_KINDS = ("hang", "slow")
# Kinds that change the rows or totals of a successful list response.
LIST_KINDS = ("repeat-rows", "total-inflated", "empty-page")
# A kind that cuts the body of the response that would have been sent.
BODY_KINDS = ("truncated",)
KINDS = RESPONSE_KINDS + DELAY_KINDS + LIST_KINDS + BODY_KINDS

DETAILS_ONLY_KINDS = ("not-found",)

DEFAULT_HANG_SECONDS = 30.0
DEFAULT_SLOW_MS = 500.0
DEFAULT_RETRY_AFTER_SECONDS = 1
DEFAULT_TOTAL_EXTRA = 5
DEFAULT_SUCCESS_FALSE_ERROR = "Temporary failure while reading bookings. Please try again."

# The parameter that ``KIND=VALUE`` sets in a fault specification, with its type.
_SPEC_VALUE_FIELDS: dict[str, tuple[str, type]] = {
    "429": ("retry_after_seconds", int),
    "hang": ("hang_seconds", float),
    "slow": ("delay_ms", float),
    "total-inflated": ("total_extra", int),
}

FAULT_SPEC_SYNTAX = "KIND[=VALUE][:ENDPOINT][@N[,M...]][/BOOKING_ID]"
_FAULT_SPEC = re.compile(
    r"(?P<kind>[a-z0-9-]+)"
    r"(?:=(?P<value>[^:@/]+))?"
    r"(?::(?P<endpoint>[a-z]+))?"
    r"(?:@(?P<requests>[^/]+))?"
    r"(?:/(?P<booking_id>.+))?"
)


@dataclass(eq=False)
class Fault:
    """One injected misbehaviour and the requests it applies to.

    ``endpoint`` is ``list``, ``details`` or ``any`` (both). ``on_requests``
    contains request numbers of that endpoint, or None for every request, and
    is stored as a frozenset.
    ``booking_id`` limits the fault to details requests for that booking.
    ``times`` is the maximum number of times the fault fires, or None for no
    limit. ``fired`` counts how often it fired. Faults compare by identity,
    so that the registry can remove one of two equal faults.
    """

    kind: str
    endpoint: str = "any"
    on_requests: Iterable[int] | None = None
    booking_id: str | None = None
    times: int | None = None
    retry_after_seconds: int = DEFAULT_RETRY_AFTER_SECONDS
    hang_seconds: float = DEFAULT_HANG_SECONDS
    delay_ms: float = DEFAULT_SLOW_MS
    total_extra: int = DEFAULT_TOTAL_EXTRA
    error: str = DEFAULT_SUCCESS_FALSE_ERROR
    fired: int = field(default=0, init=False)

    def __post_init__(self) -> None:
        if self.kind not in KINDS:
            raise ValueError(f"unknown fault kind {self.kind!r}. Use one of: {', '.join(KINDS)}")
        if self.endpoint not in ENDPOINTS:
            raise ValueError(f"invalid fault endpoint {self.endpoint!r}. Use list, details or any")
        if self.on_requests is not None:
            self.on_requests = frozenset(self.on_requests)
            if not self.on_requests or min(self.on_requests) < 1:
                raise ValueError(
                    f"on_requests must contain request numbers of 1 or more, got {sorted(self.on_requests)}"
                )
        if self.times is not None and self.times < 1:
            raise ValueError(f"times must be 1 or more, or None for no limit, got {self.times}")
        self._check_parameters()
        self._check_scope()

    def _check_parameters(self) -> None:
        if self.retry_after_seconds < 0:
            raise ValueError(f"retry_after_seconds must not be negative, got {self.retry_after_seconds}")
        if self.hang_seconds < 0:
            raise ValueError(f"hang_seconds must not be negative, got {self.hang_seconds}")
        if self.delay_ms < 0:
            raise ValueError(f"delay_ms must not be negative, got {self.delay_ms}")
        if self.total_extra < 1:
            raise ValueError(f"total_extra must be 1 or more, got {self.total_extra}")

    def _check_scope(self) -> None:
        if self.kind in LIST_KINDS and (self.endpoint == "details" or self.booking_id is not None):
            raise ValueError(f"fault {self.kind!r} changes list pages, so it cannot target details requests")
        if self.kind in DETAILS_ONLY_KINDS and self.endpoint == "list":
            raise ValueError(f"fault {self.kind!r} applies to details requests only, not to the list")
        if self.booking_id is not None and self.endpoint == "list":
            raise ValueError("a fault with a booking_id applies to details requests, so its endpoint cannot be list")

    def matches(self, route: str, number: int, booking_id: str | None) -> bool:
        """Return True if this fault applies to request ``number`` of ``route`` (``list`` or ``details``)."""
        if self.endpoint not in ("any", route):
            return False
        if self.kind in LIST_KINDS and route != "list":
            return False
        if self.kind in DETAILS_ONLY_KINDS and route != "details":
            return False
        if self.booking_id is not None and (route != "details" or booking_id != self.booking_id):
            return False
        return self.on_requests is None or number in self.on_requests


class FaultRegistry:
    """The faults of one sandbox, the request numbers per endpoint, and the event that ends hangs."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._faults: list[Fault] = []
        self._numbers: Counter[str] = Counter()
        self._release = threading.Event()

    def add(self, fault: Fault) -> Fault:
        """Register ``fault`` after the existing ones and return it."""
        with self._lock:
            self._faults.append(fault)
        return fault

    def remove(self, fault: Fault) -> None:
        """Unregister ``fault``. Raises ValueError if it is not registered."""
        with self._lock:
            self._faults.remove(fault)

    def clear(self) -> None:
        """Unregister every fault. Requests already delayed by a fault still finish that delay."""
        with self._lock:
            self._faults.clear()

    def __iter__(self) -> Iterator[Fault]:
        with self._lock:
            return iter(list(self._faults))

    def __len__(self) -> int:
        with self._lock:
            return len(self._faults)

    def next_request_number(self, route: str) -> int:
        """Count one more request to ``route`` and return its number, starting at 1."""
        with self._lock:
            self._numbers[route] += 1
            return self._numbers[route]

    def reset_request_numbers(self) -> None:
        """Make the next request to each endpoint number 1 again."""
        with self._lock:
            self._numbers.clear()

    def matching(self, route: str, number: int, booking_id: str | None) -> list[Fault]:
        """Return the faults that apply to a request, in the order they were added.

        A fault that used up its ``times`` is left out. Call ``claim`` for
        each fault that is then applied, so that it counts as fired.
        """
        with self._lock:
            return [
                fault
                for fault in self._faults
                if fault.matches(route, number, booking_id) and not _used_up(fault)
            ]

    def claim(self, fault: Fault) -> bool:
        """Count ``fault`` as fired and return True, or return False if it used up its ``times`` meanwhile."""
        with self._lock:
            if _used_up(fault):
                return False
            fault.fired += 1
            fired = fault.fired

        # Only the first firing is logged at INFO, so a fault that hits every request does not flood the log.
        level = logging.INFO if fired == 1 else logging.DEBUG
        logger.log(level, "sandbox fault %s on endpoint %s fired, %d time(s) so far", fault.kind, fault.endpoint, fired)
        return True

    def wait(self, seconds: float) -> bool:
        """Wait up to ``seconds``. Return True if ``release_waits()`` ended the wait early."""
        return self._release.wait(seconds)

    def release_waits(self) -> None:
        """End every current and future hang or slow delay at once, as ``Sandbox.stop()`` needs."""
        self._release.set()

    def restore_waits(self) -> None:
        """Let hang and slow faults delay responses again after ``release_waits()``."""
        self._release.clear()


def _used_up(fault: Fault) -> bool:
    return fault.times is not None and fault.fired >= fault.times


def parse_fault_spec(text: str) -> Fault:
    """Parse a ``--fault`` value of the form ``KIND[=VALUE][:ENDPOINT][@N[,M...]][/BOOKING_ID]``.

    ``VALUE`` sets the Retry-After seconds of ``429``, the seconds of
    ``hang``, the milliseconds of ``slow`` or the extra rows of
    ``total-inflated``. Raises ValueError naming the invalid part.
    """
    match = _FAULT_SPEC.fullmatch(text.strip())
    if match is None:
        raise ValueError(f"invalid fault {text!r}: expected {FAULT_SPEC_SYNTAX}, such as 503:list@2,3")

    kind = match["kind"]
    options: dict[str, Any] = {"kind": kind}
    if match["endpoint"] is not None:
        options["endpoint"] = match["endpoint"]
    if match["booking_id"] is not None:
        options["booking_id"] = match["booking_id"]
    if match["requests"] is not None:
        options["on_requests"] = _parse_request_numbers(text, match["requests"])
    if match["value"] is not None:
        options.update(_parse_spec_value(text, kind, match["value"]))

    try:
        return Fault(**options)
    except ValueError as error:
        raise ValueError(f"invalid fault {text!r}: {error}") from None


def _parse_request_numbers(text: str, numbers: str) -> set[int]:
    parts = numbers.split(",")
    if not all(part.isdigit() for part in parts):
        raise ValueError(f"invalid fault {text!r}: request numbers after @ must be integers such as @2,3")
    return {int(part) for part in parts}


def _parse_spec_value(text: str, kind: str, value: str) -> dict[str, Any]:
    if kind not in _SPEC_VALUE_FIELDS:
        kinds = ", ".join(_SPEC_VALUE_FIELDS)
        raise ValueError(f"invalid fault {text!r}: only these kinds take =VALUE: {kinds}")
    name, value_type = _SPEC_VALUE_FIELDS[kind]
    try:
        return {name: value_type(value)}
    except ValueError:
        raise ValueError(f"invalid fault {text!r}: {value!r} is not a valid {value_type.__name__}") from None


def reset_connection(environ: dict[str, Any]) -> None:
    """Make waitress close the request's connection with a TCP reset and send no response.

    Raising an ordinary exception from the application makes waitress send a
    500, so this raises waitress's ``ClientDisconnected`` instead. For that
    exception, waitress 3.0.2 writes nothing and closes the connection on
    its loop thread. SO_LINGER with a zero timeout, set here first, turns
    that close into a RST. The socket is reached through the channel bound
    to ``environ["waitress.client_disconnected"]``.
    """
    # NOTE: the channel behind this bound method and its ``socket`` attribute are
    # waitress internals (checked with 3.0.2), so another version may need a change here.
    check_disconnected = environ.get("waitress.client_disconnected")
    channel = getattr(check_disconnected, "__self__", None)
    connection = getattr(channel, "socket", None)
    if not isinstance(connection, socket.socket):
        raise RuntimeError("the reset fault needs waitress, whose channel socket was not found in the environ")
    connection.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    raise ClientDisconnected("sandbox fault: connection reset")

