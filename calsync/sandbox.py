"""A local implementation of the Cashfin Bookings API, served over HTTP.

``calsync demo``, ``calsync sandbox`` and the tests talk to this server in
place of the real API. It implements the two read-only endpoints with the
real authentication, pagination, filters and error bodies::

    GET /business/booking/list?page=&limit=&search=&status=
    GET /business/booking/details/<id>

``generate_bookings`` makes a deterministic data set for a business in
Nairobi. It includes the awkward cases that a sync has to survive, such as
all-day bookings stored at 00:00 UTC and at Nairobi midnight (21:00 UTC the
day before), missing and equal end times, and text with markup, emoji,
quotes, backslashes and line breaks. ``Sandbox`` serves a data set with
waitress on loopback, lets tests change it while it is served, counts
requests and injects faults such as 503s, hangs and connection resets
(``calsync.sandbox_faults``).
"""

from __future__ import annotations

import copy
import hmac
import http
import json
import logging
import math
import random
import re
import threading
import time
import unicodedata
from collections import Counter, deque
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, timedelta
from itertools import accumulate
from types import TracebackType
from typing import Any
from urllib.parse import parse_qs, unquote, urlsplit

from calsync.sandbox_faults import (
    DELAY_KINDS,
    RESPONSE_KINDS,
    Fault,
    FaultRegistry,
    reset_connection,
)
from calsync.wsgi import make_server, server_url, start_server_thread, stop_server

logger = logging.getLogger(__name__)

STATUSES = ("scheduled", "completed", "cancelled", "no-show")
TYPES = ("consultation", "appointment", "class", "event", "service")
PRIORITIES = ("high", "medium", "low")

LIST_PATH = "/business/booking/list"
DETAILS_PATH = "/business/booking/details"

# Fields of a list row, in the order the API sends them. Details add the rest.
LIST_FIELDS = (
    "_id",
    "title",
    "status",
    "starttime",
    "endtime",
    "allday",
    "type",
    "amount",
    "createdat",
)
DETAIL_FIELDS = LIST_FIELDS + (
    "description",
    "priority",
    "location",
    "participant",
    "billed",
    "updatedat",
)

DEFAULT_LIMIT = 10
MAX_LIMIT = 100
DEFAULT_SECRET = "sandbox-secret"

# Nairobi is UTC+3 all year (no daylight saving time), so a fixed offset is exact.
NAIROBI_OFFSET = timedelta(hours=3)

# The generated data set is a snapshot taken at 09:00 Nairobi time on the anchor date.
SNAPSHOT_TIME_UTC = timedelta(hours=6)
DAYS_BEFORE_ANCHOR = 120
DAYS_AFTER_ANCHOR = 90

JSON_CONTENT_TYPE = "application/json; charset=utf-8"
TEXT_CONTENT_TYPE = "text/plain; charset=utf-8"
HTML_CONTENT_TYPE = "text/html; charset=utf-8"
STOP_TIMEOUT_SECONDS = 5.0
REQUEST_LOG_SIZE = 10_000
SEARCH_CACHE_SIZE = 64

JsonDict = dict[str, Any]


# --- Time stamps -------------------------------------------------------------


def format_timestamp(moment: datetime) -> str:
    """Format an aware datetime as the API does: UTC with milliseconds and ``Z``."""
    if moment.tzinfo is not UTC:
        moment = moment.astimezone(UTC)
    # isoformat ends with "+00:00" for UTC, which the API writes as "Z".
    return moment.isoformat(timespec="milliseconds")[:-6] + "Z"


def parse_timestamp(text: str) -> datetime:
    """Parse an API time stamp such as ``2024-01-20T10:00:00.000Z`` into an aware datetime."""
    return datetime.fromisoformat(text).astimezone(UTC)


def snapshot_time(anchor: date) -> datetime:
    """Return the moment at which a data set generated for ``anchor`` was taken."""
    return _utc_midnight(anchor) + SNAPSHOT_TIME_UTC


def _utc_midnight(day: date) -> datetime:
    return datetime(day.year, day.month, day.day, tzinfo=UTC)


def _nairobi_midnight(day: date) -> datetime:
    return _utc_midnight(day) - NAIROBI_OFFSET


def _nairobi_time(day: date, hour: int, minute: int) -> datetime:
    return _nairobi_midnight(day) + timedelta(hours=hour, minutes=minute)


def _object_id(created: datetime, machine: int, counter: int) -> str:
    """Build a MongoDB-style ObjectId: creation seconds, 5 random bytes, 3-byte counter."""
    seconds = int(created.timestamp())
    return f"{seconds:08x}{machine:010x}{counter & 0xFFFFFF:06x}"


# --- Vocabulary of the generated data set ------------------------------------


@dataclass(frozen=True)
class _TypeProfile:
    """Services, durations, local start hours, price range and descriptions of one booking type."""

    weight: int
    services: tuple[str, ...]
    minutes: tuple[int, ...]
    local_hours: tuple[int, ...]
    amount_range: tuple[int, int]
    descriptions: tuple[str, ...]


_PROFILES: dict[str, _TypeProfile] = {
    "consultation": _TypeProfile(
        weight=30,
        services=(
            "Tax advisory consultation",
            "Business registration consultation",
            "Nutrition consultation",
            "Legal consultation",
            "Financial planning session",
            "M-Pesa till set-up advice",
        ),
        minutes=(30, 45, 60),
        local_hours=(8, 9, 10, 11, 12, 14, 15, 16),
        amount_range=(1500, 6000),
        descriptions=(
            "Review of last year's KRA returns and PAYE records.",
            "Client wants advice on registering a limited company.",
            "First meeting. Bring ID and KRA PIN certificate.",
            "Follow-up on the VAT refund claim.",
            "Mteja ataleta stakabadhi zote za mwaka jana.",
        ),
    ),
    "appointment": _TypeProfile(
        weight=30,
        services=(
            "Dental check-up",
            "Hair braiding appointment",
            "Physiotherapy session",
            "Eye examination",
            "Car service appointment",
            "Massage therapy",
        ),
        minutes=(30, 60, 90),
        local_hours=(8, 9, 10, 11, 13, 14, 15, 16, 17),
        amount_range=(800, 4500),
        descriptions=(
            "Regular client, prefers the afternoon slot.",
            "Please confirm by SMS the day before.",
            "Knotless braids, medium length.",
            "Vehicle: Toyota Fielder KDA 123X, 90,000 km service.",
            "Tafadhali fika dakika kumi mapema.",
        ),
    ),
    "class": _TypeProfile(
        weight=15,
        services=(
            "Yoga class",
            "Swahili for beginners",
            "Bookkeeping workshop",
            "Swimming lesson",
            "Baking class",
            "Zumba fitness class",
        ),
        minutes=(60, 90, 120),
        local_hours=(6, 7, 17, 18, 19),
        amount_range=(500, 2500),
        descriptions=(
            "Bring a mat and water.",
            "Lesson 3 of 8: greetings and numbers.",
            "Laptops provided. Maximum 12 participants.",
            "Children's group, ages 6 to 10.",
            "",
        ),
    ),
    "event": _TypeProfile(
        weight=10,
        services=(
            "Product launch",
            "Networking breakfast",
            "Wedding tasting",
            "Chama annual meeting",
            "Corporate team building",
            "Graduation party",
        ),
        minutes=(120, 180, 240, 360),
        local_hours=(9, 10, 14, 17, 18),
        amount_range=(5000, 80000),
        descriptions=(
            "Venue booked for 40 guests, catering included.",
            "Deposit of 50% paid via M-Pesa.",
            "Sound system and projector required.",
            "Menu: pilau, nyama choma, kachumbari, chapati.",
            "",
        ),
    ),
    "service": _TypeProfile(
        weight=15,
        services=(
            "House cleaning",
            "Laptop repair",
            "Catering for 30 guests",
            "Photography session",
            "Garden maintenance",
            "Plumbing repair",
        ),
        minutes=(60, 120, 180, 240),
        local_hours=(8, 9, 10, 11, 13, 14),
        amount_range=(2000, 20000),
        descriptions=(
            "Three-bedroom apartment, 4th floor, lift available.",
            "Screen replacement, client keeps the old screen.",
            "Leaking kitchen sink, bring spare washers.",
            "Gate code will be sent by SMS.",
            "",
        ),
    ),
}


