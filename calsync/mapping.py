"""Map Cashfin bookings to iCalendar events and render whole feeds.

``map_booking`` turns one booking (a details record, or a list row when no
details were fetched) into an ``icalendar.Event``, ``render_event`` returns its
bytes, and ``render_calendar`` wraps event bytes in a VCALENDAR. The output
depends only on the arguments: every timestamp comes from the booking or from
``fallback_stamp``, so the same input always renders to the same bytes.

Bad booking data raises ``MappingError`` and nothing else. A missing or invalid
``_id`` or ``starttime`` makes a booking unmappable. Every other field is
coerced or left out, and a replaced value (such as a missing ``endtime``) is
logged as a warning naming the booking. Feeds are rendered again on every
sync, so each distinct warning is logged once per process at WARNING level and
at DEBUG level after that.

Text fields keep their exact text, so that every parser reads back the
booking's own text. Two things iCalendar cannot carry are changed before
escaping and folding. Line breaks (CR LF, CR or LF) become LF, because TEXT
has one line-break escape. C0 control characters other than tab and the line
breaks are removed, because RFC 5545 allows no control character but tab in
TEXT values and XML 1.0 (used by xCal, RFC 6321) allows none of them either.
DEL is removed for RFC 5545, and lone surrogates and the non-characters U+FFFE
and U+FFFF because XML 1.0 excludes them and a lone surrogate cannot be
encoded as UTF-8. U+FEFF is removed because parsers take it for a byte order
mark and drop it at the start of a value (icalendar does). Runs of spaces, leading and trailing whitespace, tabs and
line breaks are kept in every TEXT value, SUMMARY and LOCATION included. A
value that is blank after this counts as missing. Only the CN parameter,
which cannot hold a line break or a double quote, is put on one line.

Statuses map as ``cancelled`` (or ``canceled``) to STATUS:CANCELLED and
TRANSP:TRANSPARENT, and ``scheduled``, ``completed`` and ``no-show`` to
STATUS:CONFIRMED and TRANSP:OPAQUE. A missing or unknown status is also shown
as CONFIRMED and OPAQUE, with a warning, because hiding a booking that may
still take place is worse than showing one that may not.
"""

from __future__ import annotations

import logging
import re
import threading
from collections import OrderedDict
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from datetime import date, datetime, time, timedelta, timezone, tzinfo
from decimal import Decimal, InvalidOperation
from typing import Any
from urllib.parse import urlsplit
from zoneinfo import ZoneInfo

import icalendar
from dateutil.parser import isoparse

from calsync import __version__
from calsync.errors import MappingError

log = logging.getLogger(__name__)

# The version of the mapping's output. The state store keeps the bytes of each
# rendered event and reuses them only while this number, the calsync version
# and the icalendar version are unchanged. Bump it in every change that can
# alter the bytes render_event returns for the same booking and settings.
RENDER_VERSION = 1

DETAIL_LEVELS = ("full", "limited", "busy")
DEFAULT_DURATION = timedelta(hours=1)
ONE_DAY = timedelta(days=1)

BUSY_SUMMARY = "Busy"
FALLBACK_SUMMARY = "Booking"

STATUS_MAP = {
    "scheduled": "CONFIRMED",
    "completed": "CONFIRMED",
    "no-show": "CONFIRMED",
    "cancelled": "CANCELLED",
    "canceled": "CANCELLED",
}
PRIORITY_MAP = {"high": 1, "medium": 5, "low": 9}

# Keys of a physical location, in the order their values are joined into LOCATION.
ADDRESS_KEYS = ("name", "address", "city", "country")

_TRUE_WORDS = frozenset({"true", "yes", "y", "on", "1"})
_FALSE_WORDS = frozenset({"false", "no", "n", "off", "0", ""})

# Characters removed from text. The module docstring gives the reasons.
_INVALID_TEXT = re.compile("[\x00-\x08\x0b\x0c\x0e-\x1f\x7f\ud800-\udfff\ufeff\ufffe\uffff]")
_LINE_BREAK = re.compile(r"\r\n|\r|\n")
# Timestamps as Cashfin writes them, such as 2024-01-20T10:00:00.000Z.
_CASHFIN_INSTANT = re.compile(r"\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}(\.\d{3}|\.\d{6})?Z")
_SPACE_RUN = re.compile(r"\s+")

