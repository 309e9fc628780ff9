"""The status page over real HTTP without a browser: login, sessions, CSRF, headers, and the HTML it serves.

A real waitress server serves a ``FeedApp`` whose state directory was
filled by real syncs against the sandbox. Pages are parsed with the
standard library's html.parser (``tests.html_tree``).
"""

from __future__ import annotations

import base64
import hashlib
import logging
import re
import shutil
from collections import Counter
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
import requests

from calsync.config import Config, load_config
from calsync.engine import SyncEngine
from calsync.errors import CalsyncError
from calsync.feeds import feed_path
from calsync.links import feed_links
from calsync.lock import sync_lock
from calsync.sandbox import Sandbox, format_timestamp
from calsync.sandbox_faults import Fault
from calsync.server import FeedApp
from calsync.service import Service
from calsync.status import ServiceStatus
from calsync.store import StateStore
from calsync.wsgi import make_server, server_url, start_server_thread, stop_server
from tests.helpers import parse_both
from tests.html_tree import Element, parse_html

ADMIN_TOKEN = "status-admin-token"
FEED_TOKEN = "status-feed-token"
SECRET = "sandbox-secret"
MARKUP_TITLE = '<script>window.owned = 1</script><b>Bold</b> & "quoted" <img src=x onerror=alert(1)>'


def write_config(directory: Path, base_url: str, *, admin_token: str = ADMIN_TOKEN, public_url: str = "") -> Path:
    path = directory / "calsync.toml"
    admin = f'admin_token = "{admin_token}"' if admin_token else ""
    public = f'public_url = "{public_url}"' if public_url else ""
    path.write_text(
        f"""
[cashfin]
base_url = "{base_url}"
client_secret = "{SECRET}"
timeout = "5s"

[sync]
interval = "15m"
state_dir = "{(directory / 'state').as_posix()}"

[calendar]
uid_domain = "status.calsync.invalid"

[server]
{admin}
{public}

[[feeds]]
name = "bookings"
title = "Front desk"
token = "{FEED_TOKEN}"

[[feeds]]
name = "busy"
title = "Busy times"
public = true
details = "busy"
""",
        encoding="utf-8",
    )
    return path


def load(directory: Path, base_url: str, **options: str) -> Config:
    return load_config(str(write_config(directory, base_url, **options)), env={})


@pytest.fixture(scope="module")
def api() -> Iterator[Sandbox]:
    """The sandbox around today's date, so that the agenda has events, plus one booking whose title is markup."""
    with Sandbox(secret=SECRET) as sandbox:
        start = (datetime.now(UTC) + timedelta(days=2)).replace(hour=7, minute=0, second=0, microsecond=0)
        sandbox.add({
            "title": MARKUP_TITLE,
            "starttime": format_timestamp(start),
            "endtime": format_timestamp(start + timedelta(hours=1)),
        })
        yield sandbox


@pytest.fixture(scope="module")
def synced_dir(tmp_path_factory: pytest.TempPathFactory, api: Sandbox) -> Path:
    """A directory whose state came from two successful syncs, the second after one booking changed."""
    directory = tmp_path_factory.mktemp("status-synced")
    config = load(directory, api.base_url)
    SyncEngine(config).run()
    first = api.ids()[-1]
    api.update(first, title=api.get(first)["title"] + " (renamed)")
    SyncEngine(config).run()
    return directory


@pytest.fixture
def config(tmp_path: Path, synced_dir: Path, api: Sandbox) -> Config:
    """A config with an admin token and a private copy of the synced state."""
    shutil.copytree(synced_dir / "state", tmp_path / "state")
    return load(tmp_path, api.base_url)


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


class SyncRequests:
    """A request_sync callback that counts its calls and returns a fixed result."""

    def __init__(self, result: bool = True) -> None:
        self.result = result
        self.calls = 0

    def __call__(self) -> bool:
        self.calls += 1
        return self.result


def log_in(http: requests.Session, url: str, token: str = ADMIN_TOKEN) -> requests.Response:
    return http.post(f"{url}/login", data={"token": token}, allow_redirects=False)


def fetch_page(http: requests.Session, url: str, path: str = "/") -> tuple[requests.Response, Element]:
    response = http.get(f"{url}{path}", allow_redirects=False)
    return response, parse_html(response.text)


def form_token(page: Element, action: str = "/sync") -> str:
    form = page.find("form", action=action)
    return form.find("input", name="csrf_token").attrs["value"] or ""


