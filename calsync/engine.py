"""The sync engine: list, plan, fetch, commit, render, publish.

One ``SyncEngine.run`` pages through every booking and plans which details to
fetch: new and changed bookings, bookings without details, and a bounded
share of stale details. It fetches them concurrently and commits everything
in one SQLite transaction. Only then does it render and publish every feed,
so a sync that fails at any step publishes nothing and the last good feeds
stay in place. A sync that changed nothing skips rendering when every
published feed is still what the state, the settings and the clock would
render (see ``calsync.store.FeedRender``).

This module never imports the CLI or the feed server.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import threading
import time
from collections import Counter
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from typing import Any

from calsync.cashfin import CashfinClient, DetailsResult, Listing, client_for
from calsync.config import Config, FeedSettings
from calsync.errors import (
    CalsyncError,
    ListingIncompleteError,
    StateError,
    SyncCancelledError,
)
from calsync.event_cache import RenderCache, settings_key
from calsync.feeds import (
    RenderedFeed,
    calendar_header,
    feed_path,
    mapping_settings,
    publish,
    remove_stale_temporaries,
    render_feed,
)
from calsync.lock import sync_lock
from calsync.mapping import significant_fields
from calsync.store import (
    TRIGGER_COMMAND,
    FeedRender,
    RunRecord,
    StateStore,
    StoredBooking,
    open_or_rebuild,
    share_row_values,
)

log = logging.getLogger(__name__)


@dataclass
class SyncStats:
    """The counters of one sync, logged in its summary line and kept with its run record."""

    pages: int = 0
    list_requests: int = 0
    details_requests: int = 0
    # Requests by "<endpoint> <final HTTP status>", e.g. "details 200"; "error" when no response came.
    api_requests: dict[str, int] = field(default_factory=dict)
    details_fetched: int = 0
    details_failed: int = 0
    added: int = 0
    changed: int = 0
    removed: int = 0
    skipped: int = 0
    pending: int = 0
    events: dict[str, int] = field(default_factory=dict)
    bookings_by_status: dict[str, int] = field(default_factory=dict)
    published: list[str] = field(default_factory=list)
    seconds: float = 0.0
    # Seconds spent rendering every feed, including reading and writing the stored events.
    render_seconds: float = 0.0
    # Events serialized in this sync, and events whose stored bytes were reused.
    events_rendered: int = 0
    events_reused: int = 0
    # True when no feed could have changed, so the published files were kept without rendering.
    render_skipped: bool = False
    # The listing as Cashfin paged it: pagination.total of page 1, the unique bookings received, the page size
    # requested, and why the listing was incomplete, if it was. The status page shows them for a support request.
    listing_total: int = 0
    listing_received: int = 0
    page_size: int = 0
    listing_problems: list[str] = field(default_factory=list)
    # Per feed: "stored" (bookings in the state store), "events" (in the rendered feed), and the count left out
    # for each reason of calsync.feeds (such as "ended" or "without_details"). Set once the sync committed.
    coverage: dict[str, dict[str, int]] = field(default_factory=dict)


@dataclass
class Plan:
    """The actions of one sync, decided from the listing and the stored state alone.

    ``fetch`` is every id whose details are needed: ``new`` and ``changed``
    ids, ids stored without details, and ``refresh`` (stale details, at most
    the per-sync budget). ``removed`` is the ids of the stored bookings that a
    complete listing no longer shows.
    """

    new: list[str] = field(default_factory=list)
    changed: list[str] = field(default_factory=list)
    refresh: list[str] = field(default_factory=list)
    without_details: list[str] = field(default_factory=list)
    removed: list[str] = field(default_factory=list)

    @property
    def fetch(self) -> list[str]:
        return [*self.new, *self.changed, *self.without_details, *self.refresh]


@dataclass
class SyncResult:
    stats: SyncStats
    feeds: list[RenderedFeed]
    # What each published feed was rendered from, stored with the run record.
    renders: list[FeedRender] = field(default_factory=list)


def fingerprint(row: dict[str, Any]) -> str:
    """Hash a list row; any change to a list field changes the hash."""
    canonical = json.dumps(row, sort_keys=True, ensure_ascii=False, separators=(",", ":"), default=str)
    # surrogatepass: API text may hold lone surrogates (JSON allows \ud800), which strict UTF-8 refuses.
    return hashlib.sha256(canonical.encode("utf-8", "surrogatepass")).hexdigest()


def significant_hash(record: dict[str, Any]) -> str:
    """Hash the fields whose change must raise SEQUENCE (time, status, title, location)."""
    return hashlib.sha256(repr(significant_fields(record)).encode("utf-8")).hexdigest()


def refresh_budget(booking_count: int, config: Config) -> int:
    """Return how many stale details one sync refreshes.

    Spreading ``booking_count`` refreshes over ``details_max_age`` at one sync
    per ``interval`` gives each sync an equal share, at least one.
    """
    syncs_per_age = config.sync.details_max_age / config.sync.interval
    return max(1, math.ceil(booking_count / max(syncs_per_age, 1.0)))


class SyncEngine:
    """Runs syncs for one configuration; ``client_factory`` lets tests set client options.

    ``last_stats`` contains the counters of the latest run, failed runs included.
    """

    def __init__(self, config: Config, client_factory: Callable[[Config], CashfinClient] | None = None) -> None:
        self.config = config
        self.client_factory = client_factory or client_for
        self.last_stats = SyncStats()
        self._cancel: threading.Event | None = None

    def run(
        self, lock_wait: float = 5.0, cancel: threading.Event | None = None, trigger: str = TRIGGER_COMMAND,
    ) -> SyncResult:
        """Run one sync under the state directory's lock; raise ``CalsyncError`` when it fails.

        When ``cancel`` is set before the commit or before publishing, the
        sync stops there with ``SyncCancelledError`` and publishes nothing.
        ``trigger`` (one of the ``TRIGGER_*`` values of ``calsync.store``)
        is stored with the run record.
        """
        self._cancel = cancel
        with sync_lock(self.config.sync.state_dir, wait=lock_wait):
            with self._open_store() as store:
                return self._run_locked(store, trigger)

    def _open_store(self) -> StateStore:
        """Open the state database; a damaged one is moved aside and rebuilt by this full sync."""
        return open_or_rebuild(self.config.sync.state_dir)

    def _check_cancel(self, step: str) -> None:
        if self._cancel is not None and self._cancel.is_set():
            raise SyncCancelledError(step)

    def _run_locked(self, store: StateStore, trigger: str) -> SyncResult:
        started = datetime.now(UTC)
        clock = time.monotonic()
        stats = SyncStats()
        self.last_stats = stats
        run = RunRecord(started_at=started, outcome="running", trigger=trigger)

        with self.client_factory(self.config) as client:
            try:
                result = self._sync(store, client, stats, started)
            except CalsyncError as error:
                self._count_requests(stats, client)
                self._record_failure(store, run, stats, clock, error)
                raise

        stats.seconds = round(time.monotonic() - clock, 3)
        self._record_success(store, run, stats, result.renders)
        self._log_summary(stats)
        return result

    def _sync(self, store: StateStore, client: CashfinClient, stats: SyncStats, now: datetime) -> SyncResult:
        bookings = self._fetch_and_commit(store, client, stats, now)
        revision = store.revision()
        feeds = self._current_feeds(store, revision, now)
        if feeds is None:
            feeds = self._render_all(store, bookings, now, stats)
        else:
            stats.render_skipped = True
            self._count_current(feeds, bookings, stats)
        self._check_cancel("publishing")
        for feed in feeds:
            remove_stale_temporaries(feed.path)
            if publish(feed.path, feed.data):
                stats.published.append(feed.name)
        renders = [self._render_record(feed, revision, now) for feed in feeds]
        return SyncResult(stats=stats, feeds=feeds, renders=renders)

    def _fetch_and_commit(
        self, store: StateStore, client: CashfinClient, stats: SyncStats, now: datetime
    ) -> list[StoredBooking]:
        """List, fetch and commit; return the bookings that are not removed, as the store now contains them.

        The listing and the fetched details are dropped on return, so that
        rendering does not hold a second copy of the unchanged bookings.
        """
        # The listing mostly waits for the network, so the stored bookings are read meanwhile.
        with ThreadPoolExecutor(max_workers=1, thread_name_prefix="calsync-listing") as pool:
            pending = pool.submit(client.list_bookings)
            stored = store.bookings(include_removed=True)
            listing = pending.result()
        stats.pages = listing.pages
        stats.listing_total = listing.total
        stats.listing_received = len(listing.rows)
        stats.page_size = listing.page_size
        stats.listing_problems = list(listing.problems)
        if not listing.complete:
            raise ListingIncompleteError(listing.total, len(listing.rows), "; ".join(listing.problems))

        plan = self.plan(listing, stored, now)
        details = client.fetch_details(plan.fetch, cancel=self._cancel)
        self._count_requests(stats, client)

        changes = apply_changes(listing, stored, plan, details, now, stats)
        removed = plan.removed + sorted(details.missing)
        self._check_cancel("the commit")
        # Unchanged bookings are not rewritten (last_seen included), so a sync that changed nothing writes nothing.
        with store.transaction():
            store.save_bookings(changes)
            store.mark_removed(removed, now)
            if changes or removed:
                store.bump_revision()
        return bookings_after(stored, changes, removed)

    def _render_digest(self, feed: FeedSettings, revision: int) -> str:
        """Hash the state revision and everything else that a feed's bytes depend on, except the clock."""
        settings = mapping_settings(self.config, feed)
        document = [
            revision, settings_key(settings), repr(calendar_header(self.config, feed)),
            list(feed.statuses), list(feed.types), feed.past_days,
        ]
        return hashlib.sha256(json.dumps(document).encode("utf-8")).hexdigest()

    def _current_feeds(self, store: StateStore, revision: int, now: datetime) -> list[RenderedFeed] | None:
        """Return every feed as published when none can have changed since, else None.

        A feed is current when it was rendered from the same state revision
        and settings, no booking has aged out of its past_days window since,
        and its file still has the published bytes. Then the sync need not
        render at all. Only all feeds at once are taken, because the event
        cache's clean-up needs a pass over every feed.
        """
        feeds = []
        for feed in self.config.feeds:
            record = store.feed_render(feed.name)
            if record is None or record.digest != self._render_digest(feed, revision):
                return None
            if now < record.rendered_at or (record.valid_until is not None and now >= record.valid_until):
                return None
            path = feed_path(self.config.sync.state_dir, feed.name)
            try:
                data = path.read_bytes()
            except OSError:
                return None
            if hashlib.sha256(data).hexdigest() != record.sha256:
                return None
            feeds.append(RenderedFeed(
                name=feed.name, path=path, data=data, events=record.events, skipped=record.skipped,
                excluded=record.excluded, valid_until=record.valid_until,
            ))
        return feeds

    def _render_record(self, feed: RenderedFeed, revision: int, now: datetime) -> FeedRender:
        settings = next(settings for settings in self.config.feeds if settings.name == feed.name)
        return FeedRender(
            name=feed.name, digest=self._render_digest(settings, revision), rendered_at=now,
            valid_until=feed.valid_until, sha256=hashlib.sha256(feed.data).hexdigest(), events=feed.events,
            skipped=feed.skipped, excluded=feed.excluded,
        )

    def plan(self, listing: Listing, stored: dict[str, StoredBooking], now: datetime) -> Plan:
        """Decide which details to fetch and which bookings were removed; the listing must be complete."""
        plan = Plan()
        for booking_id, row in listing.rows.items():
            known = stored.get(booking_id)
            if known is None or known.removed_at is not None:
                plan.new.append(booking_id)
            elif known.fingerprint != fingerprint(row):
                plan.changed.append(booking_id)
            elif known.details is None:
                plan.without_details.append(booking_id)

        plan.removed = sorted(
            booking_id
            for booking_id, known in stored.items()
            if known.removed_at is None and booking_id not in listing.rows
        )
        plan.refresh = self._stale(listing, stored, plan, now)
        return plan

    def _stale(self, listing: Listing, stored: dict[str, StoredBooking], plan: Plan, now: datetime) -> list[str]:
        """Pick the stalest details beyond ``details_max_age``, at most the per-sync budget."""
        oldest_allowed = now - self.config.sync.details_max_age
        planned = set(plan.fetch)
        stale = [
            (known.details_fetched_at, booking_id)
            for booking_id, known in stored.items()
            if booking_id in listing.rows
            and booking_id not in planned
            and known.details_fetched_at is not None
            and known.details_fetched_at < oldest_allowed
        ]
        stale.sort()
        budget = refresh_budget(len(listing.rows), self.config)
        return [booking_id for _, booking_id in stale[:budget]]

    def _render_all(
        self, store: StateStore, bookings: list[StoredBooking], now: datetime, stats: SyncStats
    ) -> list[RenderedFeed]:
        clock = time.monotonic()
        cache = RenderCache(store)
        feeds = [render_feed(self.config, feed, bookings, now, cache) for feed in self.config.feeds]
        try:
            cache.save()
        except StateError as error:
            log.warning("could not store the rendered events, so the next sync renders them again: %s", error)
        stats.render_seconds = round(time.monotonic() - clock, 3)
        stats.events_rendered = cache.rendered
        stats.events_reused = cache.reused

        skipped = self._count_current(feeds, bookings, stats)
        for booking_id, reason in sorted(skipped.items()):
            log.warning("skipped booking %s: %s", booking_id, reason)
        return feeds

    @staticmethod
    def _count_current(feeds: list[RenderedFeed], bookings: list[StoredBooking], stats: SyncStats) -> dict[str, str]:
        """Fill the per-feed counters of ``stats`` and return the unmappable bookings of every feed."""
        skipped: dict[str, str] = {}
        for feed in feeds:
            stats.events[feed.name] = feed.events
            stats.coverage[feed.name] = {"stored": len(bookings), "events": feed.events, **feed.excluded}
            skipped.update(feed.skipped)
        stats.skipped = len(skipped)
        stats.pending = sum(1 for booking in bookings if booking.details is None)
        stats.bookings_by_status = dict(Counter(str(booking.row.get("status")) for booking in bookings))
        return skipped

    @staticmethod
    def _count_requests(stats: SyncStats, client: CashfinClient) -> None:
        stats.list_requests = client.request_counts["list"]
        stats.details_requests = client.request_counts["details"]
        stats.api_requests = {f"{endpoint} {status}": count for (endpoint, status), count in client.status_counts.items()}

    @staticmethod
    def _record_success(store: StateStore, run: RunRecord, stats: SyncStats, renders: list[FeedRender]) -> None:
        run.outcome = "success"
        run.finished_at = datetime.now(UTC)
        run.seconds = stats.seconds
        run.stats = asdict(stats)
        with store.transaction():
            store.add_run(run)
            store.save_feed_renders(renders)

    @staticmethod
    def _record_failure(store: StateStore, run: RunRecord, stats: SyncStats, clock: float, error: Exception) -> None:
        stats.seconds = round(time.monotonic() - clock, 3)
        run.outcome = "failed"
        run.finished_at = datetime.now(UTC)
        run.seconds = stats.seconds
        run.error = str(error)
        run.error_type = type(error).__name__
        run.stats = asdict(stats)
        try:
            with store.transaction():
                store.add_run(run)
        except StateError as state_error:
            log.warning("could not record the failed run: %s", state_error)
        # A sync stopped by shutdown is expected, so it must not raise an ERROR alert.
        level = logging.INFO if isinstance(error, SyncCancelledError) else logging.ERROR
        # Feeds are published one by one, so a write that fails can follow feeds already replaced.
        untouched = "other feeds left as they were" if stats.published else "feeds left as they were"
        published = f" (published before the failure: {', '.join(stats.published)})" if stats.published else ""
        log.log(
            level, "sync failed after %.2fs, %s%s: %s", stats.seconds, untouched, published, error,
            extra={"fields": {"event": "sync_failed", "error": str(error), **asdict(stats)}},
        )
        if isinstance(error, CalsyncError):
            error.logged = True

    @staticmethod
    def _log_summary(stats: SyncStats) -> None:
        events = ", ".join(f"{name}={count}" for name, count in stats.events.items())
        if stats.render_skipped:
            rendering = "not rendered (nothing changed)"
        else:
            rendering = (
                f"rendered in {stats.render_seconds:.2f}s ({stats.events_rendered} serialized, "
                f"{stats.events_reused} reused)"
            )
        log.info(
            "sync finished in %.2fs: %d pages, %d details fetched (%d failed), %d added, %d changed, "
            "%d removed, %d skipped, %d without details; events: %s; %s; published: %s",
            stats.seconds, stats.pages, stats.details_fetched, stats.details_failed, stats.added,
            stats.changed, stats.removed, stats.skipped, stats.pending, events, rendering,
            ", ".join(stats.published) or "none (unchanged)",
            extra={"fields": {"event": "sync_finished", **asdict(stats)}},
        )


