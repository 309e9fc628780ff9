"""The sync engine against the sandbox API over loopback HTTP and a real SQLite file."""

import json
import logging
import math
import os
import stat
import threading
from datetime import date, timedelta
from pathlib import Path

import pytest
import requests
from freezegun import freeze_time

from calsync.cashfin import CashfinClient
from calsync.config import load_config
from calsync.engine import SyncEngine, fingerprint
from calsync.errors import (
    AuthenticationError,
    ListingIncompleteError,
    PublishError,
    SyncCancelledError,
    TransportError,
)
from calsync.feeds import publish
from calsync.mapping import status_name
from calsync.sandbox import Sandbox
from calsync.store import StateStore
from calsync.wsgi import make_server, server_url, start_server_thread, stop_server
from tests.helpers import parse_both

ANCHOR = date(2026, 1, 15)
# Inside the sandbox data's range, so that the feed's past_days window keeps most bookings.
SYNC_TIME = "2026-01-15T08:00:00Z"
SECRET = "test-secret"


@pytest.fixture
def api():
    with Sandbox(secret=SECRET, count=250, anchor=ANCHOR) as sandbox:
        sandbox.start()
        yield sandbox


def write_config(tmp_path: Path, base_url: str, extra: str = "", cashfin: str = "", sync: str = "") -> Path:
    path = tmp_path / "calsync.toml"
    path.write_text(
        f"""
[cashfin]
base_url = "{base_url}"
client_secret = "{SECRET}"
{cashfin}

[sync]
state_dir = "{(tmp_path / 'state').as_posix()}"
{sync}

[calendar]
uid_domain = "test.calsync.invalid"
{extra}
""",
        encoding="utf-8",
    )
    return path


def engine_for(tmp_path: Path, base_url: str, **kwargs: str) -> SyncEngine:
    return SyncEngine(load_config(str(write_config(tmp_path, base_url, **kwargs)), env={}))


def feed_file(tmp_path: Path, name: str = "bookings") -> Path:
    return tmp_path / "state" / "feeds" / f"{name}.ics"


def uids(data: bytes) -> set[str]:
    return {str(event["UID"]) for event in parse_both(data).walk("VEVENT")}


@freeze_time(SYNC_TIME)
def test_first_sync_fetches_everything(tmp_path, api):
    engine = engine_for(tmp_path, api.base_url)

    result = engine.run()

    counts = api.request_counts()
    assert counts["list"] == 3
    assert counts["details"] == 250
    assert result.stats.added == 250
    assert result.stats.details_fetched == 250
    assert result.stats.published == ["bookings"]
    assert result.stats.events["bookings"] > 0
    assert feed_file(tmp_path).exists()


@freeze_time(SYNC_TIME)
def test_feed_parses_with_both_parsers(tmp_path, api):
    engine_for(tmp_path, api.base_url).run()

    calendar = parse_both(feed_file(tmp_path).read_bytes())

    assert len(calendar.walk("VEVENT")) > 100


@pytest.mark.parametrize("page_size", [50, 100, 7, 1])
@freeze_time(SYNC_TIME)
def test_paging_reads_every_booking(tmp_path, api, page_size):
    engine = engine_for(tmp_path, api.base_url, cashfin=f"page_size = {page_size}")

    result = engine.run()

    assert api.request_counts()["list"] == math.ceil(250 / page_size)
    assert result.stats.pages == math.ceil(250 / page_size)
    with StateStore.open_in(tmp_path / "state") as store:
        assert set(store.bookings()) == set(api.ids())


@freeze_time(SYNC_TIME)
def test_unchanged_second_sync_fetches_no_details(tmp_path, api):
    engine = engine_for(tmp_path, api.base_url)
    engine.run()
    first_bytes = feed_file(tmp_path).read_bytes()
    first_mtime = feed_file(tmp_path).stat().st_mtime_ns
    api.reset_counts()

    result = engine.run()

    assert api.request_counts()["details"] == 0
    assert api.request_counts()["list"] == 3
    assert result.stats.published == []
    assert result.stats.changed == 0
    assert feed_file(tmp_path).read_bytes() == first_bytes
    assert feed_file(tmp_path).stat().st_mtime_ns == first_mtime