def history_rows(page: Element) -> list[Element]:
    """Return the rows of the history table that stand for runs, leaving out error and warning rows."""
    body = page.find("table", id="history").find("tbody")
    return [row for row in body.find_all("tr") if "detail" not in (row.attrs.get("class") or "")]


def fail_sync(config: Config, api: Sandbox, fault: Fault) -> None:
    """Run one real sync that the fault makes fail, then remove the fault."""
    api.faults.add(fault)
    try:
        with pytest.raises(CalsyncError):
            SyncEngine(config).run()
    finally:
        api.faults.remove(fault)


def messages(caplog: pytest.LogCaptureFixture, logger: str) -> list[str]:
    return [record.getMessage() for record in caplog.records if record.name == logger]


# Enabling and logging in.


@pytest.mark.parametrize("path", ["/", "/login", "/logout"])
def test_pages_absent_without_admin_token(http, tmp_path, synced_dir, api, serve, path) -> None:
    config = load(tmp_path, api.base_url, admin_token="")
    url = serve(FeedApp(config, request_sync=SyncRequests()))

    get = http.get(f"{url}{path}", allow_redirects=False)
    post = http.post(f"{url}{path}", data={"token": ""}, allow_redirects=False)

    assert get.status_code == 404
    assert get.text == "Not found\n"
    assert post.status_code == 404


def test_page_redirects_to_login_without_session(http, config, serve) -> None:
    url = serve(FeedApp(config))

    response = http.get(f"{url}/", allow_redirects=False)

    assert response.status_code == 303
    assert response.headers["Location"] == "/login"


def test_login_form_served(http, config, serve) -> None:
    url = serve(FeedApp(config))

    response, page = fetch_page(http, url, "/login")

    assert response.status_code == 200
    field = page.find("input", name="token")
    assert field.attrs["type"] == "password"
    username = page.find("input", name="username")
    assert username.attrs["autocomplete"] == "username"
    assert "hidden" in username.attrs
    assert page.find("label", for_="token").text() == "Admin token"
    assert page.find("form", action="/login").attrs["method"] == "post"


@pytest.mark.parametrize("token", ["", "wrong", ADMIN_TOKEN + "x", ADMIN_TOKEN.upper()])
def test_login_rejects_wrong_token(http, config, serve, caplog, token) -> None:
    caplog.set_level(logging.INFO, logger="calsync.admin_pages")
    url = serve(FeedApp(config))

    response = log_in(http, url, token)

    assert response.status_code == 403
    assert "Set-Cookie" not in response.headers
    assert "Wrong admin token." in parse_html(response.text).find("p", role="alert").text()
    logged = messages(caplog, "calsync.admin_pages")
    assert logged == ["rejected a status page login from 127.0.0.1: wrong admin token (1 failure(s) in the last 600 s)"]
    assert fetch_page(http, url)[0].status_code == 303


def test_login_failure_never_logs_submitted_value(http, config, serve, caplog) -> None:
    caplog.set_level(logging.DEBUG)
    url = serve(FeedApp(config))

    log_in(http, url, "typed-another-secret")

    assert "typed-another-secret" not in caplog.text


def test_login_sets_session_cookie(http, config, serve, caplog) -> None:
    caplog.set_level(logging.INFO, logger="calsync.admin_pages")
    url = serve(FeedApp(config))

    response = log_in(http, url)

    assert response.status_code == 303
    assert response.headers["Location"] == "/"
    cookie = response.headers["Set-Cookie"]
    attributes = [part.strip() for part in cookie.split(";")]
    assert attributes[0].startswith("calsync_session=")
    assert "HttpOnly" in attributes
    assert "SameSite=Strict" in attributes
    assert "Path=/" in attributes
    assert "Max-Age=43200" in attributes
    assert "Secure" not in attributes
    assert ADMIN_TOKEN not in cookie
    assert "status page login from 127.0.0.1" in messages(caplog, "calsync.admin_pages")


def test_session_cookie_opens_page(http, config, serve) -> None:
    url = serve(FeedApp(config))
    log_in(http, url)

    response, page = fetch_page(http, url)

    assert response.status_code == 200
    assert page.find("h1").text() == "calsync status"


def test_login_page_redirects_when_logged_in(http, config, serve) -> None:
    url = serve(FeedApp(config))
    log_in(http, url)

    response = http.get(f"{url}/login", allow_redirects=False)

    assert response.status_code == 303
    assert response.headers["Location"] == "/"