# Cashfin ids are 24 hex digits. The pattern also admits other id schemes, up
# to 255 characters, that are safe in a UID, a log line and a file name.
_BOOKING_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,254}")
# The configuration's rules for calendar.uid_domain and calendar.organizer,
# and no control characters, which would reach the feed unescaped.
_UID_DOMAIN = re.compile(r"[^\s@/\x00-\x1f\x7f]+")
_ORGANIZER_EMAIL = re.compile(r"[^@\s:\x00-\x1f\x7f]+@[^@\s\x00-\x1f\x7f]+")
# Participant emails come from booking data, so only plain ASCII addresses
# that need no percent-encoding in a mailto: URI become an ATTENDEE.
_PARTICIPANT_EMAIL = re.compile(r"[A-Za-z0-9!#$&'*+/=?^_`{|}~.-]+@[A-Za-z0-9.-]+")
# Characters RFC 3986 allows nowhere in a URI.
_URI_FORBIDDEN = re.compile(r"[\s\"<>\\^`{|}]")

# Amounts whose decimal exponent is outside this range are shown as given
# instead of being written out digit by digit.
_MAX_AMOUNT_EXPONENT = 30


class ExactText(icalendar.vText):
    """A TEXT value escaped exactly as RFC 5545 section 3.3.11 specifies.

    icalendar 7.3's ``vText`` first rewrites a backslash followed by "N" as a
    line break, because it assumes such input is already escaped; booking
    text such as a Windows path "C:\\Notes" would then come back as "C:"
    and "otes" on a new line. This class escapes backslash, semicolon, comma
    and line breaks and nothing else, so every parser reads back the
    original text.
    """

    def to_ical(self) -> bytes:
        text = str(self).replace("\\", "\\\\").replace(";", "\\;").replace(",", "\\,")
        text = _LINE_BREAK.sub("\\\\n", text)
        return text.encode(self.encoding)


class ExactCategories(icalendar.vCategory):
    """A CATEGORIES value whose items are escaped by ``ExactText``.

    icalendar's ``vCategory`` wraps every item in its own ``vText``, which
    would undo the exact escaping of the items.
    """

    def __init__(self, items: Iterable[str]) -> None:
        super().__init__([])
        self.cats = [ExactText(item) for item in items]


@dataclass(frozen=True)
class MappingSettings:
    """Settings with which one feed maps bookings to events.

    ``timezone`` is the business's zone, which decides the calendar date of an
    all-day booking. ``details`` is the privacy level. ``full`` shows
    everything. ``limited`` leaves out ATTENDEE, the description text and the
    participant's name and phone. ``busy`` shows SUMMARY:Busy, the times,
    STATUS, TRANSP, DTSTAMP and the alarms, and nothing else.
    Each entry of ``alarms`` becomes a DISPLAY alarm that long before the
    start, except on cancelled events.
    ``organizer`` is empty or an email address, with or without ``mailto:``.
    """

    uid_domain: str
    timezone: ZoneInfo
    details: str = "full"
    alarms: tuple[timedelta, ...] = ()
    organizer: str = ""
    default_duration: timedelta = DEFAULT_DURATION

    def __post_init__(self) -> None:
        if not _UID_DOMAIN.fullmatch(self.uid_domain):
            raise ValueError(f"uid_domain {self.uid_domain!r} is not a domain name such as bookings.example.com")
        if self.details not in DETAIL_LEVELS:
            raise ValueError(f"details {self.details!r} is not one of {', '.join(DETAIL_LEVELS)}")
        if self.default_duration <= timedelta(0):
            raise ValueError(f"default_duration {self.default_duration} must be positive")

        alarms = tuple(sorted(set(self.alarms)))
        if any(alarm < timedelta(0) for alarm in alarms):
            raise ValueError(f"alarms {self.alarms!r} must not be negative: each is a time before the start")
        object.__setattr__(self, "alarms", alarms)
        object.__setattr__(self, "organizer", _organizer_address(self.organizer))


