"""Feeds: select each feed's bookings, render its bytes, and publish them atomically.

Rendering is deterministic: events are ordered by start then id, and every
timestamp comes from the bookings, so unchanged state renders to identical
bytes. Publishing writes a temporary file beside the target, fsyncs it and
renames it over the target. A reader therefore sees the old file or the new
one, never a partial one. Identical bytes are not rewritten.
"""

from __future__ import annotations

import errno
import logging
import os
import stat
import tempfile
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from calsync import __version__
from calsync.config import Config, FeedSettings
from calsync.errors import MappingError, PublishError, StateError
from calsync.event_cache import RenderCache
from calsync.mapping import (
    CalendarHeader,
    MappingSettings,
    booking_end,
    parse_instant,
    render_calendar,
    render_event,
    status_name,
)
from calsync.store import STATE_FILE, StateStore, StoredBooking

log = logging.getLogger(__name__)

FEEDS_DIR = "feeds"
# Published feeds are meant to be served, also by a separate web server, so they are world-readable.
FEED_FILE_MODE = 0o644
# The mapping shows a booking with a missing or unknown status as confirmed, so
# the status filter treats it as scheduled rather than hiding it without a word.
UNKNOWN_STATUS_AS = "scheduled"
# Bytes compared at a time when checking whether a feed file already has the new content.
_COMPARE_CHUNK = 1 << 20


@dataclass
class RenderedFeed:
    """The bytes of one feed, how many events they hold, and the bookings it leaves out.

    ``skipped`` maps each unmappable booking's id to the reason. ``excluded``
    counts every booking left out by reason, the unmappable ones included.
    """

    name: str
    path: Path
    data: bytes
    events: int
    skipped: dict[str, str] = field(default_factory=dict)
    excluded: dict[str, int] = field(default_factory=dict)


def feed_path(state_dir: Path, name: str) -> Path:
    return state_dir / FEEDS_DIR / f"{name}.ics"


def mapping_settings(config: Config, feed: FeedSettings) -> MappingSettings:
    return MappingSettings(
        uid_domain=config.calendar.uid_domain,
        timezone=config.sync.timezone,
        details=feed.details,
        alarms=feed.alarms,
        organizer=config.calendar.organizer,
    )


def calendar_header(config: Config, feed: FeedSettings) -> CalendarHeader:
    return CalendarHeader(
        name=feed.name,
        title=feed.title,
        timezone_name=config.sync.timezone_name,
        refresh_interval=config.sync.interval,
        product_id=f"-//calsync//calsync {__version__}//EN",
    )


# Reasons for which a feed leaves out a stored booking, in the order that ``exclusion_reason`` checks them.
WITHOUT_DETAILS = "without_details"
REMOVED = "removed"
STATUS_FILTERED = "status"
TYPE_FILTERED = "type"
ENDED = "ended"
# Set by ``render_feed`` for a selected booking that cannot become a VEVENT.
UNMAPPABLE = "unmappable"


@dataclass
class Selection:
    """The bookings a feed shows, and how many it leaves out for each reason (``WITHOUT_DETAILS`` and so on)."""

    bookings: list[StoredBooking] = field(default_factory=list)
    excluded: Counter[str] = field(default_factory=Counter)


def select_bookings(feed: FeedSettings, bookings: Iterable[StoredBooking], now: datetime) -> list[StoredBooking]:
    """Return the bookings the feed shows: by status and type, ending at most ``past_days`` ago.

    Statuses match whatever their case or separators (``Cancelled`` is
    ``cancelled``). A missing or unknown status counts as ``scheduled``.

    Bookings without details yet are left out: the list row lacks location,
    participant and description, and a feed that later gains them would show
    the event changing for no visible reason.
    """
    return select_with_reasons(feed, bookings, now).bookings


def select_with_reasons(feed: FeedSettings, bookings: Iterable[StoredBooking], now: datetime) -> Selection:
    """Select the bookings as ``select_bookings`` does, and count the ones left out by reason."""
    oldest_end = now - timedelta(days=feed.past_days)
    selection = Selection()
    for booking in bookings:
        reason = exclusion_reason(feed, booking, oldest_end)
        if reason is None:
            selection.bookings.append(booking)
        else:
            selection.excluded[reason] += 1
    return selection


def exclusion_reason(feed: FeedSettings, booking: StoredBooking, oldest_end: datetime) -> str | None:
    """Return why the feed leaves ``booking`` out, or None when the feed shows it."""
    record = booking.record()
    if record is None:
        return WITHOUT_DETAILS
    if booking.removed_at is not None:
        return REMOVED
    if feed.statuses and (status_name(record.get("status")) or UNKNOWN_STATUS_AS) not in feed.statuses:
        return STATUS_FILTERED
    if feed.types and record.get("type") not in feed.types:
        return TYPE_FILTERED
    end = booking_end(record)
    if end is not None and end < oldest_end:
        return ENDED
    return None


def _start_key(booking: StoredBooking) -> tuple[str, str]:
    record = booking.record() or {}
    try:
        start = parse_instant(record.get("starttime")).isoformat()
    except ValueError:
        start = ""
    return (start, booking.id)