@pytest.mark.parametrize("host, secure", [("status.example.test", True), ("127.0.0.1", False)])
def test_cookie_secure_for_https_public_host(http, tmp_path, synced_dir, api, serve, host, secure) -> None:
    shutil.copytree(synced_dir / "state", tmp_path / "state")
    config = load(tmp_path, api.base_url, public_url="https://status.example.test")
    url = serve(FeedApp(config))

    response = http.post(f"{url}/login", data={"token": ADMIN_TOKEN}, headers={"Host": host}, allow_redirects=False)

    attributes = [part.strip() for part in response.headers["Set-Cookie"].split(";")]
    assert ("Secure" in attributes) is secure


@pytest.mark.parametrize("cookie", [
    "garbage",
    "1.2.3",
    "99999999999.nonce.signature",
    "",
])
def test_invalid_cookie_gets_login(http, config, serve, cookie) -> None:
    url = serve(FeedApp(config))

    response = http.get(f"{url}/", headers={"Cookie": f"calsync_session={cookie}"}, allow_redirects=False)

    assert response.status_code == 303
    assert response.headers["Location"] == "/login"


def test_cookie_from_other_admin_token_rejected(http, tmp_path, config, api, serve) -> None:
    other = tmp_path / "other"
    other.mkdir()
    other_url = serve(FeedApp(load(other, api.base_url, admin_token="another-admin-token")))
    url = serve(FeedApp(config))
    with requests.Session() as other_http:
        other_http.trust_env = False
        other_http.post(f"{other_url}/login", data={"token": "another-admin-token"}, allow_redirects=False)
        cookie = other_http.cookies["calsync_session"]

    response = http.get(f"{url}/", headers={"Cookie": f"calsync_session={cookie}"}, allow_redirects=False)

    assert response.status_code == 303


def test_login_throttled_after_repeated_failures(http, config, serve, caplog) -> None:
    caplog.set_level(logging.WARNING, logger="calsync.admin_pages")
    url = serve(FeedApp(config))

    statuses = [log_in(http, url, "wrong").status_code for _ in range(10)]
    throttled = log_in(http, url)

    assert statuses == [403] * 10
    assert throttled.status_code == 429
    assert 1 <= int(throttled.headers["Retry-After"]) <= 600
    assert "Set-Cookie" not in throttled.headers
    assert "Too many failed logins" in throttled.text
    assert "throttling status page logins from 127.0.0.1 for up to 600 s after 10 failures" in messages(
        caplog, "calsync.admin_pages"
    )


def test_logout_ends_session(http, config, serve) -> None:
    url = serve(FeedApp(config))
    log_in(http, url)
    cookie = http.cookies["calsync_session"]
    _, page = fetch_page(http, url)

    response = http.post(f"{url}/logout", data={"csrf_token": form_token(page, "/logout")}, allow_redirects=False)

    assert response.status_code == 303
    assert response.headers["Location"] == "/login"
    assert "Max-Age=0" in response.headers["Set-Cookie"]
    reused = http.get(f"{url}/", headers={"Cookie": f"calsync_session={cookie}"}, allow_redirects=False)
    assert reused.status_code == 303


def test_logout_needs_csrf_token(http, config, serve) -> None:
    url = serve(FeedApp(config))
    log_in(http, url)

    response = http.post(f"{url}/logout", data={}, allow_redirects=False)

    assert response.status_code == 403
    assert fetch_page(http, url)[0].status_code == 200


# Sync now.


def test_sync_form_queues_sync(http, config, serve, caplog) -> None:
    caplog.set_level(logging.INFO, logger="calsync.admin_pages")
    request_sync = SyncRequests()
    url = serve(FeedApp(config, request_sync=request_sync))
    log_in(http, url)
    _, page = fetch_page(http, url)

    response = http.post(f"{url}/sync", data={"csrf_token": form_token(page)}, allow_redirects=False)

    assert response.status_code == 303
    assert re.fullmatch(r"/\?sync=queued&at=\d{13}", response.headers["Location"])
    assert request_sync.calls == 1
    assert "sync requested from the status page by 127.0.0.1" in messages(caplog, "calsync.admin_pages")
    _, after = fetch_page(http, url, response.headers["Location"])
    assert "You requested a sync at" in after.find("p", role="status").text()


