"""The feed server over real HTTP: a waitress server on 127.0.0.1 serving feeds rendered from the sandbox."""

from __future__ import annotations

import gzip
import hashlib
import logging
import os
import signal
import socket
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from email.utils import formatdate
from pathlib import Path
from typing import Any

import pytest
import requests
from freezegun import freeze_time
from prometheus_client.parser import text_string_to_metric_families

from calsync.config import Config, load_config
from calsync.engine import SyncEngine, SyncStats
from calsync.errors import ConfigError
from calsync.feeds import feed_path, publish
from calsync.links import feed_url
from calsync.metrics import Metrics
from calsync.sandbox import Sandbox
from calsync.server import (
    FeedApp,
    check_serving,
    public_feed_warnings,
    warn_public_feeds,
)
from calsync.status import ServiceStatus
from calsync.wsgi import make_server, server_url, start_server_thread, stop_server
from tests.conftest import SANDBOX_ANCHOR
from tests.helpers import parse_both, threads_end

SYNC_TIME = "2026-01-15T08:00:00Z"
# Characters that must be percent-encoded in a query string, so that the tests catch a token passed raw.
TOKEN = "feed+token/&=1"
COMPRESSED_TOKEN = "compressed-token"
ADMIN_TOKEN = "admin-secret"
# The server tests never contact the Cashfin API, so its base URL only has to stay on loopback.
UNUSED_API_URL = "http://127.0.0.1:9"
INTERVAL = timedelta(minutes=15)

FEEDS = f"""
[[feeds]]
name = "bookings"
token = "{TOKEN}"

[[feeds]]
name = "public"
public = true
details = "busy"

[[feeds]]
name = "compressed"
token = "{COMPRESSED_TOKEN}"
gzip = true
"""


def write_config(directory: Path, base_url: str, feeds: str = FEEDS, server: str = "") -> Path:
    path = directory / "calsync.toml"
    path.write_text(
        f"""
[cashfin]
base_url = "{base_url}"
client_secret = "sandbox-secret"

[sync]
interval = "15m"
state_dir = "{(directory / 'state').as_posix()}"

[calendar]
uid_domain = "test.calsync.invalid"

[server]
{server}
{feeds}
""",
        encoding="utf-8",
    )
    return path


@dataclass
class SyncedFeeds:
    """Feeds rendered by one real sync against the sandbox, and the state directory it wrote."""

    data: dict[str, bytes]
    stats: SyncStats
    state_dir: Path


@pytest.fixture(scope="module")
def synced(tmp_path_factory: pytest.TempPathFactory) -> SyncedFeeds:
    directory = tmp_path_factory.mktemp("synced")
    with Sandbox(secret="sandbox-secret", anchor=SANDBOX_ANCHOR) as sandbox:
        config = load_config(str(write_config(directory, sandbox.base_url)), env={})
        with freeze_time(SYNC_TIME):
            result = SyncEngine(config).run()

    data = {feed.name: feed.data for feed in result.feeds}
    return SyncedFeeds(data=data, stats=result.stats, state_dir=config.sync.state_dir)


@pytest.fixture
def config(tmp_path: Path, synced: SyncedFeeds) -> Config:
    """A config with an admin token, whose state directory contains the synced feed files."""
    loaded = load_config(str(write_config(tmp_path, UNUSED_API_URL, server=f'admin_token = "{ADMIN_TOKEN}"')), env={})
    for name, data in synced.data.items():
        publish(feed_path(loaded.sync.state_dir, name), data)
    return loaded


@pytest.fixture
def serve() -> Iterator[Callable[[FeedApp], str]]:
    """Start a real waitress server for an app on a free loopback port and return its base URL."""
    servers = []

    def start(app: FeedApp) -> str:
        server = make_server(app, "127.0.0.1", 0, threads=4)
        servers.append(server)
        start_server_thread(server)
        return server_url(server)

    yield start
    for server in servers:
        assert stop_server(server)


@pytest.fixture
def http() -> Iterator[requests.Session]:
    with requests.Session() as session:
        session.trust_env = False
        yield session


@pytest.fixture
def base_url(config: Config, serve: Callable[[FeedApp], str]) -> str:
    return serve(FeedApp(config))


def get_feed(http: requests.Session, base_url: str, name: str = "bookings", token: str | None = TOKEN,
             method: str = "GET", **kwargs: Any) -> requests.Response:
    params = {} if token is None else {"token": token}
    return http.request(method, f"{base_url}/feeds/{name}.ics", params=params, **kwargs)


def without_date(response: requests.Response) -> dict[str, str]:
    return {name: value for name, value in response.headers.items() if name.lower() != "date"}


def etag_of(data: bytes, suffix: str = "") -> str:
    return f'"{hashlib.sha256(data).hexdigest()[:32]}{suffix}"'


