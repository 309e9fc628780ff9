"""The data of the status page, gathered from the state store, the published feeds and the daemon's status.

``build_report`` reads everything for one page view into a ``StatusReport``.
It contains one ``FeedSummary`` per feed, the last ``HISTORY_RUNS`` sync
runs and the upcoming ``AGENDA_DAYS`` days of the first feed. Its ``Health``
verdict names the reason a feed stopped updating and what to do about it,
with the hints of ``calsync.status_hints``. Rendering is left to
``calsync.status_page``.
"""

from __future__ import annotations

import logging
import threading
from dataclasses import dataclass, field, replace
from datetime import date, datetime, time, timedelta
from typing import Any
from zoneinfo import ZoneInfo

import icalendar

from calsync.config import Config, FeedSettings
from calsync.durations import format_duration
from calsync.errors import StateError
from calsync.feed_cache import FeedCache, FeedVersion
from calsync.feed_scan import count_events, count_statuses, event_blocks
from calsync.feeds import feed_path
from calsync.links import FeedLinks, feed_links, public_url_problems
from calsync.status import STALE_INTERVALS, ServiceStatus
from calsync.status_hints import (
    ERROR_HINTS,
    LOCK_HINT,
    UNKNOWN_ERROR_HINT,
    failure_hint,
    hint_for,
)
from calsync.store import STATE_FILE, RunRecord, StateStore

log = logging.getLogger(__name__)

HISTORY_RUNS = 50
AGENDA_DAYS = 14

OK = "ok"
WARNING = "warning"
ERROR = "error"


@dataclass(frozen=True)
class Health:
    """The verdict at the top of the page: a level (ok, warning or error), a headline, facts and a fix."""

    level: str
    headline: str
    facts: list[str] = field(default_factory=list)
    fix: str | None = None


@dataclass(frozen=True)
class FeedCoverage:
    """How many stored bookings a feed showed at the last successful sync, and why it left out the others.

    ``excluded`` counts the bookings left out by reason, keyed by the reasons
    of ``calsync.feeds`` such as ``ended`` or ``without_details``.
    """

    stored: int
    events: int
    excluded: dict[str, int]


@dataclass(frozen=True)
class FeedSummary:
    """One feed as subscribers get it.

    ``events``, ``by_status``, ``size`` and ``published_at`` describe the
    file the server serves, and are None (``by_status`` empty) before it is
    first published. ``published_at`` is the file's modification time, which
    changes only when its content does. ``past_days`` is the feed's setting.
    ``coverage`` comes from the last successful sync, which rendered the
    served file unless a later sync failed after publishing some feeds. It
    is None when no stored run has it.
    """

    name: str
    title: str
    public: bool
    links: FeedLinks
    path: str
    events: int | None
    size: int | None
    published_at: datetime | None
    by_status: dict[str, int]
    past_days: int
    coverage: FeedCoverage | None = None


@dataclass(frozen=True)
class RunSummary:
    """One sync run as the history table shows it.

    ``repeat_of`` is the newer run with the same error that shows the error
    in full, or None when this run shows its own.
    """

    id: int | None
    started_at: datetime
    seconds: float | None
    outcome: str
    requests: int
    added: int
    changed: int
    removed: int
    published: list[str]
    error: str | None
    error_type: str | None
    hint: str | None
    warnings: list[str]
    trigger: str | None = None
    repeat_of: RunSummary | None = None


@dataclass(frozen=True)
class AgendaEvent:
    """One event of the agenda. ``start`` and ``end`` are in the business time zone, or dates when all-day."""

    start: datetime | date
    end: datetime | date | None
    all_day: bool
    summary: str
    location: str
    cancelled: bool


@dataclass(frozen=True)
class AgendaDay:
    day: date
    events: list[AgendaEvent]


@dataclass(frozen=True)
class StatusReport:
    """Everything one view of the status page shows.

    ``link_problems`` lists why the subscribe links cannot work for Google
    Calendar and Outlook, and is empty when ``server.public_url`` looks right.
    """

    generated_at: datetime
    timezone: ZoneInfo
    interval: timedelta
    health: Health
    feeds: list[FeedSummary]
    runs: list[RunSummary]
    agenda_feed: str | None
    agenda: list[AgendaDay]
    sync_running: bool
    link_problems: list[str] = field(default_factory=list)


@dataclass
class _StoredState:
    runs: list[RunRecord] = field(default_factory=list)
    last_success: RunRecord | None = None
    problem: str | None = None


