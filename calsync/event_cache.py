"""Rendered VEVENT bytes kept in the state store, so that a sync serializes only the events that changed.

The store keeps one entry per booking and *settings key*. The settings key
is a hash of everything that is the same for every event of a feed. That is
the feed's ``MappingSettings`` (privacy level, alarms, UID domain, organizer,
time zone and the rules of that zone, default duration), ``RENDER_VERSION``,
and the versions of calsync and icalendar. Feeds that differ only in which
bookings they select share a key and so share entries.

Each entry also records an *input hash*: the settings key, the booking's
stored record, its SEQUENCE and the stamp used when the booking has no
timestamps of its own. An entry is reused only when that hash equals the
hash of the booking's current input. Entries left behind by a crash, by an
older calsync or by a changed booking are therefore rendered again, never
served.

``RenderCache.save`` writes the events rendered in one pass and deletes the
entries that no feed used in it, including those of removed bookings and of
settings keys no longer configured. The table thus contains at most one entry
per selected booking and configured settings key.
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import importlib.resources
import json
import logging
import zoneinfo
from collections.abc import Callable, Iterable
from datetime import timedelta, timezone
from pathlib import Path

import icalendar

from calsync import __version__
from calsync.mapping import RENDER_VERSION, MappingSettings
from calsync.store import RenderedEvent, StateStore, StoredBooking, utc_text

log = logging.getLogger(__name__)

EventRenderer = Callable[[StoredBooking, MappingSettings], bytes]


def settings_key(settings: MappingSettings) -> str:
    """Hash the mapping settings together with the render, calsync and icalendar versions.

    Every field of ``MappingSettings`` is included, so a field added later
    becomes part of the key without a change here.
    """
    document = {
        "render_version": RENDER_VERSION,
        "calsync": __version__,
        "icalendar": icalendar.__version__,
        "settings": {
            field.name: _key_value(getattr(settings, field.name)) for field in dataclasses.fields(settings)
        },
    }
    return _sha256(document)


def input_hash(key: str, booking: StoredBooking) -> str:
    """Hash everything the bytes of a booking's event depend on under the settings ``key``.

    ``first_seen`` is included because it becomes DTSTAMP when the booking
    has neither ``updatedat`` nor ``createdat``.
    """
    document = [key, booking.id, booking.sequence, utc_text(booking.first_seen), booking.record()]
    return _sha256(document)


def _sha256(document: object) -> str:
    # ASCII-only JSON, so that lone surrogates from the API's JSON encode. repr()
    # covers any value JSON lacks, though records decoded from JSON contain none.
    text = json.dumps(document, sort_keys=True, separators=(",", ":"), default=repr)
    return hashlib.sha256(text.encode("ascii")).hexdigest()


def _key_value(value: object) -> object:
    """Return a JSON value for one settings field; raise TypeError for a type that has no exact JSON form."""
    if isinstance(value, zoneinfo.ZoneInfo):
        return {"zone": value.key, "rules": zone_rules_digest(value)}
    if isinstance(value, timedelta):
        return value // timedelta(microseconds=1)
    if isinstance(value, timezone):
        return {"offset": value.utcoffset(None) // timedelta(microseconds=1)}
    if isinstance(value, tuple):
        return [_key_value(item) for item in value]
    if value is None or isinstance(value, (str, int, bool)):
        return value
    raise TypeError(f"{type(value).__name__} {value!r} has no settings-key form; add one to _key_value")


@functools.cache
def zone_rules_digest(zone: zoneinfo.ZoneInfo) -> str:
    """Hash the TZif file that ``ZoneInfo`` loads for ``zone``, so that new zone rules make a new key.

    All-day dates depend on the zone's offsets, which a tzdata update can
    change. ``ZoneInfo`` reads the first file named by its key under
    ``zoneinfo.TZPATH``, else the one in the ``tzdata`` package, and this
    function looks in the same order. The digest is computed once per zone
    object, which keeps the rules it was loaded with while the process runs.

    NOTE: a zone made by ``ZoneInfo.from_file`` with a ``key`` is hashed as
    that key's file, whatever file it came from. calsync's config never
    makes such a zone.
    """
    if zone.key is not None:
        for root in zoneinfo.TZPATH:
            path = Path(root) / zone.key
            if path.is_file():
                return hashlib.sha256(path.read_bytes()).hexdigest()
        try:
            resource = importlib.resources.files("tzdata").joinpath("zoneinfo", *zone.key.split("/"))
            return hashlib.sha256(resource.read_bytes()).hexdigest()
        except (ModuleNotFoundError, OSError):
            pass

    # A zone made with ZoneInfo.from_file, or one whose file is gone, has no
    # file to hash. Naming the object makes its events reusable only within
    # this process, whose copy of the rules cannot change.
    return f"zone object {id(zone)}"


class EventCache:
    """The stored events of one settings key, and the events rendered or reused in this pass."""

    def __init__(self, settings: MappingSettings, stored: dict[str, RenderedEvent]) -> None:
        self.settings = settings
        self.key = settings_key(settings)
        self._stored = stored
        self._fresh: dict[str, RenderedEvent] = {}
        self._used: set[str] = set()
        self.rendered = 0
        self.reused = 0

    def event_bytes(self, booking: StoredBooking, render: EventRenderer) -> bytes:
        """Return the booking's VEVENT bytes: the stored ones if their input hash matches, else ``render``'s.

        An exception from ``render`` (``MappingError`` for an unmappable
        booking) propagates, and the booking's stored entry is then deleted
        by ``RenderCache.save``.
        """
        digest = input_hash(self.key, booking)
        stored = self._stored.get(booking.id)
        if stored is not None and stored.input_hash == digest and _is_one_event(stored.data):
            self._used.add(booking.id)
            self.reused += 1
            return stored.data

        data = render(booking, self.settings)
        event = RenderedEvent(digest, data)
        self._stored[booking.id] = event
        self._fresh[booking.id] = event
        self._used.add(booking.id)
        self.rendered += 1
        return data

    def fresh(self) -> Iterable[tuple[str, RenderedEvent]]:
        """Return the (booking id, event) pairs rendered in this pass."""
        return self._fresh.items()

    def unused(self) -> list[str]:
        """Return the ids of the stored entries that this pass did not use."""
        return [booking_id for booking_id in self._stored if booking_id not in self._used]


class RenderCache:
    """The ``EventCache`` of each settings key that one render pass uses, loaded from ``store`` on first use."""

    def __init__(self, store: StateStore) -> None:
        self.store = store
        self._caches: dict[str, EventCache] = {}

    def for_settings(self, settings: MappingSettings) -> EventCache:
        key = settings_key(settings)
        cache = self._caches.get(key)
        if cache is None:
            cache = EventCache(settings, self.store.rendered_events(key))
            self._caches[key] = cache
        return cache

    @property
    def rendered(self) -> int:
        """The number of events serialized in this pass."""
        return sum(cache.rendered for cache in self._caches.values())

    @property
    def reused(self) -> int:
        """The number of events taken from the store in this pass."""
        return sum(cache.reused for cache in self._caches.values())

    def save(self) -> None:
        """Write the events rendered in this pass and delete every entry that no feed used.

        Call it only after a pass that rendered every configured feed,
        because entries that only the left-out feeds use would be deleted.
        Starts no transaction when there is nothing to write or delete.
        """
        unused = {key: cache.unused() for key, cache in self._caches.items()}
        changed = [key for key, cache in self._caches.items() if cache.rendered or unused[key]]
        dropped = self.store.rendered_settings_keys() - set(self._caches)
        if not changed and not dropped:
            return

        with self.store.transaction():
            for key in changed:
                self.store.save_rendered_events(key, self._caches[key].fresh())
                self.store.delete_rendered_events(key, unused[key])
            self.store.delete_rendered_settings(dropped)
        if dropped:
            log.info("deleted the rendered events of %d feed settings no longer configured", len(dropped))


def _is_one_event(data: bytes) -> bool:
    """Check the framing of stored bytes, so that a damaged entry is rendered again instead of failing the feed."""
    return data.startswith(b"BEGIN:VEVENT\r\n") and data.endswith(b"END:VEVENT\r\n")
