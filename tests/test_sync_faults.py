"""Syncs against a misbehaving sandbox: transient faults recover, others publish nothing."""

from datetime import date
from pathlib import Path

import pytest
from freezegun import freeze_time

from calsync.cashfin import CashfinClient
from calsync.config import Config, load_config
from calsync.engine import SyncEngine
from calsync.errors import (
    ApiError,
    AuthenticationError,
    CashfinError,
    ListingIncompleteError,
)
from calsync.sandbox import Fault, Sandbox
from tests.helpers import parse_both

ANCHOR = date(2026, 1, 15)
SYNC_TIME = "2026-01-15T08:00:00Z"
SECRET = "fault-secret"
COUNT = 250
# Faults that a retry can fix. A hang lasts longer than the client's timeout, so it ends in a read timeout.
TRANSIENT_KINDS = ["429", "500", "502", "503", "reset", "truncated", "not-json", "hang"]
HANG_SECONDS = 10


@pytest.fixture
def api():
    with Sandbox(secret=SECRET, count=COUNT, anchor=ANCHOR) as sandbox:
        yield sandbox


def engine_for(tmp_path: Path, base_url: str) -> SyncEngine:
    tmp_path.mkdir(exist_ok=True)
    path = tmp_path / "calsync.toml"
    path.write_text(
        f'[cashfin]\nbase_url = "{base_url}"\nclient_secret = "{SECRET}"\ntimeout = "1s"\n'
        f'[sync]\nstate_dir = "{(tmp_path / "state").as_posix()}"\n'
        '[calendar]\nuid_domain = "faults.calsync.invalid"\n'
        '[[feeds]]\nname = "bookings"\ntoken = "t"\n',
        encoding="utf-8",
    )
    config = load_config(str(path), env={})
    # Short backoff keeps the retries quick; the budget and counts are the client's defaults.
    return SyncEngine(config, client_factory=fast_retrying_client)


def fast_retrying_client(config: Config) -> CashfinClient:
    settings = config.cashfin
    return CashfinClient(
        settings.base_url, settings.client_secret, timeout=settings.timeout, concurrency=settings.concurrency,
        backoff_factor=0.01,
    )


def feed_bytes(tmp_path: Path) -> bytes:
    return (tmp_path / "state" / "feeds" / "bookings.ics").read_bytes()


def event_count(tmp_path: Path) -> int:
    return len(parse_both(feed_bytes(tmp_path)).walk("VEVENT"))


def transient_fault(kind: str, **scope) -> Fault:
    return Fault(kind, retry_after_seconds=0, hang_seconds=HANG_SECONDS, **scope)


@freeze_time(SYNC_TIME)
def test_slow_responses_within_timeout_succeed(tmp_path, api):
    clean = engine_for(tmp_path / "clean", api.base_url)
    clean.run()
    expected = feed_bytes(tmp_path / "clean")
    # The first 8 responses of each endpoint wait 300 ms, under the 1 s timeout, so nothing is retried.
    fault = api.faults.add(Fault("slow", delay_ms=300, on_requests=set(range(1, 9))))
    api.reset_counts()

    result = engine_for(tmp_path / "slow", api.base_url).run()

    assert fault.fired == 3 + 8
    assert result.stats.list_requests == 3
    assert result.stats.details_requests == COUNT
    assert feed_bytes(tmp_path / "slow") == expected


@pytest.mark.parametrize("kind", TRANSIENT_KINDS)
@freeze_time(SYNC_TIME)
def test_transient_list_fault_retried_to_success(tmp_path, api, kind):
    engine = engine_for(tmp_path, api.base_url)
    engine.run()
    expected = feed_bytes(tmp_path)
    (tmp_path / "state" / "feeds" / "bookings.ics").unlink()
    fault = api.faults.add(transient_fault(kind, endpoint="list", on_requests={2}))
    api.reset_counts()

    result = engine.run()

    assert fault.fired == 1
    assert result.stats.published == ["bookings"]
    assert result.stats.list_requests == 3
    assert feed_bytes(tmp_path) == expected


@pytest.mark.parametrize("kind", TRANSIENT_KINDS)
@freeze_time(SYNC_TIME)
def test_transient_details_fault_retried_to_success(tmp_path, api, kind):
    engine_for(tmp_path / "clean", api.base_url).run()
    fault = api.faults.add(transient_fault(kind, endpoint="details", on_requests={2}))
    api.reset_counts()

    result = engine_for(tmp_path / "faulted", api.base_url).run()

    assert fault.fired == 1
    assert result.stats.details_failed == 0
    assert result.stats.details_fetched == COUNT
    assert feed_bytes(tmp_path / "faulted") == feed_bytes(tmp_path / "clean")


