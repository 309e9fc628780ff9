"""Incremental rendering: stored VEVENT bytes are reused only while their input is unchanged.

Every sync here is compared with a full render of the same stored state with
no cache, which must give the same bytes.
"""

import dataclasses
import importlib.resources
import sqlite3
from contextlib import closing
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from zoneinfo import ZoneInfo

import pytest
from freezegun import freeze_time

from calsync import event_cache
from calsync.config import Config, load_config
from calsync.engine import SyncEngine, SyncResult, bookings_after
from calsync.errors import StateError
from calsync.event_cache import RenderCache, input_hash, settings_key, zone_rules_digest
from calsync.feeds import export_feed, mapping_settings, render_feed
from calsync.mapping import MappingSettings
from calsync.sandbox import Sandbox
from calsync.store import StateStore, StoredBooking
from tests.helpers import parse_both

ANCHOR = date(2026, 1, 15)
SYNC_TIME = "2026-01-15T08:00:00Z"
SECRET = "cache-secret"

# Four feeds with three settings keys: "full" and "classes" differ only in
# which bookings they select, so they share stored events.
FEEDS = """
[[feeds]]
name = "full"
token = "t1"
past_days = 36500
alarms = ["15m", "1h"]

[[feeds]]
name = "classes"
token = "t2"
types = ["class"]
alarms = ["1h", "15m"]

[[feeds]]
name = "limited"
token = "t3"
details = "limited"
statuses = ["scheduled", "cancelled"]

[[feeds]]
name = "busy"
token = "t4"
details = "busy"
past_days = 7
"""


@pytest.fixture
def api():
    with Sandbox(secret=SECRET, anchor=ANCHOR) as sandbox:
        yield sandbox


def make_config(
    tmp_path: Path,
    base_url: str,
    uid_domain: str = "cache.calsync.invalid",
    calendar: str = "",
    sync: str = "",
    feeds: str = FEEDS,
) -> Config:
    path = tmp_path / "calsync.toml"
    path.write_text(
        f"""
[cashfin]
base_url = "{base_url}"
client_secret = "{SECRET}"

[sync]
state_dir = "{(tmp_path / 'state').as_posix()}"
{sync}

[calendar]
uid_domain = "{uid_domain}"
{calendar}
{feeds}
""",
        encoding="utf-8",
    )
    return load_config(str(path), env={})


def sync(config: Config) -> SyncResult:
    return SyncEngine(config).run()


def full_render(config: Config, name: str) -> bytes:
    """Render feed ``name`` from the stored state without any stored events, as a sync without the cache would."""
    feed = next(feed for feed in config.feeds if feed.name == name)
    with StateStore.open_in(config.sync.state_dir) as store:
        bookings = list(store.bookings().values())
    return render_feed(config, feed, bookings, datetime.now(UTC)).data


def published(config: Config, name: str) -> bytes:
    return (config.sync.state_dir / "feeds" / f"{name}.ics").read_bytes()


def assert_feeds_match_full_render(config: Config) -> None:
    for feed in config.feeds:
        assert published(config, feed.name) == full_render(config, feed.name), f"feed {feed.name} differs"


def stored_rows(config: Config) -> list[tuple]:
    with closing(sqlite3.connect(config.sync.state_dir / "state.sqlite3")) as connection:
        return connection.execute(
            "SELECT settings_key, booking_id, input_hash, data FROM rendered_events ORDER BY settings_key, booking_id"
        ).fetchall()


def write_entry(config: Config, key: str, booking_id: str, digest: str, data: bytes) -> None:
    with closing(sqlite3.connect(config.sync.state_dir / "state.sqlite3")) as connection:
        with connection:
            connection.execute(
                "UPDATE rendered_events SET input_hash = ?, data = ? WHERE settings_key = ? AND booking_id = ?",
                (digest, data, key, booking_id),
            )
        assert connection.total_changes == 1


def key_of(config: Config, name: str) -> str:
    feed = next(feed for feed in config.feeds if feed.name == name)
    return settings_key(mapping_settings(config, feed))


