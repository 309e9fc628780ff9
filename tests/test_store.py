"""The SQLite state store: schema, migrations, round trips and transactions."""

import sqlite3
from datetime import UTC, datetime

import pytest

from calsync.errors import StateError
from calsync.store import (
    MIGRATIONS,
    SCHEMA_VERSION,
    TRIGGER_MANUAL,
    RunRecord,
    StateStore,
    StoredBooking,
)

NOW = datetime(2026, 1, 15, 9, 30, tzinfo=UTC)


def make_booking(booking_id: str = "a" * 24, **fields: object) -> StoredBooking:
    values = dict(
        id=booking_id,
        row={"_id": booking_id, "title": "Haircut", "status": "scheduled"},
        fingerprint="f1",
        significant="s1",
        first_seen=NOW,
        last_seen=NOW,
        details={"_id": booking_id, "title": "Haircut", "description": "Trim"},
        details_fetched_at=NOW,
        sequence=2,
    )
    values.update(fields)
    return StoredBooking(**values)


def test_new_database_uses_wal_and_schema_version(tmp_path):
    with StateStore.open_in(tmp_path) as store:
        journal = store.connection.execute("PRAGMA journal_mode").fetchone()[0]
        version = store.connection.execute("PRAGMA user_version").fetchone()[0]

    assert journal == "wal"
    assert version == SCHEMA_VERSION


def test_booking_round_trip(tmp_path):
    booking = make_booking(row={"_id": "a" * 24, "title": "Café ☕, \"quoted\""})

    with StateStore.open_in(tmp_path) as store:
        with store.transaction():
            store.save_bookings([booking])
    with StateStore.open_in(tmp_path) as store:
        loaded = store.bookings()["a" * 24]

    assert loaded == booking


def test_record_overlays_row_on_details():
    booking = make_booking(
        row={"_id": "x", "title": "New title"},
        details={"_id": "x", "title": "Old title", "description": "Kept"},
    )

    record = booking.record()

    assert record["title"] == "New title"
    assert record["description"] == "Kept"


def test_record_is_none_without_details():
    assert make_booking(details=None).record() is None


def test_removed_bookings_hidden_by_default(tmp_path):
    with StateStore.open_in(tmp_path) as store:
        with store.transaction():
            store.save_bookings([make_booking("a" * 24), make_booking("b" * 24)])
            store.mark_removed(["b" * 24], NOW)

        visible = store.bookings()
        everything = store.bookings(include_removed=True)

    assert list(visible) == ["a" * 24]
    assert everything["b" * 24].removed_at == NOW


def test_failed_transaction_writes_nothing(tmp_path):
    with StateStore.open_in(tmp_path) as store:
        with pytest.raises(RuntimeError):
            with store.transaction():
                store.save_bookings([make_booking()])
                raise RuntimeError("crash in the middle of a sync")

        assert store.bookings() == {}


def test_runs_recorded_newest_first(tmp_path):
    with StateStore.open_in(tmp_path) as store:
        store.add_run(RunRecord(started_at=NOW, outcome="success", stats={"added": 3}))
        store.add_run(RunRecord(started_at=NOW, outcome="failed", error="timed out"))
        runs = store.recent_runs()
        last_success = store.last_success()

    assert [run.outcome for run in runs] == ["failed", "success"]
    assert runs[0].error == "timed out"
    assert last_success.stats == {"added": 3}


def test_newer_schema_rejected(tmp_path):
    path = tmp_path / "state.sqlite3"
    connection = sqlite3.connect(path)
    connection.execute(f"PRAGMA user_version = {SCHEMA_VERSION + 1}")
    connection.close()

    with pytest.raises(StateError) as raised:
        StateStore(path)

    assert "newer than this calsync supports" in str(raised.value)
    assert str(path) in str(raised.value)


def test_not_a_database_reported(tmp_path):
    path = tmp_path / "state.sqlite3"
    path.write_bytes(b"this is not sqlite" * 100)

    with pytest.raises(StateError) as raised:
        StateStore(path)

    assert str(path) in str(raised.value)


def test_run_error_type_round_trip(tmp_path):
    failed = RunRecord(started_at=NOW, outcome="failed", finished_at=NOW, error="rejected",
                       error_type="AuthenticationError")

    with StateStore.open_in(tmp_path) as store:
        with store.transaction():
            store.add_run(failed)
        loaded = store.recent_runs(1)[0]

    assert loaded.error_type == "AuthenticationError"
    assert loaded.error == "rejected"


def test_run_trigger_round_trip(tmp_path):
    run = RunRecord(started_at=NOW, outcome="running", trigger=TRIGGER_MANUAL)

    with StateStore.open_in(tmp_path) as store:
        with store.transaction():
            store.add_run(run)
        run.outcome = "success"
        with store.transaction():
            store.update_run(run)
        loaded = store.recent_runs(1)[0]

    assert loaded.trigger == "manual"
    assert loaded.outcome == "success"


def test_version_1_database_upgraded_keeping_runs(tmp_path):
    path = tmp_path / "state.sqlite3"
    connection = sqlite3.connect(path, isolation_level=None)
    for statement in MIGRATIONS[0]:
        connection.execute(statement)
    connection.execute(
        "INSERT INTO runs (started_at, finished_at, seconds, outcome, error, stats_json)"
        " VALUES (?, ?, 1.5, 'failed', 'timed out', '{}')",
        (NOW.isoformat(), NOW.isoformat()),
    )
    connection.execute("PRAGMA user_version = 1")
    connection.close()

    with StateStore(path) as store:
        version = store.connection.execute("PRAGMA user_version").fetchone()[0]
        runs = store.recent_runs()

    assert version == SCHEMA_VERSION
    assert len(runs) == 1
    assert runs[0].error == "timed out"
    assert runs[0].error_type is None
    assert runs[0].trigger is None
