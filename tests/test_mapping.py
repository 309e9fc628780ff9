"""Tests of calsync.mapping: one booking to a VEVENT, and whole calendars.

Every calendar rendered here is parsed by both icalendar and the strict
``ical`` parser through ``parse_both``.
"""

from __future__ import annotations

import itertools
import json
import logging
from datetime import date, datetime, timedelta, timezone
from typing import Any
from zoneinfo import ZoneInfo

import icalendar
import pytest
from dateutil.parser import isoparse
from freezegun import freeze_time
from ical.calendar_stream import IcsCalendarStream

from calsync import __version__
from calsync.errors import MappingError
from calsync.mapping import (
    CalendarHeader,
    MappingSettings,
    booking_end,
    map_booking,
    new_calendar,
    parse_instant,
    render_calendar,
    render_event,
    significant_fields,
    status_name,
)
from calsync.sandbox import LIST_FIELDS, generate_bookings
from tests.helpers import parse_both

NAIROBI = ZoneInfo("Africa/Nairobi")
LOS_ANGELES = ZoneInfo("America/Los_Angeles")
SAO_PAULO = ZoneInfo("America/Sao_Paulo")
FIRST_SEEN = datetime(2024, 1, 5, 12, 0, tzinfo=timezone.utc)
HEADER = CalendarHeader(
    name="bookings",
    title="Bookings",
    timezone_name="Africa/Nairobi",
    refresh_interval=timedelta(minutes=15),
)
LOGGER = "calsync.mapping"

_ids = itertools.count(1)


def new_id() -> str:
    """Return a fresh 24-hex booking id, so that no two tests share a logged warning."""
    return f"65a1b2c3d4e5{next(_ids):012x}"


def make_booking(**fields: Any) -> dict[str, Any]:
    """Return a details record shaped like the sandbox's, with ``fields`` replacing or adding keys."""
    booking: dict[str, Any] = {
        "_id": new_id(),
        "title": "Tax consultation",
        "status": "scheduled",
        "starttime": "2024-01-20T10:00:00.000Z",
        "endtime": "2024-01-20T11:00:00.000Z",
        "allday": False,
        "type": "consultation",
        "amount": 2500,
        "createdat": "2024-01-10T08:30:00.000Z",
        "updatedat": "2024-01-12T09:15:00.000Z",
        "description": "Bring last year's returns.",
        "priority": "medium",
        "location": {"type": "physical", "address": "Kimathi Street 12, Nairobi"},
        "participant": {"name": "Amina Odhiambo", "email": "amina@example.com", "phone": "+254700123456"},
        "billed": False,
    }
    booking.update(fields)
    return booking


def make_settings(**fields: Any) -> MappingSettings:
    values: dict[str, Any] = {"uid_domain": "bookings.example.com", "timezone": NAIROBI}
    values.update(fields)
    return MappingSettings(**values)


def render_feed(bookings: list[dict[str, Any]], settings: MappingSettings | None = None) -> bytes:
    settings = settings or make_settings()
    events = [render_event(b, sequence=0, settings=settings, fallback_stamp=FIRST_SEEN) for b in bookings]
    return render_calendar(HEADER, events)


def render_one(booking: dict[str, Any], **settings_fields: Any) -> tuple[icalendar.Event, bytes]:
    """Render one booking in a calendar, parse it with both parsers, and return the event and the bytes."""
    data = render_feed([booking], make_settings(**settings_fields))
    events = parse_both(data).walk("VEVENT")
    assert len(events) == 1
    return events[0], data


def unfold(data: bytes) -> bytes:
    return data.replace(b"\r\n ", b"")


def content_lines(data: bytes) -> list[bytes]:
    return unfold(data).split(b"\r\n")


def text_of(event: icalendar.Event, name: str) -> str:
    return str(event[name])


# UID, timestamps and SEQUENCE


def test_uid_from_id_and_domain() -> None:
    booking = make_booking()
    event, _ = render_one(booking)
    assert text_of(event, "UID") == f"{booking['_id']}@bookings.example.com"


def test_stamps_from_updatedat_and_createdat() -> None:
    event, _ = render_one(make_booking())
    assert event["DTSTAMP"].dt == datetime(2024, 1, 12, 9, 15, tzinfo=timezone.utc)
    assert event["LAST-MODIFIED"].dt == datetime(2024, 1, 12, 9, 15, tzinfo=timezone.utc)
    assert event["CREATED"].dt == datetime(2024, 1, 10, 8, 30, tzinfo=timezone.utc)


def test_stamps_of_list_row_use_createdat() -> None:
    row = {key: make_booking()[key] for key in ("_id", "title", "status", "starttime", "endtime", "allday", "type", "amount", "createdat")}
    event, _ = render_one(row)
    assert event["DTSTAMP"].dt == datetime(2024, 1, 10, 8, 30, tzinfo=timezone.utc)
    assert event["LAST-MODIFIED"].dt == datetime(2024, 1, 10, 8, 30, tzinfo=timezone.utc)


@pytest.mark.parametrize("value", [None, "", "yesterday", 1705312800, {"$date": "2024-01-15"}])
def test_stamps_fall_back_to_first_seen(value: object) -> None:
    event, _ = render_one(make_booking(createdat=value, updatedat=value))
    assert event["DTSTAMP"].dt == FIRST_SEEN
    assert event["LAST-MODIFIED"].dt == FIRST_SEEN
    assert "CREATED" not in event


def test_naive_fallback_stamp_is_utc() -> None:
    booking = make_booking(createdat=None, updatedat=None)
    event = map_booking(booking, sequence=0, settings=make_settings(), fallback_stamp=datetime(2024, 2, 1, 7, 0))
    assert event["DTSTAMP"].dt == datetime(2024, 2, 1, 7, 0, tzinfo=timezone.utc)


def test_sequence_from_argument() -> None:
    event = map_booking(make_booking(), sequence=7, settings=make_settings(), fallback_stamp=FIRST_SEEN)
    assert event["SEQUENCE"] == 7
    with pytest.raises(ValueError, match="sequence"):
        map_booking(make_booking(), sequence=-1, settings=make_settings(), fallback_stamp=FIRST_SEEN)