@dataclass(frozen=True)
class _Country:
    weight: int
    first_names: tuple[str, ...]
    last_names: tuple[str, ...]
    dialling_code: str
    mobile_prefixes: tuple[str, ...]


_COUNTRIES = (
    _Country(
        weight=70,
        first_names=(
            "Wanjiku", "Achieng", "Otieno", "Kiprono", "Njeri", "Mutua", "Akinyi",
            "Chebet", "Kamau", "Wambui", "Omondi", "Nyambura", "Muthoni", "Barasa",
            "Jeptoo", "Wafula", "Atieno", "Kimani", "Moraa", "Brian", "Faith",
            "Kevin", "Mercy", "Dennis",
        ),
        last_names=(
            "Kamau", "Odhiambo", "Ouma", "Kipchoge", "Mwangi", "Musyoka", "Korir",
            "Njoroge", "Githinji", "Wekesa", "Kiplagat", "Nyaga", "Onyango",
            "Mutiso", "Chege", "Rotich", "Owino", "Wairimu",
        ),
        dialling_code="254",
        mobile_prefixes=("70", "71", "72", "74", "79", "11"),
    ),
    _Country(
        weight=15,
        first_names=(
            "Nakato", "Mugisha", "Namubiru", "Okello", "Apio", "Kato", "Nansubuga",
            "Akello", "Ssempala", "Babirye",
        ),
        last_names=(
            "Ssemwogerere", "Tumusiime", "Ocen", "Mukasa", "Namutebi",
            "Byaruhanga", "Kizza", "Opio", "Nabukenya",
        ),
        dialling_code="256",
        mobile_prefixes=("77", "78", "70", "75"),
    ),
    _Country(
        weight=15,
        first_names=(
            "Neema", "Baraka", "Rehema", "Juma", "Zawadi", "Amani", "Upendo",
            "Hamisi", "Imani", "Mwanaidi",
        ),
        last_names=(
            "Mushi", "Mwakyusa", "Salim", "Mfinanga", "Massawe", "Mrema", "Kimaro",
            "Lyimo", "Shirima", "Msuya",
        ),
        dialling_code="255",
        mobile_prefixes=("75", "76", "71", "65"),
    ),
)

_EMAIL_DOMAINS = ("example.com", "example.org", "example.net")

_ADDRESSES = (
    "Westlands Business Centre, 3rd Floor, Ring Road Parklands, Nairobi",
    "Sarit Centre, 2nd Floor, Karuna Road, Westlands, Nairobi",
    "The Junction Mall, Ngong Road, Nairobi",
    "Two Rivers Mall, Limuru Road, Nairobi",
    "Kilimani, Argwings Kodhek Road, House No. 14, Nairobi",
    "Kenyatta Avenue 14, Nakuru",
    "Nyali Centre, Links Road, Mombasa",
    "Acacia Mall, Kisementi, Kampala",
    "Mlimani City, Sam Nujoma Road, Dar es Salaam",
    "Client's home, Kileleshwa, Nairobi",
)

# Virtual meeting links point at reserved example domains, never at real services.
_VIRTUAL_PLATFORMS = (
    ("Google Meet", "https://meet.example.com/{code}"),
    ("Zoom", "https://zoom.example.com/j/{digits}"),
    ("Microsoft Teams", "https://teams.example.com/l/meetup-join/{hex}"),
)

_BILLED_SHARE = {"completed": 0.85, "no-show": 0.5, "cancelled": 0.1, "scheduled": 0.3}




class _WeightedChoice:
    """Names with relative weights, drawn by one ``random.choices`` call."""

    def __init__(self, weights: Iterable[tuple[str, int]]) -> None:
        names, values = zip(*weights)
        self.names: tuple[str, ...] = names
        self.cumulative = list(accumulate(values))

    def draw(self, rng: random.Random) -> str:
        return rng.choices(self.names, cum_weights=self.cumulative)[0]


_TYPE_CHOICE = _WeightedChoice((name, profile.weight) for name, profile in _PROFILES.items())
_PAST_STATUS_CHOICE = _WeightedChoice(
    (("completed", 70), ("no-show", 10), ("cancelled", 12), ("scheduled", 8))
)
_FUTURE_STATUS_CHOICE = _WeightedChoice((("scheduled", 85), ("cancelled", 15)))
_PRIORITY_CHOICE = _WeightedChoice(zip(PRIORITIES, (20, 55, 25)))
_COUNTRY_WEIGHTS = list(accumulate(country.weight for country in _COUNTRIES))


# --- Generating the data set -------------------------------------------------


@dataclass
class _Draft:
    """A booking under construction, with datetimes not yet formatted."""

    title: str
    description: str
    type: str
    start: datetime
    end: datetime | None
    allday: bool
    amount: int
    priority: str
    location: JsonDict
    participant: JsonDict
    status: str | None = None
    billed: bool | None = None
    created: datetime | None = None
    omit_endtime: bool = False


@dataclass
class _Context:
    """Random generator, anchor date, snapshot time and the bookings generated so far."""

    rng: random.Random
    anchor: date
    now: datetime
    previous: list[JsonDict] = field(default_factory=list)


