"""Prometheus metrics of ``calsync serve``, served at ``/metrics``.

``Metrics`` owns its own ``CollectorRegistry`` rather than the global one, so
that each server, and each test, gets fresh series. Every metric name starts
with ``calsync_``:

- ``calsync_sync_duration_seconds`` (histogram): duration of each sync;
- ``calsync_sync_runs_total{outcome}`` (counter): syncs by ``success`` or ``failed``;
- ``calsync_last_success_timestamp_seconds`` (gauge): end of the last successful sync, in Unix seconds;
- ``calsync_bookings{status}`` (gauge): bookings in the state store by status;
- ``calsync_api_requests_total{endpoint,status}`` (counter): Cashfin API requests by
  endpoint (``list``, ``details``) and final HTTP status, ``error`` when no response arrived;
- ``calsync_feed_requests_total{code}`` (counter): HTTP requests to ``/feeds/`` by response status code;
- ``calsync_feed_events{feed}`` (gauge): events in each feed after the last successful sync.
"""

from __future__ import annotations

import threading
from collections import Counter as Tally
from collections.abc import Iterable, Mapping
from datetime import datetime
from typing import TYPE_CHECKING

from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    generate_latest,
)

if TYPE_CHECKING:
    from calsync.engine import SyncStats
    from calsync.store import StoredBooking

# Syncs take from a fraction of a second (nothing changed) to minutes (a first sync of many bookings).
SYNC_SECONDS_BUCKETS = (0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0, 600.0)
OUTCOMES = ("success", "failed")


class Metrics:
    """Metrics of one calsync process. Every method is safe to call from any thread."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self._booking_statuses: set[str] = set()
        self._bookings_lock = threading.Lock()

        self.sync_duration = Histogram(
            "calsync_sync_duration_seconds", "Duration of each sync, successful or failed.",
            buckets=SYNC_SECONDS_BUCKETS, registry=self.registry,
        )
        self.sync_runs = Counter(
            "calsync_sync_runs", "Syncs by outcome.", ["outcome"], registry=self.registry,
        )
        self.last_success = Gauge(
            "calsync_last_success_timestamp_seconds", "End of the last successful sync, in Unix seconds.",
            registry=self.registry,
        )
        self.bookings = Gauge(
            "calsync_bookings", "Bookings in the state store by status, after the last successful sync.",
            ["status"], registry=self.registry,
        )
        self.api_requests = Counter(
            "calsync_api_requests", "Cashfin API requests by endpoint and final HTTP status ('error': no response).",
            ["endpoint", "status"], registry=self.registry,
        )
        self.feed_requests = Counter(
            "calsync_feed_requests", "HTTP requests for feeds by response status code.", ["code"],
            registry=self.registry,
        )
        self.feed_events = Gauge(
            "calsync_feed_events", "Events in each feed after the last successful sync.", ["feed"],
            registry=self.registry,
        )

        # Both outcomes exist from the start, so that rate() and alerts see a 0 before the first failure.
        for outcome in OUTCOMES:
            self.sync_runs.labels(outcome=outcome)

    def observe_sync_success(
        self, stats: SyncStats, bookings_by_status: Mapping[str, int], finished_at: datetime
    ) -> None:
        """Record a successful sync: its duration, API requests, bookings and feed events.

        ``finished_at`` must be timezone-aware. ``bookings_by_status`` replaces
        the previous counts, and a status missing from it drops to 0.
        """
        self.sync_duration.observe(stats.seconds)
        self.sync_runs.labels(outcome="success").inc()
        self.last_success.set(finished_at.timestamp())
        self._count_api_requests(api_request_counts(stats.api_requests))
        self._set_bookings(bookings_by_status)
        for feed, events in stats.events.items():
            self.feed_events.labels(feed=feed).set(events)

    def observe_sync_failure(self, seconds: float, api_requests: Mapping[tuple[str, str], int]) -> None:
        """Record a failed sync: its duration and the API requests it made, by ``(endpoint, status)``."""
        self.sync_duration.observe(seconds)
        self.sync_runs.labels(outcome="failed").inc()
        self._count_api_requests(api_requests)

    def observe_feed_request(self, code: int) -> None:
        """Count one HTTP request for a feed by its response status code."""
        self.feed_requests.labels(code=str(int(code))).inc()

    def render(self) -> tuple[bytes, str]:
        """Return the Prometheus text exposition of every metric and its content type."""
        return generate_latest(self.registry), CONTENT_TYPE_LATEST

    def _count_api_requests(self, api_requests: Mapping[tuple[str, str], int]) -> None:
        for (endpoint, status), count in api_requests.items():
            if count > 0:
                self.api_requests.labels(endpoint=endpoint, status=status).inc(count)

    def _set_bookings(self, bookings_by_status: Mapping[str, int]) -> None:
        # The lock keeps the updates of two syncs from interleaving. A scrape may still see a mix for an instant.
        with self._bookings_lock:
            self._booking_statuses.update(bookings_by_status)
            for status in sorted(self._booking_statuses):
                self.bookings.labels(status=status).set(bookings_by_status.get(status, 0))


def api_request_counts(api_requests: Mapping[str, int]) -> dict[tuple[str, str], int]:
    """Convert ``SyncStats.api_requests`` keys such as ``"details 200"`` to ``("details", "200")``.

    A key without a space counts under the status ``unknown``.
    """
    counts: Tally[tuple[str, str]] = Tally()
    for key, count in api_requests.items():
        endpoint, _, status = key.partition(" ")
        counts[(endpoint, status or "unknown")] += count
    return dict(counts)


def count_bookings_by_status(bookings: Iterable[StoredBooking]) -> dict[str, int]:
    """Count bookings that are not removed by the ``status`` of their list row (``unknown`` if missing)."""
    tally: Tally[str] = Tally()
    for booking in bookings:
        if booking.removed_at is None:
            tally[str(booking.row.get("status") or "unknown")] += 1
    return dict(tally)