def upcoming_ids(api: Sandbox, count: int) -> list[str]:
    """Return ``count`` ids of timed scheduled bookings after the sync time, which "full" and "limited" show."""
    found = []
    for booking_id in sorted(api.ids()):
        booking = api.get(booking_id)
        if booking["status"] == "scheduled" and not booking["allday"] and booking["starttime"] > "2026-01-16":
            found.append(booking_id)
    assert len(found) >= count, "the sandbox data has too few upcoming timed scheduled bookings"
    return found[:count]


def uid(booking_id: str) -> bytes:
    return f"UID:{booking_id}@cache.calsync.invalid".encode()


def event_data(feed: bytes, booking_id: str) -> bytes:
    """Return the VEVENT of one booking from a feed's bytes."""
    for chunk in feed.split(b"BEGIN:VEVENT\r\n")[1:]:
        if uid(booking_id) in chunk:
            return chunk
    raise AssertionError(f"no event for booking {booking_id}")


MARKER_EVENT = b"BEGIN:VEVENT\r\nUID:marker@cache.calsync.invalid\r\nSUMMARY:Served from the store\r\nEND:VEVENT\r\n"


@freeze_time(SYNC_TIME)
def test_first_sync_matches_full_render(tmp_path, api):
    config = make_config(tmp_path, api.base_url)

    result = sync(config)

    assert_feeds_match_full_render(config)
    for feed in config.feeds:
        assert result.stats.events[feed.name] > 0
        parse_both(published(config, feed.name))
    # "classes" reuses what "full" rendered moments before, because the two share a settings key.
    assert result.stats.events_reused == result.stats.events["classes"]
    assert len({row[0] for row in stored_rows(config)}) == 3


@freeze_time(SYNC_TIME)
def test_unchanged_sync_reuses_every_event(tmp_path, api):
    config = make_config(tmp_path, api.base_url)
    sync(config)
    rows_before = stored_rows(config)

    result = sync(config)

    assert result.stats.events_rendered == 0
    assert result.stats.events_reused == sum(result.stats.events.values())
    assert result.stats.published == []
    assert stored_rows(config) == rows_before


@freeze_time(SYNC_TIME)
def test_changed_bookings_match_full_render(tmp_path, api):
    config = make_config(tmp_path, api.base_url)
    sync(config)
    retitled, moved, cancelled, cleared, repriced = upcoming_ids(api, 5)
    api.update(retitled, title="Renamed for the cache test")
    api.update(moved, starttime="2026-02-02T09:00:00.000Z", endtime="2026-02-02T09:45:00.000Z")
    api.update(cancelled, status="cancelled")
    api.update(cleared, endtime=None)
    # A new amount changes DESCRIPTION but not SEQUENCE, so only the record's hash tells the change.
    api.update(repriced, amount=98765)

    result = sync(config)

    assert_feeds_match_full_render(config)
    assert result.stats.changed == 5
    # Five bookings under at most three settings keys; everything else is reused.
    assert 0 < result.stats.events_rendered <= 15
    full = published(config, "full")
    assert b"SUMMARY:Renamed for the cache test" in full
    assert b"DTSTART:20260202T090000Z" in full
    assert b"Amount: 98765" in full


def test_details_change_matches_full_render(tmp_path, api):
    # With details_max_age equal to the interval, a sync past that age refreshes every booking's details.
    config = make_config(tmp_path, api.base_url, sync='interval = "15m"\ndetails_max_age = "15m"')
    with freeze_time(SYNC_TIME):
        sync(config)
    target = upcoming_ids(api, 1)[0]
    api.update(target, description="Bring the signed consent form.", participant={"name": "Amina Otieno"})

    with freeze_time("2026-01-15T08:30:00Z"):
        result = sync(config)
        assert_feeds_match_full_render(config)

    assert result.stats.details_fetched == len(api.ids())
    assert result.stats.changed == 1
    assert 0 < result.stats.events_rendered <= 3
    assert b"consent form" in published(config, "full")