@dataclass(frozen=True)
class CalendarHeader:
    """The calendar-level properties of one feed.

    ``title`` becomes X-WR-CALNAME and NAME, falling back to ``name`` when
    empty. ``refresh_interval`` becomes REFRESH-INTERVAL and X-PUBLISHED-TTL,
    which tell subscribers how often to fetch the feed.
    """

    name: str
    title: str
    timezone_name: str
    refresh_interval: timedelta
    product_id: str = f"-//calsync//calsync {__version__}//EN"

    def __post_init__(self) -> None:
        if self.refresh_interval <= timedelta(0):
            raise ValueError(f"refresh_interval {self.refresh_interval} must be positive")
        if not _clean_line(self.product_id):
            raise ValueError("product_id must not be empty")


@dataclass(frozen=True)
class _EventTimes:
    """DTSTART and DTEND of an event, and the instant at which it ends."""

    start: datetime | date
    end: datetime | date
    end_instant: datetime


def parse_instant(value: object) -> datetime:
    """Parse an API timestamp into an aware datetime in UTC.

    Accepts every ISO 8601 form that dateutil's ``isoparse`` reads: ``Z`` or a
    numeric offset, with or without fractional seconds, basic or extended, and
    a date alone (midnight). A value without an offset is taken as UTC. Also
    accepts ``datetime`` and ``date`` objects. Raises ValueError for anything
    else, including numbers, because an epoch number does not say its unit.
    """
    if isinstance(value, datetime):
        instant = value
    elif isinstance(value, date):
        instant = datetime.combine(value, time())
    elif isinstance(value, str):
        instant = _parse_iso(value)
    else:
        raise ValueError(f"expected an ISO 8601 timestamp string, got {type(value).__name__}")

    if instant.tzinfo is None or instant.utcoffset() is None:
        return instant.replace(tzinfo=timezone.utc)
    try:
        return instant.astimezone(timezone.utc)
    except OverflowError as error:
        raise ValueError(f"timestamp {value!r:.80} is outside the range of datetime in UTC") from error


def map_booking(
    booking: Mapping[str, Any],
    *,
    sequence: int,
    settings: MappingSettings,
    fallback_stamp: datetime,
) -> icalendar.Event:
    """Build the VEVENT of one booking at the privacy level of ``settings``.

    ``sequence`` becomes SEQUENCE. ``fallback_stamp`` becomes DTSTAMP and
    LAST-MODIFIED when neither ``updatedat`` nor ``createdat`` parses.
    Raises MappingError when the booking has no usable ``_id`` or
    ``starttime``, and never another exception for bad booking data.
    """
    if isinstance(sequence, bool) or not isinstance(sequence, int) or sequence < 0:
        raise ValueError(f"sequence must be a non-negative int, got {sequence!r}")
    if not isinstance(fallback_stamp, datetime):
        raise TypeError(f"fallback_stamp must be a datetime, got {type(fallback_stamp).__name__}")

    booking_id = _booking_id(booking)
    problems: list[str] = []
    try:
        event = _build_event(booking, booking_id, sequence, settings, fallback_stamp, problems)
    except (TypeError, ValueError, OverflowError) as error:
        # A safety net: the field readers coerce or reject every value they
        # know of, but a booking must never stop a whole feed from rendering.
        raise MappingError(booking_id, f"cannot be mapped ({type(error).__name__}: {error})") from error

    for problem in problems:
        _warn_once(booking_id, problem)
    return event


def render_event(
    booking: Mapping[str, Any],
    *,
    sequence: int,
    settings: MappingSettings,
    fallback_stamp: datetime,
) -> bytes:
    """Map a booking and return its bytes, from BEGIN:VEVENT to END:VEVENT and CRLF."""
    event = map_booking(booking, sequence=sequence, settings=settings, fallback_stamp=fallback_stamp)
    try:
        return event.to_ical()
    except (TypeError, ValueError) as error:
        raise MappingError(str(booking.get("_id")), f"cannot be serialized ({error})") from error


