"""The pieces of the status report that need no server: agenda, feed scanning, run summaries, hints and the chart."""

from __future__ import annotations

from datetime import UTC, date, datetime, timedelta
from zoneinfo import ZoneInfo

from calsync.feed_scan import count_events, count_statuses, split_text_list
from calsync.status_chart import nice_ceiling, render_chart
from calsync.status_hints import failure_hint, listing_support_advice
from calsync.status_report import (
    AgendaEvent,
    format_age,
    format_size,
    parse_events,
    summarize_run,
    summarize_runs,
    upcoming_days,
)
from calsync.store import RunRecord
from tests.html_tree import parse_html

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


def test_count_statuses_prefers_categories() -> None:
    feed = (
        "BEGIN:VCALENDAR\r\nVERSION:2.0\r\n"
        # The status sits after a type that contains an escaped comma, and the line is folded.
        "BEGIN:VEVENT\r\nUID:a@x\r\nSTATUS:CONFIRMED\r\nCATEGORIES:Hair\\, nails and mo\r\n re,No_Show\r\nEND:VEVENT\r\n"
        # A type that spells a status comes before the real status.
        "BEGIN:VEVENT\r\nUID:b@x\r\nSTATUS:CONFIRMED\r\nCATEGORIES:completed,scheduled\r\nEND:VEVENT\r\n"
        # A busy feed has no CATEGORIES. The alarm's own lines do not count.
        "BEGIN:VEVENT\r\nUID:c@x\r\nSTATUS:CANCELLED\r\nBEGIN:VALARM\r\nSTATUS:CONFIRMED\r\n"
        "END:VALARM\r\nEND:VEVENT\r\n"
        # An unknown status falls back to STATUS.
        "BEGIN:VEVENT\r\nUID:d@x\r\nSTATUS:CONFIRMED\r\nCATEGORIES:Class,pending\r\nEND:VEVENT\r\n"
        "END:VCALENDAR\r\n"
    ).encode()

    counts = count_statuses(feed)

    assert counts == {"CANCELLED": 1, "CONFIRMED": 1, "no-show": 1, "scheduled": 1}
    assert sum(counts.values()) == count_events(feed)


def test_split_text_list_unescapes() -> None:
    assert split_text_list("a\\,b\\\\,c") == ["a,b\\", "c"]
    assert split_text_list("") == [""]


def test_nice_ceiling() -> None:
    assert nice_ceiling(1.65) == 2
    assert nice_ceiling(2) == 2
    assert nice_ceiling(0.21) == 0.25
    assert nice_ceiling(0.3) == 0.5
    assert nice_ceiling(7.2) == 10
    assert nice_ceiling(0.0012) == 0.002
    assert nice_ceiling(1234) == 2000


def run_with(seconds: float, outcome: str = "success", **fields: object) -> RunRecord:
    return RunRecord(started_at=datetime(2026, 1, 15, tzinfo=UTC), outcome=outcome, seconds=seconds, **fields)


def test_chart_duration_axis_covers_longest_sync() -> None:
    svg = parse_html(render_chart([summarize_run(run_with(1.65)), summarize_run(run_with(0.4))]))

    labels = [text.text() for text in svg.find_all("text")]

    assert "2s" in labels
    assert "1.6s" not in labels
    assert "at most 1.65 seconds" in svg.find("desc").text()


def failed_listing(minute: int, **stats: object) -> RunRecord:
    return RunRecord(
        started_at=datetime(2026, 1, 15, 6, minute, tzinfo=UTC), outcome="failed", id=minute,
        error="booking listing is incomplete: received 300 of 305 bookings (pagination.total 305, "
              "unique bookings received 300)",
        error_type="ListingIncompleteError", stats=dict(stats),
    )


def test_summarize_runs_shows_error_once() -> None:
    success = RunRecord(started_at=datetime(2026, 1, 15, 5, tzinfo=UTC), outcome="success", id=1)
    runs = [failed_listing(45), failed_listing(30), success, failed_listing(15)]

    summaries = summarize_runs(runs, NAIROBI)

    assert summaries[0].repeat_of is None
    assert summaries[1].repeat_of is summaries[0]
    assert summaries[2].repeat_of is None
    assert summaries[3].repeat_of is summaries[0]
    assert summaries[0].hint is not None
    assert "Bookings changing during the listing cause this once" in summaries[0].hint


def test_listing_advice_after_three_failures() -> None:
    stats = {"listing_total": 305, "listing_received": 300, "pages": 4, "page_size": 100,
             "listing_problems": ["received 300 of 305 bookings"]}
    runs = [failed_listing(45, **stats), failed_listing(30, **stats), failed_listing(15, **stats)]

    hint = failure_hint(runs, NAIROBI)

    assert hint.startswith("This is not a one-off: the last 3 syncs all found the booking list incomplete.")
    assert (
        "Give Cashfin support these numbers from the sync at 2026-01-15 09:45 EAT: GET /business/booking/list"
        "?limit=100 reported pagination.total 305, and its 4 page(s) returned 300 unique bookings." in hint
    )
    assert "keeps serving the feeds of the last good sync" in hint
    assert summarize_runs(runs, NAIROBI)[0].hint == hint


def test_listing_advice_names_failed_pages() -> None:
    problems = ["page 3 failed: request to http://127.0.0.1:9/business/booking/list failed: refused",
                "received 200 of 300 bookings"]

    advice = listing_support_advice(failed_listing(45, page_size=100, listing_problems=problems), 4, NAIROBI)

    assert "the last 4 syncs" in advice
    assert "Requests for pages of it failed each time: page 3 failed: request to" in advice
    assert "pagination is inconsistent" not in advice


def test_listing_advice_for_runs_without_numbers() -> None:
    advice = listing_support_advice(failed_listing(45), 3, NAIROBI)

    assert "Give Cashfin support the numbers in the error message" in advice
    assert "GET /business/booking/list)" in advice
