"""The state store: one SQLite file with every booking calsync has seen and every sync run.

The database runs in WAL mode with ``synchronous=FULL``, so a process killed
at any point leaves either the previous or the next committed state. The
schema version lives in ``PRAGMA user_version``; ``MIGRATIONS`` upgrades an
older file step by step, and a file from a newer calsync is rejected.
"""

from __future__ import annotations

import json
import logging
import os
import sqlite3
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from calsync import json_keys
from calsync.errors import CorruptStateError, StateError

log = logging.getLogger(__name__)

STATE_FILE = "state.sqlite3"
REBUILD_HINT = (
    "If the file is damaged, move it aside and run 'calsync sync': a full sync rebuilds it from the API, "
    "keeping every event's UID but restarting SEQUENCE numbers and the sync history"
)

# MIGRATIONS[n] lists the statements that upgrade a database from user_version n to n + 1.
MIGRATIONS: list[list[str]] = [
    [
        """
        CREATE TABLE bookings (
            id TEXT PRIMARY KEY,
            row_json TEXT NOT NULL,             -- the last list row
            fingerprint TEXT NOT NULL,          -- hash of the list row
            details_json TEXT,                  -- the last details, NULL until fetched
            details_fetched_at TEXT,            -- ISO 8601 UTC
            significant TEXT NOT NULL,          -- hash of the fields that raise SEQUENCE
            sequence INTEGER NOT NULL DEFAULT 0,
            first_seen TEXT NOT NULL,
            last_seen TEXT NOT NULL,
            removed_at TEXT                     -- set when the booking left a complete listing
        )
        """,
        "CREATE INDEX bookings_details_age ON bookings (details_fetched_at) WHERE removed_at IS NULL",
        """
        CREATE TABLE runs (
            id INTEGER PRIMARY KEY AUTOINCREMENT,
            started_at TEXT NOT NULL,
            finished_at TEXT,
            seconds REAL,
            outcome TEXT NOT NULL,              -- success or failed
            error TEXT,
            stats_json TEXT NOT NULL DEFAULT '{}'
        )
        """,
    ],
    [
        # The exception class of a failed run, such as AuthenticationError, so that the status page
        # can tell the operator what to fix without parsing the message.
        "ALTER TABLE runs ADD COLUMN error_type TEXT",
    ],
    [
        """
        CREATE TABLE rendered_events (
            settings_key TEXT NOT NULL,         -- hash of the feed's mapping settings and the render version
            booking_id TEXT NOT NULL,
            input_hash TEXT NOT NULL,           -- hash of everything the bytes were rendered from
            data BLOB NOT NULL,                 -- BEGIN:VEVENT to END:VEVENT, CRLF line endings
            PRIMARY KEY (settings_key, booking_id)
        )
        """,
    ],
    [
        # What started the run: scheduled, manual or command (see RunRecord.trigger). NULL for older runs.
        "ALTER TABLE runs ADD COLUMN trigger TEXT",
    ],
    [
        # A counter that every commit changing a booking raises, so that a feed rendered at one
        # revision is known to be current while the revision stays the same.
        "CREATE TABLE state_revision (id INTEGER PRIMARY KEY CHECK (id = 1), revision INTEGER NOT NULL)",
        "INSERT INTO state_revision (id, revision) VALUES (1, 0)",
        """
        CREATE TABLE feed_renders (
            name TEXT PRIMARY KEY,
            digest TEXT NOT NULL,               -- hash of the revision and every setting the feed's bytes depend on
            rendered_at TEXT NOT NULL,          -- ISO 8601 UTC
            valid_until TEXT,                   -- ISO 8601 UTC: the first moment a booking may age out; NULL: never
            sha256 TEXT NOT NULL,               -- of the published file
            events INTEGER NOT NULL,
            skipped_json TEXT NOT NULL,         -- {booking id: reason} of the unmappable bookings
            excluded_json TEXT NOT NULL         -- {reason: count} of the bookings left out
        )
        """,
    ],
]
SCHEMA_VERSION = len(MIGRATIONS)