def new_calendar(header: CalendarHeader) -> icalendar.Calendar:
    """Build an empty VCALENDAR with the calendar-level properties of ``header``.

    No METHOD is set: a subscription feed is not an iTIP message, and RFC 5546
    does not allow ATTENDEE in METHOD:PUBLISH.
    """
    title = _clean_line(header.title) or _clean_line(header.name)
    calendar = icalendar.Calendar()
    calendar.add("prodid", _clean_line(header.product_id))
    calendar.add("version", "2.0")
    calendar.add("calscale", "GREGORIAN")
    if title:
        # NAME is TEXT (RFC 7986), so it is escaped. X-WR-CALNAME is a non-standard
        # property that clients display as written, so it carries the title unescaped.
        calendar.add("name", ExactText(title))
        calendar.add("x-wr-calname", title)
    if _clean_line(header.timezone_name):
        calendar.add("x-wr-timezone", _clean_line(header.timezone_name))
    calendar.add("refresh-interval", header.refresh_interval, parameters={"VALUE": "DURATION"})
    calendar.add("x-published-ttl", icalendar.vDuration(header.refresh_interval))
    return calendar


def render_calendar(header: CalendarHeader, events: Iterable[bytes]) -> bytes:
    """Return a whole feed: the header of ``new_calendar``, the event bytes in order, END:VCALENDAR.

    The result is byte-identical to adding the same events to
    ``new_calendar(header)`` and calling ``to_ical()``. Raises ValueError for
    an item of ``events`` that is not one VEVENT ending in CRLF.
    """
    footer = b"END:VCALENDAR\r\n"
    head = new_calendar(header).to_ical()
    if not head.endswith(footer):
        raise RuntimeError(f"icalendar ended a calendar with {head[-40:]!r} instead of END:VCALENDAR")

    # One join, so that a large feed is copied once instead of once more for the footer.
    parts = [head[: -len(footer)]]
    parts.extend(_checked_event(data) for data in events)
    parts.append(footer)
    return b"".join(parts)


def significant_fields(booking: Mapping[str, Any]) -> tuple[Any, ...]:
    """Return the values whose change must raise SEQUENCE.

    The tuple contains start, end, all-day flag, status, title and location
    (LOCATION text and URL), normalized so that a change of format alone
    (``.000Z`` or ``Z``, ``Cancelled`` or ``cancelled``) changes nothing. It
    contains only str, bool, None and tuples of str, so ``repr`` and
    ``json.dumps`` give a stable form. A list row has no location, so compare
    values computed from the same kind of record.
    """
    location = _location(booking)
    return (
        _instant_key(booking.get("starttime")),
        _instant_key(booking.get("endtime")),
        _allday_flag(booking.get("allday"), []),
        _clean_line(booking.get("status")).lower() or None,
        _field_text(booking.get("title")) or None,
        (location.text, location.url),
    )


def booking_end(booking: Mapping[str, Any], settings: MappingSettings | None = None) -> datetime | None:
    """Return the instant in UTC at which the booking's event ends, or None if it is unmappable.

    The end follows the same rules as DTEND, including the default duration.
    An all-day event ends at midnight after its last day. Without ``settings``
    the default duration is one hour and all-day dates that are not stored as
    UTC midnight are taken in UTC. No warnings are logged.
    """
    zone = settings.timezone if settings else timezone.utc
    duration = settings.default_duration if settings else DEFAULT_DURATION
    try:
        booking_id = _booking_id(booking)
        return _event_times(booking, booking_id, zone, duration, []).end_instant
    except MappingError:
        return None


# Building the event


def _build_event(
    booking: Mapping[str, Any],
    booking_id: str,
    sequence: int,
    settings: MappingSettings,
    fallback_stamp: datetime,
    problems: list[str],
) -> icalendar.Event:
    times = _event_times(booking, booking_id, settings.timezone, settings.default_duration, problems)
    status = _status(booking.get("status"), problems)
    busy = settings.details == "busy"

    event = icalendar.Event()
    event.add("uid", f"{booking_id}@{settings.uid_domain}")
    event.add("sequence", sequence)
    event.add("dtstart", times.start)
    event.add("dtend", times.end)
    if isinstance(times.start, date) and not isinstance(times.start, datetime):
        event.add("x-microsoft-cdo-alldayevent", "TRUE")
    event.add("status", status)
    event.add("transp", "TRANSPARENT" if status == "CANCELLED" else "OPAQUE")
    _add_stamps(event, booking, fallback_stamp, busy, problems)

    summary = BUSY_SUMMARY if busy else _summary(booking)
    event.add("summary", ExactText(summary))
    if not busy:
        _add_details(event, booking, settings, problems)
    if status != "CANCELLED":
        _add_alarms(event, settings.alarms, summary)
    return event