# parse_instant


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("2024-01-20T10:00:00.000Z", datetime(2024, 1, 20, 10, 0, tzinfo=timezone.utc)),
        ("2024-01-20T10:00:00Z", datetime(2024, 1, 20, 10, 0, tzinfo=timezone.utc)),
        ("2024-01-20T10:00:00.123456Z", datetime(2024, 1, 20, 10, 0, 0, 123456, tzinfo=timezone.utc)),
        ("2024-01-20T13:00:00+03:00", datetime(2024, 1, 20, 10, 0, tzinfo=timezone.utc)),
        ("2024-01-20T02:00:00-0800", datetime(2024, 1, 20, 10, 0, tzinfo=timezone.utc)),
        ("2024-01-20T10:00:00", datetime(2024, 1, 20, 10, 0, tzinfo=timezone.utc)),
        ("20240120T100000Z", datetime(2024, 1, 20, 10, 0, tzinfo=timezone.utc)),
        ("2024-01-20", datetime(2024, 1, 20, 0, 0, tzinfo=timezone.utc)),
        (" 2024-01-20T10:00:00Z\n", datetime(2024, 1, 20, 10, 0, tzinfo=timezone.utc)),
        (datetime(2024, 1, 20, 13, 0, tzinfo=NAIROBI), datetime(2024, 1, 20, 10, 0, tzinfo=timezone.utc)),
        (date(2024, 1, 20), datetime(2024, 1, 20, 0, 0, tzinfo=timezone.utc)),
    ],
)
def test_parse_instant_accepts_iso_forms(value: object, expected: datetime) -> None:
    parsed = parse_instant(value)
    assert parsed == expected
    assert parsed.utcoffset() == timedelta(0)
    assert parsed.tzinfo == timezone.utc


@pytest.mark.parametrize(
    "text",
    [
        "2024-01-20T10:00:00.000Z",
        "2024-02-29T23:59:59.999Z",
        "2024-01-20T24:00:00.000Z",
        "0001-01-01T00:00:00.000000Z",
        "9999-12-31T23:59:59.999999Z",
    ],
)
def test_parse_instant_matches_isoparse_in_cashfin_form(text: str) -> None:
    # Cashfin's own form takes a faster parser, which must return what isoparse returns.
    assert parse_instant(text) == isoparse(text)


@pytest.mark.parametrize("text", ["2023-02-29T10:00:00.000Z", "2024-01-20T10:00:60.000Z", "2024-04-31T00:00:00Z"])
def test_parse_instant_rejects_invalid_cashfin_form(text: str) -> None:
    with pytest.raises(ValueError):
        isoparse(text)
    with pytest.raises(ValueError):
        parse_instant(text)


@pytest.mark.parametrize(
    "value",
    ["", "   ", "garbage", "2024-13-01T00:00:00Z", "2024-01-20T25:00:00Z", "9999-12-31T23:59:59-05:00", None, 1705744800, True, [], {}],
)
def test_parse_instant_rejects_garbage(value: object) -> None:
    with pytest.raises(ValueError):
        parse_instant(value)


# Timed events


def test_timed_event_in_utc() -> None:
    event, data = render_one(make_booking(starttime="2024-01-20T13:00:00+03:00", endtime="2024-01-20T14:30:00.000+03:00"))
    assert b"\r\nDTSTART:20240120T100000Z\r\n" in data
    assert b"\r\nDTEND:20240120T113000Z\r\n" in data
    assert b"TZID" not in data
    assert b"VTIMEZONE" not in data
    assert "X-MICROSOFT-CDO-ALLDAYEVENT" not in event


def test_timed_fractional_seconds_dropped() -> None:
    _, data = render_one(make_booking(starttime="2024-01-20T10:00:00.999Z", endtime="2024-01-20T10:30:00.500Z"))
    assert b"\r\nDTSTART:20240120T100000Z\r\n" in data
    assert b"\r\nDTEND:20240120T103000Z\r\n" in data


@pytest.mark.parametrize(
    ("endtime", "reason"),
    [
        (None, "endtime is missing"),
        ("", "endtime is missing"),
        ("soon", "is not an ISO 8601 timestamp"),
        (42, "is not an ISO 8601 timestamp"),
        ("2024-01-20T10:00:00.000Z", "is not after starttime"),
        ("2024-01-20T10:00:00.400Z", "is not after starttime"),
        ("2024-01-20T09:00:00.000Z", "is not after starttime"),
    ],
)
def test_timed_end_fixed_with_warning(endtime: object, reason: str, caplog: pytest.LogCaptureFixture) -> None:
    booking = make_booking(endtime=endtime)
    with caplog.at_level(logging.WARNING, logger=LOGGER):
        event, _ = render_one(booking)

    assert event["DTEND"].dt == datetime(2024, 1, 20, 11, 0, tzinfo=timezone.utc)
    warnings = [record for record in caplog.records if record.levelno == logging.WARNING]
    assert len(warnings) == 1
    assert booking["_id"] in warnings[0].getMessage()
    assert reason in warnings[0].getMessage()
    assert warnings[0].args[0] == booking["_id"]


def test_timed_end_uses_default_duration() -> None:
    event, _ = render_one(make_booking(endtime=None), default_duration=timedelta(minutes=30))
    assert event["DTEND"].dt == datetime(2024, 1, 20, 10, 30, tzinfo=timezone.utc)


def test_end_warning_logged_once(caplog: pytest.LogCaptureFixture) -> None:
    booking = make_booking(endtime=None)
    with caplog.at_level(logging.DEBUG, logger=LOGGER):
        render_one(booking)
        render_one(booking)

    levels = [record.levelno for record in caplog.records if booking["_id"] in record.getMessage()]
    assert levels == [logging.WARNING, logging.DEBUG]


# All-day events


