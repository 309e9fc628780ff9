"""Run ``calsync`` and stop it at a named point of a sync, so that a test can kill it there with SIGKILL.

Usage: ``python -m tests.crash_child POINT CALSYNC_ARGUMENTS...``

At most points the process writes ``reached POINT`` as one line to stdout
and then waits forever, holding everything it holds at that moment (the
sync lock, an open transaction, a half-written temporary file), until the
test kills it. At the ``*-commit-in-progress`` points nothing can wait,
because SQLite writes the commit in C: a watcher thread kills the process
itself as soon as the WAL file changes during the COMMIT statement. Before
that it writes ``reached POINT``, and ``missed POINT`` instead if the
commit ended before the watcher saw a change.

The hooks wrap calsync's functions and the ``os``, ``tempfile`` and
``sqlite3`` calls it makes, so the sync runs the real code up to the point.
"""

from __future__ import annotations

import os
import signal
import sqlite3
import sys
import tempfile
import threading
import time
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any

import calsync.engine
import calsync.feeds
import calsync.lock
from calsync.cashfin import CashfinClient
from calsync.cli import main
from calsync.store import StateStore

# In the order a sync reaches them. Transaction 1 commits the sync's data, transaction 2 the rendered
# events that the next sync reuses, transaction 3 the run record.
POINTS = (
    "started",
    "locked",
    "store-opened",
    "listed",
    "details-fetched",
    "sync-begun",
    "bookings-saved",
    "sync-commit-next",
    "sync-commit-in-progress",
    "sync-committed",
    "event-cache-begun",
    "event-cache-commit-next",
    "event-cache-commit-in-progress",
    "event-cache-committed",
    "rendered",
    "temporary-created",
    "temporary-half-written",
    "temporary-written",
    "renaming",
    "renamed",
    "second-feed-renaming",
    "second-feed-renamed",
    "run-record-begun",
    "run-record-commit-next",
    "run-record-commit-in-progress",
    "run-recorded",
    "finished",
)
# Points that the process reaches without pausing, because a watcher kills it there.
SELF_KILLING = ("sync-commit-in-progress", "event-cache-commit-in-progress", "run-record-commit-in-progress")


class Stopper:
    """Stops the process when the hooks pass the chosen point."""

    def __init__(self, point: str) -> None:
        self.point = point
        self.calls: Counter[str] = Counter()

    def reach(self, point: str) -> None:
        if point != self.point:
            return
        announce("reached", point)
        threading.Event().wait()  # until the test kills the process

    def count(self, name: str) -> int:
        """Count one more call of ``name`` and return its number, from 1."""
        self.calls[name] += 1
        return self.calls[name]


def announce(word: str, point: str) -> None:
    os.write(sys.stdout.fileno(), f"{word} {point}\n".encode())


def after(function: Callable[..., Any], stopper: Stopper, point: str) -> Callable[..., Any]:
    def wrapper(*arguments: Any, **options: Any) -> Any:
        result = function(*arguments, **options)
        stopper.reach(point)
        return result

    return wrapper


class ConnectionHooks:
    """A SQLite connection that reports BEGIN and COMMIT statements to the stopper."""

    def __init__(self, connection: sqlite3.Connection, path: str, stopper: Stopper) -> None:
        self._connection = connection
        self._wal = Path(f"{path}-wal")
        self._stopper = stopper

    def execute(self, statement: str, *arguments: Any) -> sqlite3.Cursor:
        if statement == "COMMIT":
            return self._commit(statement, *arguments)
        cursor = self._connection.execute(statement, *arguments)
        if statement == "BEGIN IMMEDIATE":
            prefix = _transaction_prefix(self._stopper.count("BEGIN"))
            self._stopper.reach(f"{prefix}-begun")
        return cursor

    def _commit(self, statement: str, *arguments: Any) -> sqlite3.Cursor:
        prefix = _transaction_prefix(self._stopper.count("COMMIT"))
        self._stopper.reach(f"{prefix}-commit-next")
        watching = self._stopper.point == f"{prefix}-commit-in-progress"
        finished = threading.Event()
        if watching:
            announce("reached", self._stopper.point)
            threading.Thread(target=self._kill_when_wal_changes, args=(finished,), daemon=True).start()

        cursor = self._connection.execute(statement, *arguments)
        finished.set()
        if watching:
            announce("missed", self._stopper.point)
            threading.Event().wait()
        self._stopper.reach("run-recorded" if prefix == "run-record" else f"{prefix}-committed")
        return cursor

    def _kill_when_wal_changes(self, finished: threading.Event) -> None:
        before = _file_state(self._wal)
        while not finished.is_set():
            if _file_state(self._wal) != before:
                os.kill(os.getpid(), signal.SIGKILL)
            time.sleep(0)  # let the committing thread run between checks

    def __getattr__(self, name: str) -> Any:
        return getattr(self._connection, name)