def _add_stamps(
    event: icalendar.Event,
    booking: Mapping[str, Any],
    fallback_stamp: datetime,
    busy: bool,
    problems: list[str],
) -> None:
    created = _optional_stamp(booking, "createdat", problems)
    updated = _optional_stamp(booking, "updatedat", problems)
    stamp = updated or created or _utc_seconds(fallback_stamp)

    event.add("dtstamp", stamp)
    if busy:
        return
    event.add("last-modified", stamp)
    if created is not None:
        event.add("created", created)


def _add_details(
    event: icalendar.Event,
    booking: Mapping[str, Any],
    settings: MappingSettings,
    problems: list[str],
) -> None:
    """Add the properties that only the full and limited levels show."""
    full = settings.details == "full"
    location = _location(booking)
    if location.text:
        event.add("location", ExactText(location.text))
    if location.url:
        event.add("url", location.url)

    description = _description(booking, location, full)
    if description:
        event.add("description", ExactText(description))

    categories = _categories(booking)
    if categories:
        event.add("categories", ExactCategories(categories))
    priority = PRIORITY_MAP.get(_clean_line(booking.get("priority")).lower())
    if priority is not None:
        event.add("priority", priority)

    if settings.organizer:
        event.add("organizer", icalendar.vCalAddress(settings.organizer))
    if full:
        attendee = _attendee(booking.get("participant"), problems)
        if attendee is not None:
            event.add("attendee", attendee)


def _add_alarms(event: icalendar.Event, alarms: tuple[timedelta, ...], summary: str) -> None:
    for before in alarms:
        alarm = icalendar.Alarm()
        alarm.add("action", "DISPLAY")
        alarm.add("trigger", -before)
        alarm.add("description", ExactText(summary))
        event.add_component(alarm)


def _summary(booking: Mapping[str, Any]) -> str:
    return _field_text(booking.get("title")) or _field_text(booking.get("type")) or FALLBACK_SUMMARY


def _description(booking: Mapping[str, Any], location: _Location, full: bool) -> str:
    """Return the description text (full level only), then one line per detail the level allows."""
    lines = []
    booking_type = _field_text(booking.get("type"))
    if booking_type:
        lines.append(f"Type: {booking_type}")
    amount = _amount_text(booking.get("amount"))
    if amount:
        lines.append(f"Amount: {amount}")

    participant = booking.get("participant")
    if full and isinstance(participant, Mapping):
        name = _field_text(participant.get("name"))
        phone = _field_text(participant.get("phone"))
        if name:
            lines.append(f"Participant: {name}")
        if phone:
            lines.append(f"Phone: {phone}")
    elif full and isinstance(participant, str) and _field_text(participant):
        lines.append(f"Participant: {_field_text(participant)}")

    if location.link:
        lines.append(f"Booking link: {location.link}")

    text = _field_text(booking.get("description")) if full else ""
    return "\n\n".join(part for part in (text, "\n".join(lines)) if part)


def _categories(booking: Mapping[str, Any]) -> list[str]:
    categories = []
    for value in (booking.get("type"), booking.get("status")):
        category = _field_text(value)
        if category and category not in categories:
            categories.append(category)
    return categories


def _attendee(participant: object, problems: list[str]) -> icalendar.vCalAddress | None:
    """Return the participant as an ATTENDEE, or None when there is no usable email."""
    if not isinstance(participant, Mapping):
        return None
    email = _clean_line(participant.get("email"))
    if email.lower().startswith("mailto:"):
        email = email[len("mailto:") :]
    if not email:
        return None
    if not _PARTICIPANT_EMAIL.fullmatch(email):
        problems.append(f"participant email {email!r:.80} is not a plain email address, so the event has no ATTENDEE")
        return None

    attendee = icalendar.vCalAddress(f"mailto:{email}")
    name = _parameter_text(participant.get("name"))
    if name:
        attendee.params["CN"] = name
    attendee.params["ROLE"] = "REQ-PARTICIPANT"
    attendee.params["PARTSTAT"] = "ACCEPTED"
    return attendee