def records(caplog: pytest.LogCaptureFixture, logger: str, level: int = logging.NOTSET) -> list[logging.LogRecord]:
    """Return the captured records of ``logger`` at ``level`` or above, by default at any level."""
    return [record for record in caplog.records if record.name == logger and record.levelno >= level]


def messages(caplog: pytest.LogCaptureFixture, logger: str, level: int = logging.NOTSET) -> list[str]:
    return [record.getMessage() for record in records(caplog, logger, level)]


# Serving a feed.


def test_feed_body_is_published_bytes(http, base_url, synced, config) -> None:
    response = get_feed(http, base_url)

    assert response.status_code == 200
    assert response.content == feed_path(config.sync.state_dir, "bookings").read_bytes()
    assert response.content == synced.data["bookings"]
    assert len(parse_both(response.content).walk("VEVENT")) == synced.stats.events["bookings"]


@pytest.mark.parametrize("accept", [None, "text/html", "application/json", "*/*"])
def test_feed_content_type_ignores_accept(http, base_url, accept) -> None:
    response = get_feed(http, base_url, headers={"Accept": accept})

    assert response.status_code == 200
    assert response.headers["Content-Type"] == "text/calendar; charset=utf-8"


def test_feed_headers(http, base_url, synced, config) -> None:
    path = feed_path(config.sync.state_dir, "bookings")

    response = get_feed(http, base_url)

    assert response.headers["ETag"] == etag_of(synced.data["bookings"])
    assert response.headers["Last-Modified"] == formatdate(path.stat().st_mtime, usegmt=True)
    assert response.headers["Cache-Control"] == "private, max-age=900"
    assert response.headers["Content-Disposition"] == 'inline; filename="bookings.ics"'
    assert response.headers["Content-Length"] == str(len(synced.data["bookings"]))
    assert response.headers["X-Content-Type-Options"] == "nosniff"
    assert response.headers["Server"] == "calsync"
    assert "Vary" not in response.headers
    assert "Content-Encoding" not in response.headers


def test_feed_last_modified_never_in_future(http, base_url, config) -> None:
    path = feed_path(config.sync.state_dir, "bookings")
    future = datetime.now(UTC).timestamp() + 86400
    os.utime(path, (future, future))

    response = get_feed(http, base_url)

    last_modified = datetime.strptime(response.headers["Last-Modified"], "%a, %d %b %Y %H:%M:%S GMT")
    date = datetime.strptime(response.headers["Date"], "%a, %d %b %Y %H:%M:%S GMT")
    assert last_modified <= date


def test_head_matches_get_without_body(http, base_url) -> None:
    full = get_feed(http, base_url)
    head = get_feed(http, base_url, method="HEAD")

    assert head.status_code == 200
    assert head.content == b""
    assert without_date(head) == without_date(full)


def test_feed_url_encodes_token(http, base_url, config) -> None:
    url = feed_url(base_url, config.feed("bookings"))

    assert TOKEN not in url
    assert http.get(url).status_code == 200


# Conditional requests.


def test_if_none_match_gives_304(http, base_url) -> None:
    first = get_feed(http, base_url)

    response = get_feed(http, base_url, headers={"If-None-Match": first.headers["ETag"]})

    assert response.status_code == 304
    assert response.content == b""
    for name in ("ETag", "Last-Modified", "Cache-Control"):
        assert response.headers[name] == first.headers[name]


@pytest.mark.parametrize("template", ["W/{etag}", '"other", {etag}', "*", '"a,b",{etag}'])
def test_if_none_match_weak_and_lists(http, base_url, template) -> None:
    etag = get_feed(http, base_url).headers["ETag"]

    response = get_feed(http, base_url, headers={"If-None-Match": template.format(etag=etag)})

    assert response.status_code == 304


@pytest.mark.parametrize("header", ['"other"', "garbage", 'W/"other", "another"'])
def test_if_none_match_other_tag_gives_200(http, base_url, header) -> None:
    response = get_feed(http, base_url, headers={"If-None-Match": header})

    assert response.status_code == 200
    assert response.content


def test_if_modified_since_same_date_gives_304(http, base_url) -> None:
    first = get_feed(http, base_url)

    response = get_feed(http, base_url, headers={"If-Modified-Since": first.headers["Last-Modified"]})

    assert response.status_code == 304
    assert response.headers["ETag"] == first.headers["ETag"]
    assert response.headers["Cache-Control"] == first.headers["Cache-Control"]


def test_if_modified_since_earlier_date_gives_200(http, base_url, config) -> None:
    mtime = feed_path(config.sync.state_dir, "bookings").stat().st_mtime

    response = get_feed(http, base_url, headers={"If-Modified-Since": formatdate(mtime - 60, usegmt=True)})

    assert response.status_code == 200