@pytest.mark.parametrize(
    ("zone", "starttime", "endtime", "first", "after_last"),
    [
        # Nairobi (UTC+3) storing local midnight.
        (NAIROBI, "2024-01-19T21:00:00.000Z", "2024-01-20T21:00:00.000Z", date(2024, 1, 20), date(2024, 1, 21)),
        # Nairobi, local midnight to the last second of the day.
        (NAIROBI, "2024-01-19T21:00:00.000Z", "2024-01-20T20:59:59.999Z", date(2024, 1, 20), date(2024, 1, 21)),
        # Nairobi storing UTC midnight, to UTC midnight or to the last UTC millisecond.
        (NAIROBI, "2024-01-20T00:00:00.000Z", "2024-01-21T00:00:00.000Z", date(2024, 1, 20), date(2024, 1, 21)),
        (NAIROBI, "2024-01-20T00:00:00.000Z", "2024-01-20T23:59:59.999Z", date(2024, 1, 20), date(2024, 1, 21)),
        # Nairobi, three days.
        (NAIROBI, "2024-01-19T21:00:00.000Z", "2024-01-22T21:00:00.000Z", date(2024, 1, 20), date(2024, 1, 23)),
        # Nairobi, a start during the local day.
        (NAIROBI, "2024-01-20T06:00:00.000Z", "2024-01-20T15:00:00.000Z", date(2024, 1, 20), date(2024, 1, 21)),
        # Los Angeles (UTC-8) storing local midnight.
        (LOS_ANGELES, "2024-01-20T08:00:00.000Z", "2024-01-21T08:00:00.000Z", date(2024, 1, 20), date(2024, 1, 21)),
        (LOS_ANGELES, "2024-01-20T08:00:00.000Z", "2024-01-21T07:59:59.999Z", date(2024, 1, 20), date(2024, 1, 21)),
        # Los Angeles storing UTC midnight: not the 19th, although local time is still the 19th.
        (LOS_ANGELES, "2024-01-20T00:00:00.000Z", "2024-01-21T00:00:00.000Z", date(2024, 1, 20), date(2024, 1, 21)),
        (LOS_ANGELES, "2024-01-20T00:00:00.000Z", "2024-01-20T23:59:59.999Z", date(2024, 1, 20), date(2024, 1, 21)),
        # Los Angeles across the start of daylight saving time (2024-03-10).
        (LOS_ANGELES, "2024-03-09T08:00:00.000Z", "2024-03-11T07:00:00.000Z", date(2024, 3, 9), date(2024, 3, 11)),
        # Sao Paulo (UTC-3) storing local midnight.
        (SAO_PAULO, "2024-01-20T03:00:00.000Z", "2024-01-21T03:00:00.000Z", date(2024, 1, 20), date(2024, 1, 21)),
        # Offsets in the timestamps do not change the instants.
        (NAIROBI, "2024-01-20T00:00:00.000+03:00", "2024-01-21T00:00:00+03:00", date(2024, 1, 20), date(2024, 1, 21)),
    ],
)
def test_allday_dates(zone: ZoneInfo, starttime: str, endtime: str, first: date, after_last: date) -> None:
    booking = make_booking(allday=True, starttime=starttime, endtime=endtime)
    event, data = render_one(booking, timezone=zone)

    assert event["DTSTART"].dt == first
    assert event["DTEND"].dt == after_last
    assert f"\r\nDTSTART;VALUE=DATE:{first:%Y%m%d}\r\n".encode() in data
    assert f"\r\nDTEND;VALUE=DATE:{after_last:%Y%m%d}\r\n".encode() in data
    assert text_of(event, "X-MICROSOFT-CDO-ALLDAYEVENT") == "TRUE"


def test_allday_nairobi_midnight_local_date() -> None:
    event, _ = render_one(make_booking(allday=True, starttime="2024-01-19T21:00:00.000Z", endtime=None))
    assert event["DTSTART"].dt == date(2024, 1, 20)


@pytest.mark.parametrize(
    ("endtime", "reason"),
    [
        (None, "endtime is missing"),
        ("not a date", "is not an ISO 8601 timestamp"),
        ("2024-01-19T21:00:00.000Z", "is not after starttime"),
        ("2024-01-18T21:00:00.000Z", "is not after starttime"),
    ],
)
def test_allday_end_fixed_with_warning(endtime: object, reason: str, caplog: pytest.LogCaptureFixture) -> None:
    booking = make_booking(allday=True, starttime="2024-01-19T21:00:00.000Z", endtime=endtime)
    with caplog.at_level(logging.WARNING, logger=LOGGER):
        event, _ = render_one(booking)

    assert event["DTSTART"].dt == date(2024, 1, 20)
    assert event["DTEND"].dt == date(2024, 1, 21)
    messages = [record.getMessage() for record in caplog.records if record.levelno == logging.WARNING]
    assert len(messages) == 1
    assert booking["_id"] in messages[0]
    assert reason in messages[0]
    assert "one day" in messages[0]


def test_allday_end_before_first_day_fixed(caplog: pytest.LogCaptureFixture) -> None:
    # UTC midnight names the 20th, but the end is local midnight in Los Angeles of that same 20th.
    booking = make_booking(allday=True, starttime="2024-01-20T00:00:00.000Z", endtime="2024-01-20T08:00:00.000Z")
    with caplog.at_level(logging.WARNING, logger=LOGGER):
        event, _ = render_one(booking, timezone=LOS_ANGELES)

    assert event["DTSTART"].dt == date(2024, 1, 20)
    assert event["DTEND"].dt == date(2024, 1, 21)
    assert "before the first day" in caplog.text


@pytest.mark.parametrize(("value", "allday"), [(True, True), ("true", True), ("TRUE", True), (1, True), ("1", True), (False, False), ("false", False), (0, False), (None, False)])
def test_allday_flag_coerced(value: object, allday: bool) -> None:
    event, _ = render_one(make_booking(allday=value, starttime="2024-01-20T00:00:00.000Z", endtime="2024-01-21T00:00:00.000Z"))
    assert isinstance(event["DTSTART"].dt, datetime) is not allday


def test_allday_flag_unknown_is_timed(caplog: pytest.LogCaptureFixture) -> None:
    booking = make_booking(allday="sometimes")
    with caplog.at_level(logging.WARNING, logger=LOGGER):
        event, _ = render_one(booking)

    assert isinstance(event["DTSTART"].dt, datetime)
    assert "allday 'sometimes' is not a boolean" in caplog.text


# SUMMARY and DESCRIPTION


@pytest.mark.parametrize(
    ("title", "booking_type", "summary"),
    [
        ("Tax consultation", "consultation", "Tax consultation"),
        ("", "consultation", "consultation"),
        ("   \n ", "consultation", "consultation"),
        (None, "consultation", "consultation"),
        ({"en": "Tax"}, "consultation", "consultation"),
        (None, None, "Booking"),
        ("", "", "Booking"),
        (1234, None, "1234"),
    ],
)
def test_summary_never_empty(title: object, booking_type: object, summary: str) -> None:
    event, _ = render_one(make_booking(title=title, type=booking_type))
    assert text_of(event, "SUMMARY") == summary


def test_description_full() -> None:
    booking = make_booking(location={"type": "virtual", "bookinglink": "https://meet.example.com/abc"})
    event, _ = render_one(booking)
    assert text_of(event, "DESCRIPTION") == (
        "Bring last year's returns.\n"
        "\n"
        "Type: consultation\n"
        "Amount: 2500\n"
        "Participant: Amina Odhiambo\n"
        "Phone: +254700123456\n"
        "Booking link: https://meet.example.com/abc"
    )


