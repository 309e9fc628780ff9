"""Property tests: arbitrary booking records never crash a sync or break a feed.

Hypothesis generates booking records with hostile text, wrong types, missing
and null fields, timestamps in many ISO 8601 forms and unknown statuses. For
every record, the feed either contains exactly one VEVENT for it, which both
parsers read back with every text field unchanged, or leaves it out and names
its id. No record adds a property or a component that the mapping does not
define.

"Unchanged" means unchanged as far as iCalendar can carry text: line breaks
read back as LF, and the control characters, lone surrogates and
non-characters that the mapping module lists are removed. Everything else
(whitespace, backslashes, commas, emoji, 100 KB strings) comes back exactly.
"""

from __future__ import annotations

import json
import logging
import re
import shutil
import tempfile
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import icalendar
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import event as note_outcome
from hypothesis import strategies as st
from ical.calendar_stream import IcsCalendarStream

from calsync.config import Config, load_config
from calsync.engine import SyncEngine
from calsync.feeds import render_feed
from calsync.sandbox import LIST_FIELDS, Sandbox
from calsync.store import StoredBooking
from tests.helpers import check_content_lines

UID_DOMAIN = "properties.calsync.invalid"
NOW = datetime(2026, 1, 15, 8, 0, tzinfo=UTC)
SECRET = "property-secret"

# Every property the mapping may put in a VEVENT, each at most once.
EVENT_PROPERTIES = {
    "UID", "SEQUENCE", "DTSTART", "DTEND", "X-MICROSOFT-CDO-ALLDAYEVENT", "STATUS", "TRANSP", "DTSTAMP",
    "LAST-MODIFIED", "CREATED", "SUMMARY", "LOCATION", "URL", "DESCRIPTION", "CATEGORIES", "PRIORITY",
    "ORGANIZER", "ATTENDEE",
}
ALARM_PROPERTIES = {"ACTION", "TRIGGER", "DESCRIPTION"}
ALARMS = ("15m", "1d")

# Characters that iCalendar cannot carry in TEXT. The mapping removes them.
REMOVED = re.compile("[\x00-\x08\x0b\x0c\x0e-\x1f\x7f\ud800-\udfff\ufeff\ufffe\uffff]")
LINE_BREAKS = re.compile(r"\r\n|\r|\n")


# Strategies


HOSTILE_PIECES = [
    "\r\n", "\r", "\n", "\t", "  ", "\\", "\\n", "\\N", ",", ";", ":", '"', "'", "^", "<script>alert(1)</script>",
    "\x00", "\x07", "\x0b", "\x1b", "\x7f", "\x85", "\u2028", "\u2029", "\ud800", "\udfff", "\ufffe", "\uffff",
    "\ufeff", "é", "Zoë Wanjirũ", "🎉", "👩🏽‍💻", "𝄞", "END:VEVENT", "BEGIN:VEVENT", "END:VCALENDAR",
    "\r\nEND:VEVENT\r\nBEGIN:VEVENT\r\nUID:evil\r\n", "\nSUMMARY:injected", "UID:x@y", "DTSTART:20200101T000000Z",
    "mailto:a@b.c", "https://meet.example.com/a?b=c&d=e", "=?utf-8?", "%0D%0A",
]

hostile_text = st.lists(
    st.one_of(st.sampled_from(HOSTILE_PIECES), st.text(max_size=20)), max_size=12
).map("".join)
# Long values repeat a short hostile piece, so that folding meets every kind of character.
long_text = st.builds(lambda piece, size: (piece or "x") * (size // max(len(piece), 1)), hostile_text,
                      st.sampled_from([80, 1_000, 5_000]))
any_text = st.one_of(st.text(), hostile_text, long_text)
json_scalars = st.one_of(
    st.none(), st.booleans(), st.integers(min_value=-(10**20), max_value=10**20),
    st.floats(allow_nan=False, allow_infinity=False), any_text,
)
json_values = st.recursive(
    json_scalars, lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=8), inner, max_size=3),
    max_leaves=6,
)
text_field = st.one_of(any_text, any_text, json_values)

offsets = st.sampled_from([UTC, timezone(timedelta(hours=3)), timezone(timedelta(hours=-5, minutes=-30)),
                           timezone(timedelta(hours=14)), timezone(timedelta(hours=-12))])
