"""The sync scheduler of ``calsync serve``, on APScheduler 3.x.

One job runs the sync at start and then every ``sync.interval``, shifted by
a random jitter of up to 5% of the interval so that many daemons started
together do not reach the API at the same moment. ``max_instances=1`` and
``coalesce=True`` mean that a sync slower than the interval delays the next
one instead of piling up. ``request_now`` queues one extra sync: it starts
at once when none is running, or right after the running one. ``run_sync``
gets the trigger of each run: ``manual`` when a request was pending as it
started, ``scheduled`` otherwise.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from datetime import UTC, datetime, timedelta

from apscheduler.events import (
    EVENT_JOB_ERROR,
    EVENT_JOB_MAX_INSTANCES,
    EVENT_JOB_MISSED,
    EVENT_SCHEDULER_SHUTDOWN,
    EVENT_SCHEDULER_STARTED,
    JobEvent,
    SchedulerEvent,
)
from apscheduler.executors.pool import ThreadPoolExecutor
from apscheduler.schedulers.background import BackgroundScheduler
from apscheduler.triggers.interval import IntervalTrigger

from calsync.store import TRIGGER_MANUAL, TRIGGER_SCHEDULED

log = logging.getLogger(__name__)

JOB_ID = "sync"
JITTER_FRACTION = 0.05


class SyncScheduler:
    """Runs ``run_sync`` at start and every ``interval``, never two at once.

    ``run_sync`` should handle its own errors; one that escapes is logged
    with its traceback and the next tick runs as usual.
    """

    def __init__(self, run_sync: Callable[[str], None], interval: timedelta) -> None:
        self.run_sync = run_sync
        self.interval = interval
        self.jitter_seconds = max(1, int(interval.total_seconds() * JITTER_FRACTION))
        self._pending = threading.Event()
        self._idle = threading.Event()
        self._idle.set()
        self._stopping = threading.Event()
        self._scheduler = BackgroundScheduler(
            timezone=UTC,
            executors={"default": ThreadPoolExecutor(max_workers=1)},
            job_defaults={"max_instances": 1, "coalesce": True},
        )
        self._scheduler.add_listener(self._on_scheduler_event, EVENT_SCHEDULER_STARTED | EVENT_SCHEDULER_SHUTDOWN)
        self._scheduler.add_listener(self._on_job_event, EVENT_JOB_MISSED | EVENT_JOB_MAX_INSTANCES | EVENT_JOB_ERROR)

    def start(self) -> None:
        """Start the scheduler; the first sync begins at once."""
        trigger = IntervalTrigger(seconds=int(self.interval.total_seconds()), jitter=self.jitter_seconds, timezone=UTC)
        self._scheduler.add_job(
            self._run,
            trigger,
            id=JOB_ID,
            name="calsync sync",
            next_run_time=datetime.now(UTC),
            # A run delayed past its time (a busy machine, a suspended container) still
            # runs once within an interval, instead of being dropped.
            misfire_grace_time=int(self.interval.total_seconds()),
        )
        self._scheduler.start()

    @property
    def syncing(self) -> bool:
        return not self._idle.is_set()

    def request_now(self) -> bool:
        """Queue one sync as soon as possible; return False once shutdown has begun."""
        if self._stopping.is_set():
            return False
        self._pending.set()
        if not self.syncing:
            self._scheduler.modify_job(JOB_ID, next_run_time=datetime.now(UTC))
        log.info("sync requested; it starts %s", "after the running one" if self.syncing else "now")
        return True

    def shutdown(self) -> None:
        """Stop scheduling new syncs; a running sync goes on (see ``wait_idle``)."""
        self._stopping.set()
        self._scheduler.shutdown(wait=False)

    def wait_idle(self, timeout: float) -> bool:
        """Wait up to ``timeout`` seconds for a running sync to end; return whether none is running."""
        return self._idle.wait(timeout)

    def _run(self) -> None:
        self._idle.clear()
        try:
            self._run_until_no_request()
        finally:
            self._idle.set()

    def _run_until_no_request(self) -> None:
        while True:
            # A scheduled tick that finds a request pending serves that request, so it counts as manual.
            trigger = TRIGGER_MANUAL if self._pending.is_set() else TRIGGER_SCHEDULED
            self._pending.clear()
            try:
                self.run_sync(trigger)
            except Exception:
                log.exception("sync crashed; the next one runs at the next tick")
            if self._stopping.is_set() or not self._pending.is_set():
                return
            log.info("running the sync that was requested during the last one")

    def _on_scheduler_event(self, event: SchedulerEvent) -> None:
        if event.code == EVENT_SCHEDULER_STARTED:
            log.info(
                "scheduler started: a sync now and every %ds, with up to %ds of jitter",
                self.interval.total_seconds(), self.jitter_seconds,
            )
        else:
            log.info("scheduler stopped")

    def _on_job_event(self, event: JobEvent) -> None:
        if event.code == EVENT_JOB_MISSED:
            log.warning("the sync due at %s was missed; the next one runs at the next tick", event.scheduled_run_time)
        elif event.code == EVENT_JOB_MAX_INSTANCES:
            log.warning("a sync was due while the previous one was still running; skipped it")
        else:
            log.error("the sync job failed: %s", getattr(event, "exception", None))