def test_description_without_text() -> None:
    event, _ = render_one(make_booking(description=None, participant=None, amount=None))
    assert text_of(event, "DESCRIPTION") == "Type: consultation"


def test_description_absent_when_empty() -> None:
    event, _ = render_one(make_booking(description="", participant={}, amount=None, type=None))
    assert "DESCRIPTION" not in event


@pytest.mark.parametrize(
    ("amount", "text"),
    [(2500, "2500"), (2500.0, "2500"), (2500.5, "2500.5"), ("2500.50", "2500.50"), (" 300 ", "300"), ("KES 300", "KES 300"), (True, None), (None, None), ([], None)],
)
def test_description_amount(amount: object, text: str | None) -> None:
    event, _ = render_one(make_booking(amount=amount, description=None, participant=None))
    lines = text_of(event, "DESCRIPTION").split("\n")
    if text is None:
        assert not any(line.startswith("Amount:") for line in lines)
    else:
        assert f"Amount: {text}" in lines


# Privacy levels


def test_limited_hides_contact_details() -> None:
    booking = make_booking(location={"type": "virtual", "bookinglink": "https://meet.example.com/abc"})
    event, data = render_one(booking, details="limited")

    assert "ATTENDEE" not in event
    assert b"amina" not in data.lower()
    assert b"+254700123456" not in data
    assert b"returns" not in data
    assert text_of(event, "DESCRIPTION") == "Type: consultation\nAmount: 2500\nBooking link: https://meet.example.com/abc"
    assert text_of(event, "SUMMARY") == "Tax consultation"
    assert text_of(event, "LOCATION") == "https://meet.example.com/abc"
    assert text_of(event, "URL") == "https://meet.example.com/abc"
    assert event["PRIORITY"] == 5
    assert event.categories == ["consultation", "scheduled"]


def test_busy_shows_times_only() -> None:
    booking = make_booking(location={"type": "virtual", "bookinglink": "https://meet.example.com/abc"}, priority="high")
    event, data = render_one(booking, details="busy", organizer="owner@example.com")

    assert set(event.keys()) == {"UID", "DTSTAMP", "DTSTART", "DTEND", "SEQUENCE", "STATUS", "TRANSP", "SUMMARY"}
    assert text_of(event, "SUMMARY") == "Busy"
    for secret in (b"Tax", b"consultation", b"amina", b"Amina", b"254700", b"meet.example", b"Kimathi", b"2500"):
        assert secret not in data


def test_busy_keeps_allday_and_status() -> None:
    booking = make_booking(status="cancelled", allday=True, starttime="2024-01-19T21:00:00.000Z", endtime="2024-01-20T21:00:00.000Z")
    event, _ = render_one(booking, details="busy")
    assert text_of(event, "STATUS") == "CANCELLED"
    assert text_of(event, "TRANSP") == "TRANSPARENT"
    assert text_of(event, "X-MICROSOFT-CDO-ALLDAYEVENT") == "TRUE"


def test_busy_alarm_says_busy() -> None:
    event, _ = render_one(make_booking(), details="busy", alarms=(timedelta(minutes=10),))
    alarms = event.walk("VALARM")
    assert len(alarms) == 1
    assert text_of(alarms[0], "DESCRIPTION") == "Busy"


# Locations


def test_virtual_location_sets_url_and_location() -> None:
    booking = make_booking(location={"type": "virtual", "bookinglink": "https://meet.example.com/abc?x=1,2;y"})
    event, _ = render_one(booking)
    assert text_of(event, "LOCATION") == "https://meet.example.com/abc?x=1,2;y"
    assert text_of(event, "URL") == "https://meet.example.com/abc?x=1,2;y"


@pytest.mark.parametrize(
    "link",
    ["javascript:alert(1)", "meet.example.com/abc", "https://meet example.com/", "ftp://files.example.com/a", "https://", 'https://a.example/"x"', "https://bücher.example/"],
)
def test_virtual_location_invalid_link_no_url(link: str) -> None:
    event, _ = render_one(make_booking(location={"type": "virtual", "bookinglink": link}))
    assert "URL" not in event
    assert text_of(event, "LOCATION") == link
    assert "Booking link" not in text_of(event, "DESCRIPTION")


def test_virtual_location_without_link() -> None:
    event, _ = render_one(make_booking(location={"type": "virtual"}))
    assert "URL" not in event
    assert "LOCATION" not in event


@pytest.mark.parametrize(
    ("location", "text"),
    [
        ({"type": "physical", "address": "Kimathi Street 12, Nairobi"}, "Kimathi Street 12, Nairobi"),
        ({"type": "physical", "name": "Head office", "address": "Kimathi Street 12", "city": "Nairobi"}, "Head office, Kimathi Street 12, Nairobi"),
        ({"address": "Moi Avenue 3", "city": "Nairobi", "country": "Kenya"}, "Moi Avenue 3, Nairobi, Kenya"),
        ({"name": "Nairobi", "city": "nairobi"}, "Nairobi"),
        ({"type": "physical", "address": "Line one\nLine two"}, "Line one\nLine two"),
        ("Kimathi Street 12", "Kimathi Street 12"),
    ],
)
def test_physical_location_text(location: object, text: str) -> None:
    event, _ = render_one(make_booking(location=location))
    assert text_of(event, "LOCATION") == text
    assert "URL" not in event


@pytest.mark.parametrize("location", [None, {}, {"type": "physical"}, [], 12, {"type": "physical", "address": {"street": "x"}}])
def test_location_absent(location: object) -> None:
    event, _ = render_one(make_booking(location=location))
    assert "LOCATION" not in event


def test_physical_location_link_in_description() -> None:
    booking = make_booking(location={"type": "physical", "address": "Moi Avenue 3", "bookinglink": "https://book.example.com/x"})
    event, _ = render_one(booking)
    assert "URL" not in event
    assert "Booking link: https://book.example.com/x" in text_of(event, "DESCRIPTION")


# ATTENDEE and ORGANIZER


def test_attendee_from_participant() -> None:
    event, data = render_one(make_booking())
    attendee = event["ATTENDEE"]
    assert str(attendee) == "mailto:amina@example.com"
    assert attendee.params["CN"] == "Amina Odhiambo"
    assert attendee.params["ROLE"] == "REQ-PARTICIPANT"
    assert attendee.params["PARTSTAT"] == "ACCEPTED"
    assert b"\r\nATTENDEE;CN=\"Amina Odhiambo\";PARTSTAT=ACCEPTED;ROLE=REQ-PARTICIPANT:mailto:amina@example.com\r\n" in unfold(data)