@freeze_time(SYNC_TIME)
def test_changed_row_refetches_only_that_booking(tmp_path, api):
    engine = engine_for(tmp_path, api.base_url)
    engine.run()
    target = upcoming_scheduled_id(api)
    api.update(target, title="Renamed consultation")
    api.reset_counts()

    result = engine.run()

    assert api.request_counts()["details"] == 1
    assert result.stats.changed == 1
    assert result.stats.published == ["bookings"]
    event = event_by_id(feed_file(tmp_path).read_bytes(), target)
    assert str(event["SUMMARY"]) == "Renamed consultation"
    assert int(event["SEQUENCE"]) == 1


@freeze_time(SYNC_TIME)
def test_status_change_raises_sequence_and_cancels(tmp_path, api):
    engine = engine_for(tmp_path, api.base_url)
    engine.run()
    target = upcoming_scheduled_id(api)
    api.update(target, status="cancelled")

    engine.run()

    event = event_by_id(feed_file(tmp_path).read_bytes(), target)
    assert str(event["STATUS"]) == "CANCELLED"
    assert str(event["TRANSP"]) == "TRANSPARENT"
    assert int(event["SEQUENCE"]) == 1


@freeze_time(SYNC_TIME)
def test_removed_booking_leaves_feed(tmp_path, api):
    engine = engine_for(tmp_path, api.base_url)
    engine.run()
    target = upcoming_scheduled_id(api)
    assert f"{target}@test.calsync.invalid" in uids(feed_file(tmp_path).read_bytes())
    api.delete(target)

    result = engine.run()

    assert result.stats.removed == 1
    assert f"{target}@test.calsync.invalid" not in uids(feed_file(tmp_path).read_bytes())
    with StateStore.open_in(tmp_path / "state") as store:
        assert target not in store.bookings()
        assert store.bookings(include_removed=True)[target].removed_at is not None


def test_stale_details_refreshed_within_budget(tmp_path, api):
    engine = engine_for(tmp_path, api.base_url)
    with freeze_time(SYNC_TIME):
        engine.run()
    api.reset_counts()

    with freeze_time("2026-01-16T09:00:00Z"):
        result = engine.run()

    # 250 bookings refreshed over 24h at one sync per 15 minutes: 96 syncs, so 3 per sync.
    assert api.request_counts()["details"] == 3
    assert result.stats.details_fetched == 3
    assert result.stats.changed == 0


def test_details_only_change_found_by_refresh(tmp_path, api):
    engine = engine_for(tmp_path, api.base_url, sync='interval = "6h"')
    with freeze_time(SYNC_TIME):
        engine.run()
    target = upcoming_scheduled_id(api)
    api.update(target, description="Bring the signed consent form.")

    with freeze_time("2026-01-15T08:15:00Z"):
        engine.run()
    with freeze_time(SYNC_TIME):
        unchanged = event_by_id(feed_file(tmp_path).read_bytes(), target)
    assert "consent form" not in str(unchanged.get("DESCRIPTION", ""))

    # Past details_max_age every booking is stale. At one sync per 6h over 24h, each
    # sync refreshes a quarter of the 250 bookings, oldest first, so four syncs cover all.
    with freeze_time("2026-01-16T09:00:00Z"):
        for _ in range(4):
            engine.run()

    refreshed = event_by_id(feed_file(tmp_path).read_bytes(), target)
    assert "consent form" in str(refreshed["DESCRIPTION"])
    assert int(refreshed["SEQUENCE"]) == 0


@freeze_time(SYNC_TIME)
def test_rerender_after_restart_is_identical(tmp_path, api):
    engine_for(tmp_path, api.base_url).run()
    first_bytes = feed_file(tmp_path).read_bytes()
    feed_file(tmp_path).unlink()

    result = engine_for(tmp_path, api.base_url).run()

    assert result.stats.published == ["bookings"]
    assert feed_file(tmp_path).read_bytes() == first_bytes