def generate_bookings(
    count: int = 300, seed: int = 7, anchor: date | None = None
) -> list[JsonDict]:
    """Generate ``count`` bookings of a business in Nairobi, in full detail.

    The result depends only on ``(count, seed, anchor)``, and a smaller count
    yields a prefix of a larger one. ``anchor`` defaults to today's UTC date.
    Bookings start between 120 days before and 90 days after the anchor, and
    the data set looks as it would at 09:00 Nairobi time on the anchor date:
    nothing was created or updated later, and past bookings are mostly
    completed. The first bookings are fixed edge cases such as all-day
    bookings in both storage styles, missing end times and unusual text.
    """
    if count < 0:
        raise ValueError(f"count must be 0 or more, got {count}")
    if anchor is None:
        anchor = datetime.now(UTC).date()

    # A str seed goes through SHA-512, so it does not depend on PYTHONHASHSEED.
    rng = random.Random(f"calsync-sandbox:{seed}:{anchor.isoformat()}")
    context = _Context(rng=rng, anchor=anchor, now=snapshot_time(anchor))

    for index in range(count):
        draft = _draft_regular_booking(context)
        if index < len(_SPECIAL_CASES):
            _SPECIAL_CASES[index](draft, context)
        context.previous.append(_finish_booking(draft, index, context))
    return context.previous


def _draft_regular_booking(context: _Context) -> _Draft:
    rng = context.rng
    booking_type = _TYPE_CHOICE.draw(rng)
    profile = _PROFILES[booking_type]
    participant = _generate_participant(rng)
    service = rng.choice(profile.services)
    day = context.anchor + timedelta(days=rng.randint(-DAYS_BEFORE_ANCHOR, DAYS_AFTER_ANCHOR))

    allday = rng.random() < 0.05
    if allday:
        start, end = _allday_span(day, rng.choice((1, 1, 1, 2, 3)), rng.random() < 0.5)
    else:
        start = _nairobi_time(day, rng.choice(profile.local_hours), rng.choice((0, 15, 30, 45)))
        end = start + timedelta(minutes=rng.choice(profile.minutes))

    low, high = profile.amount_range
    return _Draft(
        title=_generate_title(rng, service, participant["name"]),
        description=rng.choice(profile.descriptions),
        type=booking_type,
        start=start,
        end=end,
        allday=allday,
        amount=rng.randrange(low, high + 1, 50),
        priority=_PRIORITY_CHOICE.draw(rng),
        location=_generate_location(rng),
        participant=participant,
    )


def _allday_span(first_day: date, days: int, nairobi_midnight: bool) -> tuple[datetime, datetime]:
    """Return start and exclusive end of an all-day booking in one of two storage styles.

    Some clients store an all-day booking at 00:00 UTC of its date, others at
    local midnight, which in Nairobi is 21:00 UTC on the day before.
    """
    midnight = _nairobi_midnight if nairobi_midnight else _utc_midnight
    return midnight(first_day), midnight(first_day + timedelta(days=days))


def _generate_title(rng: random.Random, service: str, name: str) -> str:
    if rng.random() < 0.5:
        return f"{service} with {name}"
    return service


def _generate_participant(rng: random.Random) -> JsonDict:
    country = rng.choices(_COUNTRIES, cum_weights=_COUNTRY_WEIGHTS)[0]
    first = rng.choice(country.first_names)
    last = rng.choice(country.last_names)

    email = None
    if rng.random() < 0.7:
        local_part = _ascii_fold(f"{first}.{last}").lower()
        if rng.random() < 0.3:
            local_part += str(rng.randint(1, 99))
        email = f"{local_part}@{rng.choice(_EMAIL_DOMAINS)}"

    return {"name": f"{first} {last}", "email": email, "phone": _generate_phone(rng, country)}


def _generate_phone(rng: random.Random, country: _Country) -> str | None:
    draw = rng.random()
    if draw < 0.05:
        return None
    prefix = rng.choice(country.mobile_prefixes)
    digits = f"{rng.randint(0, 9_999_999):07d}"
    if draw < 0.15:
        # Typed in by hand in the national format, as staff often do.
        return f"0{prefix}{digits[0]} {digits[1:4]} {digits[4:]}"
    return f"+{country.dialling_code}{prefix}{digits}"


def _ascii_fold(text: str) -> str:
    decomposed = unicodedata.normalize("NFKD", text)
    return decomposed.encode("ascii", "ignore").decode("ascii").replace(" ", "").replace("'", "")


def _generate_location(rng: random.Random) -> JsonDict:
    if rng.random() < 0.6:
        return {"type": "physical", "address": rng.choice(_ADDRESSES)}
    platform, template = rng.choice(_VIRTUAL_PLATFORMS)
    letters = "".join(rng.choices("abcdefghijkmnopqrstuvwxyz", k=10))
    link = template.format(
        code=f"{letters[:3]}-{letters[3:7]}-{letters[7:]}",
        digits=rng.randint(10**9, 10**10 - 1),
        hex=f"{rng.getrandbits(64):016x}",
    )
    return {"type": "virtual", "bookinglink": link, "platform": platform}


def _finish_booking(draft: _Draft, index: int, context: _Context) -> JsonDict:
    """Fill in status, billing and time stamps, then format the booking as the API sends it."""
    rng = context.rng
    end_or_start = draft.end or draft.start
    if draft.status is None:
        choice = _PAST_STATUS_CHOICE if end_or_start <= context.now else _FUTURE_STATUS_CHOICE
        draft.status = choice.draw(rng)
    if draft.billed is None:
        draft.billed = draft.amount > 0 and rng.random() < _BILLED_SHARE[draft.status]

    created = draft.created or _choose_created(rng, draft.start, context.now)
    updated = _choose_updated(rng, draft, created, context.now)

    booking: JsonDict = {
        "_id": _object_id(created, rng.getrandbits(40), index),
        "title": draft.title,
        "status": draft.status,
        "starttime": format_timestamp(draft.start),
        "endtime": format_timestamp(draft.end) if draft.end else None,
        "allday": draft.allday,
        "type": draft.type,
        "amount": draft.amount,
        "createdat": format_timestamp(created),
        "description": draft.description,
        "priority": draft.priority,
        "location": draft.location,
        "participant": draft.participant,
        "billed": draft.billed,
        "updatedat": format_timestamp(updated),
    }
    if draft.omit_endtime:
        del booking["endtime"]
    return booking


def _choose_created(rng: random.Random, start: datetime, now: datetime) -> datetime:
    """Pick when a booking was made: before it starts and never after the snapshot."""
    jitter = timedelta(milliseconds=rng.randint(0, 59_999))
    created = start - timedelta(minutes=rng.randint(60, 60 * 24 * 45)) - jitter
    if created > now:
        created = now - timedelta(minutes=rng.randint(5, 60 * 24 * 30)) - jitter
    return created