@pytest.mark.parametrize("kind", TRANSIENT_KINDS)
@freeze_time(SYNC_TIME)
def test_persistent_list_fault_fails_then_recovers(tmp_path, api, kind):
    engine = engine_for(tmp_path, api.base_url)
    engine.run()
    before = feed_bytes(tmp_path)
    api.update(api.ids()[0], title="Changed while the API failed")
    fault = api.faults.add(transient_fault(kind, endpoint="list"))
    api.reset_counts()

    # Every list request fails, so page 1 runs out of retries and the sync fails: the CLI exits with 1.
    with pytest.raises(CashfinError):
        engine.run()

    assert fault.fired == 5
    assert api.request_counts()["details"] == 0
    assert feed_bytes(tmp_path) == before
    api.faults.clear()
    result = engine.run()
    assert result.stats.changed == 1


@pytest.mark.parametrize(
    "fault",
    [
        Fault("repeat-rows", endpoint="list", on_requests={2}),
        Fault("total-inflated", endpoint="list", total_extra=3),
        Fault("empty-page", endpoint="list", on_requests={2}),
        Fault("success-false", endpoint="list", on_requests={3}),
    ],
    ids=lambda fault: fault.kind,
)
@freeze_time(SYNC_TIME)
def test_bad_listing_deletes_and_publishes_nothing(tmp_path, api, fault):
    engine = engine_for(tmp_path, api.base_url)
    engine.run()
    before = feed_bytes(tmp_path)
    events_before = event_count(tmp_path)
    api.faults.add(fault)
    api.reset_counts()

    with pytest.raises((ListingIncompleteError, ApiError)):
        engine.run()

    assert feed_bytes(tmp_path) == before
    api.faults.clear()
    result = engine.run()
    assert result.stats.removed == 0
    assert event_count(tmp_path) == events_before


@pytest.mark.parametrize("kind", TRANSIENT_KINDS)
@freeze_time(SYNC_TIME)
def test_persistent_details_fault_keeps_last_known(tmp_path, api, kind):
    engine = engine_for(tmp_path, api.base_url)
    engine.run()
    target = next(i for i in api.ids() if api.get(i)["status"] == "scheduled" and api.get(i)["starttime"] > "2026-01-16")
    api.update(target, title="Title the feed cannot see yet")
    fault = api.faults.add(transient_fault(kind, endpoint="details", booking_id=target))

    result = engine.run()

    assert fault.fired == 5
    assert result.stats.details_failed == 1
    assert b"Title the feed cannot see yet" in feed_bytes(tmp_path)
    assert f"{target}@faults.calsync.invalid".encode() in feed_bytes(tmp_path)


@freeze_time(SYNC_TIME)
def test_never_fetched_details_left_out_and_counted(tmp_path, api):
    target = api.ids()[0]
    api.faults.add(Fault("500", endpoint="details", booking_id=target))
    engine = engine_for(tmp_path, api.base_url)

    result = engine.run()

    assert result.stats.details_failed == 1
    assert result.stats.pending == 1
    assert f"{target}@faults.calsync.invalid".encode() not in feed_bytes(tmp_path)

    api.faults.clear()
    retried = engine.run()
    assert retried.stats.details_fetched == 1
    assert retried.stats.pending == 0


@freeze_time(SYNC_TIME)
def test_details_404_removes_booking(tmp_path, api):
    engine = engine_for(tmp_path, api.base_url)
    engine.run()
    target = next(i for i in api.ids() if api.get(i)["status"] == "scheduled" and api.get(i)["starttime"] > "2026-01-16")
    api.update(target, title="Renamed, then gone")
    api.faults.add(Fault("not-found", booking_id=target))

    result = engine.run()

    assert result.stats.removed == 1
    assert f"{target}@faults.calsync.invalid".encode() not in feed_bytes(tmp_path)


@freeze_time(SYNC_TIME)
def test_revoked_secret_stops_at_once(tmp_path, api):
    engine = engine_for(tmp_path, api.base_url)
    engine.run()
    before = feed_bytes(tmp_path)
    api.faults.add(Fault("unauthorized"))
    api.reset_counts()

    with pytest.raises(AuthenticationError) as raised:
        engine.run()

    assert api.request_counts()["list"] == 1
    assert api.request_counts()["details"] == 0
    assert SECRET not in str(raised.value)
    assert "client_secret" in str(raised.value)
    assert feed_bytes(tmp_path) == before