@freeze_time(SYNC_TIME)
def test_wrong_secret_fails_without_touching_feed(tmp_path, api):
    engine_for(tmp_path, api.base_url).run()
    before = feed_file(tmp_path).read_bytes()
    api.update(upcoming_scheduled_id(api), title="Should not appear")
    bad = SyncEngine(
        load_config(str(write_config(tmp_path, api.base_url)), env={"CASHFIN_CLIENT_SECRET": "revoked"})
    )

    with pytest.raises(AuthenticationError) as raised:
        bad.run()

    assert "revoked" not in str(raised.value)
    assert feed_file(tmp_path).read_bytes() == before


@freeze_time(SYNC_TIME)
def test_unreachable_api_fails_without_touching_feed(tmp_path, api):
    engine_for(tmp_path, api.base_url).run()
    before = feed_file(tmp_path).read_bytes()
    closed_port_url = "http://127.0.0.1:9"
    config = load_config(str(write_config(tmp_path, closed_port_url)), env={})
    engine = SyncEngine(config, client_factory=lambda config: CashfinClient(closed_port_url, SECRET, retries=1))

    with pytest.raises(TransportError):
        engine.run()

    assert feed_file(tmp_path).read_bytes() == before
    with StateStore.open_in(tmp_path / "state") as store:
        runs = store.recent_runs()
    assert runs[0].outcome == "failed"
    assert "127.0.0.1:9" in runs[0].error


@freeze_time(SYNC_TIME)
def test_feed_filters_by_status_and_type(tmp_path, api):
    feeds = """
[[feeds]]
name = "cancelled"
token = "t1"
statuses = ["cancelled"]

[[feeds]]
name = "classes"
token = "t2"
types = ["class"]
"""
    engine_for(tmp_path, api.base_url, extra=feeds).run()

    cancelled = parse_both(feed_file(tmp_path, "cancelled").read_bytes()).walk("VEVENT")
    classes = parse_both(feed_file(tmp_path, "classes").read_bytes()).walk("VEVENT")

    assert cancelled
    assert {str(event["STATUS"]) for event in cancelled} == {"CANCELLED"}
    assert classes
    assert all("class" in [str(c) for c in event["CATEGORIES"].cats] for event in classes)


@freeze_time(SYNC_TIME)
def test_status_filter_ignores_case_and_keeps_unknown_statuses(tmp_path, api):
    shouted, unknown, cancelled = api.ids()[:3]
    api.update(shouted, status="Scheduled")
    api.update(unknown, status="pending")
    api.update(cancelled, status="CANCELED")
    feeds = """
[[feeds]]
name = "active"
token = "t1"
statuses = ["scheduled"]

[[feeds]]
name = "cancelled"
token = "t2"
statuses = ["cancelled"]
"""
    engine_for(tmp_path, api.base_url, extra=feeds).run()

    active = {uid.split("@")[0] for uid in uids(feed_file(tmp_path, "active").read_bytes())}
    cancelled_feed = {uid.split("@")[0] for uid in uids(feed_file(tmp_path, "cancelled").read_bytes())}
    assert {shouted, unknown} <= active
    assert cancelled not in active
    assert cancelled in cancelled_feed
    assert not {shouted, unknown} & cancelled_feed


@freeze_time(SYNC_TIME)
def test_lone_surrogates_from_the_api_are_stored_and_dropped(tmp_path, api):
    booking_id = upcoming_scheduled_id(api)
    api.update(booking_id, title="Tax\ud800 consultation", description="Notes \udfff")

    engine_for(tmp_path, api.base_url).run()
    second = engine_for(tmp_path, api.base_url).run()

    assert second.stats.details_fetched == 0
    event = event_by_id(feed_file(tmp_path).read_bytes(), booking_id)
    assert str(event["SUMMARY"]) == "Tax consultation"


