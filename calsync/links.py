"""Subscription links for a feed: the https URL, webcal://, Google Calendar and Outlook on the web.

Google Calendar and Outlook fetch subscribed feeds from their own servers, so
these links work only with an address those servers can reach, and Google
subscribes to https addresses only.
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass
from urllib.parse import quote, urlsplit

from calsync.config import Config, FeedSettings

GOOGLE_ADD_URL = "https://calendar.google.com/calendar/r?cid={webcal}"
OUTLOOK_PERSONAL_ADD_URL = "https://outlook.live.com/calendar/0/addfromweb?url={url}&name={name}"
OUTLOOK_WORK_ADD_URL = "https://outlook.office.com/calendar/0/addfromweb?url={url}&name={name}"


@dataclass(frozen=True)
class FeedLinks:
    """The ways to subscribe to one feed."""

    feed: str
    title: str
    url: str
    webcal: str
    google: str
    outlook_personal: str
    outlook_work: str


def base_url(config: Config) -> str:
    """Return ``server.public_url``, or the listen address when it is empty."""
    if config.server.public_url:
        return config.server.public_url.rstrip("/")
    return f"http://{config.server.listen}"


def feed_url(base: str, feed: FeedSettings) -> str:
    """Return the URL of a feed under the server address ``base``, with its token unless the feed is public."""
    url = f"{base.rstrip('/')}/feeds/{feed.name}.ics"
    if feed.token and not feed.public:
        url += f"?token={quote(feed.token, safe='')}"
    return url


def feed_links(config: Config, feed: FeedSettings) -> FeedLinks:
    url = feed_url(base_url(config), feed)
    webcal = "webcal://" + url.split("://", 1)[1]
    encoded_url = quote(url, safe="")
    encoded_name = quote(feed.title, safe="")
    return FeedLinks(
        feed=feed.name,
        title=feed.title,
        url=url,
        webcal=webcal,
        google=GOOGLE_ADD_URL.format(webcal=quote(webcal, safe="")),
        outlook_personal=OUTLOOK_PERSONAL_ADD_URL.format(url=encoded_url, name=encoded_name),
        outlook_work=OUTLOOK_WORK_ADD_URL.format(url=encoded_url, name=encoded_name),
    )


def public_url_problems(config: Config) -> list[str]:
    """Return warnings about the address subscribers would use; empty when it looks right."""
    if not config.server.public_url:
        return [
            f"server.public_url is not set, so these links use the listen address {config.server.listen}; "
            "set public_url to the https address that Google and Outlook can reach"
        ]
    parts = urlsplit(config.server.public_url)
    problems = []
    if parts.scheme != "https":
        problems.append(
            f"server.public_url {config.server.public_url} is not https: Google Calendar subscribes to "
            "https addresses only, and tokens travel in the URL"
        )
    reach = _host_reach(parts.hostname or "")
    if reach is not None:
        problems.append(f"server.public_url host {parts.hostname} is {reach}")
    return problems


def _host_reach(host: str) -> str | None:
    """Describe who can reach ``host`` when it is a loopback, private or unspecified address, else None.

    Only IP literals and localhost names are recognized, because looking a
    name up here would tell what this machine resolves, not what Google does.
    """
    if host == "localhost" or host.endswith(".localhost"):
        return "reachable only from this machine"
    try:
        address = ipaddress.ip_address(host)
    except ValueError:
        return None
    if address.is_loopback:
        return "reachable only from this machine"
    if address.is_unspecified:
        return "not an address that anyone can connect to"
    if address.is_private or address.is_link_local:
        return "a private address, reachable only from the local network"
    return None