# Values of ``runs.trigger``, which names what started a sync run.
TRIGGER_SCHEDULED = "scheduled"  # the interval timer of calsync serve, including its first sync at start
TRIGGER_MANUAL = "manual"  # POST /sync, from the status page's "Sync now" button or a script
TRIGGER_COMMAND = "command"  # calsync sync, run by hand or by cron


def utc_text(moment: datetime) -> str:
    return moment.astimezone(UTC).isoformat(timespec="microseconds")


def parse_utc_text(text: str | None) -> datetime | None:
    return datetime.fromisoformat(text) if text else None


@dataclass(slots=True)
class StoredBooking:
    """One booking as the store keeps it between syncs."""

    id: str
    row: dict[str, Any]
    fingerprint: str
    significant: str
    first_seen: datetime
    # When a sync last wrote the booking (new, changed or refreshed). A listing that shows it
    # unchanged does not rewrite its row, so that a sync with no changes writes nothing.
    last_seen: datetime
    details: dict[str, Any] | None = None
    details_fetched_at: datetime | None = None
    sequence: int = 0
    removed_at: datetime | None = None

    def record(self) -> dict[str, Any] | None:
        """Return the details overlaid with the current list row, or None before the first details.

        The list row is always from the latest listing, so its fields win
        over those of details that may be older.
        """
        if self.details is None:
            return None
        return {**self.details, **self.row}


@dataclass(frozen=True, slots=True)
class RenderedEvent:
    """The bytes of one rendered VEVENT and the hash of the input they were rendered from."""

    input_hash: str
    data: bytes


@dataclass(frozen=True)
class FeedRender:
    """What a published feed was rendered from, so that a sync that changed nothing can skip rendering it.

    The feed is still current while three things hold. The state revision
    and the settings that ``digest`` covers are the same. The clock is
    between ``rendered_at`` and ``valid_until``, when a booking may leave the
    feed's ``past_days`` window. The file still has the ``sha256`` it was
    published with.
    """

    name: str
    digest: str
    rendered_at: datetime
    valid_until: datetime | None
    sha256: str
    events: int
    skipped: dict[str, str]
    excluded: dict[str, int]


@dataclass
class RunRecord:
    """One sync run: when, how long, how it ended, and its counters."""

    started_at: datetime
    outcome: str
    finished_at: datetime | None = None
    seconds: float | None = None
    error: str | None = None
    stats: dict[str, Any] = field(default_factory=dict)
    id: int | None = None
    # Class name of the exception that ended a failed run; None for a success and for runs stored before it existed.
    error_type: str | None = None
    # One of the TRIGGER_* values; None for runs stored before it existed.
    trigger: str | None = None


