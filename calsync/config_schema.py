"""The declared schema of calsync's configuration.

Every key has one ``Option``: its section, default, value type, converter and
help text. ``calsync.config`` reads the layers (defaults, the TOML file, the
environment) through this table, so a key that is not declared here is
rejected wherever it appears.

Defaults are written as they would appear in the TOML file and go through the
same converter as any other value. A converter receives a value of the right
TOML type and returns the setting, or raises ``Invalid`` with the problem and
the fix.
"""

from __future__ import annotations

import ipaddress
import re
import unicodedata
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import timedelta
from typing import Any
from urllib.parse import urlsplit
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from calsync.durations import (
    DURATION_SYNTAX,
    MAX_DURATION,
    DurationTooLargeError,
    parse_duration,
)

STATUSES = ("scheduled", "completed", "cancelled", "no-show")
DETAIL_LEVELS = ("full", "limited", "busy")
MAX_PAGE_SIZE = 100  # the largest `limit` that the Cashfin list endpoint accepts
MAX_CONCURRENCY = 32
MAX_PAST_DAYS = 36500  # 100 years. Values near 740000 reach back before year 1, where datetime overflows.
FEED_NAME_PATTERN = re.compile(r"[a-z0-9][a-z0-9_-]{0,63}")
SECTIONS = ("cashfin", "sync", "calendar", "server")
FEEDS = "feeds"


class Invalid(ValueError):
    """Error for a value of the right type that is not acceptable, with the fix to report."""

    def __init__(self, problem: str, fix: str) -> None:
        super().__init__(problem)
        self.problem = problem
        self.fix = fix


@dataclass(frozen=True)
class ValueType:
    """A TOML value type: its name in messages and how to read it from the environment."""

    name: str
    accepts: Callable[[Any], bool]
    from_env: Callable[[str], Any]  # raises ValueError for text of the wrong form