def status_name(value: object) -> str | None:
    """Return the API status that ``value`` spells, whatever its case or separators, or None if it names none.

    ``Cancelled``, ``canceled`` and ``CANCELLED`` all give ``cancelled``, and
    ``no_show`` and ``No Show`` give ``no-show``.
    """
    normalized = _clean_line(value).lower().replace("_", "-").replace(" ", "-")
    if normalized == "canceled":
        return "cancelled"
    return normalized if normalized in STATUS_MAP else None


def _status(value: object, problems: list[str]) -> str:
    raw = _clean_line(value)
    name = status_name(value)
    status = STATUS_MAP.get(name) if name else None
    if status is None:
        found = f"unknown status {raw!r:.40}" if raw else "missing status"
        problems.append(f"{found}, so the event is shown as confirmed")
        return "CONFIRMED"
    return status


# Locations


@dataclass(frozen=True)
class _Location:
    """LOCATION text, URL (empty unless valid), and the http(s) link for DESCRIPTION."""

    text: str = ""
    url: str = ""
    link: str = ""


def _location(booking: Mapping[str, Any]) -> _Location:
    value = booking.get("location")
    if isinstance(value, str):
        return _Location(text=_field_text(value))
    if not isinstance(value, Mapping):
        return _Location()

    raw_link = _field_text(value.get("bookinglink"))
    # Surrounding whitespace is kept in LOCATION but would make the URL invalid.
    link = raw_link.strip() if _is_web_url(raw_link.strip()) else ""
    if _clean_line(value.get("type")).lower() == "virtual":
        return _Location(text=raw_link or _address_text(value), url=link, link=link)
    return _Location(text=_address_text(value), link=link)


def _address_text(location: Mapping[str, Any]) -> str:
    parts: list[str] = []
    for key in ADDRESS_KEYS:
        part = _field_text(location.get(key))
        if part and _same_words(part) not in (_same_words(seen) for seen in parts):
            parts.append(part)
    return ", ".join(parts)


def _is_web_url(text: str) -> bool:
    if not text or not text.isascii() or _URI_FORBIDDEN.search(text):
        return False
    try:
        parts = urlsplit(text)
    except ValueError:
        return False
    return parts.scheme.lower() in ("http", "https") and bool(parts.netloc) and bool(parts.hostname)


# Times


def _event_times(
    booking: Mapping[str, Any],
    booking_id: str,
    zone: tzinfo,
    default_duration: timedelta,
    problems: list[str],
) -> _EventTimes:
    start = _required_start(booking, booking_id)
    end, end_problem = _optional_end(booking.get("endtime"))
    allday = _allday_flag(booking.get("allday"), problems)
    try:
        if allday:
            return _allday_times(start, end, end_problem, zone, problems)
        return _timed_times(start, end, end_problem, default_duration, problems)
    except OverflowError as error:
        raise MappingError(booking_id, f"starttime {start.isoformat()} is too close to the limits of the calendar") from error


def _timed_times(
    start: datetime,
    end: datetime | None,
    end_problem: str,
    default_duration: timedelta,
    problems: list[str],
) -> _EventTimes:
    # iCalendar DATE-TIME has no fractional seconds, so compare what will be written.
    start = start.replace(microsecond=0)
    if end is not None:
        end = end.replace(microsecond=0)
        if end <= start:
            end_problem = f"endtime {end.isoformat()} is not after starttime {start.isoformat()}"
            end = None

    if end is None:
        problems.append(f"{end_problem}, so the event lasts the default {default_duration} instead")
        end = start + default_duration
    return _EventTimes(start=start, end=end, end_instant=end)