def test_sync_notice_gone_once_run_recorded(http, config, serve) -> None:
    url = serve(FeedApp(config, request_sync=SyncRequests()))
    log_in(http, url)
    _, page = fetch_page(http, url)
    location = http.post(f"{url}/sync", data={"csrf_token": form_token(page)}, allow_redirects=False).headers["Location"]
    _, pending = fetch_page(http, url, location)

    SyncEngine(config).run()
    _, after_run = fetch_page(http, url, location)

    assert len(pending.find_all("p", role="status")) == 1
    assert after_run.find_all("p", role="status") == []


@pytest.mark.parametrize("query", ["?sync=queued", "?sync=queued&at=soon", "?sync=queued&at=99999999999999999999"])
def test_sync_notice_needs_request_time(http, config, serve, query) -> None:
    url = serve(FeedApp(config, request_sync=SyncRequests()))
    log_in(http, url)

    response, page = fetch_page(http, url, f"/{query}")

    assert response.status_code == 200
    assert page.find_all("p", role="status") == []


@pytest.mark.parametrize("data", [{}, {"csrf_token": ""}, {"csrf_token": "forged"}])
def test_sync_form_rejected_without_csrf_token(http, config, serve, caplog, data) -> None:
    caplog.set_level(logging.WARNING, logger="calsync.admin_pages")
    request_sync = SyncRequests()
    url = serve(FeedApp(config, request_sync=request_sync))
    log_in(http, url)

    response = http.post(f"{url}/sync", data=data, allow_redirects=False)

    assert response.status_code == 403
    assert request_sync.calls == 0
    assert messages(caplog, "calsync.admin_pages") == [
        "rejected POST /sync from 127.0.0.1: missing or invalid CSRF token"
    ]


def test_sync_form_rejects_token_of_other_session(http, config, serve) -> None:
    request_sync = SyncRequests()
    url = serve(FeedApp(config, request_sync=request_sync))
    with requests.Session() as other:
        other.trust_env = False
        log_in(other, url)
        other_token = form_token(fetch_page(other, url)[1])
    log_in(http, url)

    response = http.post(f"{url}/sync", data={"csrf_token": other_token}, allow_redirects=False)

    assert response.status_code == 403
    assert request_sync.calls == 0


def test_sync_form_with_stale_cookie_rejected(http, config, serve) -> None:
    request_sync = SyncRequests()
    url = serve(FeedApp(config, request_sync=request_sync))

    response = http.post(
        f"{url}/sync", data={"csrf_token": "x"}, headers={"Cookie": "calsync_session=1.2.3"}, allow_redirects=False,
    )

    assert response.status_code == 403
    assert "Session expired" in response.text
    assert request_sync.calls == 0


def test_sync_form_refused_while_stopping(http, config, serve) -> None:
    url = serve(FeedApp(config, request_sync=SyncRequests(result=False)))
    log_in(http, url)
    _, page = fetch_page(http, url)

    response = http.post(f"{url}/sync", data={"csrf_token": form_token(page)}, allow_redirects=False)

    assert response.headers["Location"] == "/?sync=refused"


def test_bearer_sync_ignores_session_cookie(http, config, serve) -> None:
    request_sync = SyncRequests()
    url = serve(FeedApp(config, request_sync=request_sync))
    log_in(http, url)

    response = http.post(f"{url}/sync", headers={"Authorization": f"Bearer {ADMIN_TOKEN}"})

    assert response.status_code == 202
    assert response.json() == {"queued": True}
    assert request_sync.calls == 1


def test_no_sync_button_without_callback(http, config, serve) -> None:
    url = serve(FeedApp(config))
    log_in(http, url)

    _, page = fetch_page(http, url)

    assert page.find_all("form", action="/sync") == []


# Headers and escaping.


def test_page_security_headers(http, config, serve) -> None:
    url = serve(FeedApp(config))
    log_in(http, url)

    for path in ("/", "/login"):
        response = http.get(f"{url}{path}", allow_redirects=False) if path == "/" else requests.get(f"{url}{path}")
        policy = response.headers["Content-Security-Policy"]
        assert response.headers["Content-Type"] == "text/html; charset=utf-8"
        assert response.headers["Cache-Control"] == "no-store"
        assert response.headers["X-Frame-Options"] == "DENY"
        assert response.headers["Referrer-Policy"] == "no-referrer"
        assert "unsafe-inline" not in policy
        assert "default-src 'none'" in policy
        assert "frame-ancestors 'none'" in policy


def test_csp_hashes_match_inline_code(http, config, serve) -> None:
    url = serve(FeedApp(config))
    log_in(http, url)

    response, page = fetch_page(http, url)

    policy = response.headers["Content-Security-Policy"]
    inline = [*page.find_all("style"), *page.find_all("script")]
    assert len(inline) == 2
    for element in inline:
        digest = base64.b64encode(hashlib.sha256(element.text().encode("utf-8")).digest()).decode("ascii")
        assert f"'sha256-{digest}'" in policy