@pytest.mark.parametrize(
    ("name", "cn"),
    [
        ("Odhiambo, Amina", "Odhiambo, Amina"),
        ("Amina: CEO; Acme", "Amina: CEO; Acme"),
        ('Amina "Ami" Odhiambo', "Amina 'Ami' Odhiambo"),
        ("Amina\r\nOdhiambo", "Amina Odhiambo"),
        ("Zoë 🎉 Wanjirũ", "Zoë 🎉 Wanjirũ"),
        ("Back\\slash", "Back\\slash"),
    ],
)
def test_attendee_name_quoted(name: str, cn: str) -> None:
    booking = make_booking(participant={"name": name, "email": "amina@example.com"})
    event, data = render_one(booking)

    assert event["ATTENDEE"].params["CN"] == cn
    strict = IcsCalendarStream.calendar_from_ics(data.decode("utf-8"))
    assert strict.events[0].attendees[0].common_name == cn
    assert strict.events[0].attendees[0].uri == "mailto:amina@example.com"


def test_attendee_without_name() -> None:
    event, _ = render_one(make_booking(participant={"email": "amina@example.com"}))
    assert "CN" not in event["ATTENDEE"].params


@pytest.mark.parametrize("participant", [None, {}, {"name": "Amina", "phone": "+254700123456"}, {"name": "Amina", "email": ""}, {"email": None}, "Amina Odhiambo", ["amina@example.com"]])
def test_attendee_absent_without_email(participant: object) -> None:
    event, _ = render_one(make_booking(participant=participant))
    assert "ATTENDEE" not in event


def test_attendee_mailto_prefix_not_doubled() -> None:
    event, _ = render_one(make_booking(participant={"name": "Amina", "email": "MAILTO:amina@example.com"}))
    assert str(event["ATTENDEE"]) == "mailto:amina@example.com"


@pytest.mark.parametrize("email", ["amina", "amina@@example.com", "amina @example.com", "amina@example.com\r\nX-EVIL:1", '"amina"@example.com', "amina@example.com,bob@example.com", "amína@example.com"])
def test_attendee_invalid_email_dropped(email: str, caplog: pytest.LogCaptureFixture) -> None:
    booking = make_booking(participant={"name": "Amina", "email": email})
    with caplog.at_level(logging.WARNING, logger=LOGGER):
        event, data = render_one(booking)

    assert "ATTENDEE" not in event
    assert b"X-EVIL" not in data.split(b"DESCRIPTION")[0]
    assert "is not a plain email address" in caplog.text


@pytest.mark.parametrize("organizer", ["owner@example.com", "mailto:owner@example.com", " MAILTO:owner@example.com "])
def test_organizer_from_settings(organizer: str) -> None:
    event, _ = render_one(make_booking(), organizer=organizer)
    assert str(event["ORGANIZER"]) == "mailto:owner@example.com"


def test_organizer_absent_by_default() -> None:
    event, _ = render_one(make_booking())
    assert "ORGANIZER" not in event


# STATUS, TRANSP, CATEGORIES, PRIORITY


@pytest.mark.parametrize(
    ("status", "ical_status", "transp"),
    [
        ("scheduled", "CONFIRMED", "OPAQUE"),
        ("completed", "CONFIRMED", "OPAQUE"),
        ("no-show", "CONFIRMED", "OPAQUE"),
        ("cancelled", "CANCELLED", "TRANSPARENT"),
        ("Cancelled", "CANCELLED", "TRANSPARENT"),
        ("canceled", "CANCELLED", "TRANSPARENT"),
    ],
)
def test_status_mapped(status: str, ical_status: str, transp: str) -> None:
    event, _ = render_one(make_booking(status=status))
    assert text_of(event, "STATUS") == ical_status
    assert text_of(event, "TRANSP") == transp
    assert event.categories == ["consultation", status]


@pytest.mark.parametrize("status", ["pending", "", None, 3, {"code": "x"}])
def test_status_unknown_confirmed_with_warning(status: object, caplog: pytest.LogCaptureFixture) -> None:
    booking = make_booking(status=status)
    with caplog.at_level(logging.WARNING, logger=LOGGER):
        event, _ = render_one(booking)

    assert text_of(event, "STATUS") == "CONFIRMED"
    assert text_of(event, "TRANSP") == "OPAQUE"
    assert booking["_id"] in caplog.text
    assert "shown as confirmed" in caplog.text


def test_categories_without_type() -> None:
    event, _ = render_one(make_booking(type=None, status="completed"))
    assert event.categories == ["completed"]


def test_categories_escape_commas() -> None:
    event, data = render_one(make_booking(type="tax, audit"))
    assert event.categories == ["tax, audit", "scheduled"]
    assert b"CATEGORIES:tax\\, audit,scheduled\r\n" in data


def test_categories_keep_backslashes_exactly() -> None:
    event, data = render_one(make_booking(type="C:\\New\\Notes", status="\\N"))
    assert [str(category) for category in event["CATEGORIES"].cats] == ["C:\\New\\Notes", "\\N"]
    assert b"CATEGORIES:C:\\\\New\\\\Notes,\\\\N\r\n" in data


@pytest.mark.parametrize(
    ("value", "name"),
    [("cancelled", "cancelled"), ("Cancelled", "cancelled"), ("CANCELED", "cancelled"), ("No Show", "no-show"),
     ("no_show", "no-show"), (" scheduled ", "scheduled"), ("pending", None), ("", None), (None, None), (3, None)],
)
def test_status_name(value: object, name: str | None) -> None:
    assert status_name(value) == name


def test_byte_order_mark_removed() -> None:
    event, _ = render_one(make_booking(title="\ufeffTax\ufeff consultation", description="\ufeff"))
    assert text_of(event, "SUMMARY") == "Tax consultation"
    assert not text_of(event, "DESCRIPTION").startswith("\ufeff")


@pytest.mark.parametrize(("priority", "expected"), [("high", 1), ("medium", 5), ("low", 9), ("HIGH", 1), (" low ", 9)])
def test_priority_mapped(priority: str, expected: int) -> None:
    event, _ = render_one(make_booking(priority=priority))
    assert event["PRIORITY"] == expected


@pytest.mark.parametrize("priority", [None, "", "urgent", 1, {"level": "high"}])
def test_priority_absent_otherwise(priority: object) -> None:
    event, _ = render_one(make_booking(priority=priority))
    assert "PRIORITY" not in event


# Alarms