class StateStore:
    """The SQLite state database of one ``state_dir``; use one instance per thread."""

    def __init__(self, path: Path) -> None:
        self.path = path
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            self.connection = sqlite3.connect(path, isolation_level=None, timeout=30)
            self.connection.execute("PRAGMA journal_mode=WAL")
            self.connection.execute("PRAGMA synchronous=FULL")
            self._migrate()
        except OSError as error:
            raise StateError(str(path), f"cannot create its directory: {error.strerror or error}") from error
        except sqlite3.DatabaseError as error:
            if _is_corruption(error):
                raise CorruptStateError(str(path), f"cannot open: {error}. {REBUILD_HINT}") from error
            raise StateError(str(path), f"cannot open: {error}{_access_hint(error)}") from error

    @classmethod
    def open_in(cls, state_dir: Path) -> StateStore:
        return cls(state_dir / STATE_FILE)

    def close(self) -> None:
        self.connection.close()

    def check(self) -> None:
        """Run SQLite's ``quick_check`` over every page; raise ``CorruptStateError`` when it finds damage.

        It reads the whole file once, about as long as reading every booking,
        and finds damage that opening the file does not, such as a broken page.
        """
        try:
            problems = [row[0] for row in self.connection.execute("PRAGMA quick_check(5)")]
        except sqlite3.DatabaseError as error:
            raise CorruptStateError(str(self.path), f"check failed: {error}. {REBUILD_HINT}") from error
        if problems != ["ok"]:
            # SQLite puts line breaks inside its messages too, and a log line must stay one line.
            found = "; ".join(problems).replace("\n", "; ")
            raise CorruptStateError(str(self.path), f"check failed: {found}. {REBUILD_HINT}")

    def __enter__(self) -> StateStore:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def _migrate(self) -> None:
        version = self.connection.execute("PRAGMA user_version").fetchone()[0]
        if version > SCHEMA_VERSION:
            raise StateError(
                str(self.path),
                f"schema version {version} is newer than this calsync supports ({SCHEMA_VERSION}); "
                "upgrade calsync or point sync.state_dir at a new directory",
            )

        for target in range(version, SCHEMA_VERSION):
            with self.transaction():
                for statement in MIGRATIONS[target]:
                    self.connection.execute(statement)
                self.connection.execute(f"PRAGMA user_version = {target + 1}")
            log.info("state database %s upgraded to schema version %d", self.path, target + 1)

    @contextmanager
    def transaction(self) -> Iterator[sqlite3.Connection]:
        """Run the block in one IMMEDIATE transaction: all of its writes land, or none."""
        try:
            self.connection.execute("BEGIN IMMEDIATE")
        except sqlite3.Error as error:
            raise _write_error(self.path, error, _access_hint(error)) from error
        try:
            yield self.connection
            self.connection.execute("COMMIT")
        except sqlite3.Error as error:
            self.connection.execute("ROLLBACK")
            raise _write_error(self.path, error, f". {REBUILD_HINT}") from error
        except BaseException:
            self.connection.execute("ROLLBACK")
            raise

    # -- bookings -----------------------------------------------------------

    def bookings(self, *, include_removed: bool = False) -> dict[str, StoredBooking]:
        query = "SELECT * FROM bookings"
        if not include_removed:
            query += " WHERE removed_at IS NULL"
        try:
            cursor = self.connection.execute(query)
            columns = [description[0] for description in cursor.description]
            return {row[0]: _booking_from_row(dict(zip(columns, row))) for row in cursor}
        except sqlite3.Error as error:
            raise _read_error(self.path, "bookings", error) from error

    def save_bookings(self, bookings: Iterable[StoredBooking]) -> None:
        """Insert or replace bookings; call inside ``transaction()``."""
        self.connection.executemany(
            """
            INSERT OR REPLACE INTO bookings (id, row_json, fingerprint, details_json, details_fetched_at,
                significant, sequence, first_seen, last_seen, removed_at)
            VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)
            """,
            (_booking_to_row(booking) for booking in bookings),
        )

    def mark_removed(self, booking_ids: Iterable[str], when: datetime) -> None:
        """Mark bookings as removed, keeping their SEQUENCE should the id come back; call inside ``transaction()``."""
        self.connection.executemany(
            "UPDATE bookings SET removed_at = ? WHERE id = ?",
            ((utc_text(when), booking_id) for booking_id in booking_ids),
        )

    # -- revision and feed renders --------------------------------------------

    def revision(self) -> int:
        """Return the state revision, which ``bump_revision`` raises with every change to a booking."""
        try:
            return self.connection.execute("SELECT revision FROM state_revision WHERE id = 1").fetchone()[0]
        except (sqlite3.Error, TypeError) as error:
            raise StateError(str(self.path), f"cannot read the state revision: {error}. {REBUILD_HINT}") from error

    def bump_revision(self) -> None:
        """Raise the state revision by one; call inside ``transaction()`` with the changes it stands for."""
        self.connection.execute("UPDATE state_revision SET revision = revision + 1 WHERE id = 1")

    def feed_render(self, name: str) -> FeedRender | None:
        """Return what feed ``name`` was last published from, or None if it is not recorded or not readable."""
        try:
            row = self.connection.execute(
                "SELECT name, digest, rendered_at, valid_until, sha256, events, skipped_json, excluded_json"
                " FROM feed_renders WHERE name = ?",
                (name,),
            ).fetchone()
            if row is None:
                return None
            return FeedRender(
                name=row[0], digest=row[1], rendered_at=datetime.fromisoformat(row[2]),
                valid_until=parse_utc_text(row[3]), sha256=row[4], events=row[5],
                skipped=json.loads(row[6]), excluded=json.loads(row[7]),
            )
        except (sqlite3.Error, ValueError, TypeError) as error:
            # A record that cannot be read only costs a full render, so it is not an error.
            log.debug("cannot read the render record of feed %s: %s", name, error)
            return None

    def save_feed_renders(self, renders: Iterable[FeedRender]) -> None:
        """Insert or replace the render records of feeds; call inside ``transaction()``."""
        self.connection.executemany(
            "INSERT OR REPLACE INTO feed_renders"
            " (name, digest, rendered_at, valid_until, sha256, events, skipped_json, excluded_json)"
            " VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
            (
                (render.name, render.digest, utc_text(render.rendered_at),
                 utc_text(render.valid_until) if render.valid_until else None, render.sha256, render.events,
                 json.dumps(render.skipped, sort_keys=True), json.dumps(render.excluded, sort_keys=True))
                for render in renders
            ),
        )

    # -- rendered events ------------------------------------------------------

    def rendered_events(self, settings_key: str) -> dict[str, RenderedEvent]:
        """Return the stored VEVENT bytes of one settings key, by booking id."""
        try:
            cursor = self.connection.execute(
                "SELECT booking_id, input_hash, data FROM rendered_events WHERE settings_key = ?", (settings_key,)
            )
            # A value that is not a BLOB was not written by calsync, so it is left out and rendered again.
            return {
                booking_id: RenderedEvent(input_hash, data)
                for booking_id, input_hash, data in cursor
                if isinstance(data, bytes) and isinstance(input_hash, str)
            }
        except sqlite3.Error as error:
            raise StateError(str(self.path), f"cannot read rendered events: {error}. {REBUILD_HINT}") from error

    def save_rendered_events(self, settings_key: str, events: Iterable[tuple[str, RenderedEvent]]) -> None:
        """Insert or replace the VEVENT bytes of (booking id, event) pairs; call inside ``transaction()``."""
        self.connection.executemany(
            "INSERT OR REPLACE INTO rendered_events (settings_key, booking_id, input_hash, data) VALUES (?, ?, ?, ?)",
            ((settings_key, booking_id, event.input_hash, event.data) for booking_id, event in events),
        )

    def delete_rendered_events(self, settings_key: str, booking_ids: Iterable[str]) -> None:
        """Delete the VEVENT bytes of these bookings under one settings key; call inside ``transaction()``."""
        self.connection.executemany(
            "DELETE FROM rendered_events WHERE settings_key = ? AND booking_id = ?",
            ((settings_key, booking_id) for booking_id in booking_ids),
        )

    def rendered_settings_keys(self) -> set[str]:
        """Return every settings key that has stored VEVENT bytes."""
        try:
            return {key for (key,) in self.connection.execute("SELECT DISTINCT settings_key FROM rendered_events")}
        except sqlite3.Error as error:
            raise StateError(str(self.path), f"cannot read rendered events: {error}. {REBUILD_HINT}") from error

    def delete_rendered_settings(self, settings_keys: Iterable[str]) -> None:
        """Delete the VEVENT bytes of whole settings keys; call inside ``transaction()``."""
        self.connection.executemany(
            "DELETE FROM rendered_events WHERE settings_key = ?", ((key,) for key in settings_keys)
        )

    # -- runs -----------------------------------------------------------------

    def add_run(self, run: RunRecord) -> int:
        cursor = self.connection.execute(
            "INSERT INTO runs (started_at, finished_at, seconds, outcome, error, stats_json, error_type, trigger)"
            " VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
            _run_to_row(run),
        )
        run.id = cursor.lastrowid
        return run.id or 0

    def update_run(self, run: RunRecord) -> None:
        self.connection.execute(
            "UPDATE runs SET started_at = ?, finished_at = ?, seconds = ?, outcome = ?, error = ?, stats_json = ?,"
            " error_type = ?, trigger = ? WHERE id = ?",
            (*_run_to_row(run), run.id),
        )

    def recent_runs(self, limit: int = 50) -> list[RunRecord]:
        rows = self._read_runs("ORDER BY id DESC LIMIT ?", (limit,))
        return [_run_from_row(row) for row in rows]

    def last_success(self) -> RunRecord | None:
        rows = self._read_runs("WHERE outcome = 'success' ORDER BY id DESC LIMIT 1", ())
        return _run_from_row(rows[0]) if rows else None

    def _read_runs(self, clause: str, parameters: tuple[Any, ...]) -> list[tuple[Any, ...]]:
        query = (
            "SELECT id, started_at, finished_at, seconds, outcome, error, stats_json, error_type, trigger"
            f" FROM runs {clause}"
        )
        try:
            return self.connection.execute(query, parameters).fetchall()
        except sqlite3.Error as error:
            raise _read_error(self.path, "sync runs", error) from error