def test_markup_title_escaped(http, config, serve) -> None:
    url = serve(FeedApp(config))
    log_in(http, url)

    response, page = fetch_page(http, url)

    assert "<script>window.owned" not in response.text
    assert "<img src=x" not in response.text
    assert len(page.find_all("script")) == 1
    assert page.find_all("b") == []
    assert page.find_all("img") == []
    summaries = [span.text() for span in page.find_all("span", class_="summary")]
    assert MARKUP_TITLE in summaries


# Content.


def test_feed_cards(http, config, serve) -> None:
    url = serve(FeedApp(config))
    log_in(http, url)

    _, page = fetch_page(http, url)

    for feed in config.feeds:
        card = page.find("article", aria_labelledby=f"feed-{feed.name}")
        data = feed_path(config.sync.state_dir, feed.name).read_bytes()
        terms = dict(zip([dt.text() for dt in card.find_all("dt")], [dd.text() for dd in card.find_all("dd")]))
        assert card.find("h3").text() == f"{feed.title} ({feed.name})"
        assert terms["Events"] == str(len(parse_both(data).walk("VEVENT")))
        assert terms["Size"].endswith("KiB")
        assert re.match(r"\d{4}-\d\d-\d\d \d\d:\d\d EAT \(", terms["Last published"])
        links = feed_links(config, feed)
        assert card.find("input", type="text").attrs["value"] == links.url
        hrefs = [anchor.attrs["href"] for anchor in card.find_all("a")]
        assert hrefs == [links.google, links.outlook_personal, links.outlook_work, links.webcal]
        assert "hidden" in card.find("button", type="button").attrs


def test_feed_status_counts_match_file(http, config, serve) -> None:
    url = serve(FeedApp(config))
    log_in(http, url)
    data = feed_path(config.sync.state_dir, "bookings").read_bytes()
    # calsync writes the booking type first and the status last into CATEGORIES.
    expected = Counter(str(event["CATEGORIES"].cats[-1]) for event in parse_both(data).walk("VEVENT"))

    _, page = fetch_page(http, url)

    terms = card_terms(page, "bookings")
    counts = dict(part.rsplit(" ", 1) for part in terms["By status"].split(", "))
    assert set(counts) <= {"scheduled", "completed", "cancelled", "no-show"}
    assert {status: int(count) for status, count in counts.items()} == dict(expected)
    assert sum(int(count) for count in counts.values()) == int(terms["Events"])


def card_terms(page: Element, feed: str) -> dict[str, str]:
    card = page.find("article", aria_labelledby=f"feed-{feed}")
    return dict(zip([dt.text() for dt in card.find_all("dt")], [dd.text() for dd in card.find_all("dd")]))


def statuses_in_file(data: bytes) -> Counter[str]:
    """Count a busy feed's events by iCalendar STATUS with a real parser."""
    return Counter(str(event["STATUS"]) for event in parse_both(data).walk("VEVENT"))


def test_status_counts_follow_file_after_failed_publish(http, tmp_path, serve) -> None:
    with Sandbox(secret=SECRET, count=40) as small:
        config = load(tmp_path, small.base_url)
        SyncEngine(config).run()
        served = feed_path(config.sync.state_dir, "busy").read_bytes()
        added = small.add({"title": "Booked while the disk was full"})["_id"]
        # The bookings feed is published first, and a directory in its place fails the sync before busy is written.
        blocked = feed_path(config.sync.state_dir, "bookings")
        blocked.unlink()
        blocked.mkdir()
        with pytest.raises(CalsyncError):
            SyncEngine(config).run()
    url = serve(FeedApp(config))
    log_in(http, url)

    _, page = fetch_page(http, url)

    terms = card_terms(page, "busy")
    counts = dict(part.rsplit(" ", 1) for part in terms["By status"].split(", "))
    assert feed_path(config.sync.state_dir, "busy").read_bytes() == served
    assert {status: int(count) for status, count in counts.items()} == dict(statuses_in_file(served))
    assert sum(int(count) for count in counts.values()) == int(terms["Events"])
    with StateStore.open_in(config.sync.state_dir) as store:
        assert added in store.bookings()


