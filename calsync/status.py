"""The outcome of recent syncs, which decides whether ``/readyz`` reports the daemon ready.

The daemon is ready once a sync has succeeded, and stops being ready when the
last success is older than ``STALE_INTERVALS`` sync intervals, so that an
orchestrator notices a daemon whose feeds no longer change. It is not ready
either while the last sync failed because it could not write a feed file or
use the state database, since only the operator can fix that. A restarted
daemon reads its last success from the state store and is ready at once when
that success is recent.
"""

from __future__ import annotations

import threading
from datetime import datetime, timedelta
from pathlib import Path

from calsync.durations import format_duration
from calsync.errors import StateError
from calsync.store import STATE_FILE, StateStore

# The daemon stays ready through two missed syncs in a row, but not through a third.
STALE_INTERVALS = 3


class ServiceStatus:
    """Times of the last successful and the last failed sync of this daemon, safe to use from any thread.

    ``last_success`` is the end of the last successful sync, or None before
    the first one. Every datetime must be timezone-aware.
    """

    def __init__(self, last_success: datetime | None = None) -> None:
        self._lock = threading.Lock()
        self._last_success = last_success
        self._last_failure: datetime | None = None
        self._last_error: str | None = None
        self._publish_failed = False
        self._state_failed = False
        self._last_skip: tuple[datetime, str] | None = None

    @classmethod
    def from_store(cls, state_dir: Path) -> ServiceStatus:
        """Create a status that starts from the last successful run in the state store of ``state_dir``.

        A missing state database means no sync has run yet, and it is not created here.
        A database that cannot be read gives a status without a last success.
        """
        if not (state_dir / STATE_FILE).exists():
            return cls()
        try:
            with StateStore.open_in(state_dir) as store:
                run = store.last_success()
        except StateError:
            return cls()
        return cls(last_success=run.finished_at if run else None)

    def record_success(self, finished_at: datetime) -> None:
        with self._lock:
            self._last_success = finished_at

    def record_failure(
        self, finished_at: datetime, error: str, publish_failed: bool = False, state_failed: bool = False
    ) -> None:
        """Record a failed sync.

        ``publish_failed`` is true when the sync failed while writing a feed
        file, and ``state_failed`` when it could not open, read or write the
        state database.
        """
        with self._lock:
            self._last_failure = finished_at
            self._last_error = error
            self._publish_failed = publish_failed
            self._state_failed = state_failed

    def record_skipped(self, when: datetime, reason: str) -> None:
        """Record a scheduled sync that did not run, for example because another process held the sync lock."""
        with self._lock:
            self._last_skip = (when, reason)

    @property
    def last_skip(self) -> tuple[datetime, str] | None:
        """Time and reason of the last sync that was skipped without running, or None."""
        with self._lock:
            return self._last_skip

    @property
    def last_success(self) -> datetime | None:
        with self._lock:
            return self._last_success

    @property
    def last_failure(self) -> datetime | None:
        with self._lock:
            return self._last_failure

    @property
    def last_error(self) -> str | None:
        """Message of the last failed sync, or None if no sync has failed."""
        with self._lock:
            return self._last_error

    @property
    def publish_failed(self) -> bool:
        """Whether the last failed sync failed while writing a feed file."""
        with self._lock:
            return self._publish_failed

    @property
    def state_failed(self) -> bool:
        """Whether the last failed sync failed because the state database could not be used."""
        with self._lock:
            return self._state_failed

    def ready(self, now: datetime, interval: timedelta) -> tuple[bool, str]:
        """Return whether the daemon is ready at ``now`` and a one-line reason.

        The reason names the time of the last success, and never the error of
        a failed sync, because ``/readyz`` needs no authentication.
        """
        with self._lock:
            last_success = self._last_success
            last_failure = self._last_failure
            publish_failed = self._publish_failed
            state_failed = self._state_failed
        failed_last = last_failure is not None and (last_success is None or last_failure > last_success)
        if failed_last and publish_failed:
            return False, "the last sync could not write a feed file; the previous feeds are still served"
        if failed_last and state_failed:
            return False, "the last sync could not use the state database; the previous feeds are still served"
        if last_success is None:
            return False, "no successful sync yet"

        limit = interval * STALE_INTERVALS
        stamp = last_success.isoformat(timespec="seconds")
        if now - last_success > limit:
            return False, f"last successful sync at {stamp} is older than {format_duration(limit)}"
        return True, f"last successful sync at {stamp}"