def test_if_modified_since_asctime_format(http, base_url, config) -> None:
    mtime = feed_path(config.sync.state_dir, "bookings").stat().st_mtime
    asctime = datetime.fromtimestamp(mtime, UTC).strftime("%a %b %d %H:%M:%S %Y")

    response = get_feed(http, base_url, headers={"If-Modified-Since": asctime})

    assert response.status_code == 304


@pytest.mark.parametrize("header", ["yesterday", "Mon, 99 Foo 2026 25:61:00 GMT", ""])
def test_if_modified_since_unparseable_ignored(http, base_url, header) -> None:
    response = get_feed(http, base_url, headers={"If-Modified-Since": header})

    assert response.status_code == 200


def test_if_modified_since_future_ignored(http, base_url) -> None:
    tomorrow = formatdate(datetime.now(UTC).timestamp() + 86400, usegmt=True)

    response = get_feed(http, base_url, headers={"If-Modified-Since": tomorrow})

    assert response.status_code == 200


def test_if_none_match_wins_over_date(http, base_url) -> None:
    first = get_feed(http, base_url)
    current_date = first.headers["Last-Modified"]
    old_date = "Sun, 06 Nov 1994 08:49:37 GMT"

    changed = get_feed(http, base_url, headers={"If-None-Match": '"other"', "If-Modified-Since": current_date})
    unchanged = get_feed(
        http, base_url, headers={"If-None-Match": first.headers["ETag"], "If-Modified-Since": old_date}
    )

    assert changed.status_code == 200
    assert unchanged.status_code == 304


# Tokens.


def test_not_found_responses_identical(http, base_url) -> None:
    responses = {
        "wrong token": get_feed(http, base_url, token="wrong"),
        "missing token": get_feed(http, base_url, token=None),
        "empty token": get_feed(http, base_url, token=""),
        "other feed's token": get_feed(http, base_url, token=COMPRESSED_TOKEN),
        "unknown feed": get_feed(http, base_url, name="unknown"),
        "unknown feed without token": get_feed(http, base_url, name="unknown", token=None),
    }

    expected = responses["unknown feed"]
    for case, response in responses.items():
        assert response.status_code == 404, case
        assert response.content == expected.content, case
        assert without_date(response) == without_date(expected), case


def test_unpublished_feed_gives_same_404(http, base_url, config) -> None:
    unknown = get_feed(http, base_url, name="unknown")
    feed_path(config.sync.state_dir, "bookings").unlink()
    server_without_file = FeedApp(config)

    response = server_without_file.handle("GET", "/feeds/bookings.ics", {"QUERY_STRING": f"token={TOKEN}"})

    assert response.status.value == 404
    assert response.body == unknown.content


def test_public_feed_needs_no_token(http, base_url, synced) -> None:
    without = get_feed(http, base_url, name="public", token=None)
    with_any = get_feed(http, base_url, name="public", token="anything")

    assert without.status_code == 200
    assert without.content == synced.data["public"]
    assert without.headers["Cache-Control"] == "public, max-age=900"
    assert with_any.status_code == 200


def test_feed_without_token_never_served(tmp_path, synced, serve, http) -> None:
    feeds = '[[feeds]]\nname = "bookings"\n'
    config = load_config(str(write_config(tmp_path, UNUSED_API_URL, feeds=feeds)), env={})
    publish(feed_path(config.sync.state_dir, "bookings"), synced.data["bookings"])
    url = serve(FeedApp(config))

    assert get_feed(http, url, token=None).status_code == 404
    assert get_feed(http, url, token="").status_code == 404


def test_check_serving_rejects_feed_without_token(tmp_path) -> None:
    feeds = '[[feeds]]\nname = "team"\n'
    path = write_config(tmp_path, UNUSED_API_URL, feeds=feeds)
    config = load_config(str(path), env={})

    with pytest.raises(ConfigError) as caught:
        check_serving(config)

    assert caught.value.key == "feeds.team.token"
    assert caught.value.source == str(path.absolute())
    message = str(caught.value)
    assert "feed 'team' has no token and is not public" in message
    assert "token_file" in message
    assert "public = true" in message


def test_check_serving_accepts_tokens_and_public(config) -> None:
    check_serving(config)


def test_public_feeds_warned(config, caplog) -> None:
    caplog.set_level(logging.WARNING, logger="calsync.server")

    warnings = public_feed_warnings(config)
    warn_public_feeds(config)

    assert len(warnings) == 1
    assert "'public'" in warnings[0]
    assert messages(caplog, "calsync.server", logging.WARNING) == warnings