def _choose_updated(
    rng: random.Random, draft: _Draft, created: datetime, now: datetime
) -> datetime:
    """Pick the last change, between creation and the snapshot."""
    if draft.status in ("completed", "no-show"):
        candidate = (draft.end or draft.start) + timedelta(minutes=rng.randint(5, 2880))
    elif draft.status == "cancelled":
        latest = min(draft.start, now)
        candidate = created + (latest - created) * rng.random()
    elif rng.random() < 0.5:
        candidate = created
    else:
        candidate = created + timedelta(minutes=rng.randint(1, 60 * 24 * 10))

    if candidate > now:
        # Spread late changes over the time since creation, not all at the snapshot.
        candidate = created + (now - created) * rng.random()
    return max(created, candidate)


# --- Fixed edge cases --------------------------------------------------------
#
# Booking number i of every data set goes through _SPECIAL_CASES[i] before it
# is finished, so these cases exist whenever count exceeds their number. A case
# that sets no status gets one that fits its times.

_SpecialCase = Callable[[_Draft, _Context], None]
_SPECIAL_CASES: list[_SpecialCase] = []


def _special_case(function: _SpecialCase) -> _SpecialCase:
    _SPECIAL_CASES.append(function)
    return function


def _retype(draft: _Draft, context: _Context, booking_type: str, title: str) -> None:
    """Give the draft a title and a type, with a description and amount that fit the type."""
    profile = _PROFILES[booking_type]
    low, high = profile.amount_range
    draft.type = booking_type
    draft.title = title
    draft.description = context.rng.choice(profile.descriptions)
    draft.amount = context.rng.randrange(low, high + 1, 50)


def _set_allday(
    draft: _Draft, context: _Context, day_offset: int, days: int, nairobi: bool
) -> None:
    first_day = context.anchor + timedelta(days=day_offset)
    draft.allday = True
    draft.start, draft.end = _allday_span(first_day, days, nairobi)


def _set_timed(
    draft: _Draft, context: _Context, day_offset: int, local_hour: int, minutes: int
) -> None:
    draft.allday = False
    draft.start = _nairobi_time(context.anchor + timedelta(days=day_offset), local_hour, 0)
    draft.end = draft.start + timedelta(minutes=minutes)


@_special_case
def _allday_at_utc_midnight(draft: _Draft, context: _Context) -> None:
    _retype(draft, context, "class", "Full-day photography workshop")
    _set_allday(draft, context, 3, 1, nairobi=False)


@_special_case
def _allday_at_nairobi_midnight(draft: _Draft, context: _Context) -> None:
    _retype(draft, context, "event", "Stand at the Nairobi trade fair")
    _set_allday(draft, context, 10, 1, nairobi=True)


@_special_case
def _multiday_at_utc_midnight(draft: _Draft, context: _Context) -> None:
    _retype(draft, context, "event", "Team offsite, Naivasha")
    _set_allday(draft, context, -20, 3, nairobi=False)


@_special_case
def _multiday_at_nairobi_midnight(draft: _Draft, context: _Context) -> None:
    _retype(draft, context, "service", "Wedding catering, Mombasa")
    _set_allday(draft, context, 30, 2, nairobi=True)


@_special_case
def _endtime_null(draft: _Draft, context: _Context) -> None:
    _retype(draft, context, "consultation", "Walk-in consultation (end time not set)")
    _set_timed(draft, context, 5, 10, 60)
    draft.end = None


@_special_case
def _endtime_absent(draft: _Draft, context: _Context) -> None:
    _retype(draft, context, "appointment", "Imported booking without end time")
    _set_timed(draft, context, -8, 11, 60)
    draft.omit_endtime = True


@_special_case
def _endtime_equal_future(draft: _Draft, context: _Context) -> None:
    _retype(draft, context, "consultation", "Phone call back")
    _set_timed(draft, context, 7, 14, 0)


@_special_case
def _endtime_equal_past(draft: _Draft, context: _Context) -> None:
    _retype(draft, context, "service", "Quick document drop-off")
    _set_timed(draft, context, -3, 9, 0)


@_special_case
def _endtime_before_start(draft: _Draft, context: _Context) -> None:
    _retype(draft, context, "appointment", "Follow-up visit (end time entered wrongly)")
    _set_timed(draft, context, 12, 15, 60)
    draft.end = draft.start - timedelta(hours=2)


@_special_case
def _commas_and_semicolons(draft: _Draft, context: _Context) -> None:
    _retype(draft, context, "consultation", "Consultation; tax, VAT & PAYE review")
    draft.description = "Agenda: VAT, PAYE, NSSF; bring receipts, invoices; M-Pesa statements."


@_special_case
def _backslashes_and_quotes(draft: _Draft, context: _Context) -> None:
    _retype(draft, context, "service", 'Data recovery for "C:\\Users\\Achieng"')
    draft.description = (
        "Otieno's laptop: copy D:\\Photos\\2023 and \"My Documents\".\n"
        "The literal text \\n is not a line break, and \\, is not a comma."
    )
    draft.participant["name"] = "Otieno O'Brien"


@_special_case
def _emoji(draft: _Draft, context: _Context) -> None:
    _retype(draft, context, "service", "Birthday photo shoot 🎂📸")
    draft.description = "Karibu sana! 😊 Tafadhali fika mapema 🙏🏾"


@_special_case
def _accented_names(draft: _Draft, context: _Context) -> None:
    _retype(draft, context, "event", "Café tasting with Wanjirũ Ngũgĩ and Amélie Uwase")
    draft.participant["name"] = "Amélie Uwase"
    draft.participant["email"] = "amelie.uwase@example.com"


@_special_case
def _long_multiline_description(draft: _Draft, context: _Context) -> None:
    _retype(draft, context, "class", "Bookkeeping onboarding programme")
    paragraph = (
        "The client runs a small bakery in Kilimani and wants to move from paper "
        "records to a proper bookkeeping system before the next KRA filing date. "
        "Topics: opening balances, M-Pesa till reconciliation, supplier invoices, "
        "petty cash, and monthly VAT returns."
    )
    steps = "\n".join(f"{n}. Step {n}: review, agree and sign off." for n in range(1, 11))
    draft.description = (
        f"{paragraph}\n\n{steps}\n\n{paragraph}\r\n\r\n{paragraph}\n-- \nSent from the booking form"
    )


@_special_case
def _markup(draft: _Draft, context: _Context) -> None:
    _retype(draft, context, "consultation", "<i>VIP</i> consultation")
    draft.description = (
        "<b>markup</b>: bring your ID &amp; KRA PIN.<br>"
        'Parking at <a href="https://example.com/map">gate B</a>.'
    )


@_special_case
def _icalendar_injection(draft: _Draft, context: _Context) -> None:
    _retype(draft, context, "event", "Board meeting\nSUMMARY:injected title")
    draft.description = "Line one\r\nEND:VEVENT\r\nBEGIN:VEVENT\r\nUID:injected@example.com"


@_special_case
def _participant_email_empty(draft: _Draft, context: _Context) -> None:
    draft.participant["email"] = ""
    draft.participant["phone"] = ""