instants = st.datetimes(min_value=datetime(2000, 1, 1), max_value=datetime(2100, 1, 1), timezones=offsets)
ISO_FORMS = [
    lambda moment: moment.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S.") + f"{moment.microsecond // 1000:03d}Z",
    lambda moment: moment.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ"),
    lambda moment: moment.isoformat(),
    lambda moment: moment.isoformat(timespec="seconds"),
    lambda moment: moment.isoformat(timespec="milliseconds"),
    lambda moment: moment.replace(tzinfo=None).isoformat(timespec="seconds"),
    lambda moment: moment.strftime("%Y%m%dT%H%M%S%z"),
    lambda moment: moment.astimezone(UTC).strftime("%Y%m%dT%H%M%SZ"),
    lambda moment: moment.astimezone(UTC).strftime("%Y-%m-%dT%H:%MZ"),
    lambda moment: moment.date().isoformat(),
]
iso_timestamps = st.builds(lambda moment, form: form(moment), instants, st.sampled_from(ISO_FORMS))
timestamps = st.one_of(iso_timestamps, iso_timestamps, iso_timestamps, json_values)

statuses = st.one_of(
    st.sampled_from(["scheduled", "completed", "cancelled", "no-show", "Cancelled", "CANCELED", "No Show", "no_show",
                     "pending", "", "  scheduled  "]),
    text_field,
)
locations = st.one_of(
    text_field,
    st.fixed_dictionaries(
        {},
        optional={
            "type": st.one_of(st.sampled_from(["virtual", "physical", "Virtual", " virtual "]), text_field),
            "bookinglink": st.one_of(st.sampled_from(["https://meet.example.com/abc?x=1", "ftp://x", "https://"]),
                                     text_field),
            "name": text_field, "address": text_field, "city": text_field, "country": text_field,
        },
    ),
)
participants = st.one_of(
    text_field,
    st.fixed_dictionaries(
        {},
        optional={
            "name": text_field,
            "email": st.one_of(st.sampled_from(["amina@example.com", "MAILTO:x@example.com", "not an email",
                                                 "a@b@c", "\"q\"@example.com"]), text_field),
            "phone": text_field,
        },
    ),
)

ABSENT = object()
RECORD_FIELDS = {
    "title": text_field,
    "status": statuses,
    "endtime": timestamps,
    "allday": st.one_of(st.booleans(), st.sampled_from(["true", "false", "yes", 1, 0, "maybe"]), json_values),
    "type": text_field,
    "amount": st.one_of(st.integers(), st.floats(allow_nan=False, allow_infinity=False),
                        st.sampled_from(["2500", "12.50", "1e400", "-0", "free"]), json_values),
    "createdat": timestamps,
    "updatedat": timestamps,
    "description": text_field,
    "priority": st.one_of(st.sampled_from(["high", "medium", "low", "HIGH", "urgent"]), json_values),
    "location": locations,
    "participant": participants,
    "billed": json_values,
}


@st.composite
def records(draw: st.DrawFn, booking_id: str) -> dict[str, Any]:
    """A booking record with ``booking_id`` and any subset of the other fields, each possibly null or mistyped."""
    fields = draw(st.fixed_dictionaries({}, optional=RECORD_FIELDS))
    # Most records have a start, mostly a valid one, so that most of them reach the mapping's later steps.
    start = draw(st.one_of(iso_timestamps, iso_timestamps, iso_timestamps, iso_timestamps, json_values, st.just(ABSENT)))
    if start is not ABSENT:
        fields["starttime"] = start
    # One record in four gets one text field of about 100 KB. More would make each example slow.
    huge = draw(st.sampled_from([None, None, None, "title", "description", "location", "type"]))
    if huge is not None:
        fields[huge] = (draw(hostile_text) or "x") * 100_000
        fields[huge] = fields[huge][:100_000]
    return {"_id": booking_id, **fields}


# The oracle: what a text field reads back as, and when a booking must be mapped


def carried(value: object) -> str:
    """Return the text iCalendar carries for a field: "" for a non-text or blank value."""
    if isinstance(value, bool) or not isinstance(value, (str, int, float)):
        return ""
    text = REMOVED.sub("", LINE_BREAKS.sub("\n", str(value)))
    return text if text.strip() else ""


def must_map(record: dict[str, Any]) -> bool:
    """Return True when the record's starttime is ISO 8601 by the standard library's own reading.

    ``datetime.fromisoformat`` is an independent parser: a start it reads
    (within the years the generator uses) must give an event, not a skip.
    """
    start = record.get("starttime")
    if not isinstance(start, str):
        return False
    try:
        datetime.fromisoformat(start)
    except ValueError:
        return False
    return True


def expected_start(record: dict[str, Any]) -> datetime:
    moment = datetime.fromisoformat(record["starttime"])
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)
    return moment.astimezone(UTC).replace(microsecond=0)