def bookings_after(
    stored: dict[str, StoredBooking], changes: list[StoredBooking], removed: list[str]
) -> list[StoredBooking]:
    """Return the bookings that are not removed once ``changes`` and ``removed`` are committed.

    The result equals what ``StateStore.bookings()`` would read back after the
    commit, except for ``last_seen``, which no feed uses. Building it from
    memory spares reading and decoding every booking a second time. ``stored``
    is updated in place.
    """
    for booking in changes:
        stored[booking.id] = booking
    for booking_id in removed:
        stored.pop(booking_id, None)
    return [booking for booking in stored.values() if booking.removed_at is None]


def apply_changes(
    listing: Listing,
    stored: dict[str, StoredBooking],
    plan: Plan,
    details: DetailsResult,
    now: datetime,
    stats: SyncStats,
) -> list[StoredBooking]:
    """Build the bookings to write: new ones, changed ones, and ones whose details were refreshed."""
    stats.details_fetched = len(details.found)
    stats.details_failed = len(details.failed)
    stats.removed = len(plan.removed) + len(details.missing)

    changes = []
    for booking_id, row in listing.rows.items():
        if booking_id in details.missing:
            continue
        known = stored.get(booking_id)
        fresh_details = details.found.get(booking_id)
        kind = _change_kind(known, row, fresh_details)
        if kind is None:
            continue

        changes.append(_updated_booking(booking_id, row, known, fresh_details, now))
        if kind == "added":
            stats.added += 1
        elif kind == "changed":
            stats.changed += 1
    return changes