def open_or_rebuild(state_dir: Path) -> StateStore:
    """Open and check the state database of ``state_dir``; move a damaged one aside and start an empty one.

    The empty database makes the next sync a full one, which rebuilds it from the API.
    """
    try:
        store = StateStore.open_in(state_dir)
    except CorruptStateError as error:
        _report_and_move_aside(error)
        return StateStore.open_in(state_dir)

    try:
        store.check()
    except CorruptStateError as error:
        store.close()
        _report_and_move_aside(error)
        return StateStore.open_in(state_dir)
    return store


def _report_and_move_aside(error: CorruptStateError) -> None:
    try:
        moved = move_aside(Path(error.path), datetime.now(UTC))
    except OSError as move_error:
        raise StateError(
            error.path, f"is damaged ({error.reason.split('. ')[0]}) and cannot be moved aside: "
            f"{move_error.strerror or move_error}. {REBUILD_HINT}",
        ) from move_error
    log.error(
        "state database %s is damaged (%s); moved it to %s and rebuilding it with a full sync",
        error.path, error.reason.split(". ")[0], moved,
    )


def _is_corruption(error: sqlite3.DatabaseError) -> bool:
    """Tell a damaged file from a locked, read-only or missing one by SQLite's error code."""
    code = getattr(error, "sqlite_errorcode", None)
    # The low byte is the primary code; extended codes such as SQLITE_CORRUPT_INDEX add detail above it.
    return code is not None and (code & 0xFF) in (sqlite3.SQLITE_CORRUPT, sqlite3.SQLITE_NOTADB)