@_special_case
def _participant_email_missing(draft: _Draft, context: _Context) -> None:
    draft.participant["email"] = None
    draft.participant["phone"] = None


@_special_case
def _empty_title(draft: _Draft, context: _Context) -> None:
    draft.title = ""


@_special_case
def _long_title(draft: _Draft, context: _Context) -> None:
    _retype(
        draft,
        context,
        "class",
        "Warsha ya ujasiriamali kwa wanawake: mikopo, akiba ya chama na masoko ya "
        "mtandaoni — Kariakoo, Dar es Salaam 🇹🇿",
    )


@_special_case
def _created_at_same_time_as_previous(draft: _Draft, context: _Context) -> None:
    # Two bookings created in the same millisecond: the listing orders them by _id.
    draft.created = parse_timestamp(context.previous[-1]["createdat"])
    draft.allday = False
    draft.start = max(draft.start, draft.created + timedelta(days=1))
    draft.end = draft.start + timedelta(hours=1)


@_special_case
def _virtual_link_with_query(draft: _Draft, context: _Context) -> None:
    draft.location = {
        "type": "virtual",
        "bookinglink": "https://zoom.example.com/j/81234567890?pwd=a1B2,c3;d4&lang=sw",
        "platform": "Zoom",
    }


@_special_case
def _across_local_midnight(draft: _Draft, context: _Context) -> None:
    _retype(draft, context, "event", "Gala dinner and awards night")
    _set_timed(draft, context, 14, 22, 180)


@_special_case
def _free_booking(draft: _Draft, context: _Context) -> None:
    _retype(draft, context, "consultation", "Free introductory call")
    draft.amount = 0


@_special_case
def _cancelled_upcoming(draft: _Draft, context: _Context) -> None:
    _set_timed(draft, context, 2, 10, 60)
    draft.status = "cancelled"


@_special_case
def _no_show(draft: _Draft, context: _Context) -> None:
    _set_timed(draft, context, -2, 16, 45)
    draft.status = "no-show"


# --- The booking store -------------------------------------------------------


class _BookingStore:
    """Bookings by id, with the list order and search results cached.

    An update replaces a stored booking dict instead of changing it, so a
    reader may serialize a dict that it got under the lock after releasing it.
    """

    def __init__(self, bookings: list[JsonDict], now: datetime) -> None:
        self._lock = threading.Lock()
        self._now = now
        self._bookings: dict[str, JsonDict] = {}
        self._rows: list[JsonDict] | None = None
        self._selections: dict[tuple[str | None, str | None], list[JsonDict]] = {}
        self._added = 0
        for booking in bookings:
            self._insert(booking)

    def select(self, status: str | None, search: str | None) -> list[JsonDict]:
        """Return the list rows matching the filters, newest ``createdat`` first."""
        key = (status, search.casefold() if search else None)
        with self._lock:
            selection = self._selections.get(key)
            if selection is None:
                rows = self._sorted_rows()
                selection = [row for row in rows if _matches(row, self._bookings, *key)]
                if len(self._selections) >= SEARCH_CACHE_SIZE:
                    self._selections.clear()
                self._selections[key] = selection
            return selection

    def find(self, booking_id: str) -> JsonDict | None:
        with self._lock:
            return self._bookings.get(booking_id)

    def get(self, booking_id: str) -> JsonDict:
        with self._lock:
            return copy.deepcopy(self._require(booking_id))

    def ids(self) -> list[str]:
        with self._lock:
            return [row["_id"] for row in self._sorted_rows()]

    def count(self) -> int:
        with self._lock:
            return len(self._bookings)

    def add(self, booking: JsonDict) -> JsonDict:
        with self._lock:
            complete = self._complete_new_booking(copy.deepcopy(booking))
            self._insert(complete)
            return copy.deepcopy(complete)

    def add_verbatim(self, booking: JsonDict) -> None:
        with self._lock:
            self._insert(copy.deepcopy(booking))

    def update(self, booking_id: str, fields: JsonDict) -> JsonDict:
        if "_id" in fields:
            raise ValueError("the _id of a booking cannot be changed. Delete it and add a new one.")
        with self._lock:
            booking = {**self._require(booking_id), **copy.deepcopy(fields)}
            if "updatedat" not in fields:
                next_change = _last_change(booking) + timedelta(minutes=1)
                booking["updatedat"] = format_timestamp(next_change)
            self._bookings[booking_id] = booking
            self._invalidate()
            return copy.deepcopy(booking)

    def delete(self, booking_id: str) -> None:
        with self._lock:
            self._require(booking_id)
            del self._bookings[booking_id]
            self._invalidate()

    def _require(self, booking_id: str) -> JsonDict:
        try:
            return self._bookings[booking_id]
        except KeyError:
            raise KeyError(f"no booking with _id {booking_id!r} in the sandbox") from None

    def _insert(self, booking: JsonDict) -> None:
        booking_id = booking.get("_id")
        if not isinstance(booking_id, str) or not booking_id:
            raise ValueError(f"booking has no string _id: {booking!r:.200}")
        if booking_id in self._bookings:
            raise ValueError(f"duplicate booking _id {booking_id!r}")
        self._bookings[booking_id] = booking
        self._invalidate()

    def _invalidate(self) -> None:
        self._rows = None
        self._selections.clear()

    def _sorted_rows(self) -> list[JsonDict]:
        if self._rows is None:
            # Two stable sorts: by _id ascending, then by createdat descending.
            ordered = sorted(self._bookings.values(), key=lambda b: b["_id"])
            ordered.sort(key=lambda b: str(b.get("createdat") or ""), reverse=True)
            self._rows = [_list_row(booking) for booking in ordered]
        return self._rows

    def _complete_new_booking(self, booking: JsonDict) -> JsonDict:
        """Fill the fields that the caller left out.

        Without ``createdat``, the booking is created one minute after the newest one.
        """
        if "createdat" in booking:
            created = parse_timestamp(booking["createdat"])
        else:
            created = self._newest_created() + timedelta(minutes=1)
        start = (created + timedelta(days=1)).replace(minute=0, second=0, microsecond=0)
        defaults: JsonDict = {
            "title": "New booking",
            "status": "scheduled",
            "starttime": format_timestamp(start),
            "endtime": format_timestamp(start + timedelta(hours=1)),
            "allday": False,
            "type": "appointment",
            "amount": 0,
            "createdat": format_timestamp(created),
            "description": "",
            "priority": "medium",
            "location": {"type": "physical", "address": "Westlands Business Centre, Nairobi"},
            "participant": {"name": "Sandbox Customer", "email": None, "phone": None},
            "billed": False,
        }
        complete = {"_id": booking.get("_id") or self._next_id(created), **defaults, **booking}
        complete.setdefault("updatedat", complete["createdat"])
        return complete

    def _newest_created(self) -> datetime:
        # API time stamps have one fixed width, so the greatest string is the latest time.
        stamps = (b.get("createdat") for b in self._bookings.values())
        newest = max((stamp for stamp in stamps if isinstance(stamp, str)), default=None)
        return _parse_or_none(newest) or self._now

    def _next_id(self, created: datetime) -> str:
        while True:
            self._added += 1
            booking_id = _object_id(created, 0xADDED00000, self._added)
            if booking_id not in self._bookings:
                return booking_id