def test_alarms_display_before_start() -> None:
    event, data = render_one(make_booking(), alarms=(timedelta(hours=1), timedelta(minutes=15)))
    alarms = event.walk("VALARM")

    assert [alarm["TRIGGER"].dt for alarm in alarms] == [timedelta(minutes=-15), timedelta(hours=-1)]
    for alarm in alarms:
        assert text_of(alarm, "ACTION") == "DISPLAY"
        assert text_of(alarm, "DESCRIPTION") == "Tax consultation"
    assert b"\r\nTRIGGER:-PT15M\r\n" in data
    assert b"\r\nTRIGGER:-PT1H\r\n" in data


def test_alarms_deduplicated() -> None:
    event, _ = render_one(make_booking(), alarms=(timedelta(minutes=15), timedelta(minutes=15)))
    assert len(event.walk("VALARM")) == 1


def test_alarms_for_allday_event() -> None:
    event, _ = render_one(make_booking(allday=True, starttime="2024-01-19T21:00:00.000Z"), alarms=(timedelta(hours=12),))
    assert len(event.walk("VALARM")) == 1


def test_no_alarms_when_cancelled() -> None:
    event, _ = render_one(make_booking(status="cancelled"), alarms=(timedelta(minutes=15),))
    assert event.walk("VALARM") == []


def test_no_alarms_by_default() -> None:
    event, _ = render_one(make_booking())
    assert event.walk("VALARM") == []


# Settings