@freeze_time(SYNC_TIME)
def test_deleted_booking_leaves_feed_and_store(tmp_path, api):
    config = make_config(tmp_path, api.base_url)
    sync(config)
    target = upcoming_ids(api, 1)[0]
    assert uid(target) in published(config, "full")
    api.delete(target)

    result = sync(config)

    assert_feeds_match_full_render(config)
    assert result.stats.removed == 1
    assert uid(target) not in published(config, "full")
    assert target not in {row[1] for row in stored_rows(config)}


@freeze_time(SYNC_TIME)
def test_unmappable_booking_loses_stored_event(tmp_path, api):
    config = make_config(tmp_path, api.base_url)
    sync(config)
    target = upcoming_ids(api, 1)[0]
    api.update(target, starttime="next Tuesday")

    result = sync(config)

    assert result.stats.skipped == 1
    assert uid(target) not in published(config, "full")
    assert target not in {row[1] for row in stored_rows(config)}
    assert_feeds_match_full_render(config)


@pytest.mark.parametrize(
    "option",
    [
        pytest.param({"feeds": FEEDS.replace('alarms = ["15m", "1h"]', 'alarms = ["30m"]')}, id="alarms"),
        pytest.param({"feeds": FEEDS.replace('details = "limited"', 'details = "full"')}, id="details"),
        pytest.param({"uid_domain": "other.calsync.invalid"}, id="uid_domain"),
        pytest.param({"calendar": 'organizer = "desk@example.com"'}, id="organizer"),
        pytest.param({"sync": 'timezone = "America/Los_Angeles"'}, id="timezone"),
    ],
)
@freeze_time(SYNC_TIME)
def test_settings_change_matches_full_render(tmp_path, api, option):
    before = make_config(tmp_path, api.base_url)
    sync(before)
    keys_before = {key_of(before, feed.name) for feed in before.feeds}
    after = make_config(tmp_path, api.base_url, **option)

    result = sync(after)

    assert_feeds_match_full_render(after)
    keys_after = {key_of(after, feed.name) for feed in after.feeds}
    assert keys_after != keys_before
    assert result.stats.events_rendered > 0
    # Entries of settings no longer configured are deleted.
    assert {row[0] for row in stored_rows(after)} == keys_after


@freeze_time(SYNC_TIME)
def test_timezone_change_moves_allday_dates(tmp_path, api):
    # Midnight in Nairobi (UTC+3) on 21 January is still 20 January in Los Angeles.
    added = api.add(
        {
            "title": "Staff training day",
            "starttime": "2026-01-20T21:00:00.000Z",
            "endtime": "2026-01-21T21:00:00.000Z",
            "allday": True,
            "status": "scheduled",
        }
    )
    before = make_config(tmp_path, api.base_url)
    sync(before)
    assert b"DTSTART;VALUE=DATE:20260121" in event_data(published(before, "full"), added["_id"])
    after = make_config(tmp_path, api.base_url, sync='timezone = "America/Los_Angeles"')

    sync(after)

    assert b"DTSTART;VALUE=DATE:20260120" in event_data(published(after, "full"), added["_id"])
    assert_feeds_match_full_render(after)


@freeze_time(SYNC_TIME)
def test_render_version_change_renders_again(tmp_path, api, monkeypatch):
    config = make_config(tmp_path, api.base_url)
    sync(config)
    monkeypatch.setattr(event_cache, "RENDER_VERSION", event_cache.RENDER_VERSION + 1)

    result = sync(config)

    # Only "classes" reuses events: the ones "full" rendered under the new key moments before.
    assert result.stats.events_reused == result.stats.events["classes"]
    assert result.stats.events_rendered > 0
    assert_feeds_match_full_render(config)
    assert {row[0] for row in stored_rows(config)} == {key_of(config, feed.name) for feed in config.feeds}


@freeze_time(SYNC_TIME)
def test_stored_bytes_with_matching_hash_are_served(tmp_path, api):
    config = make_config(tmp_path, api.base_url)
    sync(config)
    target = upcoming_ids(api, 1)[0]
    key = key_of(config, "full")
    digest = next(row[2] for row in stored_rows(config) if row[0] == key and row[1] == target)
    write_entry(config, key, target, digest, MARKER_EVENT)

    sync(config)

    assert MARKER_EVENT in published(config, "full")
    assert uid(target) not in published(config, "full")