def _allday_times(
    start: datetime,
    end: datetime | None,
    end_problem: str,
    zone: tzinfo,
    problems: list[str],
) -> _EventTimes:
    """Return the DATE values of an all-day event.

    APIs store an all-day date either as UTC midnight or as the business's
    local midnight, so an instant at exactly 00:00 UTC names that UTC date and
    any other instant is read in ``zone``. DTEND is exclusive: an end at
    exactly midnight, local or UTC, names the day after the event, and any
    other end time falls inside the event's last day.
    """
    day_zone: tzinfo = timezone.utc if _is_utc_midnight(start) else zone
    first = start.astimezone(day_zone).date()

    last = None
    if end is not None and end <= start:
        end_problem = f"endtime {end.isoformat()} is not after starttime {start.isoformat()}"
    elif end is not None:
        last = _exclusive_end_date(end, day_zone, zone)
        if last <= first:
            end_problem = f"endtime {end.isoformat()} ends before the first day {first.isoformat()}"

    if last is None or last <= first:
        problems.append(f"{end_problem}, so the all-day event lasts one day instead")
        last = first + ONE_DAY
    end_instant = datetime.combine(last, time(), tzinfo=day_zone).astimezone(timezone.utc)
    return _EventTimes(start=first, end=last, end_instant=end_instant)


def _exclusive_end_date(end: datetime, day_zone: tzinfo, zone: tzinfo) -> date:
    local = end.astimezone(zone)
    if local.time() == time():
        return local.date()
    if _is_utc_midnight(end):
        return end.date()
    return end.astimezone(day_zone).date() + ONE_DAY


def _is_utc_midnight(instant: datetime) -> bool:
    return instant.astimezone(timezone.utc).time() == time()


def _required_start(booking: Mapping[str, Any], booking_id: str) -> datetime:
    value = booking.get("starttime")
    if value is None:
        raise MappingError(booking_id, "starttime is missing")
    try:
        return parse_instant(value)
    except ValueError as error:
        raise MappingError(booking_id, f"starttime {value!r:.80} is not an ISO 8601 timestamp ({error})") from error


def _optional_end(value: object) -> tuple[datetime | None, str]:
    """Return the parsed endtime, or None and the reason it cannot be used."""
    if value is None or value == "":
        return None, "endtime is missing"
    try:
        return parse_instant(value), ""
    except ValueError:
        return None, f"endtime {value!r:.80} is not an ISO 8601 timestamp"


def _optional_stamp(booking: Mapping[str, Any], key: str, problems: list[str]) -> datetime | None:
    value = booking.get(key)
    if value is None or value == "":
        return None
    try:
        return parse_instant(value).replace(microsecond=0)
    except ValueError:
        problems.append(f"{key} {value!r:.80} is not an ISO 8601 timestamp and is ignored")
        return None


def _utc_seconds(instant: datetime) -> datetime:
    if instant.tzinfo is None:
        instant = instant.replace(tzinfo=timezone.utc)
    return instant.astimezone(timezone.utc).replace(microsecond=0)


def _instant_key(value: object) -> str | None:
    """Return a timestamp as ISO 8601 in UTC, or as cleaned text if it does not parse."""
    if value is None:
        return None
    try:
        return parse_instant(value).isoformat()
    except ValueError:
        return f"invalid: {_clean_line(value) or type(value).__name__}"


def _allday_flag(value: object, problems: list[str]) -> bool:
    if value is None or isinstance(value, bool):
        return bool(value)
    if isinstance(value, (int, float)) and value in (0, 1):
        return bool(value)
    if isinstance(value, str) and value.strip().lower() in _TRUE_WORDS | _FALSE_WORDS:
        return value.strip().lower() in _TRUE_WORDS
    problems.append(f"allday {value!r:.40} is not a boolean, so the event is timed")
    return False


def _parse_iso(text: str) -> datetime:
    stripped = text.strip()
    if not stripped:
        raise ValueError("empty timestamp")
    if _CASHFIN_INSTANT.fullmatch(stripped):
        # Cashfin's own form. The C parser is about 50 times faster than
        # isoparse and returns the same instant. A value it rejects, such as
        # hour 24, goes on to isoparse.
        try:
            return datetime.fromisoformat(stripped)
        except ValueError:
            pass
    try:
        return isoparse(stripped)
    except (ValueError, OverflowError) as error:
        raise ValueError(f"invalid ISO 8601 timestamp {text!r:.80}: {error}") from error