def _change_kind(known: StoredBooking | None, row: dict[str, Any], fresh_details: dict[str, Any] | None) -> str | None:
    """Classify a listed booking: added, changed, refreshed (same data, new fetch time) or None (untouched)."""
    if known is None or known.removed_at is not None:
        return "added"
    if known.fingerprint != fingerprint(row):
        return "changed"
    if fresh_details is None:
        return None
    return "refreshed" if fresh_details == known.details else "changed"


def _updated_booking(
    booking_id: str,
    row: dict[str, Any],
    known: StoredBooking | None,
    fresh_details: dict[str, Any] | None,
    now: datetime,
) -> StoredBooking:
    """Return the booking to store, keeping the last known details when none were fetched."""
    details = known.details if known else None
    details_fetched_at = known.details_fetched_at if known else None
    if fresh_details is not None:
        details, details_fetched_at = fresh_details, now

    booking = StoredBooking(
        id=booking_id,
        row=share_row_values(row, details),
        fingerprint=fingerprint(row),
        significant="",
        first_seen=known.first_seen if known else now,
        last_seen=now,
        details=details,
        details_fetched_at=details_fetched_at,
    )
    booking.significant = significant_hash(booking.record() or row)
    booking.sequence = _next_sequence(known, booking.significant)
    return booking


def _next_sequence(known: StoredBooking | None, significant: str) -> int:
    """Keep SEQUENCE for an unchanged event; raise it when a significant field changed or the id came back.

    A booking stored without details was never in a feed, so its first
    details do not count as a change.
    """
    if known is None:
        return 0
    if known.details is None:
        return known.sequence
    if known.removed_at is not None or known.significant != significant:
        return known.sequence + 1
    return known.sequence
