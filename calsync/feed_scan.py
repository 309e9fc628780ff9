"""Facts about a published feed, read from its content lines without parsing it as a calendar.

Parsing a feed of 3,000 demo bookings with icalendar took about 3 s (see
``calsync.status_report.parse_events``), too long for every view of the
status page, so these functions only split the bytes into lines. Only a
whole line ``BEGIN:VEVENT`` starts an event: a booking text that contains
"BEGIN:VEVENT" sits inside a property value, and a folded part of a value
starts with a space.
"""

from __future__ import annotations

from collections import Counter

from calsync.mapping import status_name

CRLF = b"\r\n"


def event_blocks(data: bytes) -> list[list[bytes]]:
    """Split a feed into the content lines of each VEVENT, alarms included. Only a whole line starts or ends one."""
    blocks = []
    current: list[bytes] | None = None
    for line in data.split(CRLF):
        if line == b"BEGIN:VEVENT":
            current = [line]
        elif current is not None:
            current.append(line)
            if line == b"END:VEVENT":
                blocks.append(current)
                current = None
    return blocks


def count_events(data: bytes) -> int:
    """Count the VEVENTs of a published feed."""
    return data.split(CRLF).count(b"BEGIN:VEVENT")


def count_statuses(data: bytes) -> dict[str, int]:
    """Count the VEVENTs of a published feed by booking status, sorted by status.

    The booking status is the last CATEGORIES item that names a Cashfin
    status, because calsync writes the booking type first and the status
    after it. An event without one (a feed with ``details = "busy"`` has no
    CATEGORIES, and a booking may have an unknown status) counts under its
    iCalendar STATUS in capitals, such as ``CONFIRMED``.
    """
    counts: Counter[str] = Counter()
    for block in event_blocks(data):
        counts[_event_status(_event_properties(block))] += 1
    return dict(sorted(counts.items()))


def _event_status(properties: list[tuple[str, str]]) -> str:
    statuses = [
        name
        for property_name, value in properties
        if property_name == "CATEGORIES"
        for name in map(status_name, split_text_list(value))
        if name is not None
    ]
    if statuses:
        return statuses[-1]
    return next((value.upper() for name, value in properties if name == "STATUS"), "no STATUS")


def _event_properties(block: list[bytes]) -> list[tuple[str, str]]:
    """Return the unfolded (name, value) pairs of one VEVENT's own properties, leaving out those of its alarms."""
    properties = []
    nested = 0
    for line in _unfold(block):
        name, value = _split_property(line)
        if name == "BEGIN" and value != "VEVENT":
            nested += 1
        elif name == "END" and value != "VEVENT":
            nested -= 1
        elif nested == 0:
            properties.append((name, value))
    return properties


def _unfold(lines: list[bytes]) -> list[str]:
    """Join folded lines (RFC 5545 section 3.1: a line that starts with a space or tab continues the last one)."""
    unfolded: list[bytes] = []
    for line in lines:
        if line[:1] in (b" ", b"\t") and unfolded:
            unfolded[-1] += line[1:]
        else:
            unfolded.append(line)
    return [line.decode("utf-8", "replace") for line in unfolded]


def _split_property(line: str) -> tuple[str, str]:
    """Split a content line into its upper-case name and its value; parameters are dropped.

    The value starts after the first colon outside a quoted parameter value.
    """
    quoted = False
    for index, character in enumerate(line):
        if character == '"':
            quoted = not quoted
        elif character == ":" and not quoted:
            return line[:index].split(";", 1)[0].upper(), line[index + 1:]
    return line.upper(), ""


def split_text_list(value: str) -> list[str]:
    r"""Split a comma-separated list of TEXT values, such as CATEGORIES, and unescape each item.

    ``\,`` is a comma inside an item, and ``\\`` a backslash.
    """
    items = []
    current: list[str] = []
    characters = iter(value)
    for character in characters:
        if character == "\\":
            escaped = next(characters, "")
            current.append("\n" if escaped in ("n", "N") else escaped)
        elif character == ",":
            items.append("".join(current))
            current = []
        else:
            current.append(character)
    items.append("".join(current))
    return items