# Text


def _clean_text(value: object) -> str:
    """Return a string or number as text that iCalendar can carry, or "" for anything else.

    Line breaks become LF and the characters the module docstring lists are
    removed. Everything else, surrounding whitespace included, is kept.
    """
    if isinstance(value, bool) or not isinstance(value, (str, int, float, Decimal)):
        return ""
    try:
        text = str(value)
    except ValueError:  # an int with more digits than sys.get_int_max_str_digits()
        return ""
    text = _LINE_BREAK.sub("\n", text)
    return _INVALID_TEXT.sub("", text)


def _field_text(value: object) -> str:
    """Return ``_clean_text(value)``, or "" when that is blank, so that blank text counts as missing."""
    text = _clean_text(value)
    return text if text.strip() else ""


def _clean_line(value: object) -> str:
    """Return ``_clean_text(value)`` trimmed and on one line, every run of whitespace made one space.

    For values that are compared or looked up (statuses, priorities, emails)
    and for parameters and calendar-level settings, not for event text.
    """
    return _SPACE_RUN.sub(" ", _clean_text(value)).strip()


def _same_words(text: str) -> str:
    """Return a key under which two address parts that differ only in case or spacing are equal."""
    return _SPACE_RUN.sub(" ", text).strip().casefold()


def _parameter_text(value: object) -> str:
    """Return text for a quoted parameter such as CN, which cannot contain a double quote.

    RFC 6868 encodes a double quote as ^', but a client without RFC 6868
    support would show those two characters, so it becomes an apostrophe.
    """
    return _clean_line(value).replace('"', "'")


def _amount_text(value: object) -> str:
    if isinstance(value, bool) or not isinstance(value, (str, int, float, Decimal)):
        return ""
    try:
        number = Decimal(str(value).strip())
    except InvalidOperation:
        return _field_text(value)
    if not number.is_finite() or abs(number.adjusted()) > _MAX_AMOUNT_EXPONENT:
        return _field_text(value)
    if number == number.to_integral_value():
        return f"{number.to_integral_value():f}"
    return f"{number:f}"


def _organizer_address(value: str) -> str:
    address = value.strip()
    if address.lower().startswith("mailto:"):
        address = address[len("mailto:") :]
    if not address:
        return ""
    if not _ORGANIZER_EMAIL.fullmatch(address):
        raise ValueError(f"organizer {value!r} is not an email address such as bookings@example.com")
    return f"mailto:{address}"


# Identity and warnings


def _booking_id(booking: object) -> str:
    if not isinstance(booking, Mapping):
        raise MappingError("(unknown)", f"expected a JSON object, got {type(booking).__name__}")
    value = booking.get("_id")
    if isinstance(value, int) and not isinstance(value, bool):
        value = str(value)
    if value is None:
        raise MappingError("(unknown)", "_id is missing")
    if not isinstance(value, str) or not _BOOKING_ID.fullmatch(value):
        raise MappingError(repr(value)[:60], "_id is not a string of letters, digits, '.', '_' or '-'")
    return value


def _checked_event(data: bytes) -> bytes:
    if not (data.startswith(b"BEGIN:VEVENT\r\n") and data.endswith(b"END:VEVENT\r\n")):
        raise ValueError(f"expected the bytes of one VEVENT, got {data[:40]!r}...{data[-40:]!r}")
    return data


# Distinct warnings remembered. Beyond this the least recently logged one is
# forgotten, so memory stays bounded however many bookings are bad.
_WARNED_MAX = 10_000
_warned: OrderedDict[tuple[str, str], None] = OrderedDict()
_warned_lock = threading.Lock()


def _warn_once(booking_id: str, message: str) -> None:
    """Log a problem at WARNING level the first time, then at DEBUG level."""
    key = (booking_id, message)
    with _warned_lock:
        repeated = key in _warned
        _warned[key] = None
        _warned.move_to_end(key)
        if len(_warned) > _WARNED_MAX:
            _warned.popitem(last=False)

    if repeated:
        log.debug("booking %s: %s", booking_id, message)
    else:
        log.warning("booking %s: %s", booking_id, message)