class AgendaCache:
    """The agenda's events of a published feed, parsed once per version of its bytes and per day."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._key: tuple[str, date] | None = None
        self._events: list[AgendaEvent] = []

    def events(self, version: FeedVersion, timezone: ZoneInfo, today: date) -> list[AgendaEvent]:
        """Return the events of ``version`` that may fall within ``AGENDA_DAYS`` days from ``today``."""
        key = (version.plain.etag, today)
        with self._lock:
            if self._key != key:
                window = (today, today + timedelta(days=AGENDA_DAYS))
                self._events = parse_events(version.plain.data, timezone, window)
                self._key = key
            return self._events


class StatusCountCache:
    """The counts by status of each published feed, computed once per version of its bytes.

    Counting took about 80 ms for a feed of 2,565 events (from the sandbox's 3,000 bookings) on a 2-core
    machine, too long to repeat on every view of the page.
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._counts: dict[str, tuple[str, dict[str, int]]] = {}

    def counts(self, name: str, version: FeedVersion) -> dict[str, int]:
        """Return the counts by status of ``version`` of feed ``name``."""
        with self._lock:
            cached = self._counts.get(name)
            if cached is None or cached[0] != version.plain.etag:
                cached = (version.plain.etag, count_statuses(version.plain.data))
                self._counts[name] = cached
            return cached[1]


def build_report(
    config: Config,
    cache: FeedCache,
    now: datetime,
    *,
    status: ServiceStatus | None = None,
    agenda_cache: AgendaCache | None = None,
    status_counts: StatusCountCache | None = None,
    sync_running: bool = False,
) -> StatusReport:
    """Read the state store, the served feeds and ``status`` into one report for the page at ``now``."""
    stored = _read_state(config)
    timezone = config.sync.timezone
    counter = status_counts or StatusCountCache()
    feeds = [
        _summarize_feed(config, feed, cache.get(feed.name), stored.last_success, counter) for feed in config.feeds
    ]
    runs = summarize_runs(stored.runs, timezone)

    agenda_feed = config.feeds[0] if config.feeds else None
    agenda: list[AgendaDay] = []
    version = cache.get(agenda_feed.name) if agenda_feed else None
    if version is not None:
        local_now = now.astimezone(timezone)
        events = (agenda_cache or AgendaCache()).events(version, timezone, local_now.date())
        agenda = upcoming_days(events, local_now, AGENDA_DAYS)

    health = assess_health(
        config, stored, feeds, now, status=status, sync_running=sync_running,
    )
    return StatusReport(
        generated_at=now,
        timezone=timezone,
        interval=config.sync.interval,
        health=health,
        feeds=feeds,
        runs=runs,
        agenda_feed=agenda_feed.title if agenda_feed else None,
        agenda=agenda,
        sync_running=sync_running,
        link_problems=public_url_problems(config),
    )


def _read_state(config: Config) -> _StoredState:
    """Read the recent runs. A missing database is an empty state, and it is not created here."""
    if not (config.sync.state_dir / STATE_FILE).exists():
        return _StoredState()
    try:
        with StateStore.open_in(config.sync.state_dir) as store:
            return _StoredState(runs=store.recent_runs(HISTORY_RUNS), last_success=store.last_success())
    except StateError as error:
        log.warning("status page cannot read the state database: %s", error)
        return _StoredState(problem=str(error))


def _summarize_feed(
    config: Config,
    feed: FeedSettings,
    version: FeedVersion | None,
    last_success: RunRecord | None,
    status_counts: StatusCountCache,
) -> FeedSummary:
    """Describe a feed from its served bytes, so that the event count and the status counts always agree."""
    published_at = None
    if version is not None:
        published_at = datetime.fromtimestamp(version.mtime, config.sync.timezone)
    return FeedSummary(
        name=feed.name,
        title=feed.title,
        public=feed.public,
        links=feed_links(config, feed),
        path=str(feed_path(config.sync.state_dir, feed.name)),
        events=count_events(version.plain.data) if version else None,
        size=len(version.plain.data) if version else None,
        published_at=published_at,
        by_status=status_counts.counts(feed.name, version) if version else {},
        past_days=feed.past_days,
        coverage=feed_coverage(last_success, feed.name),
    )


def feed_coverage(run: RunRecord | None, feed_name: str) -> FeedCoverage | None:
    """Read the coverage of feed ``feed_name`` from the stats of ``run``, or None when they lack it."""
    counts = (run.stats.get("coverage") or {}).get(feed_name) if run is not None else None
    if not isinstance(counts, dict):
        return None
    excluded = {reason: int(count) for reason, count in counts.items() if reason not in ("stored", "events")}
    return FeedCoverage(stored=int(counts.get("stored", 0)), events=int(counts.get("events", 0)), excluded=excluded)


def summarize_runs(runs: list[RunRecord], timezone: ZoneInfo) -> list[RunSummary]:
    """Turn stored runs, newest first, into history rows.

    Only the newest run with a given error shows it in full. Each older run
    with the same error type and message gets ``repeat_of`` instead, so that
    a series of identical failures stays short on a phone.
    """
    decisive = [run for run in runs if run.error_type != "SyncCancelledError"]
    newest_hint = failure_hint(decisive, timezone) if decisive and decisive[0].outcome == "failed" else None

    summaries: list[RunSummary] = []
    first_with_error: dict[tuple[str | None, str | None], RunSummary] = {}
    for run in runs:
        hint = newest_hint if decisive and run is decisive[0] else None
        summary = summarize_run(run, hint=hint)
        if run.outcome == "failed":
            key = (run.error_type, run.error)
            if key in first_with_error:
                summary = replace(summary, repeat_of=first_with_error[key])
            else:
                first_with_error[key] = summary
        summaries.append(summary)
    return summaries


def summarize_run(run: RunRecord, hint: str | None = None) -> RunSummary:
    """Turn a stored run into a history row. A failed run gets ``hint``, else the hint for its error type."""
    stats: dict[str, Any] = run.stats
    if run.outcome == "failed" and hint is None:
        hint = hint_for(run.error_type)
    return RunSummary(
        id=run.id,
        started_at=run.started_at,
        seconds=run.seconds,
        outcome=run.outcome,
        requests=int(stats.get("list_requests", 0)) + int(stats.get("details_requests", 0)),
        added=int(stats.get("added", 0)),
        changed=int(stats.get("changed", 0)),
        removed=int(stats.get("removed", 0)),
        published=list(stats.get("published", [])),
        error=run.error,
        error_type=run.error_type,
        hint=hint if run.outcome == "failed" else None,
        warnings=run_warnings(stats) if run.outcome == "success" else [],
        trigger=run.trigger,
    )


def run_warnings(stats: dict[str, Any]) -> list[str]:
    """Return what a successful run left undone: skipped bookings, failed or missing details."""
    warnings = []
    skipped = int(stats.get("skipped", 0))
    if skipped:
        warnings.append(
            f"{skipped} booking(s) could not be turned into events and are left out of the feeds; "
            "the log names each one after 'skipped booking'."
        )
    details_failed = int(stats.get("details_failed", 0))
    if details_failed:
        warnings.append(
            f"Fetching details failed for {details_failed} booking(s); they keep their last known details "
            "and the next sync tries again."
        )
    pending = int(stats.get("pending", 0))
    if pending:
        warnings.append(f"{pending} booking(s) have no details yet, so no feed shows them.")
    return warnings


# Health.


def assess_health(
    config: Config,
    stored: _StoredState,
    feeds: list[FeedSummary],
    now: datetime,
    *,
    status: ServiceStatus | None = None,
    sync_running: bool = False,
) -> Health:
    """Decide the verdict: the first of state problems, failing syncs, stale syncs, unpublished feeds, warnings."""
    timezone = config.sync.timezone
    last_success = _last_success_time(stored, status)
    # A sync stopped by shutdown is no sign of a problem with the feeds, so the verdict skips it.
    decisive = [run for run in stored.runs if run.error_type != "SyncCancelledError"]
    latest = decisive[0] if decisive else None

    if stored.problem is not None:
        return Health(ERROR, "calsync cannot read its state database", [stored.problem], ERROR_HINTS["StateError"])

    unrecorded = _unrecorded_failure(status, latest, last_success)
    if unrecorded is not None:
        return _failing(1, unrecorded, UNKNOWN_ERROR_HINT, last_success, feeds, now, timezone)

    if latest is not None and latest.outcome == "failed":
        streak = next((index for index, run in enumerate(decisive) if run.outcome != "failed"), len(decisive))
        hint = failure_hint(decisive, timezone)
        return _failing(streak, latest.error or "no message", hint, last_success, feeds, now, timezone)

    if latest is None:
        if sync_running:
            return Health(WARNING, "The first sync is running", ["Reload this page in a moment to see its outcome."])
        return Health(WARNING, "No sync has run yet", [], "calsync serve syncs at start; check its log if this stays.")

    stale = _stale(config, status, last_success, now, sync_running)
    if stale is not None:
        return stale

    unpublished = [feed.name for feed in feeds if feed.events is None]
    if unpublished:
        return Health(
            ERROR, f"Not published: {', '.join(unpublished)}",
            [f"The server has no file for feed {feed.name} at {feed.path}." for feed in feeds if feed.events is None],
            "Check the log for 'cannot read feed file' and the permissions of sync.state_dir.",
        )

    summary = summarize_run(latest)
    facts = [f"Last successful sync {_moment(last_success, now, timezone)}; syncs run every "
             f"{format_duration(config.sync.interval)}."]
    if summary.warnings:
        return Health(WARNING, "Feeds are up to date, with warnings", facts + summary.warnings)
    return Health(OK, "All feeds are up to date", facts)


def _last_success_time(stored: _StoredState, status: ServiceStatus | None) -> datetime | None:
    candidates = [stored.last_success.finished_at] if stored.last_success and stored.last_success.finished_at else []
    if status is not None and status.last_success is not None:
        candidates.append(status.last_success)
    return max(candidates, default=None)


def _unrecorded_failure(status: ServiceStatus | None, latest: RunRecord | None, last_success: datetime | None) -> str | None:
    """Return the error of a failure that left no run record, such as one that could not open the database.

    The daemon also records every failure that the engine stored, a moment
    later. A failure therefore counts as unrecorded only when the newest
    stored run succeeded or has another message.
    """
    if status is None or status.last_failure is None or status.last_error is None:
        return None
    if last_success is not None and status.last_failure <= last_success:
        return None
    if latest is None:
        return status.last_error
    if status.last_failure < latest.started_at:
        return None
    if latest.outcome == "failed" and latest.error == status.last_error:
        return None
    return status.last_error


def _failing(
    streak: int, error: str, hint: str, last_success: datetime | None,
    feeds: list[FeedSummary], now: datetime, timezone: ZoneInfo,
) -> Health:
    count = "The last sync" if streak == 1 else f"The last {streak} syncs"
    if streak >= HISTORY_RUNS:
        count = f"At least the last {HISTORY_RUNS} syncs"
    facts = [f"{count} failed: {error}"]
    if last_success is None:
        facts.append("No sync has succeeded yet, so no feed has been published.")
    else:
        facts.append(
            f"Last successful sync {_moment(last_success, now, timezone)}. Subscribers still get the feeds "
            "published then, and changes made in Cashfin since do not show up."
        )
    unpublished = [feed.name for feed in feeds if feed.events is None]
    if unpublished and last_success is not None:
        facts.append(f"Never published: {', '.join(unpublished)}.")
    return Health(ERROR, "Feeds are not updating because syncs fail", facts, hint)


def _stale(
    config: Config, status: ServiceStatus | None, last_success: datetime | None, now: datetime, sync_running: bool
) -> Health | None:
    limit = config.sync.interval * STALE_INTERVALS
    if last_success is None or now - last_success <= limit:
        return None

    facts = [
        f"The last successful sync was {_moment(last_success, now, config.sync.timezone)}, although syncs "
        f"should run every {format_duration(config.sync.interval)}."
    ]
    if sync_running:
        facts.append("A sync is running now; if it has been running for long, it may hang on a slow API.")
    skip = status.last_skip if status else None
    if skip is not None and skip[0] > last_success:
        facts.append(f"The last sync was skipped {_moment(skip[0], now, config.sync.timezone)}: {skip[1]}")
        return Health(ERROR, "Feeds are not updating because syncs are skipped", facts, LOCK_HINT)
    return Health(
        ERROR, "Feeds are not updating because no sync has finished recently", facts,
        "Check the daemon's log around the time of the last sync for errors or a sync that never finished.",
    )


def _moment(moment: datetime | None, now: datetime, timezone: ZoneInfo) -> str:
    if moment is None:
        return "never"
    return f"at {format_time(moment, timezone)} ({format_age(now - moment)})"


# Formatting shared with the page.


def format_time(moment: datetime, timezone: ZoneInfo) -> str:
    """Format an aware datetime in the business time zone, such as ``2026-01-15 09:00 EAT``."""
    return moment.astimezone(timezone).strftime("%Y-%m-%d %H:%M %Z")


def format_age(age: timedelta) -> str:
    """Format how long ago something happened, rounded to a readable unit."""
    seconds = int(age.total_seconds())
    if seconds < 0:
        return "in the future"
    if seconds < 60:
        return "just now"
    if seconds < 3600:
        return f"{seconds // 60} min ago"
    if seconds < 2 * 86400:
        hours, rest = divmod(seconds, 3600)
        return f"{hours} h {rest // 60} min ago"
    return f"{seconds // 86400} days ago"


def format_size(size: int) -> str:
    """Format a byte count in bytes, KiB or MiB."""
    if size < 1024:
        return f"{size} bytes"
    if size < 1024 * 1024:
        return f"{size / 1024:.1f} KiB"
    return f"{size / (1024 * 1024):.1f} MiB"


# The agenda.


def parse_events(data: bytes, timezone: ZoneInfo, window: tuple[date, date] | None = None) -> list[AgendaEvent]:
    """Parse a published feed into agenda events sorted by start, with timed events in ``timezone``.

    With a ``window`` of local dates, only events that may overlap it are
    parsed. icalendar 7 took about 3 s for a feed of 3,000 demo bookings on
    a 2-core machine, and about 0.2 s for the events of 14 days. The result
    may still contain events just outside the window.
    """
    if window is not None:
        data = _events_near(data, *window)
    try:
        calendar = icalendar.Calendar.from_ical(data)
    except ValueError as error:
        log.warning("status page cannot parse a published feed for the agenda: %s", error)
        return []

    events = []
    for component in calendar.walk("VEVENT"):
        start = component.decoded("DTSTART", None)
        if start is None:
            continue
        end = component.decoded("DTEND", None)
        all_day = not isinstance(start, datetime)
        if not all_day:
            start = start.astimezone(timezone)
            end = end.astimezone(timezone) if isinstance(end, datetime) else None
        events.append(AgendaEvent(
            start=start,
            end=end,
            all_day=all_day,
            summary=str(component.get("SUMMARY", "")),
            location=str(component.get("LOCATION", "")),
            cancelled=str(component.get("STATUS", "")).upper() == "CANCELLED",
        ))
    events.sort(key=_sort_key)
    return events


def _events_near(data: bytes, first_day: date, last_day: date) -> bytes:
    """Return a calendar with only the VEVENTs of ``data`` whose UTC dates come within a day of the window.

    The day of margin covers every UTC offset. An event whose DTSTART
    cannot be read this way is kept, so that icalendar decides.
    """
    kept = [b"BEGIN:VCALENDAR", b"VERSION:2.0"]
    for block in event_blocks(data):
        start = _line_date(block, b"DTSTART")
        end = _line_date(block, b"DTEND") or start
        if start is None or end is None:
            kept += block
        elif start <= last_day + timedelta(days=1) and end >= first_day - timedelta(days=1):
            kept += block
    kept += [b"END:VCALENDAR", b""]
    return b"\r\n".join(kept)


def _line_date(block: list[bytes], name: bytes) -> date | None:
    """Read the date of a DTSTART or DTEND line, such as ``DTSTART:20260115T070000Z``, or None when it is unreadable."""
    for line in block:
        if line.startswith(name + b":") or line.startswith(name + b";"):
            digits = line.rpartition(b":")[2][:8]
            try:
                return datetime.strptime(digits.decode("ascii"), "%Y%m%d").date()
            except (UnicodeDecodeError, ValueError):
                return None
    return None


def upcoming_days(events: list[AgendaEvent], now: datetime, days: int) -> list[AgendaDay]:
    """Group the events that have not ended by ``now`` and start within ``days`` days, by local start date.

    ``now`` must be in the business time zone. An all-day event counts as
    ending at the end of its last day.
    """
    first_day = now.date()
    last_day = first_day + timedelta(days=days)
    by_day: dict[date, list[AgendaEvent]] = {}
    for event in events:
        day = event.start.date() if isinstance(event.start, datetime) else event.start
        if day >= last_day or _ended(event, now):
            continue
        by_day.setdefault(max(day, first_day), []).append(event)
    return [AgendaDay(day, by_day[day]) for day in sorted(by_day)]


def _ended(event: AgendaEvent, now: datetime) -> bool:
    """Tell whether an event is over at ``now``. An all-day DTEND is exclusive, and a missing one means one day."""
    if isinstance(event.start, datetime):
        end = event.end if isinstance(event.end, datetime) else event.start
        return end <= now
    day_end = event.end if isinstance(event.end, date) else event.start + timedelta(days=1)
    return day_end <= now.date()


def _sort_key(event: AgendaEvent) -> tuple[date, int, time, str]:
    """Sort by local date, all-day events before timed ones, then by time and title."""
    if isinstance(event.start, datetime):
        return (event.start.date(), 1, event.start.time(), event.summary)
    return (event.start, 0, time.min, event.summary)