def _transaction_prefix(number: int) -> str:
    return {1: "sync", 2: "event-cache"}.get(number, "run-record")


def _file_state(path: Path) -> tuple[int, int] | None:
    try:
        status = path.stat()
    except FileNotFoundError:
        return None
    return (status.st_size, status.st_mtime_ns)


class HalfWriter:
    """A file that writes the first half of the data it is given, then stops the process."""

    def __init__(self, file: Any, stopper: Stopper) -> None:
        self._file = file
        self._stopper = stopper

    def write(self, data: bytes) -> int:
        self._file.write(data[: len(data) // 2])
        self._file.flush()
        self._stopper.reach("temporary-half-written")
        return self._file.write(data[len(data) // 2:])

    def __enter__(self) -> HalfWriter:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self._file.close()

    def __getattr__(self, name: str) -> Any:
        return getattr(self._file, name)


class ModuleHooks:
    """Stands in for a module inside ``calsync.feeds``: named functions are replaced, the rest pass through."""

    def __init__(self, module: Any, replacements: dict[str, Callable[..., Any]]) -> None:
        self._module = module
        self._replacements = replacements

    def __getattr__(self, name: str) -> Any:
        return self._replacements.get(name) or getattr(self._module, name)


def install(stopper: Stopper) -> None:
    """Wrap the calls of a sync so that each point calls ``stopper.reach``."""
    real_write_holder = calsync.lock._write_holder
    calsync.lock._write_holder = after(real_write_holder, stopper, "locked")
    calsync.engine.open_or_rebuild = after(calsync.engine.open_or_rebuild, stopper, "store-opened")
    CashfinClient.list_bookings = after(CashfinClient.list_bookings, stopper, "listed")
    CashfinClient.fetch_details = after(CashfinClient.fetch_details, stopper, "details-fetched")
    StateStore.save_bookings = after(StateStore.save_bookings, stopper, "bookings-saved")
    calsync.engine.SyncEngine._render_all = after(calsync.engine.SyncEngine._render_all, stopper, "rendered")

    real_connect = sqlite3.connect

    def connect(path: Any, *arguments: Any, **options: Any) -> ConnectionHooks:
        return ConnectionHooks(real_connect(path, *arguments, **options), str(path), stopper)

    sqlite3.connect = connect  # type: ignore[assignment]
    calsync.feeds.os = ModuleHooks(os, _os_replacements(stopper))
    calsync.feeds.tempfile = ModuleHooks(tempfile, {"mkstemp": after(tempfile.mkstemp, stopper, "temporary-created")})


def _os_replacements(stopper: Stopper) -> dict[str, Callable[..., Any]]:
    def fdopen(descriptor: int, *arguments: Any, **options: Any) -> Any:
        file = os.fdopen(descriptor, *arguments, **options)
        return HalfWriter(file, stopper) if stopper.point == "temporary-half-written" else file

    def fsync(descriptor: int) -> None:
        # Calls alternate per feed: the temporary file's, then its directory's.
        if stopper.count("fsync") == 1:
            stopper.reach("temporary-written")
        os.fsync(descriptor)

    def replace(source: Any, target: Any) -> None:
        prefix = "" if stopper.count("replace") == 1 else "second-feed-"
        stopper.reach(f"{prefix}renaming")
        os.replace(source, target)
        stopper.reach(f"{prefix}renamed")

    return {"fdopen": fdopen, "fsync": fsync, "replace": replace}


def run(point: str, arguments: list[str]) -> int:
    if point not in POINTS:
        raise SystemExit(f"unknown point {point!r}; choose from {', '.join(POINTS)}")
    stopper = Stopper(point)
    install(stopper)
    stopper.reach("started")
    code = main(arguments)
    stopper.reach("finished")
    return code


if __name__ == "__main__":
    sys.exit(run(sys.argv[1], sys.argv[2:]))