@freeze_time(SYNC_TIME)
def test_tampered_hash_is_rendered_again(tmp_path, api):
    config = make_config(tmp_path, api.base_url)
    sync(config)
    target = upcoming_ids(api, 1)[0]
    key = key_of(config, "full")
    write_entry(config, key, target, "0" * 64, MARKER_EVENT)

    result = sync(config)

    assert result.stats.events_rendered == 1
    assert MARKER_EVENT not in published(config, "full")
    assert_feeds_match_full_render(config)
    assert MARKER_EVENT not in {row[3] for row in stored_rows(config)}


@freeze_time(SYNC_TIME)
def test_entry_of_earlier_input_is_not_served(tmp_path, api):
    config = make_config(tmp_path, api.base_url)
    sync(config)
    target = upcoming_ids(api, 1)[0]
    key = key_of(config, "full")
    earlier = next(row for row in stored_rows(config) if row[0] == key and row[1] == target)
    api.update(target, title="Title after the change")
    sync(config)
    # The correct hash and bytes of the booking before its change, as a crash could leave them.
    write_entry(config, key, target, earlier[2], earlier[3])

    result = sync(config)

    assert result.stats.events_rendered == 1
    assert earlier[3] not in published(config, "full")
    assert b"SUMMARY:Title after the change" in published(config, "full")
    assert_feeds_match_full_render(config)


@freeze_time(SYNC_TIME)
def test_damaged_entry_is_rendered_again(tmp_path, api):
    config = make_config(tmp_path, api.base_url)
    sync(config)
    target = upcoming_ids(api, 1)[0]
    key = key_of(config, "full")
    digest = next(row[2] for row in stored_rows(config) if row[0] == key and row[1] == target)
    write_entry(config, key, target, digest, b"BEGIN:VEVENT\r\nSUMMARY:cut off")

    result = sync(config)

    assert result.stats.events_rendered == 1
    assert_feeds_match_full_render(config)


@freeze_time(SYNC_TIME)
def test_failed_save_still_publishes(tmp_path, api, monkeypatch, caplog):
    config = make_config(tmp_path, api.base_url)
    sync(config)
    target = upcoming_ids(api, 1)[0]
    api.update(target, title="Published without a stored event")

    def fail(self):
        raise StateError("state.sqlite3", "cannot write: disk I/O error")

    monkeypatch.setattr(RenderCache, "save", fail)
    result = sync(config)

    assert result.stats.published
    assert b"Published without a stored event" in published(config, "full")
    assert "could not store the rendered events" in caplog.text
    monkeypatch.undo()
    # The stored entry still has the hash of the old title, so the next sync renders the event again.
    assert sync(config).stats.events_rendered >= 1
    assert_feeds_match_full_render(config)


@freeze_time(SYNC_TIME)
def test_export_reuses_without_writing(tmp_path, api):
    config = make_config(tmp_path, api.base_url)
    sync(config)
    feed = next(feed for feed in config.feeds if feed.name == "full")
    assert export_feed(config, feed) == published(config, "full")
    target = upcoming_ids(api, 1)[0]
    key = key_of(config, "full")
    digest = next(row[2] for row in stored_rows(config) if row[0] == key and row[1] == target)
    write_entry(config, key, target, digest, MARKER_EVENT)
    rows_before = stored_rows(config)

    exported = export_feed(config, feed)

    assert MARKER_EVENT in exported
    assert stored_rows(config) == rows_before


def test_later_sync_time_matches_full_render(tmp_path, api):
    config = make_config(tmp_path, api.base_url)
    with freeze_time(SYNC_TIME):
        sync(config)

    # Two weeks later the date windows select other bookings and some details are refreshed.
    with freeze_time("2026-01-29T08:00:00Z"):
        result = sync(config)
        assert_feeds_match_full_render(config)

    assert result.stats.events_reused > 0


