"""Crash safety: a `calsync sync` killed with SIGKILL at any moment loses nothing."""

import random
import signal
import sqlite3
import subprocess
import sys
import time

import pytest

from calsync.sandbox import Sandbox
from tests.helpers import environment_without_calsync, parse_both

SECRET = "crash-secret"
KILLS = 12


@pytest.fixture
def api():
    # Enough bookings that rendering and committing take measurable time, so kills land in every step.
    with Sandbox(secret=SECRET, count=1200, latency_ms=2) as sandbox:
        yield sandbox


def write_config(tmp_path, base_url):
    path = tmp_path / "calsync.toml"
    path.write_text(
        f'[cashfin]\nbase_url = "{base_url}"\nclient_secret = "{SECRET}"\n'
        f'[sync]\nstate_dir = "{(tmp_path / "state").as_posix()}"\n'
        '[[feeds]]\nname = "bookings"\ntoken = "crash-token"\n',
        encoding="utf-8",
    )
    return path


def start_sync(config):
    environment = environment_without_calsync()
    return subprocess.Popen(
        [sys.executable, "-m", "calsync", "--log-level", "error", "--config", str(config), "sync"],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        env=environment,
    )


def test_sigkill_at_many_points_loses_nothing(tmp_path, api):
    config = write_config(tmp_path, api.base_url)
    feed = tmp_path / "state" / "feeds" / "bookings.ics"
    database = tmp_path / "state" / "state.sqlite3"
    baseline = start_sync(config)
    assert baseline.wait(timeout=120) == 0
    # Upcoming bookings, which every feed shows whatever its past_days window.
    today = time.strftime("%Y-%m-%d", time.gmtime())
    ids = sorted(booking_id for booking_id in api.ids() if api.get(booking_id)["starttime"] > today)
    generator = random.Random(5)

    for round_number in range(KILLS):
        # Change a booking each round, so that every sync has something new to commit and publish.
        api.update(ids[round_number], title=f"Changed in round {round_number}")
        process = start_sync(config)
        # A sync of one change took about a second here, start-up included, so the kill
        # points spread over start-up, listing, commit, render and rename. Where a kill
        # lands depends on the machine's speed; the checks below hold wherever it does.
        time.sleep(generator.uniform(0.02, 1.5))
        process.send_signal(signal.SIGKILL)
        process.wait()

        with sqlite3.connect(database) if database.exists() else _no_database() as connection:
            if connection is not None:
                assert connection.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
        data = feed.read_bytes()
        assert data.endswith(b"END:VCALENDAR\r\n")
        parse_both(data)

    finished = start_sync(config)
    _, stderr = finished.communicate(timeout=120)

    assert finished.returncode == 0, stderr
    final = feed.read_bytes()
    assert b"Changed in round" in final
    parse_both(final)
    assert not list(feed.parent.glob(".bookings.ics.*.tmp"))


class _no_database:
    def __enter__(self):
        return None

    def __exit__(self, *exc_info):
        return False
