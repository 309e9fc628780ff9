"""Crash safety: a `calsync sync` killed with SIGKILL at any point of a large sync loses nothing.

Each round changes one booking and starts a sync that stops at a chosen
point (see ``tests.crash_child``): before, inside and after the SQLite
commit, around every step of writing and renaming each of two feed files,
and around the run record. The test kills it there with SIGKILL, or the
process kills itself in the middle of a COMMIT. A few more rounds kill a
sync without hooks after a random delay. After every kill the database
passes ``PRAGMA integrity_check``, contains the change exactly when the
commit had finished, and each feed file is the complete old or new feed.
"""

from __future__ import annotations

import json
import random
import selectors
import signal
import sqlite3
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import pytest

from calsync.sandbox import Sandbox
from tests.crash_child import POINTS, SELF_KILLING
from tests.helpers import environment_without_calsync, parse_both

ROOT = Path(__file__).resolve().parent.parent
SECRET = "crash-secret"
FEEDS = ("bookings", "upcoming")
# Rounds that kill an unhooked sync after a random delay, to catch points no hook names.
RANDOM_KILLS = 4
WAIT_SECONDS = 60.0


@pytest.fixture
def api():
    # Enough bookings that the commit of each sync writes about 200 pages, so a kill can land inside it.
    with Sandbox(secret=SECRET, count=600, latency_ms=2) as sandbox:
        yield sandbox


def write_config(tmp_path: Path, base_url: str) -> Path:
    path = tmp_path / "calsync.toml"
    path.write_text(
        f'[cashfin]\nbase_url = "{base_url}"\nclient_secret = "{SECRET}"\n'
        f'[sync]\nstate_dir = "{(tmp_path / "state").as_posix()}"\n'
        '[[feeds]]\nname = "bookings"\ntoken = "crash-token"\n'
        '[[feeds]]\nname = "upcoming"\ntoken = "crash-token-2"\nstatuses = ["scheduled"]\npast_days = 0\n',
        encoding="utf-8",
    )
    return path


def start_sync(config: Path, point: str | None, log: Path) -> subprocess.Popen:
    """Start a sync; with ``point``, one that stops there (see ``tests.crash_child``)."""
    environment = environment_without_calsync()
    environment["PYTHONPATH"] = str(ROOT)
    arguments = ["--log-level", "error", "--config", str(config), "sync"]
    command = [sys.executable, "-m", "calsync", *arguments]
    if point is not None:
        command = [sys.executable, "-m", "tests.crash_child", point, *arguments]
    with log.open("wb") as stderr:
        return subprocess.Popen(command, stdout=subprocess.PIPE, stderr=stderr, env=environment, cwd=ROOT)


def read_line(process: subprocess.Popen, log: Path) -> str:
    """Return the next line the process writes to stdout, or "" once it has exited; fail if it stays silent."""
    with selectors.DefaultSelector() as selector:
        selector.register(process.stdout, selectors.EVENT_READ)
        if not selector.select(timeout=WAIT_SECONDS):
            pytest.fail(f"no output within {WAIT_SECONDS}s:\n{log.read_text()}")
    return process.stdout.readline().decode().strip()


@dataclass
class Expected:
    """What must be on disk after a kill at one point: True new, False old, None either."""

    database: bool | None
    feeds: dict[str, bool | None]


def expected_after(point: str | None) -> Expected:
    if point is None:
        return Expected(database=None, feeds={name: None for name in FEEDS})
    order = POINTS.index(point)
    database = None if point == "sync-commit-in-progress" else order > POINTS.index("sync-commit-in-progress")
    feeds = {
        "bookings": order >= POINTS.index("renamed"),
        "upcoming": order >= POINTS.index("second-feed-renamed"),
    }
    return Expected(database=database, feeds=feeds)


def kill_at(config: Path, point: str | None, delay: float, log: Path) -> str:
    """Run one sync, kill it at ``point`` (or after ``delay`` seconds), and return how the kill landed."""
    process = start_sync(config, point, log)
    try:
        if point is None:
            time.sleep(delay)
            landed = f"after {delay:.2f}s"
        else:
            line = read_line(process, log)
            assert line == f"reached {point}", f"{line!r} instead of reaching {point}:\n{log.read_text()}"
            landed = point
            if point in SELF_KILLING:
                # The process kills itself once the COMMIT has written to the WAL, so its output ends.
                # "missed" means that the COMMIT finished first.
                landed = read_line(process, log) or "inside COMMIT"
    finally:
        process.send_signal(signal.SIGKILL)
        process.wait(timeout=WAIT_SECONDS)
        process.stdout.close()
    if point is None and process.returncode == 0:
        return "after the sync finished"
    assert process.returncode == -signal.SIGKILL, log.read_text()
    return landed