def test_settings_key_covers_every_field():
    base = MappingSettings(uid_domain="a.invalid", timezone=ZoneInfo("Africa/Nairobi"))
    variants = {
        "uid_domain": "b.invalid",
        "timezone": ZoneInfo("Europe/Berlin"),
        "details": "busy",
        "alarms": (timedelta(minutes=15),),
        "organizer": "desk@example.com",
        "default_duration": timedelta(minutes=30),
    }
    assert set(variants) == {field.name for field in dataclasses.fields(MappingSettings)}

    for name, value in variants.items():
        assert settings_key(dataclasses.replace(base, **{name: value})) != settings_key(base), name
    assert settings_key(MappingSettings(uid_domain="a.invalid", timezone=ZoneInfo("Africa/Nairobi"))) == settings_key(base)


def test_settings_key_follows_render_version(monkeypatch):
    settings = MappingSettings(uid_domain="a.invalid", timezone=ZoneInfo("Africa/Nairobi"))
    before = settings_key(settings)

    monkeypatch.setattr(event_cache, "RENDER_VERSION", event_cache.RENDER_VERSION + 1)

    assert settings_key(settings) != before


def test_zone_rules_digest_tells_zones_apart():
    nairobi = zone_rules_digest(ZoneInfo("Africa/Nairobi"))

    assert nairobi == zone_rules_digest(ZoneInfo("Africa/Nairobi"))
    assert nairobi != zone_rules_digest(ZoneInfo("Europe/Berlin"))
    assert not nairobi.startswith("zone object")


def test_zone_without_file_is_keyed_by_object():
    # The tzdata package is a dependency, so its copy of the zone is always there.
    source = importlib.resources.files("tzdata").joinpath("zoneinfo", "Africa", "Nairobi")
    with source.open("rb") as file:
        first = ZoneInfo.from_file(file)
    with source.open("rb") as file:
        second = ZoneInfo.from_file(file)

    assert zone_rules_digest(first) == zone_rules_digest(first)
    assert zone_rules_digest(first) != zone_rules_digest(second)


def test_input_hash_covers_every_input():
    now = datetime(2026, 1, 15, 8, tzinfo=UTC)
    booking = StoredBooking(
        id="b1", row={"_id": "b1", "title": "Haircut"}, fingerprint="f", significant="s",
        first_seen=now, last_seen=now, details={"_id": "b1", "description": "Trim"}, sequence=1,
    )
    variants = [
        dataclasses.replace(booking, row={"_id": "b1", "title": "Shave"}),
        dataclasses.replace(booking, details={"_id": "b1", "description": "Trim and wash"}),
        dataclasses.replace(booking, sequence=2),
        dataclasses.replace(booking, first_seen=now + timedelta(seconds=1)),
    ]

    for variant in variants:
        assert input_hash("key", variant) != input_hash("key", booking)
    assert input_hash("other key", booking) != input_hash("key", booking)
    assert input_hash("key", dataclasses.replace(booking, last_seen=now + timedelta(days=1))) == input_hash("key", booking)


def test_bookings_after_applies_changes_and_removals():
    now = datetime(2026, 1, 15, 8, tzinfo=UTC)

    def booking(booking_id: str, title: str, removed_at: datetime | None = None) -> StoredBooking:
        return StoredBooking(
            id=booking_id, row={"_id": booking_id, "title": title}, fingerprint="f", significant="s",
            first_seen=now, last_seen=now, details={}, removed_at=removed_at,
        )

    stored = {
        "kept": booking("kept", "Kept"),
        "changed": booking("changed", "Old"),
        "removed": booking("removed", "Removed now"),
        "gone": booking("gone", "Removed before", removed_at=now),
        "back": booking("back", "Removed before", removed_at=now),
    }
    changes = [booking("changed", "New"), booking("back", "Listed again"), booking("new", "New booking")]

    result = bookings_after(stored, changes, ["removed"])

    assert {item.id: item.row["title"] for item in result} == {
        "kept": "Kept", "changed": "New", "back": "Listed again", "new": "New booking",
    }
