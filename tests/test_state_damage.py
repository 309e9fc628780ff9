"""A damaged or unreadable state database, met by `calsync serve` and `calsync sync` as real processes.

A damaged database is moved aside and rebuilt by a full sync. One that
cannot be opened is reported with its path and what to check, and the
daemon keeps serving the feeds published before until a sync succeeds.
"""

from __future__ import annotations

import sqlite3
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from calsync.sandbox import Sandbox
from tests.daemon import ServeProcess, write_config
from tests.helpers import parse_both
from tests.privileges import Runner, shared_directory

SECRET = "state-secret"
TOKEN = "state-token"
ADMIN_TOKEN = "state-admin"
BOOKINGS = 40


@pytest.fixture
def api() -> Iterator[Sandbox]:
    # Anchored at today's date: the daemon runs unfrozen, and the feed's past_days window follows the clock.
    with Sandbox(secret=SECRET, count=BOOKINGS) as sandbox:
        yield sandbox


@dataclass
class Setup:
    """A state directory after one successful sync, and the config and runner that use it."""

    runner: Runner
    directory: Path
    config: Path

    @property
    def state_dir(self) -> Path:
        return self.directory / "state"

    @property
    def database(self) -> Path:
        return self.state_dir / "state.sqlite3"

    @property
    def feed(self) -> Path:
        return self.state_dir / "feeds" / "bookings.ics"

    def sync(self) -> subprocess.CompletedProcess:
        return subprocess.run(
            self.runner.command("--config", str(self.config), "sync"),
            capture_output=True, text=True, timeout=120, env=self.runner.environment(), check=False,
        )

    def serve(self) -> ServeProcess:
        return ServeProcess(self.runner, self.config, self.directory / "serve.log", admin_token=ADMIN_TOKEN)

    def moved_aside(self) -> list[Path]:
        return sorted(path for path in self.state_dir.glob("state.sqlite3.corrupt-*") if path.suffix != ".sqlite3-wal")


def make_setup(api: Sandbox, directory: Path, unprivileged: bool) -> Setup:
    runner = Runner(unprivileged=unprivileged)
    state_dir = directory / "state"
    state_dir.mkdir()
    runner.give(state_dir)
    config = write_config(
        directory / "calsync.toml", base_url=api.base_url, secret=SECRET, state_dir=state_dir,
        token=TOKEN, admin_token=ADMIN_TOKEN,
    )
    setup = Setup(runner, directory, config)
    first = setup.sync()
    assert first.returncode == 0, first.stderr
    return setup


@pytest.fixture
def setup(api: Sandbox) -> Iterator[Setup]:
    with shared_directory() as directory:
        yield make_setup(api, directory, unprivileged=False)


@pytest.fixture
def unprivileged_setup(api: Sandbox) -> Iterator[Setup]:
    with shared_directory() as directory:
        yield make_setup(api, directory, unprivileged=True)


def damage_pages(database: Path) -> None:
    """Overwrite every page but the first, so that the file still opens but its tables are garbage."""
    with sqlite3.connect(database) as connection:
        connection.execute("PRAGMA wal_checkpoint(TRUNCATE)")
        page_size = connection.execute("PRAGMA page_size").fetchone()[0]
    connection.close()
    size = database.stat().st_size
    with open(database, "r+b") as file:
        file.seek(page_size)
        file.write(bytes(range(256)) * ((size - page_size) // 256))


def count_events(data: bytes) -> int:
    return len(parse_both(data).walk("VEVENT"))


# calsync serve.


def test_serve_rebuilds_garbage_database(setup) -> None:
    before = setup.feed.read_bytes()
    setup.database.write_bytes(b"not a database " * 100)

    daemon = setup.serve()
    try:
        daemon.wait_for("/readyz", 200)
        served = daemon.feed(TOKEN)
    finally:
        returncode = daemon.stop()
    log = daemon.log()

    moved = setup.moved_aside()
    assert len(moved) == 1, log
    assert moved[0].read_bytes().startswith(b"not a database")
    assert f"state database {setup.database} is damaged" in log
    assert f"moved it to {moved[0]}" in log
    assert served.status_code == 200
    assert served.content == before
    assert setup.feed.read_bytes() == before
    assert returncode == 0, log
    assert "Traceback" not in log


def test_serve_rebuilds_database_damaged_while_running(setup) -> None:
    before = setup.feed.read_bytes()
    daemon = setup.serve()
    try:
        # The daemon is ready at once from the stored run, so wait for its first sync to end before damaging.
        first = daemon.wait_for_syncs(1)
        damage_pages(setup.database)

        daemon.request_sync()
        second = daemon.wait_for_syncs(2)
        served = daemon.feed(TOKEN)
        ready = daemon.get("/readyz")
    finally:
        returncode = daemon.stop()
    log = daemon.log()

    assert first == {"success": 1, "failed": 0}, log
    assert second == {"success": 2, "failed": 0}, log
    assert ready.status_code == 200
    assert len(setup.moved_aside()) == 1, log
    assert f"state database {setup.database} is damaged" in log
    assert served.content == before
    with sqlite3.connect(setup.database) as connection:
        assert connection.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
        assert connection.execute("SELECT count(*) FROM bookings").fetchone()[0] == BOOKINGS
    connection.close()
    assert returncode == 0, log
    assert "Traceback" not in log


def test_serve_unreadable_database_keeps_serving(unprivileged_setup) -> None:
    setup = unprivileged_setup
    before = setup.feed.read_bytes()
    setup.database.chmod(0o000)

    daemon = setup.serve()
    try:
        not_ready = daemon.wait_for("/readyz", 503)
        served = daemon.feed(TOKEN)
        alive = daemon.process.poll() is None

        setup.database.chmod(0o600)
        daemon.request_sync()
        ready = daemon.wait_for("/readyz", 200)
    finally:
        returncode = daemon.stop()
    log = daemon.log()

    assert alive, log
    assert not_ready.text == "the last sync could not use the state database; the previous feeds are still served\n"
    assert served.status_code == 200
    assert served.content == before
    error_lines = [line for line in log.splitlines() if f"state database {setup.database}: cannot open" in line]
    assert error_lines, log
    assert "unable to open database file" in error_lines[0]
    assert "can read and write the file" in error_lines[0]
    assert ready.text.startswith("last successful sync at ")
    assert setup.moved_aside() == []
    assert returncode == 0, log
    assert "Traceback" not in log


# calsync sync.


def test_sync_rebuilds_damaged_pages(setup) -> None:
    before = setup.feed.read_bytes()
    damage_pages(setup.database)

    result = setup.sync()

    assert result.returncode == 0, result.stderr
    assert f"state database {setup.database} is damaged" in result.stderr
    assert len(setup.moved_aside()) == 1
    assert f"{BOOKINGS} added" in result.stderr
    assert setup.feed.read_bytes() == before
    assert count_events(before) > 0
    assert "Traceback" not in result.stderr


def test_sync_unreadable_database_explained(unprivileged_setup) -> None:
    setup = unprivileged_setup
    before = setup.feed.read_bytes()
    setup.database.chmod(0o000)

    result = setup.sync()

    assert result.returncode == 1, result.stderr
    error_lines = [line for line in result.stderr.splitlines() if "ERROR" in line]
    assert len(error_lines) == 1, result.stderr
    assert f"state database {setup.database}: cannot open: unable to open database file" in error_lines[0]
    assert "can read and write the file, its -wal and -shm files and their directory" in error_lines[0]
    assert setup.feed.read_bytes() == before
    assert setup.moved_aside() == []
    assert "Traceback" not in result.stderr