def test_token_never_logged(http, base_url, caplog) -> None:
    caplog.set_level(logging.INFO, logger="calsync.server")

    get_feed(http, base_url)
    get_feed(http, base_url, token="wrong-guess")
    get_feed(http, base_url, name="compressed", token=COMPRESSED_TOKEN)
    http.post(f"{base_url}/sync", headers={"Authorization": f"Bearer {ADMIN_TOKEN}"})

    lines = messages(caplog, "calsync.server")
    assert len(lines) >= 4
    for secret in (TOKEN, "wrong-guess", COMPRESSED_TOKEN, ADMIN_TOKEN, "token="):
        assert all(secret not in line for line in lines), secret


def test_access_log_line(http, base_url, caplog, synced) -> None:
    caplog.set_level(logging.INFO, logger="calsync.server")

    get_feed(http, base_url)
    get_feed(http, base_url, method="HEAD")

    lines = messages(caplog, "calsync.server")
    assert f"127.0.0.1 GET /feeds/bookings.ics 200 {len(synced.data['bookings'])}" in lines
    assert "127.0.0.1 HEAD /feeds/bookings.ics 200 0" in lines


def test_access_log_escapes_control_characters(config, caplog) -> None:
    caplog.set_level(logging.INFO, logger="calsync.server")
    app = FeedApp(config)

    app({"REQUEST_METHOD": "GET", "PATH_INFO": "/x\r\nforged line", "REMOTE_ADDR": "127.0.0.1"}, lambda *_: None)

    lines = messages(caplog, "calsync.server")
    assert lines == ["127.0.0.1 GET /x%0D%0Aforged%20line 404 10"]


# gzip.


def raw_feed(http: requests.Session, base_url: str, accept_encoding: str | None, **kwargs: Any) -> requests.Response:
    """Request the compressed feed and keep the body exactly as it arrived, without decoding it."""
    headers = {"Accept-Encoding": accept_encoding, **kwargs.pop("headers", {})}
    response = get_feed(http, base_url, name="compressed", token=COMPRESSED_TOKEN, headers=headers, stream=True)
    response.raw_bytes = response.raw.read(decode_content=False)
    response.close()
    return response


@pytest.mark.parametrize("accept_encoding", ["gzip", "gzip, deflate, br", "br;q=1.0, gzip;q=0.5", "*", "x-gzip"])
def test_gzip_when_accepted(http, base_url, synced, accept_encoding) -> None:
    response = raw_feed(http, base_url, accept_encoding)

    assert response.status_code == 200
    assert response.headers["Content-Encoding"] == "gzip"
    assert response.headers["Vary"] == "Accept-Encoding"
    assert response.headers["Content-Type"] == "text/calendar; charset=utf-8"
    assert response.headers["ETag"] == etag_of(synced.data["compressed"], "-gzip")
    assert response.headers["Content-Length"] == str(len(response.raw_bytes))
    assert gzip.decompress(response.raw_bytes) == synced.data["compressed"]


@pytest.mark.parametrize(
    "accept_encoding", [None, "", "gzip;q=0", "identity", "br", "*;q=0", "gzip;q=0.5, identity;q=1", "gzip;q=abc"]
)
def test_gzip_not_accepted_gives_plain(http, base_url, synced, accept_encoding) -> None:
    response = raw_feed(http, base_url, accept_encoding)

    assert response.status_code == 200
    assert "Content-Encoding" not in response.headers
    assert response.headers["Vary"] == "Accept-Encoding"
    assert response.headers["ETag"] == etag_of(synced.data["compressed"])
    assert response.raw_bytes == synced.data["compressed"]


def test_gzip_bytes_deterministic(http, base_url, synced) -> None:
    first = raw_feed(http, base_url, "gzip")
    second = raw_feed(http, base_url, "gzip")

    assert first.raw_bytes == second.raw_bytes
    assert first.raw_bytes == gzip.compress(synced.data["compressed"], mtime=0)


def test_gzip_off_by_default(http, base_url) -> None:
    response = get_feed(http, base_url, headers={"Accept-Encoding": "gzip"})

    assert "Content-Encoding" not in response.headers
    assert "Vary" not in response.headers


def test_gzip_conditional_per_representation(http, base_url) -> None:
    gzip_etag = raw_feed(http, base_url, "gzip").headers["ETag"]
    plain_etag = raw_feed(http, base_url, "identity").headers["ETag"]

    gzip_again = raw_feed(http, base_url, "gzip", headers={"If-None-Match": gzip_etag})
    plain_tag_for_gzip = raw_feed(http, base_url, "gzip", headers={"If-None-Match": plain_etag})

    assert gzip_etag != plain_etag
    assert gzip_again.status_code == 304
    assert gzip_again.headers["ETag"] == gzip_etag
    assert gzip_again.headers["Vary"] == "Accept-Encoding"
    assert plain_tag_for_gzip.status_code == 200


