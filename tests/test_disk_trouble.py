"""Feed files that cannot be written: a full disk, a read-only file system, a directory without write permission.

Each case makes real writes fail: a small tmpfs filled up or remounted
read-only, or calsync run as an unprivileged user on a directory it may not
write. A failed write must leave the old feed byte for byte, log the path
and the system's error, make ``/readyz`` return 503, and clear once a later
sync publishes.
"""

from __future__ import annotations

import subprocess
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import pytest

from calsync.sandbox import Sandbox
from tests.daemon import ServeProcess, write_config
from tests.helpers import parse_both
from tests.privileges import Runner, fill, remount, shared_directory, tmpfs_mounted

SECRET = "disk-secret"
TOKEN = "disk-token"
ADMIN_TOKEN = "disk-admin"
CHANGED_TITLE = "Changed while the disk failed"
# Room for the feed of 40 bookings (about 25 KiB) with a margin, and small enough to fill at once.
TMPFS_KIB = 512


@dataclass
class DiskTrouble:
    """One way to make writes into the feeds directory fail, with the error text the system gives."""

    name: str
    error: str
    errno_name: str
    unprivileged: bool

    @contextmanager
    def prepared(self, feeds_dir: Path, runner: Runner) -> Iterator[None]:
        """Create the feeds directory, on a tmpfs where this case needs one, for the block."""
        feeds_dir.mkdir(parents=True)
        if self.unprivileged:
            runner.give(feeds_dir)
            yield
            return
        with tmpfs_mounted(feeds_dir, TMPFS_KIB):
            yield

    def break_writes(self, feeds_dir: Path) -> None:
        if self.name == "full":
            fill(feeds_dir)
        elif self.name == "read-only":
            remount(feeds_dir, "ro")
        else:
            feeds_dir.chmod(0o555)

    def repair_writes(self, feeds_dir: Path) -> None:
        if self.name == "full":
            (feeds_dir / "filler").unlink()
        elif self.name == "read-only":
            remount(feeds_dir, "rw")
        else:
            feeds_dir.chmod(0o755)


TROUBLES = [
    DiskTrouble("full", "No space left on device", "ENOSPC", unprivileged=False),
    DiskTrouble("read-only", "Read-only file system", "EROFS", unprivileged=False),
    DiskTrouble("no-permission", "Permission denied", "EACCES", unprivileged=True),
]


@pytest.fixture
def api() -> Iterator[Sandbox]:
    # Anchored at today's date: the daemon runs unfrozen, and the feed's past_days window follows the clock.
    with Sandbox(secret=SECRET, count=40) as sandbox:
        yield sandbox


@dataclass
class Setup:
    """A state directory whose feeds directory can be made to fail, and the config and runner that use it."""

    trouble: DiskTrouble
    runner: Runner
    directory: Path
    config: Path

    @property
    def feeds_dir(self) -> Path:
        return self.directory / "state" / "feeds"

    @property
    def feed(self) -> Path:
        return self.feeds_dir / "bookings.ics"

    def sync(self) -> subprocess.CompletedProcess:
        return subprocess.run(
            self.runner.command("--config", str(self.config), "sync"),
            capture_output=True, text=True, timeout=120, env=self.runner.environment(), check=False,
        )


@pytest.fixture(params=TROUBLES, ids=lambda trouble: trouble.name)
def setup(request: pytest.FixtureRequest, api: Sandbox) -> Iterator[Setup]:
    trouble: DiskTrouble = request.param
    runner = Runner(unprivileged=trouble.unprivileged)
    with shared_directory() as directory:
        state_dir = directory / "state"
        state_dir.mkdir()
        runner.give(state_dir)
        config = write_config(
            directory / "calsync.toml", base_url=api.base_url, secret=SECRET, state_dir=state_dir,
            token=TOKEN, admin_token=ADMIN_TOKEN,
        )
        # Root removes the directory and unmounts the tmpfs whatever state the test left them in.
        with trouble.prepared(state_dir / "feeds", runner):
            yield Setup(trouble, runner, directory, config)


def change_a_booking(api: Sandbox) -> None:
    # The first listed booking starts near today, inside every feed's window.
    api.update(api.ids()[0], title=CHANGED_TITLE)


def temporary_files(feeds_dir: Path) -> list[Path]:
    return list(feeds_dir.glob(".bookings.ics.*.tmp"))


def test_sync_keeps_old_feed_when_write_fails(setup, api) -> None:
    first = setup.sync()
    assert first.returncode == 0, first.stderr
    old = setup.feed.read_bytes()
    change_a_booking(api)
    setup.trouble.break_writes(setup.feeds_dir)

    failed = setup.sync()

    assert failed.returncode == 1, failed.stderr
    assert setup.feed.read_bytes() == old
    assert temporary_files(setup.feeds_dir) == []
    error_lines = [line for line in failed.stderr.splitlines() if "could not write feed" in line]
    assert len(error_lines) == 1, failed.stderr
    assert str(setup.feed) in error_lines[0]
    assert f"{setup.trouble.error} ({setup.trouble.errno_name})" in error_lines[0]
    assert "Traceback" not in failed.stderr

    setup.trouble.repair_writes(setup.feeds_dir)
    repaired = setup.sync()
    assert repaired.returncode == 0, repaired.stderr
    assert CHANGED_TITLE.encode() in setup.feed.read_bytes()
    parse_both(setup.feed.read_bytes())


def test_serve_keeps_serving_when_write_fails(setup, api) -> None:
    daemon = ServeProcess(setup.runner, setup.config, setup.directory / "serve.log", admin_token=ADMIN_TOKEN)
    try:
        daemon.wait_for("/readyz", 200)
        before = daemon.feed(TOKEN)
        change_a_booking(api)
        setup.trouble.break_writes(setup.feeds_dir)

        daemon.request_sync()
        not_ready = daemon.wait_for("/readyz", 503)
        during = daemon.feed(TOKEN)
        on_disk = setup.feed.read_bytes()

        setup.trouble.repair_writes(setup.feeds_dir)
        daemon.request_sync()
        ready = daemon.wait_for("/readyz", 200)
        after = daemon.feed(TOKEN)
    finally:
        returncode = daemon.stop()
    log = daemon.log()

    assert before.status_code == 200
    assert not_ready.text == "the last sync could not write a feed file; the previous feeds are still served\n"
    assert during.status_code == 200
    assert during.content == before.content
    assert during.headers["ETag"] == before.headers["ETag"]
    assert on_disk == before.content
    error_lines = [line for line in log.splitlines() if "could not write feed" in line]
    assert len(error_lines) == 1, log
    assert str(setup.feed) in error_lines[0]
    assert f"{setup.trouble.error} ({setup.trouble.errno_name})" in error_lines[0]
    assert ready.text.startswith("last successful sync at ")
    assert after.headers["ETag"] != before.headers["ETag"]
    assert CHANGED_TITLE.encode() in after.content
    assert returncode == 0, log
    assert "Traceback" not in log