def expected_summary(record: dict[str, Any]) -> str:
    return carried(record.get("title")) or carried(record.get("type")) or "Booking"


def expected_categories(record: dict[str, Any]) -> list[str]:
    categories: list[str] = []
    for value in (carried(record.get("type")), carried(record.get("status"))):
        if value and value not in categories:
            categories.append(value)
    return categories


# Checks


@dataclass
class ParsedEvent:
    """One VEVENT as icalendar and ical read it."""

    by_icalendar: icalendar.Event
    by_ical: Any


def parse_feed(data: bytes) -> dict[str, ParsedEvent]:
    """Parse a feed with both parsers, check its structure, and return its events by booking id."""
    check_content_lines(data)
    begins = [line for line in data.replace(b"\r\n ", b"").split(b"\r\n") if line.startswith(b"BEGIN:")]

    calendar = icalendar.Calendar.from_ical(data)
    for component in calendar.walk():
        assert component.errors == [], f"icalendar reported errors in {component.name}: {component.errors}"
    assert [component.name for component in calendar.subcomponents] == ["VEVENT"] * len(calendar.subcomponents)
    alarm_count = sum(len(event.subcomponents) for event in calendar.subcomponents)
    assert len(begins) == 1 + len(calendar.subcomponents) + alarm_count, "a BEGIN line that icalendar did not read"

    stream = IcsCalendarStream.calendar_from_ics(data.decode("utf-8"))
    by_ical = {event.uid: event for event in stream.events}
    assert len(by_ical) == len(calendar.subcomponents)

    events = {}
    for event in calendar.subcomponents:
        uid = str(event["UID"])
        assert uid.endswith("@" + UID_DOMAIN)
        events[uid.removesuffix("@" + UID_DOMAIN)] = ParsedEvent(event, by_ical[uid])
    assert len(events) == len(calendar.subcomponents), "two events share a UID"
    return events


def check_event(record: dict[str, Any], event: ParsedEvent) -> None:
    """Check one event's properties, components and text against its record."""
    names = [name for name, _ in event.by_icalendar.property_items(recursive=False)]
    properties = names[1:-1]  # without BEGIN:VEVENT and END:VEVENT
    assert set(properties) <= EVENT_PROPERTIES, f"unexpected properties {set(properties) - EVENT_PROPERTIES}"
    assert len(properties) == len(set(properties)), f"a property repeats: {properties}"

    cancelled = str(event.by_icalendar["STATUS"]) == "CANCELLED"
    alarms = event.by_icalendar.subcomponents
    assert [alarm.name for alarm in alarms] == ([] if cancelled else ["VALARM"] * len(ALARMS))
    for alarm in alarms:
        assert {name for name, _ in alarm.property_items(recursive=False)} - {"BEGIN", "END"} <= ALARM_PROPERTIES

    start = event.by_icalendar.decoded("DTSTART")
    end = event.by_icalendar.decoded("DTEND")
    assert end > start
    if must_map(record) and isinstance(start, datetime):
        assert start == expected_start(record)

    check_text(record, event)


def check_text(record: dict[str, Any], event: ParsedEvent) -> None:
    summary = expected_summary(record)
    assert str(event.by_icalendar["SUMMARY"]) == summary
    assert event.by_ical.summary == summary

    description_icalendar = str(event.by_icalendar.get("DESCRIPTION", ""))
    description_ical = event.by_ical.description or ""
    assert description_icalendar == description_ical
    description = carried(record.get("description"))
    assert description_icalendar.startswith(description)
    booking_type = carried(record.get("type"))
    if booking_type:
        assert f"Type: {booking_type}" in description_icalendar
    participant = record.get("participant")
    if isinstance(participant, dict) and carried(participant.get("name")):
        assert f"Participant: {carried(participant.get('name'))}" in description_icalendar

    location_icalendar = str(event.by_icalendar.get("LOCATION", ""))
    assert location_icalendar == (event.by_ical.location or "")
    if isinstance(record.get("location"), str):
        assert location_icalendar == carried(record["location"])

    categories = expected_categories(record)
    found = [str(category) for category in event.by_icalendar["CATEGORIES"].cats] if categories else []
    assert found == categories
    # NOTE: the ical parser splits CATEGORIES at every comma, escaped or not,
    # so it reads a category that contains a comma as two.
    if not any("," in category for category in categories):
        assert list(event.by_ical.categories) == categories


