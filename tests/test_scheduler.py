"""The sync scheduler: a sync at start, one at a time, and syncs on request."""

import threading
from datetime import timedelta

from calsync.scheduler import SyncScheduler

WAIT = 10.0


class RecordingSync:
    """A sync stand-in that counts its runs, records their triggers, and can be held while running."""

    def __init__(self) -> None:
        self.runs = 0
        self.triggers: list[str] = []
        self.running = 0
        self.overlapped = False
        self.started = threading.Semaphore(0)
        self.release = threading.Event()
        self.release.set()
        self.lock = threading.Lock()

    def __call__(self, trigger: str) -> None:
        with self.lock:
            self.running += 1
            self.overlapped |= self.running > 1
            self.runs += 1
            self.triggers.append(trigger)
        self.started.release()
        self.release.wait(WAIT)
        with self.lock:
            self.running -= 1


def test_first_sync_runs_at_start():
    sync = RecordingSync()
    scheduler = SyncScheduler(sync, timedelta(hours=1))

    scheduler.start()
    try:
        assert sync.started.acquire(timeout=WAIT)
        assert scheduler.wait_idle(WAIT)
    finally:
        scheduler.shutdown()

    assert sync.runs == 1


def test_request_during_sync_runs_once_after_it():
    sync = RecordingSync()
    sync.release.clear()
    scheduler = SyncScheduler(sync, timedelta(hours=1))
    scheduler.start()
    try:
        assert sync.started.acquire(timeout=WAIT)
        assert scheduler.syncing

        assert scheduler.request_now()
        assert scheduler.request_now()
        sync.release.set()

        assert sync.started.acquire(timeout=WAIT)
        assert scheduler.wait_idle(WAIT)
    finally:
        scheduler.shutdown()

    assert sync.runs == 2
    assert not sync.overlapped
    assert sync.triggers == ["scheduled", "manual"]


def test_request_when_idle_starts_sync():
    sync = RecordingSync()
    scheduler = SyncScheduler(sync, timedelta(hours=1))
    scheduler.start()
    try:
        assert sync.started.acquire(timeout=WAIT)
        assert scheduler.wait_idle(WAIT)

        assert scheduler.request_now()

        assert sync.started.acquire(timeout=WAIT)
        assert scheduler.wait_idle(WAIT)
    finally:
        scheduler.shutdown()

    assert sync.runs == 2
    assert sync.triggers == ["scheduled", "manual"]


def test_crashing_sync_is_logged_and_survived(caplog):
    calls = threading.Semaphore(0)

    def crash(trigger: str) -> None:
        calls.release()
        raise RuntimeError("bug in a sync")

    scheduler = SyncScheduler(crash, timedelta(hours=1))
    scheduler.start()
    try:
        assert calls.acquire(timeout=WAIT)
        assert scheduler.wait_idle(WAIT)
        assert scheduler.request_now()
        assert calls.acquire(timeout=WAIT)
        assert scheduler.wait_idle(WAIT)
    finally:
        scheduler.shutdown()

    assert "sync crashed" in caplog.text
    assert "bug in a sync" in caplog.text


def test_no_requests_after_shutdown():
    sync = RecordingSync()
    scheduler = SyncScheduler(sync, timedelta(hours=1))
    scheduler.start()
    assert sync.started.acquire(timeout=WAIT)
    scheduler.shutdown()

    assert not scheduler.request_now()
    assert scheduler.wait_idle(WAIT)


def test_jitter_is_five_percent_of_interval():
    assert SyncScheduler(lambda trigger: None, timedelta(minutes=15)).jitter_seconds == 45
    assert SyncScheduler(lambda trigger: None, timedelta(seconds=10)).jitter_seconds == 1


def test_start_and_stop_logged(caplog):
    caplog.set_level("INFO", logger="calsync.scheduler")
    scheduler = SyncScheduler(lambda trigger: None, timedelta(minutes=15))

    scheduler.start()
    scheduler.wait_idle(WAIT)
    scheduler.shutdown()

    assert "scheduler started" in caplog.text
    assert "every 900s" in caplog.text
    assert "scheduler stopped" in caplog.text