def test_feed_card_explains_left_out_bookings(http, config, serve) -> None:
    url = serve(FeedApp(config))
    log_in(http, url)
    with StateStore.open_in(config.sync.state_dir) as store:
        coverage = store.last_success().stats["coverage"]["bookings"]
        stored = len(store.bookings())

    _, page = fetch_page(http, url)

    text = card_terms(page, "bookings")["Bookings"]
    assert text.startswith(f"{stored} stored at the last successful sync, {coverage['events']} in this feed. Left out: ")
    assert f"{coverage['ended']} ended more than 90 days ago (past_days)" in text
    assert coverage["events"] + coverage["ended"] == stored
    assert int(card_terms(page, "bookings")["Events"]) == coverage["events"]


def test_link_warning_without_public_url(http, config, serve) -> None:
    url = serve(FeedApp(config))
    log_in(http, url)

    _, page = fetch_page(http, url)

    warning = page.find("section", aria_labelledby="feeds-heading").find("div", role="note").text()
    assert "Google Calendar and Outlook fetch feeds from their own servers, which cannot reach it" in warning
    assert f"server.public_url is not set, so these links use the listen address {config.server.listen}" in warning
    assert "Set server.public_url to the https address" in warning


def test_no_link_warning_for_https_public_url(http, tmp_path, synced_dir, api, serve) -> None:
    shutil.copytree(synced_dir / "state", tmp_path / "state")
    url = serve(FeedApp(load(tmp_path, api.base_url, public_url="https://calendar.example.com")))
    log_in(http, url)

    _, page = fetch_page(http, url)

    assert page.find("section", aria_labelledby="feeds-heading").find_all("div", role="note") == []


@pytest.mark.parametrize("public_url, problems", [
    ("http://calendar.example.com", ["is not https"]),
    ("https://192.168.1.20:8443", ["is a private address"]),
    ("http://127.0.0.1:8080", ["is not https", "is reachable only from this machine"]),
])
def test_link_warning_follows_public_url(http, tmp_path, synced_dir, api, serve, public_url, problems) -> None:
    shutil.copytree(synced_dir / "state", tmp_path / "state")
    url = serve(FeedApp(load(tmp_path, api.base_url, public_url=public_url)))
    log_in(http, url)

    _, page = fetch_page(http, url)

    note = page.find("section", aria_labelledby="feeds-heading").find("div", role="note")
    items = [item.text() for item in note.find_all("li")]
    assert len(items) == len(problems)
    for item, problem in zip(items, problems):
        assert item.startswith("server.public_url ")
        assert problem in item


def test_footer_names_time_zone(http, config, serve) -> None:
    url = serve(FeedApp(config))
    log_in(http, url)

    _, page = fetch_page(http, url)

    assert page.find("footer").text().endswith("times in the business time zone, Africa/Nairobi (EAT)")


def test_unpublished_feed_shown(http, config, serve) -> None:
    feed_path(config.sync.state_dir, "busy").unlink()
    url = serve(FeedApp(config))
    log_in(http, url)

    _, page = fetch_page(http, url)

    card = page.find("article", aria_labelledby="feed-busy")
    assert "not published yet" in card.text()
    health = page.find("section", aria_labelledby="health-heading")
    assert "Not published: busy" in health.text()
    assert str(feed_path(config.sync.state_dir, "busy")) in health.text()


def test_history_lists_runs(http, config, serve) -> None:
    url = serve(FeedApp(config))
    log_in(http, url)

    _, page = fetch_page(http, url)

    rows = history_rows(page)
    with StateStore.open_in(config.sync.state_dir) as store:
        runs = store.recent_runs()
    assert len(rows) == len(runs) == 2
    newest = [cell.text() for cell in rows[0].find_all("td")]
    assert newest[1] == f"{runs[0].seconds:.2f} s"
    assert newest[2] == str(runs[0].stats["list_requests"] + runs[0].stats["details_requests"])
    assert newest[4] == "1"
    assert newest[6].startswith("success")
    oldest = [cell.text() for cell in rows[1].find_all("td")]
    assert int(oldest[3]) == runs[1].stats["added"] > 0
    assert "published bookings, busy" in oldest[6]


def test_history_marks_trigger(http, config, serve) -> None:
    with StateStore.open_in(config.sync.state_dir) as store:
        template = store.recent_runs(1)[0]
        with store.transaction():
            for trigger in ("scheduled", "manual"):
                template.id = None
                template.trigger = trigger
                store.add_run(template)
    url = serve(FeedApp(config))
    log_in(http, url)

    _, page = fetch_page(http, url)

    started = [row.find("td").text() for row in history_rows(page)]
    assert started[0].endswith(" EAT (manual)")
    assert started[1].endswith(" EAT")
    assert started[2].endswith(" EAT (calsync sync)")