# Mapping through render_feed: many examples, no network


def property_config(state_dir: Path, base_url: str = "http://127.0.0.1:9") -> Config:
    path = state_dir / "calsync.toml"
    path.write_text(
        f'[cashfin]\nbase_url = "{base_url}"\nclient_secret = "{SECRET}"\ntimeout = "5s"\n'
        f'[sync]\nstate_dir = "{state_dir.as_posix()}"\n'
        f'[calendar]\nuid_domain = "{UID_DOMAIN}"\norganizer = "owner@example.com"\n'
        f'[[feeds]]\nname = "all"\ntoken = "t"\npast_days = 36500\nalarms = {list(ALARMS)!r}\n'.replace("'", '"'),
        encoding="utf-8",
    )
    return load_config(str(path), env={})


@pytest.fixture(scope="module")
def config(tmp_path_factory) -> Config:
    return property_config(tmp_path_factory.mktemp("properties"))


def stored(record: dict[str, Any]) -> StoredBooking:
    row = {name: record[name] for name in LIST_FIELDS if name in record}
    return StoredBooking(id=record["_id"], row=row, fingerprint="", significant="", first_seen=NOW, last_seen=NOW,
                         details=record, details_fetched_at=NOW, sequence=0)


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
@given(st.lists(st.integers(min_value=0, max_value=3), min_size=1, max_size=4).flatmap(
    lambda sizes: st.tuples(*(records(f"b{index}") for index in range(len(sizes))))))
def test_record_mapped_or_skipped_by_id(config, generated):
    feed = config.feeds[0]

    rendered = render_feed(config, feed, [stored(record) for record in generated], NOW)

    events = parse_feed(rendered.data)
    for record in generated:
        booking_id = record["_id"]
        assert (booking_id in events) != (booking_id in rendered.skipped), booking_id
        note_outcome("mapped" if booking_id in events else "skipped")
        if booking_id in rendered.skipped:
            assert not must_map(record), f"{booking_id} skipped: {rendered.skipped[booking_id]}"
            continue
        check_event(record, events[booking_id])
    assert rendered.events == len(events)


# Through a whole sync: the sandbox serves each record verbatim over HTTP


@pytest.fixture(scope="module")
def sandbox_api():
    with Sandbox(secret=SECRET, count=0, anchor=date(2026, 1, 15)) as sandbox:
        yield sandbox


sync_ids = st.sampled_from(["b0", "64b1f0c2a9e4d3b2c1a09f8e", "id.with-dots_and-dashes", "9"])


@settings(max_examples=120, deadline=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large,
                                                                   HealthCheck.function_scoped_fixture])
@given(st.lists(sync_ids, min_size=1, max_size=3, unique=True).flatmap(
    lambda ids: st.tuples(*(records(booking_id) for booking_id in ids))))
def test_sync_survives_arbitrary_records(sandbox_api, caplog, generated):
    for booking_id in sandbox_api.ids():
        sandbox_api.delete(booking_id)
    for record in generated:
        sandbox_api.add_verbatim(record)
    state_dir = Path(tempfile.mkdtemp(prefix="calsync-property-"))
    caplog.clear()

    try:
        with caplog.at_level(logging.WARNING):
            result = SyncEngine(property_config(state_dir, sandbox_api.base_url)).run()
        data = (state_dir / "feeds" / "all.ics").read_bytes()
    finally:
        shutil.rmtree(state_dir)

    assert result.stats.published == ["all"]
    events = parse_feed(data)
    warnings = [record.getMessage() for record in caplog.records if record.levelno >= logging.WARNING]
    # Compare with the records as JSON carries them: an escaped surrogate pair is one character.
    for record in json.loads(json.dumps(generated)):
        booking_id = record["_id"]
        note_outcome("mapped" if booking_id in events else "skipped")
        if booking_id in events:
            check_event(record, events[booking_id])
        else:
            assert not must_map(record), f"{booking_id} left out of the feed"
            assert any(f"skipped booking {booking_id}:" in message for message in warnings), warnings
    assert result.stats.skipped == len(generated) - len(events)
