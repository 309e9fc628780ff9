"""Syncs racing each other: the daemon's schedule, POST /sync and cron `calsync sync` on one state_dir.

A real `calsync serve` syncs every 2 seconds against a slow sandbox while
threads keep requesting syncs over HTTP, change bookings, and read the feed
over HTTP and from disk, and `calsync sync` processes start beside it. The
sync lock must keep every sync alone: the run records in the state
database, each written between taking and releasing the lock, must not
overlap. A cron sync that finds the lock held waits up to ``--lock-wait``
seconds, then exits with code 3 and names the holder.
"""

from __future__ import annotations

import hashlib
import sqlite3
import subprocess
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

import pytest
import requests

from calsync.sandbox import Sandbox
from tests.daemon import ServeProcess, write_config
from tests.helpers import parse_both
from tests.privileges import Runner

SECRET = "race-secret"
TOKEN = "race-token"
ADMIN_TOKEN = "race-admin"
BOOKINGS = 300
# How long the threads keep requesting syncs, changing bookings and reading feeds.
RACE_SECONDS = 12.0
EXIT_OK = 0
EXIT_LOCKED = 3


@pytest.fixture
def api() -> Iterator[Sandbox]:
    # At 20 ms a request, and with details older than 4 s fetched again, a sync takes 0.4 to 3 s here,
    # long enough for the others to collide with it.
    with Sandbox(secret=SECRET, count=BOOKINGS, latency_ms=20) as sandbox:
        yield sandbox


@dataclass
class Run:
    """One row of the runs table."""

    started: datetime
    finished: datetime
    outcome: str
    error: str | None


def read_runs(database: Path) -> list[Run]:
    with sqlite3.connect(database) as connection:
        rows = connection.execute("SELECT started_at, finished_at, outcome, error FROM runs ORDER BY started_at")
        runs = [Run(datetime.fromisoformat(row[0]), datetime.fromisoformat(row[1]), row[2], row[3]) for row in rows]
        integrity = connection.execute("PRAGMA integrity_check").fetchone()[0]
    connection.close()
    assert integrity == "ok"
    return runs


class FeedChecker:
    """Checks every feed version read during the race once: complete, parseable, with the expected events."""

    def __init__(self, events: int) -> None:
        self.events = events
        self.checked: set[str] = set()
        self.reads = 0
        self.problems: list[str] = []
        self._lock = threading.Lock()

    def check(self, data: bytes, source: str) -> None:
        digest = hashlib.sha256(data).hexdigest()
        with self._lock:
            self.reads += 1
            if digest in self.checked:
                return
            self.checked.add(digest)
        try:
            assert data.startswith(b"BEGIN:VCALENDAR\r\n"), "does not start with BEGIN:VCALENDAR"
            assert data.endswith(b"END:VCALENDAR\r\n"), "does not end with END:VCALENDAR"
            events = len(parse_both(data).walk("VEVENT"))
            assert events == self.events, f"{events} events instead of {self.events}"
        except AssertionError as error:
            with self._lock:
                self.problems.append(f"{source}: {error}")


def repeat_until(stop: threading.Event, pause: float, action: Callable[[], None], problems: list[str]) -> None:
    """Call ``action`` every ``pause`` seconds until ``stop`` is set; record any exception in ``problems``."""
    while not stop.is_set():
        try:
            action()
        except Exception as error:  # the test reports every failure of a background thread at the end
            problems.append(f"{action.__name__}: {error!r}")
        stop.wait(pause)


def test_daemon_http_and_cron_syncs_never_overlap(tmp_path, api):
    runner = Runner(unprivileged=False)
    state_dir = tmp_path / "state"
    config = write_config(
        tmp_path / "calsync.toml", base_url=api.base_url, secret=SECRET, state_dir=state_dir, token=TOKEN,
        admin_token=ADMIN_TOKEN, interval="2s", sync='details_max_age = "4s"', feeds="past_days = 4000",
    )
    feed_file = state_dir / "feeds" / "bookings.ics"
    daemon = ServeProcess(runner, config, tmp_path / "serve.log", admin_token=ADMIN_TOKEN)
    stop = threading.Event()
    problems: list[str] = []
    sync_responses: list[int] = []
    crons: list[tuple[str, subprocess.Popen]] = []
    try:
        daemon.wait_for("/readyz", 200)
        checker = FeedChecker(len(parse_both(daemon.feed(TOKEN).content).walk("VEVENT")))
        ids = api.ids()

        def request_sync() -> None:
            response = requests.post(
                f"{daemon.url}/sync", headers={"Authorization": f"Bearer {ADMIN_TOKEN}"}, timeout=10
            )
            sync_responses.append(response.status_code)

        def change_booking() -> None:
            api.update(ids[len(sync_responses) % len(ids)], title=f"Renamed at {time.monotonic():.3f}")

        def read_served_feed() -> None:
            response = daemon.feed(TOKEN)
            assert response.status_code == 200, response.status_code
            checker.check(response.content, "HTTP")

        def read_feed_file() -> None:
            checker.check(feed_file.read_bytes(), "file")

        actions = [(request_sync, 0.05), (request_sync, 0.13), (change_booking, 0.3),
                   (read_served_feed, 0.02), (read_feed_file, 0.02)]
        threads = [threading.Thread(target=repeat_until, args=(stop, pause, action, problems))
                   for action, pause in actions]
        for thread in threads:
            thread.start()

        for wave in range(2):
            for lock_wait in ("0", "0", "30", "30"):
                command = runner.command("--config", str(config), "sync", "--lock-wait", lock_wait)
                process = subprocess.Popen(
                    command, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, env=runner.environment()
                )
                crons.append((lock_wait, process))
            time.sleep(RACE_SECONDS / 2)

        stop.set()
        for thread in threads:
            thread.join(timeout=30)
        results = [(lock_wait, process.wait(timeout=120), process.stderr.read()) for lock_wait, process in crons]
    finally:
        stop.set()
        for _, process in crons:
            if process.poll() is None:
                process.kill()
                process.wait()
            process.stderr.close()
        returncode = daemon.stop()
    log = daemon.log()
    runs = read_runs(state_dir / "state.sqlite3")

    for earlier, later in zip(runs, runs[1:]):
        assert later.started >= earlier.finished, f"sync runs overlap: {earlier} and {later}"
    assert problems == [], problems
    assert checker.problems == [], checker.problems
    assert checker.reads > 100
    assert set(sync_responses) == {202}
    assert returncode == 0, log
    assert "Traceback" not in log

    for lock_wait, code, stderr in results:
        assert code in (EXIT_OK, EXIT_LOCKED), stderr
        if code == EXIT_LOCKED:
            assert lock_wait == "0", stderr
            assert "another sync is running (pid " in stderr
            assert "try again when it has finished" in stderr
    cron_codes = [code for _, code, _ in results]
    assert EXIT_LOCKED in cron_codes
    assert [code for lock_wait, code, _ in results if lock_wait == "30"] == [EXIT_OK] * 4

    daemon_runs = log.count("calsync.engine: sync finished in") + log.count("calsync.engine: sync failed after")
    assert len(runs) == daemon_runs + cron_codes.count(EXIT_OK)
    for run in runs:
        # Only a sync that the daemon's shutdown interrupted may have failed.
        assert run.outcome == "success" or "shutting down" in (run.error or ""), run