def _matches(
    row: JsonDict, bookings: dict[str, JsonDict], status: str | None, needle: str | None
) -> bool:
    """Apply the ``status`` filter and the case-folded ``search`` needle to one list row."""
    if status is not None and row.get("status") != status:
        return False
    if needle is None:
        return True
    if needle in str(row.get("title") or "").casefold():
        return True
    participant = bookings[row["_id"]].get("participant") or {}
    return needle in str(participant.get("name") or "").casefold()


def _list_row(booking: JsonDict) -> JsonDict:
    return {name: booking[name] for name in LIST_FIELDS if name in booking}


def _parse_or_none(text: Any) -> datetime | None:
    if not isinstance(text, str):
        return None
    try:
        return parse_timestamp(text)
    except ValueError:
        return None


def _last_change(booking: JsonDict) -> datetime:
    for name in ("updatedat", "createdat"):
        moment = _parse_or_none(booking.get(name))
        if moment is not None:
            return moment
    raise ValueError(
        f"booking {booking['_id']!r} has no valid updatedat or createdat, so pass updatedat"
    )


# --- Request statistics ------------------------------------------------------


class _RequestStats:
    """Request counts by route, and the most recent requests in arrival order."""

    ROUTES = ("list", "details", "other")

    def __init__(self, log_size: int = REQUEST_LOG_SIZE) -> None:
        self._lock = threading.Lock()
        self._counts: Counter[str] = Counter()
        self._log: deque[tuple[str, str]] = deque(maxlen=log_size)

    def record(self, route: str, method: str, target: str) -> None:
        with self._lock:
            self._counts[route] += 1
            self._log.append((method, target))

    def counts(self) -> dict[str, int]:
        with self._lock:
            return {route: self._counts[route] for route in self.ROUTES}

    def log(self) -> list[tuple[str, str]]:
        with self._lock:
            return list(self._log)

    def reset(self) -> None:
        with self._lock:
            self._counts.clear()
            self._log.clear()


# --- The WSGI application ----------------------------------------------------


@dataclass(frozen=True)
class _Response:
    """Status, body and extra headers. A dict body is sent as JSON, a str body as ``content_type``."""

    status: int
    body: JsonDict | str
    headers: tuple[tuple[str, str], ...] = ()
    content_type: str = JSON_CONTENT_TYPE

    def encode(self) -> bytes:
        if isinstance(self.body, str):
            return self.body.encode("utf-8")
        text = json.dumps(self.body, ensure_ascii=False, separators=(",", ":"))
        try:
            return text.encode("utf-8")
        except UnicodeEncodeError:
            # A lone surrogate has no UTF-8 form. JavaScript APIs send it as a
            # \ud800 escape, which ASCII-only JSON gives too.
            return json.dumps(self.body, separators=(",", ":")).encode("ascii")


class _BadRequest(Exception):
    """Invalid query parameter or path segment. The message is sent to the client."""


def _error(status: int, message: str, headers: tuple[tuple[str, str], ...] = ()) -> _Response:
    return _Response(status, {"success": False, "error": message}, headers)