@freeze_time(SYNC_TIME)
def test_failed_write_log_names_feeds_published_before(tmp_path, api, caplog):
    feeds = """
[[feeds]]
name = "first"
token = "t1"

[[feeds]]
name = "second"
token = "t2"
"""
    blocker = tmp_path / "state" / "feeds" / "second.ics"
    (blocker / "occupied").mkdir(parents=True)

    with caplog.at_level(logging.ERROR), pytest.raises(PublishError):
        engine_for(tmp_path, api.base_url, extra=feeds).run()

    assert feed_file(tmp_path, "first").is_file()
    assert "other feeds left as they were (published before the failure: first)" in caplog.text


@freeze_time(SYNC_TIME)
def test_past_days_window_drops_old_bookings(tmp_path, api):
    feeds = """
[[feeds]]
name = "recent"
token = "t1"
past_days = 7
"""
    engine_for(tmp_path, api.base_url, extra=feeds).run()

    events = parse_both(feed_file(tmp_path, "recent").read_bytes()).walk("VEVENT")

    assert events
    oldest_end = ANCHOR - timedelta(days=8)
    for event in events:
        end = event.decoded("DTEND")
        end_date = end if not hasattr(end, "date") else end.date()
        assert end_date >= oldest_end


@freeze_time(SYNC_TIME)
def test_coverage_accounts_for_every_booking(tmp_path, api):
    unmappable = upcoming_scheduled_id(api)
    api.update(unmappable, starttime="next Tuesday")
    feeds = """
[[feeds]]
name = "open"
token = "t1"
statuses = ["scheduled", "completed", "no-show"]
past_days = 7

[[feeds]]
name = "classes"
token = "t2"
types = ["class"]
"""
    result = engine_for(tmp_path, api.base_url, extra=feeds).run()

    bookings = [api.get(booking_id) for booking_id in api.ids()]
    cancelled = sum(1 for booking in bookings if status_name(booking["status"]) == "cancelled")
    other_types = sum(1 for booking in bookings if booking.get("type") != "class")
    open_feed = result.stats.coverage["open"]
    assert open_feed["stored"] == 250
    assert open_feed["events"] == result.stats.events["open"]
    assert open_feed["status"] == cancelled
    assert open_feed["ended"] > 0
    assert open_feed["unmappable"] == 1
    assert open_feed["events"] + sum(open_feed[key] for key in ("status", "ended", "unmappable")) == 250
    assert set(open_feed) == {"stored", "events", "status", "ended", "unmappable"}
    classes = result.stats.coverage["classes"]
    assert classes["type"] == other_types
    assert classes["events"] + sum(count for key, count in classes.items() if key not in ("stored", "events")) == 250


@freeze_time(SYNC_TIME)
def test_summary_line_logged(tmp_path, api, caplog):
    caplog.set_level("INFO", logger="calsync")

    engine_for(tmp_path, api.base_url).run()

    summaries = [record.getMessage() for record in caplog.records if "sync finished" in record.getMessage()]
    assert len(summaries) == 1
    assert "3 pages" in summaries[0]
    assert "250 details fetched" in summaries[0]
    assert "250 added" in summaries[0]
    assert SECRET not in caplog.text


def test_fingerprint_ignores_key_order():
    assert fingerprint({"a": 1, "b": "x"}) == fingerprint({"b": "x", "a": 1})
    assert fingerprint({"a": 1}) != fingerprint({"a": 2})


def upcoming_scheduled_id(api: Sandbox) -> str:
    for booking_id in sorted(api.ids()):
        booking = api.get(booking_id)
        if booking["status"] == "scheduled" and not booking["allday"] and booking["starttime"] > "2026-01-16":
            return booking_id
    raise AssertionError("the sandbox data has no upcoming timed scheduled booking")


def event_by_id(data: bytes, booking_id: str):
    for event in parse_both(data).walk("VEVENT"):
        if str(event["UID"]) == f"{booking_id}@test.calsync.invalid":
            return event
    raise AssertionError(f"no event for booking {booking_id}")