@pytest.mark.parametrize(
    ("fields", "message"),
    [
        ({"details": "secret"}, "details"),
        ({"alarms": (timedelta(minutes=-5),)}, "alarms"),
        ({"default_duration": timedelta(0)}, "default_duration"),
        ({"uid_domain": ""}, "uid_domain"),
        ({"uid_domain": "bad domain"}, "uid_domain"),
        ({"organizer": "not an address"}, "organizer"),
        ({"organizer": "owner@example.com\r\nX-EVIL:1"}, "organizer"),
        ({"uid_domain": "bookings.example.com\x00"}, "uid_domain"),
    ],
)
def test_settings_rejected(fields: dict[str, Any], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        make_settings(**fields)


def test_settings_alarms_list_accepted() -> None:
    settings = make_settings(alarms=[timedelta(minutes=30), timedelta(minutes=5)])
    assert settings.alarms == (timedelta(minutes=5), timedelta(minutes=30))


# Calendar


def test_calendar_header_lines() -> None:
    data = render_calendar(HEADER, [])
    parse_both(data)
    assert data == (
        b"BEGIN:VCALENDAR\r\n"
        b"VERSION:2.0\r\n"
        b"PRODID:-//calsync//calsync " + __version__.encode() + b"//EN\r\n"
        b"CALSCALE:GREGORIAN\r\n"
        b"NAME:Bookings\r\n"
        b"X-WR-CALNAME:Bookings\r\n"
        b"REFRESH-INTERVAL;VALUE=DURATION:PT15M\r\n"
        b"X-PUBLISHED-TTL:PT15M\r\n"
        b"X-WR-TIMEZONE:Africa/Nairobi\r\n"
        b"END:VCALENDAR\r\n"
    )


def test_calendar_has_no_method() -> None:
    data = render_feed([make_booking()])
    assert b"METHOD" not in data


def test_calendar_title_falls_back_to_name() -> None:
    header = CalendarHeader(name="staff", title="", timezone_name="Africa/Nairobi", refresh_interval=timedelta(hours=1, minutes=30))
    calendar = parse_both(render_calendar(header, []))
    assert str(calendar["X-WR-CALNAME"]) == "staff"
    assert str(calendar["NAME"]) == "staff"
    assert calendar["REFRESH-INTERVAL"].dt == timedelta(hours=1, minutes=30)


def test_calendar_header_text_escaped() -> None:
    header = CalendarHeader(name="b", title="Front desk, Nairobi; all\nbranches", timezone_name="Africa/Nairobi", refresh_interval=timedelta(minutes=5))
    calendar = parse_both(render_calendar(header, []))
    assert str(calendar["X-WR-CALNAME"]) == "Front desk, Nairobi; all branches"


def test_calendar_header_rejects_bad_interval() -> None:
    with pytest.raises(ValueError, match="refresh_interval"):
        CalendarHeader(name="b", title="B", timezone_name="UTC", refresh_interval=timedelta(0))


def test_render_calendar_matches_icalendar() -> None:
    settings = make_settings(alarms=(timedelta(minutes=15),), organizer="owner@example.com")
    bookings = [
        make_booking(),
        make_booking(status="cancelled", title="Audit; review, \"Q4\""),
        make_booking(allday=True, starttime="2024-01-19T21:00:00.000Z", endtime="2024-01-21T21:00:00.000Z"),
        make_booking(location={"type": "virtual", "bookinglink": "https://meet.example.com/abc"}, description="Zoë 🎉 " * 40),
    ]

    calendar = new_calendar(HEADER)
    for booking in bookings:
        calendar.add_component(map_booking(booking, sequence=3, settings=settings, fallback_stamp=FIRST_SEEN))
    events = [render_event(booking, sequence=3, settings=settings, fallback_stamp=FIRST_SEEN) for booking in bookings]

    rendered = render_calendar(HEADER, events)
    assert rendered == calendar.to_ical()
    assert len(parse_both(rendered).walk("VEVENT")) == 4


def test_render_calendar_accepts_generator() -> None:
    settings = make_settings()
    booking = make_booking()
    events = (render_event(booking, sequence=0, settings=settings, fallback_stamp=FIRST_SEEN) for _ in range(1))
    assert len(parse_both(render_calendar(HEADER, events)).walk("VEVENT")) == 1


@pytest.mark.parametrize("data", [b"", b"BEGIN:VEVENT\r\nUID:x\r\n", b"BEGIN:VTODO\r\nEND:VTODO\r\n", b"BEGIN:VEVENT\nEND:VEVENT\n"])
def test_render_calendar_rejects_non_event_bytes(data: bytes) -> None:
    with pytest.raises(ValueError, match="VEVENT"):
        render_calendar(HEADER, [data])


def test_render_event_bytes() -> None:
    data = render_event(make_booking(), sequence=0, settings=make_settings(), fallback_stamp=FIRST_SEEN)
    assert data.startswith(b"BEGIN:VEVENT\r\n")
    assert data.endswith(b"END:VEVENT\r\n")


# Determinism


def test_same_input_same_bytes() -> None:
    booking = make_booking(allday=True, starttime="2024-01-19T21:00:00.000Z", endtime=None, createdat=None, updatedat=None)
    settings = make_settings(alarms=(timedelta(minutes=15),), organizer="owner@example.com")

    with freeze_time("2030-06-01T12:00:00Z"):
        first = render_calendar(HEADER, [render_event(booking, sequence=2, settings=settings, fallback_stamp=FIRST_SEEN)])
    with freeze_time("2031-02-03T04:05:06Z"):
        second = render_calendar(HEADER, [render_event(booking, sequence=2, settings=settings, fallback_stamp=FIRST_SEEN)])

    assert first == second
    assert b"2030" not in first
    assert b"2031" not in first
    parse_both(first)


def test_mapping_does_not_change_booking() -> None:
    booking = make_booking()
    before = json.dumps(booking, sort_keys=True)
    render_one(booking)
    assert json.dumps(booking, sort_keys=True) == before


# Hostile text


HOSTILE_TEXT = [
    ("commas, semicolons; and colons:", "commas, semicolons; and colons:"),
    ("back\\slash \\n \\, \\;", "back\\slash \\n \\, \\;"),
    ("C:\\New folder\\Notes", "C:\\New folder\\Notes"),
    ("emoji 🎉👩🏽‍💻 and Zoë Wanjirũ", "emoji 🎉👩🏽‍💻 and Zoë Wanjirũ"),
    ("END:VEVENT", "END:VEVENT"),
    ("x\r\nEND:VEVENT\r\nBEGIN:VEVENT\r\nUID:evil", "x\nEND:VEVENT\nBEGIN:VEVENT\nUID:evil"),
    ("null\x00bell\x07escape\x1bdel\x7f", "nullbellescapedel"),
    ("tab\tand  double  spaces", "tab\tand  double  spaces"),
    ("lone surrogate \ud800removed", "lone surrogate removed"),
    ("non-characters \ufffe\uffffremoved", "non-characters removed"),
    ("  padded  ", "  padded  "),
    ("   ", "consultation"),
    ("\"quoted\" <b>html</b> & 'apostrophes'", "\"quoted\" <b>html</b> & 'apostrophes'"),
]


@pytest.mark.parametrize(("title", "summary"), HOSTILE_TEXT)
def test_hostile_title_round_trips(title: str, summary: str) -> None:
    event, data = render_one(make_booking(title=title))
    assert text_of(event, "SUMMARY") == summary
    assert content_lines(data).count(b"BEGIN:VEVENT") == 1
    assert content_lines(data).count(b"END:VEVENT") == 1


@pytest.mark.parametrize("text", [value for value, _ in HOSTILE_TEXT])
def test_hostile_text_everywhere_parses(text: str) -> None:
    booking = make_booking(
        title=text,
        description=text,
        type=text,
        status=text,
        location={"type": "physical", "name": text, "address": text},
        participant={"name": text, "email": "amina@example.com", "phone": text},
    )
    event, data = render_one(booking, alarms=(timedelta(minutes=5),))
    assert content_lines(data).count(b"BEGIN:VEVENT") == 1
    assert "ATTENDEE" in event


def test_description_keeps_line_breaks() -> None:
    text = "Line one\r\nLine two\rLine three\nEND:VEVENT\n\\N not a break"
    event, data = render_one(make_booking(description=text, participant=None, amount=None, type=None))
    assert text_of(event, "DESCRIPTION") == "Line one\nLine two\nLine three\nEND:VEVENT\n\\N not a break"
    assert content_lines(data).count(b"END:VEVENT") == 1


def test_long_text_folded() -> None:
    title = "Zoë 🎉 " * 1500
    description = ("a" * 73 + "€") * 150
    event, data = render_one(make_booking(title=title, description=description))

    assert len(data) > 20_000
    assert text_of(event, "SUMMARY") == title
    assert text_of(event, "DESCRIPTION").startswith(description)


# Wrong types and unmappable bookings


WRONG_VALUES: list[object] = [None, "", "text", 0, 12.5, True, [], ["a"], {}, {"a": 1}, "2024-01-20T10:00:00.000Z", "\x00\n"]
FIELDS = ["title", "status", "starttime", "endtime", "allday", "type", "amount", "createdat", "updatedat", "description", "priority", "location", "participant", "billed"]


@pytest.mark.parametrize("field", FIELDS)
def test_wrong_types_never_crash(field: str) -> None:
    settings = make_settings(alarms=(timedelta(minutes=5),), organizer="owner@example.com")
    for value in WRONG_VALUES:
        booking = make_booking(**{field: value})
        try:
            data = render_event(booking, sequence=0, settings=settings, fallback_stamp=FIRST_SEEN)
        except MappingError as error:
            assert field == "starttime", f"{field}={value!r} raised {error}"
            assert error.booking_id == booking["_id"]
            continue
        parse_both(render_calendar(HEADER, [data]))


@pytest.mark.parametrize("field", ["location", "participant"])
@pytest.mark.parametrize("key", ["type", "bookinglink", "address", "name", "city", "email", "phone"])
def test_wrong_nested_types_do_not_crash(field: str, key: str) -> None:
    for value in WRONG_VALUES:
        booking = make_booking(**{field: {"type": "virtual", key: value}})
        parse_both(render_feed([booking]))


@pytest.mark.parametrize(
    ("booking", "reason"),
    [
        ({"title": "x", "starttime": "2024-01-20T10:00:00Z"}, "_id is missing"),
        ({"_id": None, "starttime": "2024-01-20T10:00:00Z"}, "_id is missing"),
        ({"_id": "", "starttime": "2024-01-20T10:00:00Z"}, "_id is not"),
        ({"_id": "a b", "starttime": "2024-01-20T10:00:00Z"}, "_id is not"),
        ({"_id": "abc\r\nUID:evil", "starttime": "2024-01-20T10:00:00Z"}, "_id is not"),
        ({"_id": ["abc"], "starttime": "2024-01-20T10:00:00Z"}, "_id is not"),
        ({"_id": True, "starttime": "2024-01-20T10:00:00Z"}, "_id is not"),
        ({"_id": "65a1b2c3d4e5f6a7b8c9d0e1"}, "starttime is missing"),
        ({"_id": "65a1b2c3d4e5f6a7b8c9d0e1", "starttime": "next tuesday"}, "starttime 'next tuesday' is not an ISO 8601 timestamp"),
        ({"_id": "65a1b2c3d4e5f6a7b8c9d0e1", "starttime": 1705744800}, "is not an ISO 8601 timestamp"),
        ({"_id": "65a1b2c3d4e5f6a7b8c9d0e1", "starttime": {"$date": "2024-01-20"}}, "is not an ISO 8601 timestamp"),
        ({"_id": "65a1b2c3d4e5f6a7b8c9d0e1", "starttime": "9999-12-31T23:30:00Z"}, "limits of the calendar"),
        ({"_id": "65a1b2c3d4e5f6a7b8c9d0e1", "starttime": "9999-12-31T23:30:00Z", "allday": True}, "limits of the calendar"),
    ],
)
def test_unmappable_raises_mapping_error(booking: dict[str, Any], reason: str) -> None:
    with pytest.raises(MappingError) as raised:
        render_event(booking, sequence=0, settings=make_settings(), fallback_stamp=FIRST_SEEN)
    assert reason in raised.value.reason


@pytest.mark.parametrize("booking", [None, "65a1b2c3d4e5f6a7b8c9d0e1", ["_id"], 42])
def test_non_object_raises_mapping_error(booking: Any) -> None:
    with pytest.raises(MappingError, match="expected a JSON object"):
        map_booking(booking, sequence=0, settings=make_settings(), fallback_stamp=FIRST_SEEN)


def test_numeric_id_accepted() -> None:
    event, _ = render_one(make_booking(_id=1234))
    assert text_of(event, "UID") == "1234@bookings.example.com"


# significant_fields


def test_significant_fields_hashable_and_json() -> None:
    fields = significant_fields(make_booking())
    assert hash(fields) == hash(significant_fields(make_booking()))
    assert json.loads(json.dumps(fields)) == json.loads(json.dumps(significant_fields(make_booking())))


def test_significant_fields_ignore_format() -> None:
    original = significant_fields(make_booking())
    reformatted = significant_fields(
        make_booking(starttime="2024-01-20T13:00:00+03:00", endtime="2024-01-20T11:00:00Z", status="Scheduled", allday="false")
    )
    assert reformatted == original


@pytest.mark.parametrize(
    "change",
    [
        {"starttime": "2024-01-20T10:30:00.000Z"},
        {"endtime": "2024-01-20T12:00:00.000Z"},
        {"endtime": None},
        {"allday": True},
        {"status": "cancelled"},
        {"title": "Audit"},
        {"location": {"type": "physical", "address": "Moi Avenue 3"}},
        {"location": {"type": "virtual", "bookinglink": "https://meet.example.com/abc"}},
    ],
)
def test_significant_fields_change(change: dict[str, Any]) -> None:
    assert significant_fields(make_booking(**change)) != significant_fields(make_booking())


@pytest.mark.parametrize(
    "change",
    [{"description": "Other"}, {"amount": 1}, {"participant": {"name": "Bob"}}, {"priority": "high"}, {"updatedat": "2024-02-01T00:00:00Z"}, {"type": "audit"}],
)
def test_significant_fields_ignore_other_fields(change: dict[str, Any]) -> None:
    assert significant_fields(make_booking(**change)) == significant_fields(make_booking())


def test_significant_fields_of_garbage() -> None:
    fields = significant_fields({"starttime": "soon", "allday": [], "location": 5, "title": {"a": 1}})
    assert fields[0] == "invalid: soon"
    hash(fields)


# booking_end


def test_booking_end_timed() -> None:
    assert booking_end(make_booking()) == datetime(2024, 1, 20, 11, 0, tzinfo=timezone.utc)


def test_booking_end_uses_default_duration() -> None:
    booking = make_booking(endtime=None)
    assert booking_end(booking) == datetime(2024, 1, 20, 11, 0, tzinfo=timezone.utc)
    assert booking_end(booking, make_settings(default_duration=timedelta(minutes=20))) == datetime(2024, 1, 20, 10, 20, tzinfo=timezone.utc)


def test_booking_end_allday_local_midnight() -> None:
    booking = make_booking(allday=True, starttime="2024-01-19T21:00:00.000Z", endtime="2024-01-20T21:00:00.000Z")
    assert booking_end(booking, make_settings()) == datetime(2024, 1, 20, 21, 0, tzinfo=timezone.utc)


def test_booking_end_allday_utc_midnight() -> None:
    booking = make_booking(allday=True, starttime="2024-01-20T00:00:00.000Z", endtime=None)
    assert booking_end(booking, make_settings(timezone=LOS_ANGELES)) == datetime(2024, 1, 21, 0, 0, tzinfo=timezone.utc)


def test_booking_end_logs_nothing(caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.DEBUG, logger=LOGGER):
        booking_end(make_booking(endtime=None, status="pending"))
    assert caplog.records == []


@pytest.mark.parametrize("booking", [{}, {"_id": "abc"}, {"_id": "abc", "starttime": "soon"}, {"_id": "abc", "starttime": "9999-12-31T23:30:00Z"}])
def test_booking_end_unmappable_is_none(booking: dict[str, Any]) -> None:
    assert booking_end(booking) is None


# The sandbox data set


SANDBOX_ANCHOR = date(2026, 1, 15)


@pytest.mark.parametrize("details", ["full", "limited", "busy"])
def test_sandbox_bookings_all_render(details: str) -> None:
    bookings = generate_bookings(anchor=SANDBOX_ANCHOR)
    settings = make_settings(details=details, alarms=(timedelta(minutes=15),), organizer="owner@example.com")

    calendar = parse_both(render_feed(bookings, settings))
    assert len(calendar.walk("VEVENT")) == len(bookings)


def test_sandbox_list_rows_render() -> None:
    rows = [{key: booking[key] for key in LIST_FIELDS if key in booking} for booking in generate_bookings(anchor=SANDBOX_ANCHOR)]
    calendar = parse_both(render_feed(rows))
    assert len(calendar.walk("VEVENT")) == len(rows)


@pytest.mark.parametrize(
    ("title", "first", "after_last"),
    [
        ("Full-day photography workshop", date(2026, 1, 18), date(2026, 1, 19)),
        ("Stand at the Nairobi trade fair", date(2026, 1, 25), date(2026, 1, 26)),
        ("Team offsite, Naivasha", date(2025, 12, 26), date(2025, 12, 29)),
        ("Wedding catering, Mombasa", date(2026, 2, 14), date(2026, 2, 16)),
    ],
)
def test_sandbox_allday_dates(title: str, first: date, after_last: date) -> None:
    booking = next(b for b in generate_bookings(count=20, anchor=SANDBOX_ANCHOR) if b["title"] == title)
    event, _ = render_one(booking)
    assert event["DTSTART"].dt == first
    assert event["DTEND"].dt == after_last