def _is_integer(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_duration(value: Any) -> bool:
    return isinstance(value, str) or _is_integer(value)


def _is_list_of(check: Callable[[Any], bool]) -> Callable[[Any], bool]:
    return lambda value: isinstance(value, list) and all(check(item) for item in value)


def _integer_from_env(text: str) -> int:
    return int(text.strip())


def _boolean_from_env(text: str) -> bool:
    lowered = text.strip().lower()
    if lowered in ("true", "yes", "on", "1"):
        return True
    if lowered in ("false", "no", "off", "0"):
        return False
    raise ValueError(text)


def _list_from_env(text: str) -> list[str]:
    return [item.strip() for item in text.split(",") if item.strip()]


STRING = ValueType("a string", lambda value: isinstance(value, str), str)
INTEGER = ValueType("an integer", _is_integer, _integer_from_env)
BOOLEAN = ValueType("a boolean (true or false)", lambda value: isinstance(value, bool), _boolean_from_env)
DURATION = ValueType("a duration", _is_duration, str)
STRING_LIST = ValueType("a list of strings", _is_list_of(lambda item: isinstance(item, str)), _list_from_env)
DURATION_LIST = ValueType("a list of durations", _is_list_of(_is_duration), _list_from_env)


def _unchanged(value: Any) -> Any:
    return value


@dataclass(frozen=True)
class Option:
    """One configuration key with its default, type, converter and help text.

    A ``*_file`` key has no field of its own: the loader reads the file and
    uses its content as the value of ``reads_into``. ``path`` marks keys whose
    relative paths are resolved against the directory of the layer that set
    them, and whose empty value is passed to the converter as None.
    ``expected`` describes the valid values, such as "a whole number from 1
    to 32", for the fix of a value of the wrong type.
    """

    section: str
    key: str
    default: Any
    type: ValueType
    help: str
    convert: Callable[[Any], Any] = _unchanged
    example: Any = None
    secret: bool = False
    path: bool = False
    reads_into: str | None = None
    expected: str | None = None

    @property
    def sample(self) -> Any:
        """A valid value to show in a fix: the example, else the default."""
        return self.default if self.example is None else self.example


# Converters. Each returns the setting or raises Invalid.


def _base_url(text: str) -> str:
    return _http_url(text, "https://api.cashfin.africa")


def _public_url(text: str) -> str:
    return _http_url(text, "https://calendar.example.com") if text.strip() else ""


def _http_url(text: str, example: str) -> str:
    """Check an http or https URL without user name, password, query or fragment.

    Messages show the URL with its user name and password removed, because
    they end up in logs.
    """
    fix = f"Write the full URL with its scheme, such as {example}"
    url = text.strip()
    redacted_url = _without_userinfo(url)
    parts = urlsplit(url)
    if parts.username is not None or parts.password is not None:
        fix = "Remove the user name and password from the URL, because calsync writes the URL into logs and messages"
        raise Invalid(f"{redacted_url!r} contains a user name or password", fix)
    if parts.scheme.lower() not in ("http", "https"):
        raise Invalid(f"{redacted_url!r} is not an http or https URL", fix)
    if not parts.hostname:
        raise Invalid(f"{redacted_url!r} has no host name", fix)
    try:
        parts.port  # raises ValueError for a port that is not a number from 0 to 65535
    except ValueError:
        raise Invalid(f"{redacted_url!r} has an invalid port", fix) from None
    if parts.query or parts.fragment:
        raise Invalid(f"{redacted_url!r} has a query or fragment", "Remove the part from ? or # on")
    return url.rstrip("/")


def _without_userinfo(url: str) -> str:
    """Remove each run of characters up to an "@" that contains no "/", "?" or "#".

    This hides a user name and password even in a malformed URL such as
    ``https:/user:password@host``. An "@" in the path is removed with the
    segment before it, which only shortens the URL shown in a message.
    """
    return re.sub(r"[^/?#@]*@", "", url)


def _positive_duration(value: str | int) -> timedelta:
    duration = _duration(value)
    if duration <= timedelta():
        raise Invalid(f"{value!r} is not longer than zero", f"Write {DURATION_SYNTAX}")
    return duration


def _positive_seconds(value: str | int) -> float:
    return _positive_duration(value).total_seconds()


def _duration(value: str | int) -> timedelta:
    try:
        return parse_duration(value)
    except DurationTooLargeError:
        problem = f"duration {value!r} is too large"
        raise Invalid(problem, f'Write a duration of at most "{MAX_DURATION.days}d" (about 10 years)') from None
    except ValueError:
        raise Invalid(f"invalid duration {value!r}", f"Write {DURATION_SYNTAX}") from None


def _interval(value: str | int) -> timedelta:
    """Check the sync interval, which the scheduler and the feeds' REFRESH-INTERVAL need in whole seconds."""
    fix = 'Write a whole number of seconds, at least 1s, such as "90s", "15m" or "1h30m"'
    interval = _duration(value)
    if interval <= timedelta():
        raise Invalid(f"{value!r} is not longer than zero", fix)
    if interval < timedelta(seconds=1):
        raise Invalid(f"{value!r} is shorter than 1 second", fix)
    if interval % timedelta(seconds=1):
        raise Invalid(f"{value!r} is not a whole number of seconds", fix)
    return interval


def _alarms(values: list[str | int]) -> tuple[timedelta, ...]:
    """Check the alarm offsets, which the feed writes as TRIGGER durations in whole seconds."""
    alarms = []
    for value in values:
        alarm = _duration(value)
        if alarm % timedelta(seconds=1):
            fix = 'Write each alarm in whole seconds, such as "15m" or "1h". "0s" sets an alarm at the start'
            raise Invalid(f"alarm {value!r} is not a whole number of seconds", fix)
        alarms.append(alarm)
    return tuple(alarms)


def _page_size(count: int) -> int:
    if count < 1:
        raise Invalid(f"{count} is less than 1", f"Set it between 1 and {MAX_PAGE_SIZE}")
    return count


def _concurrency(count: int) -> int:
    if not 1 <= count <= MAX_CONCURRENCY:
        raise Invalid(f"{count} is outside 1 to {MAX_CONCURRENCY}", f"Set it between 1 and {MAX_CONCURRENCY}")
    return count


def _past_days(count: int) -> int:
    fix = f"Set it to a whole number of days from 0 to {MAX_PAST_DAYS}"
    if count < 0:
        raise Invalid(f"{count} is negative", fix)
    if count > MAX_PAST_DAYS:
        raise Invalid(f"{count} is more than {MAX_PAST_DAYS} days (100 years)", fix)
    return count


def _timezone(name: str) -> ZoneInfo:
    try:
        return ZoneInfo(name)
    except (ZoneInfoNotFoundError, ValueError, OSError):
        raise Invalid(f"unknown time zone {name!r}", _timezone_fix(name)) from None


def _timezone_fix(name: str) -> str:
    import difflib
    import zoneinfo

    # available_timezones() scans the zone files, so only an error pays for it.
    matches = difflib.get_close_matches(name, zoneinfo.available_timezones(), n=1)
    suggestion = matches[0] if matches else "Africa/Nairobi"
    return f"Use an IANA time zone name such as {suggestion}"


def _uid_domain(text: str) -> str:
    fix = "Use a domain that you control, such as bookings.example.com"
    if not text.strip():
        raise Invalid("the UID domain is empty", fix)
    if re.search(r"[\s@/\x00-\x1f\x7f]", text.strip()):
        raise Invalid(f"{text!r} is not a domain name", fix)
    return text.strip()


def _organizer(text: str) -> str:
    """Return the organizer as a ``mailto:`` URI, or "" when unset."""
    address = text.strip()
    if not address:
        return ""
    if address.lower().startswith("mailto:"):
        address = address[len("mailto:") :]
    if not re.fullmatch(r"[^@\s:\x00-\x1f\x7f]+@[^@\s\x00-\x1f\x7f]+", address):
        fix = "Write it as bookings@example.com or mailto:bookings@example.com"
        raise Invalid(f"{text!r} is not an email address", fix)
    return f"mailto:{address}"


def split_listen(text: str) -> tuple[str, int]:
    """Split a ``host:port`` listen address, such as ``[::1]:8080``, into host and port.

    Raises Invalid when the address has no host, no port, a port outside
    1 to 65535, or an IPv6 address without brackets.
    """
    fix = "Write it as host:port, such as 127.0.0.1:8080, 0.0.0.0:8080 or [::1]:8080"
    host, colon, port_text = text.strip().rpartition(":")
    if not colon or not host:
        raise Invalid(f"{text!r} is not host:port", fix)

    if host.startswith("[") and host.endswith("]"):
        host = _ipv6_host(host[1:-1], text, fix)
    elif ":" in host:
        raise Invalid(f"{text!r} has an IPv6 address without brackets", fix)
    elif not re.fullmatch(r"[A-Za-z0-9.-]+", host):
        raise Invalid(f"{text!r} has an invalid host", fix)

    if not port_text.isdigit() or not 1 <= int(port_text) <= 65535:
        raise Invalid(f"the port in {text!r} is not between 1 and 65535", fix)
    return host, int(port_text)


def _ipv6_host(host: str, text: str, fix: str) -> str:
    try:
        ipaddress.IPv6Address(host)
    except ValueError:
        raise Invalid(f"{text!r} has an invalid IPv6 address", fix) from None
    return host


def _listen(text: str) -> str:
    split_listen(text)
    return text.strip()


def _state_dir(path: Any) -> Any:
    if path is None:
        raise Invalid("the state directory is empty", "Set it to a directory path, such as ./calsync-data")
    return path


def _feed_name(name: str) -> str:
    if not FEED_NAME_PATTERN.fullmatch(name):
        raise Invalid(
            f"{name!r} is not a valid feed name",
            "Use up to 64 lowercase letters, digits, - and _, starting with a letter or digit, "
            "because the name becomes a file name and a URL path",
        )
    return name


def _title(text: str) -> str:
    if not text.strip():
        raise Invalid("the title is empty", "Set a calendar name such as Bookings")
    return text


def _statuses(values: list[str]) -> tuple[str, ...]:
    for value in values:
        if value not in STATUSES:
            raise Invalid(f"unknown status {value!r}", f"Use only these statuses: {', '.join(STATUSES)}")
    if not values:
        problem = "the list is empty, so the feed would select no bookings"
        raise Invalid(problem, "Remove the key to include every status")
    return tuple(dict.fromkeys(values))


def _types(values: list[str]) -> tuple[str, ...]:
    if any(not value.strip() for value in values):
        raise Invalid("the list contains an empty type", "Remove the empty string; an empty list selects every type")
    return tuple(dict.fromkeys(values))


def _details(level: str) -> str:
    if level not in DETAIL_LEVELS:
        raise Invalid(f"unknown detail level {level!r}", f"Use one of: {', '.join(DETAIL_LEVELS)}")
    return level


def _header_secret(noun: str) -> Callable[[str], str]:
    """Return a converter for a secret sent in an HTTP header, named ``noun`` in messages.

    requests 2.34 raises InvalidHeader, whose message shows the value, for a
    leading space or a line break, and http.client raises UnicodeEncodeError
    beyond Latin-1. So the converter accepts only printable ASCII (0x20 to
    0x7E) without spaces at either end, which also keeps out Latin-1 letters
    that the receiver may decode differently. Its messages never show the
    value or its characters.
    """

    def convert(text: str) -> str:
        fix = f"Copy the {noun} again without surrounding spaces or line breaks"
        if text != text.strip():
            raise Invalid(f"the {noun} starts or ends with whitespace or a line break", fix)
        if any(unicodedata.category(character) == "Cc" for character in text):
            raise Invalid(f"the {noun} contains a control character, such as a line break or a tab", fix)
        if not all(" " <= character <= "~" for character in text):
            problem = f"the {noun} contains a character outside printable ASCII, which cannot be sent in an HTTP header"
            raise Invalid(problem, f"{fix}. It may contain only printable ASCII characters")
        return text

    return convert


def _feed_token(text: str) -> str:
    """Check a feed token. It travels URL-encoded in the query string, so any text but control characters works."""
    fix = "Copy the token again without surrounding spaces or line breaks"
    if text != text.strip():
        raise Invalid("the token starts or ends with whitespace or a line break", fix)
    categories = {unicodedata.category(character) for character in text}
    if "Cc" in categories:
        raise Invalid("the token contains a control character, such as a line break or a tab", fix)
    if "Cs" in categories:
        # os.environ decodes bytes that are not UTF-8 as lone surrogates, which cannot be URL-encoded.
        raise Invalid("the token contains bytes that are not valid UTF-8", "Set it as UTF-8 text")
    return text


SECRET_FILE_TRIMMING = "A UTF-8 byte order mark at its start and line breaks at its end are removed."


def _secret_file(section: str, key: str, reads_into: str, help_text: str, example: str) -> Option:
    return Option(section, key, "", STRING, help_text, example=example, path=True, reads_into=reads_into)


SCHEMA: Sequence[Option] = (
    Option("cashfin", "base_url", "https://api.cashfin.africa", STRING,
           "Base URL of the Cashfin API, without a user name or password.", _base_url),
    Option("cashfin", "client_secret", "", STRING,
           "Client secret, sent as is in the Authorization header, so it may contain only printable ASCII "
           "and no spaces at either end. CASHFIN_CLIENT_SECRET overrides it.",
           _header_secret("secret"), example="your-client-secret", secret=True),
    _secret_file("cashfin", "client_secret_file", "client_secret",
                 f"File whose content is the client secret, instead of client_secret. {SECRET_FILE_TRIMMING}",
                 "/run/secrets/cashfin_client_secret"),
    Option("cashfin", "timeout", "10s", DURATION,
           "Time limit for connecting to the API and for each read, as a duration.", _positive_seconds),
    Option("cashfin", "page_size", MAX_PAGE_SIZE, INTEGER,
           f"Bookings requested per list page, 1 to {MAX_PAGE_SIZE}. Larger values are lowered to {MAX_PAGE_SIZE}.",
           _page_size, expected=f"a whole number from 1 to {MAX_PAGE_SIZE}"),
    Option("cashfin", "concurrency", 4, INTEGER,
           f"Maximum number of requests in flight at once, 1 to {MAX_CONCURRENCY}.", _concurrency,
           expected=f"a whole number from 1 to {MAX_CONCURRENCY}"),
    Option("sync", "interval", "15m", DURATION,
           "Time between syncs under `calsync serve`, as a duration in whole seconds, at least 1s. "
           "It is also the feeds' refresh interval.",
           _interval),
    Option("sync", "state_dir", "./calsync-data", STRING,
           "Directory for state.sqlite3 and feeds/<name>.ics.", _state_dir, path=True),
    Option("sync", "timezone", "Africa/Nairobi", STRING,
           "IANA time zone of the business, used for all-day bookings.", _timezone),
    Option("sync", "details_max_age", "24h", DURATION,
           "Age, as a duration, after which a booking's details are fetched again although its list row is unchanged.",
           _positive_duration),
    Option("calendar", "uid_domain", "bookings.example.com", STRING,
           "Domain part of every event UID. Keep it stable, because changing it duplicates events.", _uid_domain),
    Option("calendar", "organizer", "", STRING,
           "Email address set as the events' ORGANIZER, or empty for none.", _organizer,
           example="mailto:bookings@example.com"),
    Option("server", "listen", "127.0.0.1:8080", STRING,
           "Address and port that the HTTP server binds, as host:port.", _listen),
    Option("server", "public_url", "", STRING,
           "Base URL at which subscribers reach the server, used to print subscription links. "
           "It must not contain a user name or password.",
           _public_url, example="https://calendar.example.com"),
    Option("server", "admin_token", "", STRING,
           "Token that enables the status page at `/` and `POST /sync`, which queues a sync to start now. "
           "Operators log in to the page with it, and scripts send it as `Authorization: Bearer <token>`, so it "
           "may contain only printable ASCII and no spaces at either end. When it is empty, the status page and "
           "`POST /sync` answer 404. `/healthz`, `/readyz` and `/metrics` need no token.",
           _header_secret("token"), example="a-long-random-string", secret=True),
    _secret_file("server", "admin_token_file", "admin_token",
                 f"File whose content is the admin token, instead of admin_token. {SECRET_FILE_TRIMMING}",
                 "/run/secrets/calsync_admin_token"),
    Option(FEEDS, "name", "bookings", STRING,
           "Feed name: the file feeds/<name>.ics and the URL path /feeds/<name>.ics.", _feed_name),
    Option(FEEDS, "title", "Bookings", STRING, "Calendar name that subscribers see (X-WR-CALNAME).", _title),
    Option(FEEDS, "token", "", STRING,
           "Token that a subscriber passes as ?token=. A feed needs one unless public is true. "
           "It must not contain control characters or start or end with whitespace.",
           _feed_token, example="a-long-random-string", secret=True),
    _secret_file(FEEDS, "token_file", "token",
                 f"File whose content is the feed token, instead of token. {SECRET_FILE_TRIMMING}",
                 "/run/secrets/calsync_feed_token"),
    Option(FEEDS, "public", False, BOOLEAN, "Serve the feed without a token.", example=True),
    Option(FEEDS, "statuses", ["scheduled", "completed", "no-show", "cancelled"], STRING_LIST,
           f"Booking statuses to include, from: {', '.join(STATUSES)}. Case and separators do not matter "
           "(Cancelled is cancelled), and a booking with a missing or unknown status counts as scheduled: "
           "it is shown as confirmed and logged as a warning.", _statuses),
    Option(FEEDS, "types", [], STRING_LIST, "Booking types to include. An empty list includes every type.", _types,
           example=["consultation"]),
    Option(FEEDS, "past_days", 90, INTEGER,
           f"Days into the past that the feed reaches, 0 to {MAX_PAST_DAYS}. Bookings that ended earlier are left out.",
           _past_days, expected=f"a whole number from 0 to {MAX_PAST_DAYS}"),
    Option(FEEDS, "details", "full", STRING,
           f"How much of each booking the feed shows: {' | '.join(DETAIL_LEVELS)}.", _details),
    Option(FEEDS, "alarms", [], DURATION_LIST,
           'Reminders before each event\'s start, as durations in whole seconds. "0s" is a reminder at the start.',
           _alarms, example=["15m", "1h"]),
    Option(FEEDS, "gzip", False, BOOLEAN, "Serve the feed gzip-compressed to clients that accept it.", example=True),
)


def options_of(section: str) -> dict[str, Option]:
    """Return the options of one section by key. For ``feeds`` these are the keys of each feed."""
    return {option.key: option for option in SCHEMA if option.section == section}