# Files changing on disk.


def test_replaced_file_served_without_restart(http, base_url, config, synced) -> None:
    first = get_feed(http, base_url)
    replacement = synced.data["public"]

    publish(feed_path(config.sync.state_dir, "bookings"), replacement)
    response = get_feed(http, base_url)

    assert first.content == synced.data["bookings"]
    assert response.content == replacement
    assert response.headers["ETag"] == etag_of(replacement)
    assert get_feed(http, base_url, headers={"If-None-Match": first.headers["ETag"]}).status_code == 200


def test_feed_over_1_mib_served_whole(http, base_url, config, synced) -> None:
    # Above 1 MiB the body goes through waitress's file wrapper instead of a list.
    large = synced.data["bookings"] * (2 * 1024 * 1024 // len(synced.data["bookings"]) + 1)
    publish(feed_path(config.sync.state_dir, "bookings"), large)

    response = get_feed(http, base_url)
    head = get_feed(http, base_url, method="HEAD")
    conditional = get_feed(http, base_url, headers={"If-None-Match": response.headers["ETag"]})

    assert response.content == large
    assert response.headers["Content-Length"] == str(len(large))
    assert head.content == b""
    assert head.headers["Content-Length"] == str(len(large))
    assert conditional.status_code == 304
    assert conditional.content == b""


def test_deleted_file_keeps_serving(http, base_url, config, synced) -> None:
    first = get_feed(http, base_url)
    feed_path(config.sync.state_dir, "bookings").unlink()

    response = get_feed(http, base_url)

    assert response.status_code == 200
    assert response.content == synced.data["bookings"]
    assert response.headers["ETag"] == first.headers["ETag"]


def test_unreadable_file_keeps_serving(http, base_url, config, synced, caplog) -> None:
    caplog.set_level(logging.ERROR, logger="calsync.feed_cache")
    get_feed(http, base_url)
    path = feed_path(config.sync.state_dir, "bookings")
    path.unlink()
    # A directory in the file's place cannot be read, even by root.
    path.mkdir()

    responses = [get_feed(http, base_url) for _ in range(3)]

    assert [response.status_code for response in responses] == [200, 200, 200]
    assert all(response.content == synced.data["bookings"] for response in responses)
    errors = records(caplog, "calsync.feed_cache", logging.ERROR)
    assert len(errors) == 1
    assert "serving the copy loaded before" in errors[0].getMessage()

    path.rmdir()
    publish(path, synced.data["public"])
    assert get_feed(http, base_url).content == synced.data["public"]


def test_concurrent_requests_during_replacement(http, base_url, config, synced) -> None:
    versions = {etag_of(data): data for data in (synced.data["bookings"], synced.data["public"])}
    path = feed_path(config.sync.state_dir, "bookings")
    mismatches: list[str] = []

    def fetch_many() -> None:
        with requests.Session() as session:
            session.trust_env = False
            for _ in range(15):
                response = get_feed(session, base_url)
                if response.status_code != 200 or versions.get(response.headers["ETag"]) != response.content:
                    mismatches.append(f"{response.status_code} {response.headers.get('ETag')}")

    readers = [threading.Thread(target=fetch_many) for _ in range(6)]
    for reader in readers:
        reader.start()
    for data in [synced.data["public"], synced.data["bookings"]] * 5:
        publish(path, data)
    for reader in readers:
        reader.join()

    assert mismatches == []


# Operator endpoints.


def test_healthz(http, base_url) -> None:
    response = http.get(f"{base_url}/healthz")

    assert response.status_code == 200
    assert response.text == "ok\n"
    assert response.headers["Cache-Control"] == "no-store"


def test_favicon_is_empty(http, base_url) -> None:
    response = http.get(f"{base_url}/favicon.ico")
    post = http.post(f"{base_url}/favicon.ico")

    assert response.status_code == 204
    assert response.content == b""
    assert "Content-Length" not in response.headers
    assert response.headers["Cache-Control"] == "public, max-age=86400"
    assert post.status_code == 405


def test_readyz_without_status_needs_every_feed(http, config, serve) -> None:
    url = serve(FeedApp(config))
    ready = http.get(f"{url}/readyz")
    feed_path(config.sync.state_dir, "compressed").unlink()
    not_ready = http.get(f"{serve(FeedApp(config))}/readyz")

    assert ready.status_code == 200
    assert not_ready.status_code == 503
    assert "compressed" in not_ready.text


def test_readyz_before_first_success(http, config, serve) -> None:
    url = serve(FeedApp(config, status=ServiceStatus()))

    response = http.get(f"{url}/readyz")

    assert response.status_code == 503
    assert response.text == "no successful sync yet\n"


def test_readyz_after_success(http, config, serve) -> None:
    status = ServiceStatus()
    url = serve(FeedApp(config, status=status))

    status.record_success(datetime.now(UTC))
    response = http.get(f"{url}/readyz")

    assert response.status_code == 200
    assert response.text.startswith("last successful sync at ")


def test_readyz_stale_success(http, config, serve) -> None:
    status = ServiceStatus(last_success=datetime.now(UTC) - 4 * INTERVAL)
    url = serve(FeedApp(config, status=status))

    response = http.get(f"{url}/readyz")

    assert response.status_code == 503
    assert "is older than 45m" in response.text


def test_readyz_hides_sync_error(http, config, serve) -> None:
    status = ServiceStatus()
    status.record_failure(datetime.now(UTC), "request to http://internal.example/api failed")
    url = serve(FeedApp(config, status=status))

    response = http.get(f"{url}/readyz")

    assert response.status_code == 503
    assert "internal.example" not in response.text


def test_metrics_endpoint(http, config, serve, synced) -> None:
    metrics = Metrics()
    metrics.observe_sync_success(synced.stats, {"scheduled": 3}, datetime.now(UTC))
    url = serve(FeedApp(config, metrics=metrics))

    get_feed(http, url)
    get_feed(http, url, headers={"If-None-Match": etag_of(synced.data["bookings"])})
    get_feed(http, url, token="wrong")
    http.get(f"{url}/healthz")
    response = http.get(f"{url}/metrics")

    assert response.status_code == 200
    assert response.headers["Content-Type"].startswith("text/plain; version=")
    values = {
        (sample.name, tuple(sorted(sample.labels.items()))): sample.value
        for family in text_string_to_metric_families(response.text)
        for sample in family.samples
    }
    assert values[("calsync_feed_requests_total", (("code", "200"),))] == 1
    assert values[("calsync_feed_requests_total", (("code", "304"),))] == 1
    assert values[("calsync_feed_requests_total", (("code", "404"),))] == 1
    assert values[("calsync_sync_runs_total", (("outcome", "success"),))] == 1
    assert values[("calsync_bookings", (("status", "scheduled"),))] == 3
    assert values[("calsync_feed_events", (("feed", "bookings"),))] == synced.stats.events["bookings"]
    assert values[("calsync_api_requests_total", (("endpoint", "list"), ("status", "200")))] == 3
    assert values[("calsync_api_requests_total", (("endpoint", "details"), ("status", "200")))] == 300


def test_metrics_absent_without_metrics(http, base_url) -> None:
    assert http.get(f"{base_url}/metrics").status_code == 404


# POST /sync.


class SyncRequests:
    """A request_sync callback that records its calls and returns a set answer."""

    def __init__(self, answer: bool = True) -> None:
        self.answer = answer
        self.calls = 0

    def __call__(self) -> bool:
        self.calls += 1
        return self.answer


def test_sync_request_queued(http, config, serve) -> None:
    request_sync = SyncRequests()
    url = serve(FeedApp(config, request_sync=request_sync))

    response = http.post(f"{url}/sync", headers={"Authorization": f"Bearer {ADMIN_TOKEN}"})

    assert response.status_code == 202
    assert response.json() == {"queued": True}
    assert request_sync.calls == 1


@pytest.mark.parametrize(
    "authorization", [None, "", "Bearer wrong", "Bearer", f"Basic {ADMIN_TOKEN}", ADMIN_TOKEN, f"Bearer {ADMIN_TOKEN}x"]
)
def test_sync_request_rejected_without_auth(http, config, serve, caplog, authorization) -> None:
    caplog.set_level(logging.WARNING, logger="calsync.server")
    request_sync = SyncRequests()
    url = serve(FeedApp(config, request_sync=request_sync))

    response = http.post(f"{url}/sync", headers={"Authorization": authorization})

    assert response.status_code == 401
    assert response.headers["WWW-Authenticate"] == 'Bearer realm="calsync"'
    assert request_sync.calls == 0
    warnings = messages(caplog, "calsync.server", logging.WARNING)
    assert warnings == ["rejected POST /sync from 127.0.0.1: missing or invalid bearer token"]


def test_sync_scheme_case_insensitive(http, config, serve) -> None:
    request_sync = SyncRequests()
    url = serve(FeedApp(config, request_sync=request_sync))

    response = http.post(f"{url}/sync", headers={"Authorization": f"bearer {ADMIN_TOKEN}"})

    assert response.status_code == 202


def test_sync_request_refused_gives_503(http, config, serve) -> None:
    url = serve(FeedApp(config, request_sync=SyncRequests(answer=False)))

    response = http.post(f"{url}/sync", headers={"Authorization": f"Bearer {ADMIN_TOKEN}"})

    assert response.status_code == 503
    assert response.json()["queued"] is False


def test_sync_absent_without_admin_token(http, tmp_path, serve) -> None:
    config = load_config(str(write_config(tmp_path, UNUSED_API_URL)), env={})
    request_sync = SyncRequests()
    url = serve(FeedApp(config, request_sync=request_sync))

    response = http.post(f"{url}/sync", headers={"Authorization": "Bearer "})

    assert response.status_code == 404
    assert request_sync.calls == 0


def test_sync_absent_without_callback(http, base_url) -> None:
    response = http.post(f"{base_url}/sync", headers={"Authorization": f"Bearer {ADMIN_TOKEN}"})

    assert response.status_code == 404


def test_sync_get_not_allowed(http, config, serve) -> None:
    url = serve(FeedApp(config, request_sync=SyncRequests()))

    response = http.get(f"{url}/sync")

    assert response.status_code == 405
    assert response.headers["Allow"] == "POST"


# Methods, unknown paths and errors.


@pytest.mark.parametrize("method", ["POST", "PUT", "DELETE", "PATCH", "OPTIONS"])
def test_feed_other_methods_405(http, base_url, method) -> None:
    response = get_feed(http, base_url, method=method)

    assert response.status_code == 405
    assert response.headers["Allow"] == "GET, HEAD"


@pytest.mark.parametrize("path", ["/healthz", "/readyz"])
def test_operator_post_405(http, base_url, path) -> None:
    response = http.post(f"{base_url}{path}")

    assert response.status_code == 405
    assert response.headers["Allow"] == "GET, HEAD"


@pytest.mark.parametrize("path", ["/healthz", "/readyz", "/metrics", "/nowhere"])
def test_operator_head_matches_get(http, config, serve, path) -> None:
    url = serve(FeedApp(config, metrics=Metrics()))

    full = http.get(f"{url}{path}")
    head = http.head(f"{url}{path}")

    assert head.status_code == full.status_code
    assert head.content == b""
    assert head.headers["Content-Length"] == str(len(full.content))


# "/" is the status page when an admin token is set, as in this config; tests/test_status_page.py covers it.
@pytest.mark.parametrize("path", ["/feeds/", "/feeds/bookings", "/feeds/../state.sqlite3", "/feeds/.ics"])
def test_unknown_paths_404(http, base_url, path) -> None:
    assert http.get(f"{base_url}{path}").status_code == 404


def test_handler_error_gives_500(http, config, serve, caplog) -> None:
    caplog.set_level(logging.INFO, logger="calsync.server")

    def broken_request_sync() -> bool:
        raise RuntimeError("scheduler exploded")

    url = serve(FeedApp(config, request_sync=broken_request_sync))
    response = http.post(f"{url}/sync", headers={"Authorization": f"Bearer {ADMIN_TOKEN}"})

    assert response.status_code == 500
    assert response.text == "Internal server error\n"
    assert "scheduler exploded" not in response.text
    errors = records(caplog, "calsync.server", logging.ERROR)
    assert len(errors) == 1
    assert errors[0].getMessage() == "request POST /sync failed"
    assert errors[0].exc_info is not None
    assert errors[0].exc_info[0] is RuntimeError


def test_feed_error_counted_as_500(http, config, serve) -> None:
    metrics = Metrics()
    app = FeedApp(config, metrics=metrics)

    def broken_get(name: str) -> None:
        raise OSError("disk on fire")

    app.cache.get = broken_get
    url = serve(app)
    response = get_feed(http, url)

    assert response.status_code == 500
    body, _ = metrics.render()
    assert b'calsync_feed_requests_total{code="500"} 1.0' in body


# ServiceStatus without HTTP.


def test_status_ready_boundaries() -> None:
    finished = datetime(2026, 1, 15, 8, 0, tzinfo=UTC)
    status = ServiceStatus()

    assert status.ready(finished, INTERVAL) == (False, "no successful sync yet")
    status.record_success(finished)
    assert status.ready(finished + 3 * INTERVAL, INTERVAL)[0] is True
    assert status.ready(finished + 3 * INTERVAL + timedelta(seconds=1), INTERVAL)[0] is False


def test_status_records_failure() -> None:
    finished = datetime(2026, 1, 15, 8, 0, tzinfo=UTC)
    status = ServiceStatus(last_success=finished)

    status.record_failure(finished + INTERVAL, "listing incomplete")

    assert status.last_failure == finished + INTERVAL
    assert status.last_error == "listing incomplete"
    assert status.publish_failed is False
    assert status.last_success == finished
    assert status.ready(finished + INTERVAL, INTERVAL)[0] is True


def test_status_not_ready_after_publish_failure() -> None:
    finished = datetime(2026, 1, 15, 8, 0, tzinfo=UTC)
    status = ServiceStatus(last_success=finished)

    status.record_failure(finished + INTERVAL, "No space left on device", publish_failed=True)
    ready, reason = status.ready(finished + INTERVAL, INTERVAL)

    assert ready is False
    assert "could not write a feed file" in reason
    assert "No space left" not in reason

    status.record_success(finished + 2 * INTERVAL)
    assert status.ready(finished + 2 * INTERVAL, INTERVAL)[0] is True


def test_status_not_ready_after_state_failure() -> None:
    finished = datetime(2026, 1, 15, 8, 0, tzinfo=UTC)
    status = ServiceStatus(last_success=finished)

    status.record_failure(finished + INTERVAL, "unable to open database file", state_failed=True)
    ready, reason = status.ready(finished + INTERVAL, INTERVAL)

    assert ready is False
    assert reason == "the last sync could not use the state database; the previous feeds are still served"
    assert status.state_failed is True
    assert status.publish_failed is False

    status.record_failure(finished + 2 * INTERVAL, "listing incomplete")
    assert status.ready(finished + 2 * INTERVAL, INTERVAL)[0] is True


def test_status_from_unreadable_store(tmp_path) -> None:
    (tmp_path / "state.sqlite3").write_bytes(b"not a database " * 100)

    status = ServiceStatus.from_store(tmp_path)

    assert status.last_success is None
    assert status.ready(datetime.now(UTC), INTERVAL) == (False, "no successful sync yet")


def test_status_from_store(synced) -> None:
    status = ServiceStatus.from_store(synced.state_dir)
    synced_at = datetime.fromisoformat(SYNC_TIME)

    assert status.last_success == synced_at
    assert status.ready(synced_at + INTERVAL, INTERVAL)[0] is True
    assert status.ready(synced_at + 4 * INTERVAL, INTERVAL)[0] is False


def test_status_from_missing_store(tmp_path) -> None:
    status = ServiceStatus.from_store(tmp_path / "nothing")

    assert status.last_success is None
    assert not (tmp_path / "nothing").exists()


# Starting and stopping the server.




def test_stop_server_releases_port_and_threads(config) -> None:
    threads_before = set(threading.enumerate())
    server = make_server(FeedApp(config), "127.0.0.1", 0)
    url = server_url(server)
    start_server_thread(server)
    with requests.Session() as session:
        session.trust_env = False
        # A kept-alive connection stays open until the server closes it.
        assert session.get(f"{url}/healthz").status_code == 200

        assert stop_server(server)

    assert threads_end(threads_before)
    with pytest.raises(OSError):
        socket.create_connection(("127.0.0.1", server.effective_port), timeout=2).close()
    assert stop_server(server)


def test_stop_server_never_started(config) -> None:
    server = make_server(FeedApp(config), "127.0.0.1", 0)

    assert stop_server(server)
    with pytest.raises(OSError):
        socket.create_connection(("127.0.0.1", server.effective_port), timeout=2).close()


def test_make_server_port_in_use(config) -> None:
    with socket.create_server(("127.0.0.1", 0)) as taken:
        port = taken.getsockname()[1]

        with pytest.raises(OSError, match=f"cannot listen on 127.0.0.1 port {port}"):
            make_server(FeedApp(config), "127.0.0.1", port)


def test_stop_server_run_on_plain_thread(config) -> None:
    server = make_server(FeedApp(config), "127.0.0.1", 0)
    thread = threading.Thread(target=server.run)
    thread.start()
    with requests.Session() as session:
        session.trust_env = False
        assert session.get(f"{server_url(server)}/healthz").status_code == 200

    assert stop_server(server)
    thread.join(5)
    assert not thread.is_alive()


def test_stop_server_right_after_start(config) -> None:
    server = make_server(FeedApp(config), "127.0.0.1", 0)
    thread = start_server_thread(server)

    assert stop_server(server)
    thread.join(5)
    assert not thread.is_alive()


@pytest.mark.skipif(not hasattr(signal, "SIGUSR1"), reason="needs POSIX signals")
def test_stop_server_from_signal_handler(config) -> None:
    server = make_server(FeedApp(config), "127.0.0.1", 0)
    results: list[bool] = []
    previous = signal.signal(signal.SIGUSR1, lambda *_: results.append(stop_server(server)))
    sender = threading.Timer(0.2, os.kill, args=(os.getpid(), signal.SIGUSR1))
    try:
        sender.start()
        # The loop runs on this thread, so the handler runs on the loop's own thread.
        server.run()
    finally:
        sender.cancel()
        signal.signal(signal.SIGUSR1, previous)

    assert results == [True]
    with pytest.raises(OSError):
        socket.create_connection(("127.0.0.1", server.effective_port), timeout=2).close()