def render_feed(
    config: Config,
    feed: FeedSettings,
    bookings: Iterable[StoredBooking],
    now: datetime,
    cache: RenderCache | None = None,
) -> RenderedFeed:
    """Render one feed from stored bookings; unmappable bookings are left out and listed in ``skipped``.

    With a ``cache``, events whose input is unchanged are taken from it
    instead of being serialized again. The bytes are the same either way.
    """
    settings = mapping_settings(config, feed)
    selection = select_with_reasons(feed, bookings, now)
    selected = sorted(selection.bookings, key=_start_key)
    event_cache = cache.for_settings(settings) if cache is not None else None

    events: list[bytes] = []
    skipped: dict[str, str] = {}
    for booking in selected:
        try:
            if event_cache is None:
                events.append(_render_one(booking, settings))
            else:
                events.append(event_cache.event_bytes(booking, _render_one))
        except MappingError as error:
            skipped[booking.id] = error.reason

    data = render_calendar(calendar_header(config, feed), events)
    path = feed_path(config.sync.state_dir, feed.name)
    excluded = dict(selection.excluded)
    if skipped:
        excluded[UNMAPPABLE] = len(skipped)
    return RenderedFeed(
        name=feed.name, path=path, data=data, events=len(events), skipped=skipped, excluded=excluded,
    )


def _render_one(booking: StoredBooking, settings: MappingSettings) -> bytes:
    record: dict[str, Any] = booking.record() or {}
    return render_event(record, sequence=booking.sequence, settings=settings, fallback_stamp=booking.first_seen)


def publish(path: Path, data: bytes, mode: int | None = FEED_FILE_MODE) -> bool:
    """Write ``data`` to ``path`` atomically; return False when the file already held these bytes.

    A symbolic link is followed and its target replaced. A path that is not
    a regular file (a device such as /dev/null, or a FIFO) is written to in
    place, because renaming over it would replace the device itself. The
    file gets ``mode``. With None, a replaced file keeps its mode and a new
    one gets 0666 less the umask, as ``open()`` would give it.
    """
    target = path.resolve()
    try:
        if target.exists() and not target.is_file():
            _write_in_place(target, data)
            return True
        if _holds(target, data):
            return False
        target.parent.mkdir(parents=True, exist_ok=True)
        _replace_atomically(target, data, mode if mode is not None else _default_mode(target))
    except OSError as error:
        raise PublishError(str(path), describe_os_error(error)) from error
    log.info("published %s (%d bytes)", path, len(data))
    return True


def describe_os_error(error: OSError) -> str:
    """Return the system's message for ``error`` with its errno name, such as "No space left on device (ENOSPC)"."""
    name = errno.errorcode.get(error.errno) if error.errno is not None else None
    message = error.strerror or str(error)
    return f"{message} ({name})" if name else message


def _holds(path: Path, data: bytes) -> bool:
    """Compare the file with ``data`` in chunks, so that a large feed is not held in memory twice."""
    try:
        with open(path, "rb") as file:
            if os.fstat(file.fileno()).st_size != len(data):
                return False
            view = memoryview(data)
            for offset in range(0, len(data), _COMPARE_CHUNK):
                chunk = view[offset : offset + _COMPARE_CHUNK]
                if file.read(len(chunk)) != chunk:
                    return False
            return True
    except FileNotFoundError:
        return False


def _write_in_place(path: Path, data: bytes) -> None:
    with open(path, "wb") as file:
        file.write(data)


def _default_mode(path: Path) -> int:
    try:
        return stat.S_IMODE(path.stat().st_mode)
    except FileNotFoundError:
        return 0o666 & ~_current_umask()


def _current_umask() -> int:
    """Read the umask without changing it, which would race with other threads creating files."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("Umask:"):
                return int(line.split()[1], 8)
    except (OSError, ValueError):
        pass
    return 0o022


def remove_stale_temporaries(path: Path) -> None:
    """Delete temporary files that a killed process left beside ``path``; call only under the sync lock.

    A file that cannot be deleted is logged and left, so that the publish
    that follows reports the real problem with the directory.
    """
    for stale in path.parent.glob(f".{path.name}.*.tmp"):
        try:
            stale.unlink(missing_ok=True)
        except OSError as error:
            log.warning("could not remove %s, left by an interrupted sync: %s", stale, describe_os_error(error))
            continue
        log.info("removed %s, left by an interrupted sync", stale)


def _replace_atomically(path: Path, data: bytes, mode: int) -> None:
    handle, temporary = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(handle, "wb") as file:
            file.write(data)
            file.flush()
            os.fsync(file.fileno())
        os.chmod(temporary, mode)
        os.replace(temporary, path)
    except BaseException:
        Path(temporary).unlink(missing_ok=True)
        raise
    _fsync_directory(path.parent)


def _fsync_directory(directory: Path) -> None:
    """Make the rename itself durable; some file systems refuse to open a directory, which is harmless."""
    try:
        descriptor = os.open(directory, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(descriptor)
    finally:
        os.close(descriptor)


def export_feed(config: Config, feed: FeedSettings) -> bytes:
    """Render one feed from the stored state alone, without contacting the API."""
    state_file = config.sync.state_dir / STATE_FILE
    if not state_file.exists():
        raise StateError(str(state_file), "no state yet; run 'calsync sync' first")

    # Stored events are reused, but nothing is written back: export runs
    # without the sync lock, and saving after rendering one feed would delete
    # the entries that only the other feeds use.
    with StateStore(state_file) as store:
        bookings = list(store.bookings().values())
        rendered = render_feed(config, feed, bookings, datetime.now(UTC), RenderCache(store))
    for booking_id, reason in sorted(rendered.skipped.items()):
        log.warning("skipped booking %s: %s", booking_id, reason)
    return rendered.data
