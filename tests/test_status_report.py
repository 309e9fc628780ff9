"""The pieces of the status report that need no server: the agenda window, event parsing and formatting."""

from __future__ import annotations

from datetime import UTC, date, datetime, timedelta
from zoneinfo import ZoneInfo

from calsync.status_report import (
    AgendaEvent,
    count_events,
    format_age,
    format_size,
    parse_events,
    summarize_run,
    upcoming_days,
)
from calsync.store import RunRecord

NAIROBI = ZoneInfo("Africa/Nairobi")
NOW = datetime(2026, 1, 15, 9, 30, tzinfo=NAIROBI)


def timed(start: datetime, hours: float = 1, summary: str = "Meeting") -> AgendaEvent:
    return AgendaEvent(start=start, end=start + timedelta(hours=hours), all_day=False, summary=summary,
                       location="", cancelled=False)


def all_day(start: date, days: int = 1, summary: str = "Fair") -> AgendaEvent:
    return AgendaEvent(start=start, end=start + timedelta(days=days), all_day=True, summary=summary,
                       location="", cancelled=False)


def test_upcoming_days_window() -> None:
    events = [
        timed(NOW - timedelta(hours=2), summary="ended this morning"),
        timed(NOW - timedelta(minutes=30), summary="running now"),
        all_day(NOW.date() - timedelta(days=1), days=3, summary="fair since yesterday"),
        all_day(NOW.date() - timedelta(days=1), summary="yesterday only"),
        timed(NOW + timedelta(days=13, hours=12), summary="last day"),
        timed(NOW + timedelta(days=14, hours=15), summary="too late"),
    ]

    days = upcoming_days(events, NOW, 14)

    assert [day.day for day in days] == [NOW.date(), date(2026, 1, 28)]
    assert [event.summary for event in days[0].events] == ["running now", "fair since yesterday"]
    assert [event.summary for event in days[1].events] == ["last day"]


def test_upcoming_days_without_end_times() -> None:
    later = AgendaEvent(start=NOW + timedelta(hours=1), end=None, all_day=False, summary="later", location="",
                        cancelled=False)
    earlier = AgendaEvent(start=NOW - timedelta(hours=1), end=None, all_day=False, summary="earlier", location="",
                          cancelled=False)
    today = AgendaEvent(start=NOW.date(), end=None, all_day=True, summary="today", location="", cancelled=False)

    days = upcoming_days([later, earlier, today], NOW, 14)

    assert [event.summary for event in days[0].events] == ["later", "today"]


FEED = (
    "BEGIN:VCALENDAR\r\nVERSION:2.0\r\nPRODID:-//test//EN\r\n"
    "BEGIN:VEVENT\r\nUID:b@x\r\nDTSTAMP:20260101T000000Z\r\nDTSTART:20260115T070000Z\r\n"
    "DTEND:20260115T080000Z\r\nSUMMARY:Timed <b>one</b>\r\nLOCATION:Westlands\r\nSTATUS:CANCELLED\r\n"
    "DESCRIPTION:BEGIN:VEVENT is only text here\r\nEND:VEVENT\r\n"
    "BEGIN:VEVENT\r\nUID:a@x\r\nDTSTAMP:20260101T000000Z\r\nDTSTART;VALUE=DATE:20260115\r\n"
    "DTEND;VALUE=DATE:20260116\r\nSUMMARY:All day\r\nEND:VEVENT\r\n"
    "END:VCALENDAR\r\n"
).encode()


def test_parse_events_sorted_in_business_zone() -> None:
    events = parse_events(FEED, NAIROBI)

    assert [event.summary for event in events] == ["All day", "Timed <b>one</b>"]
    assert events[0].all_day
    assert events[0].start == date(2026, 1, 15)
    assert events[1].start == datetime(2026, 1, 15, 10, 0, tzinfo=NAIROBI)
    assert events[1].start.utcoffset() == timedelta(hours=3)
    assert events[1].cancelled
    assert events[1].location == "Westlands"


def test_parse_events_invalid_feed() -> None:
    assert parse_events(b"not a calendar", NAIROBI) == []


def test_count_events_ignores_text_in_values() -> None:
    assert count_events(FEED) == 2


def test_format_age() -> None:
    assert format_age(timedelta(seconds=5)) == "just now"
    assert format_age(timedelta(minutes=14, seconds=59)) == "14 min ago"
    assert format_age(timedelta(hours=3, minutes=7)) == "3 h 7 min ago"
    assert format_age(timedelta(days=3)) == "3 days ago"
    assert format_age(timedelta(seconds=-5)) == "in the future"


def test_format_size() -> None:
    assert format_size(512) == "512 bytes"
    assert format_size(190_000) == "185.5 KiB"
    assert format_size(3 * 1024 * 1024) == "3.0 MiB"


def test_summarize_failed_run_without_type() -> None:
    """A run stored before error types were recorded still gets a hint."""
    run = RunRecord(started_at=datetime(2026, 1, 15, tzinfo=UTC), outcome="failed", error="boom")

    summary = summarize_run(run)

    assert summary.error == "boom"
    assert summary.hint is not None
    assert "log" in summary.hint


def test_summarize_run_counts_requests_and_warnings() -> None:
    stats = {"list_requests": 3, "details_requests": 40, "added": 2, "changed": 5, "removed": 1,
             "skipped": 2, "details_failed": 4, "pending": 0, "published": ["bookings"]}
    run = RunRecord(started_at=datetime(2026, 1, 15, tzinfo=UTC), outcome="success", seconds=1.5, stats=stats)

    summary = summarize_run(run)

    assert summary.requests == 43
    assert (summary.added, summary.changed, summary.removed) == (2, 5, 1)
    assert summary.published == ["bookings"]
    assert len(summary.warnings) == 2
    assert summary.warnings[0].startswith("2 booking(s) could not be turned into events")
    assert summary.warnings[1].startswith("Fetching details failed for 4 booking(s)")


def vevent(uid: str, start: str, end: str | None = None) -> str:
    lines = [f"BEGIN:VEVENT\r\nUID:{uid}\r\nDTSTAMP:20260101T000000Z\r\nSUMMARY:{uid}\r\n{start}\r\n"]
    if end:
        lines.append(f"{end}\r\n")
    lines.append("BEGIN:VALARM\r\nACTION:DISPLAY\r\nDESCRIPTION:x\r\nTRIGGER:-PT15M\r\nEND:VALARM\r\nEND:VEVENT\r\n")
    return "".join(lines)


def test_parse_events_window_skips_far_events() -> None:
    feed = (
        "BEGIN:VCALENDAR\r\nVERSION:2.0\r\nPRODID:-//test//EN\r\n"
        + vevent("long-ago", "DTSTART:20250101T070000Z", "DTEND:20250101T080000Z")
        + vevent("started-before", "DTSTART;VALUE=DATE:20260110", "DTEND;VALUE=DATE:20260120")
        + vevent("evening-before", "DTSTART:20260114T220000Z", "DTEND:20260114T230000Z")
        + vevent("inside", "DTSTART:20260120T070000Z", "DTEND:20260120T080000Z")
        + vevent("far-future", "DTSTART:20260301T070000Z")
        + "END:VCALENDAR\r\n"
    ).encode()

    events = parse_events(feed, NAIROBI, (date(2026, 1, 15), date(2026, 1, 29)))

    summaries = [event.summary for event in events]
    assert summaries == ["started-before", "evening-before", "inside"]