def test_history_shows_at_most_50_runs(http, config, serve) -> None:
    with StateStore.open_in(config.sync.state_dir) as store:
        template = store.recent_runs(1)[0]
        with store.transaction():
            for _ in range(55):
                template.id = None
                store.add_run(template)
    url = serve(FeedApp(config))
    log_in(http, url)

    _, page = fetch_page(http, url)

    assert len(history_rows(page)) == 50
    assert "The last 50 syncs" in page.find("caption").text()


def test_history_chart(http, config, serve) -> None:
    url = serve(FeedApp(config))
    log_in(http, url)

    _, page = fetch_page(http, url)

    chart = page.find("svg", role="img")
    assert chart.find("title").text() == "Changes and duration of recent syncs"
    assert chart.find("desc").text().startswith("2 syncs, oldest on the left.")
    assert len(chart.find_all("rect")) == 2
    assert len(chart.find_all("polyline")) == 1
    legend = page.find("p", class_="chart-legend").text()
    assert "changes (added + changed + removed)" in legend
    assert "failed" in legend


def test_agenda_covers_next_14_days(http, config, serve) -> None:
    url = serve(FeedApp(config))
    log_in(http, url)

    _, page = fetch_page(http, url)

    section = page.find("section", aria_labelledby="agenda-heading")
    assert section.find("h2").text() == "Next 14 days in Front desk"
    days = [datetime.fromisoformat(time.attrs["datetime"]).date() for time in section.find_all("time")]
    today = datetime.now(config.sync.timezone).date()
    assert days
    assert days == sorted(days)
    assert all(today <= day < today + timedelta(days=14) for day in days)


# Health: why a feed stopped updating.


def health_of(http: requests.Session, url: str) -> Element:
    log_in(http, url)
    return fetch_page(http, url)[1].find("section", aria_labelledby="health-heading")


def test_health_ok_after_success(http, config, serve) -> None:
    url = serve(FeedApp(config))

    health = health_of(http, url)

    assert "health-ok" in health.attrs["class"]
    assert health.find("h2").text() == "OK: All feeds are up to date"
    assert "syncs run every 15m" in health.text()


def test_health_names_rejected_secret(http, config, api, serve) -> None:
    fail_sync(config, api, Fault("unauthorized", endpoint="list"))
    fail_sync(config, api, Fault("unauthorized", endpoint="list"))
    url = serve(FeedApp(config))

    health = health_of(http, url)

    assert "health-error" in health.attrs["class"]
    assert health.find("h2").text() == "Problem: Feeds are not updating because syncs fail"
    text = health.text()
    assert "The last 2 syncs failed: Cashfin rejected the client secret (HTTP 401" in text
    assert "Check cashfin.client_secret" in text
    assert "Subscribers still get the feeds published then" in text


def test_history_expands_failure(http, config, api, serve) -> None:
    fail_sync(config, api, Fault("unauthorized", endpoint="list"))
    url = serve(FeedApp(config))
    log_in(http, url)

    _, page = fetch_page(http, url)

    rows = page.find("table", id="history").find("tbody").find_all("tr")
    assert rows[0].attrs["class"] == "failed"
    assert rows[0].find_all("td")[6].text() == "failed"
    detail = rows[1].text()
    assert "AuthenticationError: Cashfin rejected the client secret" in detail
    assert "What to do: Cashfin rejected the client secret. Check cashfin.client_secret" in detail


def test_health_names_incomplete_listing(http, config, api, serve) -> None:
    fail_sync(config, api, Fault("total-inflated", endpoint="list"))
    url = serve(FeedApp(config))

    text = health_of(http, url).text()

    assert "The last sync failed: booking listing is incomplete" in text
    assert "published nothing rather than drop events" in text


def test_health_repeated_incomplete_listing(http, config, api, serve) -> None:
    for _ in range(3):
        fail_sync(config, api, Fault("total-inflated", endpoint="list"))
    url = serve(FeedApp(config))
    received = len(api.ids())

    text = health_of(http, url).text()

    assert "The last 3 syncs failed: booking listing is incomplete" in text
    assert "This is not a one-off: the last 3 syncs all found the booking list incomplete" in text
    assert "Cashfin's pagination is inconsistent" in text
    assert (
        f"GET /business/booking/list?limit=100 reported pagination.total {received + 5}, and its 4 page(s) "
        f"returned {received} unique bookings" in text
    )
    assert "calsync keeps serving the feeds of the last good sync" in text
    assert "the message shows which page" not in text