def _read_error(path: Path, records: str, error: sqlite3.Error) -> StateError:
    """Return the error to raise when reading ``records`` failed: ``CorruptStateError`` for a damaged file."""
    kind = CorruptStateError if isinstance(error, sqlite3.DatabaseError) and _is_corruption(error) else StateError
    return kind(str(path), f"cannot read {records}: {error}. {REBUILD_HINT}")


def _write_error(path: Path, error: sqlite3.Error, hint: str) -> StateError:
    """Return the error to raise when a write failed: ``CorruptStateError`` for a damaged file."""
    if isinstance(error, sqlite3.DatabaseError) and _is_corruption(error):
        return CorruptStateError(str(path), f"cannot write: {error}. {REBUILD_HINT}")
    return StateError(str(path), f"cannot write: {error}{hint}")


def _access_hint(error: sqlite3.Error) -> str:
    """Return a sentence on file permissions when SQLite could not open or write the file, else ''."""
    code = getattr(error, "sqlite_errorcode", None)
    if code is None or (code & 0xFF) not in (sqlite3.SQLITE_CANTOPEN, sqlite3.SQLITE_READONLY, sqlite3.SQLITE_PERM):
        return ""
    return (
        f". Check that user id {os.getuid()}, which runs calsync, can read and write the file, "
        "its -wal and -shm files and their directory"
    )