def stored_title(database: Path, booking_id: str) -> str | None:
    """Read a booking's title without writing to the database, so that the next sync finds it as the kill left it."""
    connection = sqlite3.connect(f"file:{database}?mode=ro", uri=True)
    try:
        assert connection.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
        row = connection.execute("SELECT row_json FROM bookings WHERE id = ?", (booking_id,)).fetchone()
    finally:
        connection.close()
    return json.loads(row[0])["title"] if row else None


def check_feed(data: bytes, old: bytes, title: str, events: int, expected_new: bool | None, context: str) -> bool:
    """Check that ``data`` is the complete old feed or the complete new one; return whether it is the new one."""
    is_new = data != old
    if expected_new is not None:
        assert is_new == expected_new, context
    if is_new:
        assert title.encode() in data, context
        assert len(parse_both(data).walk("VEVENT")) == events, context
    return is_new


def test_sigkill_at_many_points_loses_nothing(tmp_path, api):
    config = write_config(tmp_path, api.base_url)
    state_dir = tmp_path / "state"
    database = state_dir / "state.sqlite3"
    paths = {name: state_dir / "feeds" / f"{name}.ics" for name in FEEDS}
    baseline = start_sync(config, None, tmp_path / "baseline.log")
    assert baseline.wait(timeout=120) == 0, (tmp_path / "baseline.log").read_text()
    baseline.stdout.close()
    events = {name: len(parse_both(path.read_bytes()).walk("VEVENT")) for name, path in paths.items()}
    # Scheduled bookings that start after tomorrow appear in both feeds, whatever their window.
    tomorrow = time.strftime("%Y-%m-%d", time.gmtime(time.time() + 86400))
    targets = sorted(
        booking_id for booking_id in api.ids()
        if api.get(booking_id)["starttime"] > tomorrow and api.get(booking_id)["status"] == "scheduled"
    )
    generator = random.Random(5)
    # The random delays spread over the time one sync of one change takes here, start-up included.
    api.update(targets[-1], title="Changed before the rounds")
    clock = time.monotonic()
    timed = start_sync(config, None, tmp_path / "timed.log")
    assert timed.wait(timeout=120) == 0, (tmp_path / "timed.log").read_text()
    timed.stdout.close()
    duration = time.monotonic() - clock
    random_delays = [generator.uniform(0.2, 0.95) * duration for _ in range(RANDOM_KILLS)]
    rounds = [(point, 0.0) for point in POINTS] + [(None, delay) for delay in random_delays]
    assert len(targets) > len(rounds)

    for number, (point, delay) in enumerate(rounds):
        title = f"Changed in round {number}"
        api.update(targets[number], title=title)
        old = {name: path.read_bytes() for name, path in paths.items()}
        log = tmp_path / f"round-{number}.log"

        landed = kill_at(config, point, delay, log)

        expected = expected_after(point)
        context = f"round {number}, killed at {landed}"
        committed = stored_title(database, targets[number]) == title
        if expected.database is not None:
            assert committed == expected.database, context
        for name, path in paths.items():
            is_new = check_feed(path.read_bytes(), old[name], title, events[name], expected.feeds[name], context)
            # A feed can show the change only once the database has it.
            assert committed or not is_new, context

    assert len(rounds) >= 20
    finished = start_sync(config, None, tmp_path / "final.log")
    assert finished.wait(timeout=120) == 0, (tmp_path / "final.log").read_text()
    finished.stdout.close()
    for name, path in paths.items():
        final = path.read_bytes()
        assert f"Changed in round {len(rounds) - 1}".encode() in final, name
        assert len(parse_both(final).walk("VEVENT")) == events[name], name
        assert not list(path.parent.glob(f".{name}.ics.*.tmp")), name
    assert stored_title(database, targets[len(rounds) - 1]) == f"Changed in round {len(rounds) - 1}"