def test_health_two_incomplete_listings_not_persistent(http, config, api, serve) -> None:
    for _ in range(2):
        fail_sync(config, api, Fault("total-inflated", endpoint="list"))
    url = serve(FeedApp(config))

    text = health_of(http, url).text()

    assert "The last 2 syncs failed: booking listing is incomplete" in text
    assert "Bookings changing during the listing cause this once" in text
    assert "not a one-off" not in text


def test_history_shows_repeated_error_once(http, config, api, serve) -> None:
    for _ in range(3):
        fail_sync(config, api, Fault("total-inflated", endpoint="list"))
    url = serve(FeedApp(config))
    log_in(http, url)

    _, page = fetch_page(http, url)

    rows = page.find("table", id="history").find("tbody").find_all("tr")
    details = [row for row in rows if "detail" in (row.attrs.get("class") or "")]
    newest_run = rows[0]
    assert "ListingIncompleteError: booking listing is incomplete" in details[0].text()
    assert "What to do: This is not a one-off" in details[0].text()
    for repeat in details[1:3]:
        assert repeat.text().startswith("Same error as the failed sync at ")
        assert "What to do" not in repeat.text()
        assert repeat.find("a").attrs["href"] == f"#{newest_run.attrs['id']}"
    assert sum(1 for row in details if "What to do" in row.text()) == 1


def test_health_names_unwritable_feed_path(http, config, api, serve) -> None:
    target = feed_path(config.sync.state_dir, "bookings")
    target.unlink()
    target.mkdir()
    api.update(api.ids()[0], title="Changed so that the feed must be written")
    with pytest.raises(CalsyncError):
        SyncEngine(config).run()
    url = serve(FeedApp(config))

    text = health_of(http, url).text()

    assert f"could not write feed {target}" in text
    assert "Check free disk space and that the calsync user may write to sync.state_dir" in text


def test_health_shows_failure_without_run_record(http, config, serve) -> None:
    status = ServiceStatus(last_success=datetime.now(UTC) - timedelta(minutes=20))
    status.record_failure(datetime.now(UTC), "something unexpected broke")
    url = serve(FeedApp(config, status=status))

    text = health_of(http, url).text()

    assert "The last sync failed: something unexpected broke" in text
    assert "traceback" in text


def test_health_names_skipped_syncs(http, config, serve) -> None:
    stale = datetime.now(UTC) - timedelta(hours=2)
    with StateStore.open_in(config.sync.state_dir) as store:
        store.connection.execute("UPDATE runs SET started_at = ?, finished_at = ?", (stale.isoformat(), stale.isoformat()))
    status = ServiceStatus(last_success=stale)
    status.record_skipped(datetime.now(UTC), "another sync is running (pid 4242); lock file /x/.lock")
    url = serve(FeedApp(config, status=status))

    health = health_of(http, url)

    assert health.find("h2").text() == "Problem: Feeds are not updating because syncs are skipped"
    assert "another sync is running (pid 4242)" in health.text()
    assert "Another process holds the sync lock" in health.text()


def test_health_ignores_cancelled_sync(http, config, serve) -> None:
    with StateStore.open_in(config.sync.state_dir) as store:
        newest = store.recent_runs(1)[0]
        newest.id = None
        newest.outcome = "failed"
        newest.error = "sync abandoned before publishing because calsync is shutting down"
        newest.error_type = "SyncCancelledError"
        with store.transaction():
            store.add_run(newest)
    url = serve(FeedApp(config))

    health = health_of(http, url)

    assert health.find("h2").text() == "OK: All feeds are up to date"


def test_health_without_state(http, tmp_path, api, serve) -> None:
    url = serve(FeedApp(load(tmp_path, api.base_url)))

    health = health_of(http, url)

    assert health.find("h2").text() == "Warning: No sync has run yet"
    assert not (tmp_path / "state" / "state.sqlite3").exists()


def test_service_records_skipped_sync(config, monkeypatch) -> None:
    monkeypatch.setattr("calsync.service.LOCK_WAIT_SECONDS", 0.1)
    service = Service(config)

    with sync_lock(config.sync.state_dir):
        service.sync_once()

    skip = service.status.last_skip
    assert skip is not None
    assert skip[1].startswith("another sync is running")
    assert service.status.last_failure is None