class _CashfinApp:
    """WSGI application that serves a ``_BookingStore`` as the Cashfin Bookings API.

    Checks run in this order: unknown path (404), method other than GET (405),
    then the ``Authorization`` header (401). Faults from ``faults`` apply to
    the list and details routes before these checks.
    """

    def __init__(
        self,
        store: _BookingStore,
        secret: str,
        stats: _RequestStats,
        faults: FaultRegistry,
        latency: float = 0.0,
    ) -> None:
        self._store = store
        self._secret = secret.encode("utf-8")
        self._stats = stats
        self._faults = faults
        # Seconds every response is held back, so that wall time on loopback reflects round trips.
        self.latency = latency

    def __call__(self, environ: JsonDict, start_response: Callable[..., Any]) -> list[bytes]:
        started = time.perf_counter()
        if self.latency > 0:
            time.sleep(self.latency)
        method = environ.get("REQUEST_METHOD", "GET")
        path, target = _request_path_and_target(environ)
        route, raw_id = _match_route(path)
        faults = self._matching_faults(route, raw_id)
        self._apply_delays(faults, target)
        response_fault = self._claim_first(faults, RESPONSE_KINDS)

        if response_fault is not None and response_fault.kind == "reset":
            self._stats.record(route, method, target)
            logger.debug("%s %s -> connection reset by a fault", method, target)
            reset_connection(environ)

        try:
            if response_fault is not None:
                response = _fault_response(response_fault)
            else:
                response = self._dispatch(environ, method, route, raw_id, faults)
        except Exception:
            logger.exception("sandbox failed to handle %s %s", method, target)
            response = _error(500, "Internal server error")

        self._stats.record(route, method, target)
        body = response.encode()
        headers = [
            ("Content-Type", response.content_type),
            ("Content-Length", str(len(body))),
            *response.headers,
        ]
        if self._claim_first(faults, ("truncated",)) is not None:
            # Content-Length still declares the whole body. Waitress 3.0.2 sends the
            # bytes it gets, logs "application returned too few bytes" and closes the
            # connection, which is what a client sees when a server dies mid-response.
            body = body[: len(body) // 2]
        start_response(f"{response.status} {http.HTTPStatus(response.status).phrase}", headers)

        elapsed_ms = (time.perf_counter() - started) * 1000
        logger.debug("%s %s -> %d in %.1f ms", method, target, response.status, elapsed_ms)
        return [body]

    def _matching_faults(self, route: str, raw_id: str | None) -> list[Fault]:
        if route == "other":
            return []
        number = self._faults.next_request_number(route)
        booking_id = None
        if raw_id is not None:
            try:
                booking_id = _decode_id(raw_id)
            except _BadRequest:
                booking_id = None
        return self._faults.matching(route, number, booking_id)

    def _claim_first(self, faults: list[Fault], kinds: Iterable[str]) -> Fault | None:
        """Claim and return the first fault of one of ``kinds`` that has not used up its ``times``."""
        for fault in faults:
            if fault.kind in kinds and self._faults.claim(fault):
                return fault
        return None

    def _apply_delays(self, faults: list[Fault], target: str) -> None:
        """Hold the request for every matching ``slow`` and ``hang`` fault, until ``Sandbox.stop()`` at most."""
        for fault in faults:
            if fault.kind not in DELAY_KINDS or not self._faults.claim(fault):
                continue
            seconds = fault.hang_seconds if fault.kind == "hang" else fault.delay_ms / 1000
            logger.debug("fault %s delays %s by %.3f s", fault.kind, target, seconds)
            if self._faults.wait(seconds):
                logger.debug("fault %s on %s ended early because the sandbox stops", fault.kind, target)
                return

    def _dispatch(
        self, environ: JsonDict, method: str, route: str, raw_id: str | None, faults: list[Fault]
    ) -> _Response:
        if route == "other":
            return _error(404, "Route not found")
        if method != "GET":
            return _error(405, f"Method {method} is not allowed. Use GET.", (("Allow", "GET"),))
        if not self._is_authorized(environ):
            return _error(401, "Unauthorized")

        try:
            if route == "list":
                return self._list(_parse_query(environ), faults)
            return self._details(_decode_id(raw_id or ""))
        except _BadRequest as error:
            return _error(400, str(error))

    def _is_authorized(self, environ: JsonDict) -> bool:
        # WSGI header values are latin-1 decoded bytes, so this recovers what was sent.
        sent = environ.get("HTTP_AUTHORIZATION", "").encode("latin-1")
        return hmac.compare_digest(sent, self._secret)

    def _list(self, query: dict[str, str], faults: list[Fault]) -> _Response:
        page = _positive_int(query, "page", 1)
        limit = min(_positive_int(query, "limit", DEFAULT_LIMIT), MAX_LIMIT)
        selection = self._store.select(query.get("status"), query.get("search"))

        total = len(selection)
        first = (page - 1) * limit
        data = selection[first : first + limit]
        for fault in faults:
            if fault.kind == "repeat-rows" and page > 1 and self._faults.claim(fault):
                # As if bookings were inserted before this page since the previous one was read.
                data = selection[first - limit : first]
            elif fault.kind == "empty-page" and self._faults.claim(fault):
                data = []
            elif fault.kind == "total-inflated" and self._faults.claim(fault):
                total += fault.total_extra

        pagination = {
            "total": total,
            "page": page,
            "limit": limit,
            "pages": math.ceil(total / limit),
        }
        return _Response(200, {"success": True, "data": data, "pagination": pagination})

    def _details(self, booking_id: str) -> _Response:
        booking = self._store.find(booking_id)
        if booking is None:
            return _error(404, "Booking not found")
        return _Response(200, {"success": True, "data": booking})


# A 502 page in the style of nginx's default error page, as a gateway in front of an API sends it.
_BAD_GATEWAY_HTML = (
    "<html>\r\n<head><title>502 Bad Gateway</title></head>\r\n<body>\r\n"
    "<center><h1>502 Bad Gateway</h1></center>\r\n<hr><center>nginx</center>\r\n"
    "</body>\r\n</html>\r\n"
)


def _fault_response(fault: Fault) -> _Response:
    """Build the response of a fault whose kind is in ``RESPONSE_KINDS``, except ``reset``."""
    if fault.kind == "429":
        return _error(429, "Too many requests", (("Retry-After", str(fault.retry_after_seconds)),))
    if fault.kind == "500":
        return _error(500, "Internal server error")
    if fault.kind == "502":
        return _Response(502, _BAD_GATEWAY_HTML, content_type=HTML_CONTENT_TYPE)
    if fault.kind == "503":
        return _error(503, "Service unavailable")
    if fault.kind == "not-json":
        text = "Service temporarily unavailable. Please try again later.\n"
        return _Response(200, text, content_type=TEXT_CONTENT_TYPE)
    if fault.kind == "success-false":
        return _Response(200, {"success": False, "error": fault.error})
    if fault.kind == "not-found":
        return _error(404, "Booking not found")
    if fault.kind == "unauthorized":
        return _error(401, "Unauthorized")
    raise ValueError(f"fault {fault.kind!r} does not replace the response")


def _request_path_and_target(environ: JsonDict) -> tuple[str, str]:
    """Return the raw (still percent-encoded) path and the path with its query string.

    The path comes from waitress's ``REQUEST_URI``, the request target as sent,
    because ``PATH_INFO`` is already decoded and would turn ``%2F`` in an id
    into a path separator.
    """
    query = environ.get("QUERY_STRING", "")
    path = urlsplit(environ["REQUEST_URI"]).path
    target = f"{path}?{query}" if query else path
    return path, target


def _match_route(path: str) -> tuple[str, str | None]:
    """Return the route name and, for details, the raw id segment."""
    if path.endswith("/") and len(path) > 1:
        path = path[:-1]
    if path == LIST_PATH:
        return "list", None
    prefix = DETAILS_PATH + "/"
    if path.startswith(prefix) and len(path) > len(prefix) and "/" not in path[len(prefix) :]:
        return "details", path[len(prefix) :]
    return "other", None


def _decode_id(raw_id: str) -> str:
    try:
        return unquote(raw_id, errors="strict")
    except UnicodeDecodeError:
        message = f"Invalid booking id {raw_id!r}: the percent-encoded bytes are not UTF-8"
        raise _BadRequest(message) from None


def _parse_query(environ: JsonDict) -> dict[str, str]:
    """Parse the query string, keeping the first value of each parameter and dropping empty ones."""
    raw = environ.get("QUERY_STRING", "").encode("latin-1").decode("utf-8", "replace")
    parsed = parse_qs(raw, errors="replace")
    return {name: values[0] for name, values in parsed.items()}


_DIGITS = re.compile(r"[0-9]+")


def _positive_int(query: dict[str, str], name: str, default: int) -> int:
    text = query.get(name)
    if text is None:
        return default
    if not _DIGITS.fullmatch(text) or int(text) < 1:
        raise _BadRequest(f"Invalid {name} {text!r}: expected an integer of 1 or more")
    return int(text)


# --- The server --------------------------------------------------------------


class Sandbox:
    """The sandbox Cashfin API, served by waitress on a background thread.

    Use it as a context manager, or call ``start()`` and ``stop()``. The
    mutation helpers change the served data at once and are safe to call from
    any thread while requests are in flight.
    """

    def __init__(
        self,
        *,
        secret: str = DEFAULT_SECRET,
        bookings: list[JsonDict] | None = None,
        count: int = 300,
        seed: int = 7,
        anchor: date | None = None,
        host: str = "127.0.0.1",
        port: int = 0,
        threads: int = 8,
        latency_ms: float = 0.0,
        faults: Iterable[Fault] = (),
        request_log_size: int = REQUEST_LOG_SIZE,
    ) -> None:
        """Prepare the data set without serving it yet.

        The sandbox serves a copy of ``bookings`` if given, else
        ``generate_bookings(count, seed, anchor)``. ``anchor`` (default: today's
        UTC date) also sets the ``createdat`` given to bookings added to an
        empty sandbox. ``threads`` is the number of waitress worker threads.
        ``latency_ms`` delays every response by that many milliseconds, as a
        network round trip would; it can be changed while serving through
        ``latency_ms``. ``faults`` are added to the ``faults`` registry.
        ``request_log`` keeps the last ``request_log_size`` requests.
        """
        if not secret:
            raise ValueError(
                "secret must not be empty, because an empty Authorization header would match it"
            )
        if anchor is None:
            anchor = datetime.now(UTC).date()
        if bookings is None:
            bookings = generate_bookings(count, seed, anchor)
        else:
            bookings = copy.deepcopy(bookings)

        self._secret = secret
        self._store = _BookingStore(bookings, snapshot_time(anchor))
        self._stats = _RequestStats(request_log_size)
        self._faults = FaultRegistry()
        for fault in faults:
            self._faults.add(fault)
        if latency_ms < 0:
            raise ValueError(f"latency_ms must not be negative, got {latency_ms}")
        self._app = _CashfinApp(self._store, secret, self._stats, self._faults, latency_ms / 1000)
        self._host = host
        self._port = port
        self._threads = threads

        self._lifecycle_lock = threading.RLock()
        self._stopped = threading.Event()
        self._stopped.set()
        self._server: Any = None
        self._server_thread: threading.Thread | None = None
        self._base_url: str | None = None

    @property
    def secret(self) -> str:
        """Client secret that requests must send in the ``Authorization`` header."""
        return self._secret

    @property
    def base_url(self) -> str:
        """URL of the running server without a trailing slash, such as ``http://127.0.0.1:8123``."""
        if self._base_url is None:
            raise RuntimeError("the sandbox is not running, so it has no base URL. Call start() first.")
        return self._base_url

    @property
    def running(self) -> bool:
        """True while the server accepts requests."""
        return self._base_url is not None

    @property
    def faults(self) -> FaultRegistry:
        """Registry of injected faults: ``sandbox.faults.add(Fault("503", endpoint="list", on_requests={2}))``."""
        return self._faults

    @property
    def latency_ms(self) -> float:
        """Milliseconds by which every response is delayed."""
        return self._app.latency * 1000

    @latency_ms.setter
    def latency_ms(self, value: float) -> None:
        if value < 0:
            raise ValueError(f"latency_ms must not be negative, got {value}")
        self._app.latency = value / 1000

    def start(self) -> str:
        """Bind the socket, start waitress on a daemon thread and return the base URL.

        Calling it again while the sandbox runs only returns the base URL.
        """
        with self._lifecycle_lock:
            if self._base_url is not None:
                return self._base_url

            server = make_server(self._app, self._host, self._port, threads=self._threads)
            base_url = server_url(server)
            self._faults.reset_request_numbers()
            self._faults.restore_waits()
            self._server = server
            self._base_url = base_url
            self._stopped.clear()
            self._server_thread = start_server_thread(server, name="calsync-sandbox")

        if not _is_loopback(self._host):
            logger.warning(
                "Sandbox Cashfin API listens on %s, which is not a loopback address", self._host
            )
        logger.info("Sandbox Cashfin API listening on %s with %d bookings", base_url, self._store.count())
        return base_url

    def stop(self) -> None:
        """Stop serving, close every socket and end the server threads.

        Requests held by ``hang`` or ``slow`` faults are released first. Does
        nothing if the sandbox is not running.
        """
        with self._lifecycle_lock:
            server, thread, base_url = self._server, self._server_thread, self._base_url
            if server is None or thread is None:
                return
            self._faults.release_waits()
            if not stop_server(server):
                logger.warning("Sandbox Cashfin API threads did not stop within %.0f s", STOP_TIMEOUT_SECONDS)
            thread.join(STOP_TIMEOUT_SECONDS)
            self._server = self._server_thread = self._base_url = None
            self._stopped.set()
        logger.info("Sandbox Cashfin API at %s stopped", base_url)

    def wait(self) -> None:
        """Block until ``stop()`` is called, usually from another thread.

        Returns at once if the sandbox is not running. A KeyboardInterrupt propagates.
        """
        # Short timed waits let Ctrl-C through on Windows too, where an untimed wait blocks it.
        while not self._stopped.wait(0.5):
            pass

    def serve_forever(self) -> None:
        """Start the server if needed, then block until KeyboardInterrupt or ``stop()``.

        The server is stopped on return. A KeyboardInterrupt is logged, not raised.
        """
        try:
            self.start()
            self.wait()
        except KeyboardInterrupt:
            logger.info("Sandbox Cashfin API interrupted")
        finally:
            self.stop()

    def __enter__(self) -> Sandbox:
        self.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.stop()

    # Mutation helpers. Those that take a booking id raise KeyError for an unknown one.

    def add(self, booking: JsonDict) -> JsonDict:
        """Store a new booking and return it as stored.

        Missing fields get defaults: a fresh ObjectId-style ``_id``, a
        ``createdat`` one minute after the newest booking (so that it is listed
        first), ``updatedat`` equal to ``createdat``, and a one-hour scheduled
        appointment on the next day. Raises ValueError if the ``_id`` exists.
        """
        return self._store.add(booking)

    def add_verbatim(self, booking: JsonDict) -> None:
        """Store a booking exactly as given, for tests of malformed data.

        No field is filled in or checked, except that ``_id`` must be a new,
        non-empty string: the list and the details endpoints return every
        other field as it is, wrong types and all.
        """
        self._store.add_verbatim(booking)

    def update(self, booking_id: str, **fields: Any) -> JsonDict:
        """Change fields of a booking and return it as stored.

        Unless ``updatedat`` is among the fields, it becomes one minute after
        the previous ``updatedat`` (or ``createdat``). Raises ValueError when
        asked to change ``_id``.
        """
        return self._store.update(booking_id, fields)

    def delete(self, booking_id: str) -> None:
        """Remove a booking, so that its details return 404 and the list omits it."""
        self._store.delete(booking_id)

    def get(self, booking_id: str) -> JsonDict:
        """Return a copy of a booking with every detail field."""
        return self._store.get(booking_id)

    def ids(self) -> list[str]:
        """Return every booking id in list order: newest ``createdat`` first, ties by ``_id``."""
        return self._store.ids()

    def request_counts(self) -> dict[str, int]:
        """Return the number of requests per route: ``list``, ``details`` and ``other``.

        A request counts for the route its path matches, whatever its method or
        outcome, so a 401 on the list path counts as ``list``.
        """
        return self._stats.counts()

    def request_log(self) -> list[tuple[str, str]]:
        """Return ``(method, path with query)`` of the last requests, oldest first.

        It keeps as many as ``request_log_size`` (default 10,000) set.
        """
        return self._stats.log()

    def reset_counts(self) -> None:
        """Set every request count to zero, clear the request log and restart fault request numbers at 1."""
        self._stats.reset()
        self._faults.reset_request_numbers()


def _is_loopback(host: str) -> bool:
    return host in ("localhost", "::1") or host.startswith("127.")