@freeze_time(SYNC_TIME)
def test_cancelled_sync_publishes_nothing(tmp_path, api):
    engine = engine_for(tmp_path, api.base_url)
    engine.run()
    before = feed_file(tmp_path).read_bytes()
    api.update(upcoming_scheduled_id(api), title="Must not be published")
    cancel = threading.Event()
    cancel.set()

    with pytest.raises(SyncCancelledError):
        engine.run(cancel=cancel)

    assert feed_file(tmp_path).read_bytes() == before
    with StateStore.open_in(tmp_path / "state") as store:
        assert store.recent_runs()[0].outcome == "failed"


class InflatingProxy:
    """A WSGI proxy in front of the sandbox that can report a larger pagination.total than the rows it lists."""

    def __init__(self, upstream: str) -> None:
        self.upstream = upstream
        self.extra_total = 0

    def __call__(self, environ, start_response):
        url = self.upstream + environ["PATH_INFO"]
        query = environ.get("QUERY_STRING")
        response = requests.get(
            f"{url}?{query}" if query else url,
            headers={"Authorization": environ.get("HTTP_AUTHORIZATION", "")},
            timeout=10,
        )
        body = response.content
        if self.extra_total and environ["PATH_INFO"].endswith("/list"):
            document = response.json()
            document["pagination"]["total"] += self.extra_total
            body = json.dumps(document).encode()
        start_response(f"{response.status_code} X", [("Content-Type", "application/json")])
        return [body]


@pytest.fixture
def proxy(api):
    inflating = InflatingProxy(api.base_url)
    server = make_server(inflating, "127.0.0.1", 0)
    start_server_thread(server)
    inflating.base_url = server_url(server)
    yield inflating
    stop_server(server)


@freeze_time(SYNC_TIME)
def test_incomplete_listing_deletes_and_publishes_nothing(tmp_path, api, proxy):
    engine = engine_for(tmp_path, proxy.base_url)
    engine.run()
    before = feed_file(tmp_path).read_bytes()
    target = upcoming_scheduled_id(api)
    api.delete(target)
    proxy.extra_total = 1

    with pytest.raises(ListingIncompleteError) as raised:
        engine.run()

    assert raised.value.expected == 250
    assert raised.value.received == 249
    assert feed_file(tmp_path).read_bytes() == before
    with StateStore.open_in(tmp_path / "state") as store:
        assert target in store.bookings()
        failed = store.recent_runs(1)[0]
    assert failed.stats["listing_total"] == 250
    assert failed.stats["listing_received"] == 249
    assert failed.stats["page_size"] == 100
    assert failed.stats["pages"] == 3
    assert failed.stats["listing_problems"] == ["received 249 of 250 bookings"]

    proxy.extra_total = 0
    result = engine.run()

    assert result.stats.removed == 1
    assert f"{target}@test.calsync.invalid" not in uids(feed_file(tmp_path).read_bytes())


def test_publish_keeps_devices_and_follows_links(tmp_path):
    target = tmp_path / "target.ics"
    target.write_bytes(b"old")
    link = tmp_path / "link.ics"
    link.symlink_to(target)
    fifo = tmp_path / "fifo.ics"
    os.mkfifo(fifo)
    reader = threading.Thread(target=lambda: fifo.read_bytes())
    reader.start()

    assert publish(link, b"new")
    assert publish(fifo, b"through the pipe")
    reader.join(10)

    assert link.is_symlink()
    assert target.read_bytes() == b"new"
    assert stat.S_ISFIFO(fifo.stat().st_mode)


def test_publish_mode_none_follows_umask(tmp_path):
    previous = os.umask(0o077)
    try:
        publish(tmp_path / "private.ics", b"data", mode=None)
        publish(tmp_path / "feed.ics", b"data")
    finally:
        os.umask(previous)

    assert stat.S_IMODE((tmp_path / "private.ics").stat().st_mode) == 0o600
    assert stat.S_IMODE((tmp_path / "feed.ics").stat().st_mode) == 0o644