def move_aside(path: Path, when: datetime) -> Path:
    """Rename a damaged database and its WAL files out of the way; return the new name of the database."""
    suffix = f".corrupt-{when.astimezone(UTC).strftime('%Y%m%dT%H%M%SZ')}"
    for extra in ("", "-wal", "-shm"):
        source = path.with_name(path.name + extra)
        if source.exists():
            source.rename(source.with_name(path.name + suffix + extra))
    return path.with_name(path.name + suffix)


def _booking_to_row(booking: StoredBooking) -> tuple[Any, ...]:
    return (
        booking.id,
        _json_text(booking.row),
        booking.fingerprint,
        None if booking.details is None else _json_text(booking.details),
        utc_text(booking.details_fetched_at) if booking.details_fetched_at else None,
        booking.significant,
        booking.sequence,
        utc_text(booking.first_seen),
        utc_text(booking.last_seen),
        utc_text(booking.removed_at) if booking.removed_at else None,
    )


def _json_text(value: object) -> str:
    """Return JSON text that SQLite can store as UTF-8.

    Text with a lone surrogate (JSON allows ``\ud800``) has no UTF-8 form,
    so such a value is written with ASCII escapes, which read back the same.
    """
    text = json.dumps(value, sort_keys=True, ensure_ascii=False)
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return json.dumps(value, sort_keys=True)
    return text


def share_row_values(row: dict[str, Any], details: dict[str, Any] | None) -> dict[str, Any]:
    """Make ``row`` use the value objects of ``details`` where the two are equal, and return it.

    A list row repeats most of its values in the details. Sharing one object
    per value keeps a second copy of each out of memory, which matters when a
    sync holds every booking.
    """
    if details:
        for key, value in row.items():
            other = details.get(key)
            if other is not value and other == value:
                row[key] = other
    return row


def _booking_from_row(row: dict[str, Any]) -> StoredBooking:
    details_json = row["details_json"]
    details = json_keys.loads(details_json) if details_json is not None else None
    return StoredBooking(
        id=row["id"],
        row=share_row_values(json_keys.loads(row["row_json"]), details),
        fingerprint=row["fingerprint"],
        details=details,
        details_fetched_at=parse_utc_text(row["details_fetched_at"]),
        significant=row["significant"],
        sequence=row["sequence"],
        first_seen=datetime.fromisoformat(row["first_seen"]),
        last_seen=datetime.fromisoformat(row["last_seen"]),
        removed_at=parse_utc_text(row["removed_at"]),
    )


def _run_to_row(run: RunRecord) -> tuple[Any, ...]:
    return (
        utc_text(run.started_at),
        utc_text(run.finished_at) if run.finished_at else None,
        run.seconds,
        run.outcome,
        run.error,
        json.dumps(run.stats, sort_keys=True),
        run.error_type,
        run.trigger,
    )


def _run_from_row(row: tuple[Any, ...]) -> RunRecord:
    run_id, started_at, finished_at, seconds, outcome, error, stats_json, error_type, trigger = row
    return RunRecord(
        id=run_id,
        started_at=datetime.fromisoformat(started_at),
        finished_at=parse_utc_text(finished_at),
        seconds=seconds,
        outcome=outcome,
        error=error,
        stats=json.loads(stats_json),
        error_type=error_type,
        trigger=trigger,
    )
