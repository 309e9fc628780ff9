"""HTTP validators and content negotiation for the feed server, following RFC 9110.

- ``not_modified`` evaluates ``If-None-Match`` and ``If-Modified-Since`` for a
  GET or HEAD. When If-None-Match is present it decides alone, using the
  weak comparison that RFC 9110 requires for it. If-Modified-Since applies
  only without If-None-Match, and a date that does not parse or lies in the
  future is ignored.
- ``accepts_gzip`` reads ``Accept-Encoding`` with its q-values.
"""

from __future__ import annotations

import hashlib
import re
from datetime import UTC
from email.utils import formatdate, parsedate_to_datetime

ETAG_HEX_CHARS = 32
# One list element of If-None-Match: an entity-tag, optionally weak, or "*". Commas may appear inside the quotes.
_ENTITY_TAG = re.compile(r'[\s,]*(?:(W/)?"([^"]*)"|(\*))\s*(?:,|$)')
_QVALUE = re.compile(r"0(?:\.\d{0,3})?|1(?:\.0{0,3})?")
GZIP_CODINGS = ("gzip", "x-gzip")


def strong_etag(data: bytes, suffix: str = "") -> str:
    """Return a strong entity-tag of ``data``, quoted, with ``suffix`` inside the quotes."""
    return f'"{hashlib.sha256(data).hexdigest()[:ETAG_HEX_CHARS]}{suffix}"'


def http_date(seconds: float) -> str:
    """Format Unix ``seconds`` as an IMF-fixdate such as ``Sun, 06 Nov 1994 08:49:37 GMT``."""
    return formatdate(seconds, usegmt=True)


def not_modified(if_none_match: str | None, if_modified_since: str | None, etag: str, last_modified: float,
                 now: float) -> bool:
    """Decide whether a GET or HEAD gets 304 Not Modified.

    ``etag`` and ``last_modified`` (Unix seconds) describe the representation
    that a 200 response would carry, and ``now`` is the server's time.
    """
    if if_none_match is not None:
        return etag_matches(if_none_match, etag)
    if not if_modified_since:
        return False

    since = parse_http_date(if_modified_since)
    if since is None or since > now:
        return False
    # HTTP dates have one-second resolution, so the fraction of the file time is dropped.
    return int(last_modified) <= since


def etag_matches(if_none_match: str, etag: str) -> bool:
    """Apply the weak comparison of ``If-None-Match``: W/ prefixes are ignored, ``*`` matches any tag."""
    opaque = etag.removeprefix("W/")
    position = 0
    while position < len(if_none_match):
        match = _ENTITY_TAG.match(if_none_match, position)
        if match is None or match.end() == position:
            # A malformed list matches nothing, so the full response is sent.
            return False
        if match.group(3) == "*" or f'"{match.group(2)}"' == opaque:
            return True
        position = match.end()
    return False


def parse_http_date(text: str) -> float | None:
    """Parse an HTTP date into Unix seconds, or return None when it does not parse.

    A date without a zone (the asctime format) is taken as UTC, like every HTTP date.
    """
    try:
        moment = parsedate_to_datetime(text)
    except (TypeError, ValueError, IndexError, OverflowError):
        return None
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)
    return moment.timestamp()


def accepts_gzip(accept_encoding: str | None) -> bool:
    """Return whether ``Accept-Encoding`` allows a gzip response.

    gzip is allowed when ``gzip`` or ``x-gzip``, or else ``*``, has a q-value
    above 0 that is not below an explicit ``identity`` q-value. Without the
    header the response is not compressed. RFC 9110 would allow any coding
    then, but such a client has not declared that it can decode one.
    """
    if not accept_encoding:
        return False

    weights = _coding_weights(accept_encoding)
    gzip_weight = max((weights[coding] for coding in GZIP_CODINGS if coding in weights), default=None)
    if gzip_weight is None:
        gzip_weight = weights.get("*", 0.0)
    return gzip_weight > 0 and gzip_weight >= weights.get("identity", 0.0)


def _coding_weights(accept_encoding: str) -> dict[str, float]:
    """Map each content coding of ``Accept-Encoding`` to its q-value. An invalid q-value counts as 0."""
    weights: dict[str, float] = {}
    for item in accept_encoding.split(","):
        coding, *parameters = (part.strip() for part in item.split(";"))
        if coding:
            weights[coding.lower()] = _weight(parameters)
    return weights


def _weight(parameters: list[str]) -> float:
    for parameter in parameters:
        name, _, value = parameter.partition("=")
        if name.strip().lower() == "q":
            value = value.strip()
            return float(value) if _QVALUE.fullmatch(value) else 0.0
    return 1.0
