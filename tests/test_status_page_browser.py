"""The status page in a real browser: headless Chromium from Debian's ``chromium`` package, driven by Playwright.

The daemon runs in process (the real scheduler, engine and waitress server)
against the sandbox on loopback. Playwright never downloads a browser here:
it launches ``/usr/bin/chromium``, and the module is skipped when that or
Playwright is missing. axe-core, bundled in the axe-playwright-python
package, checks the pages for accessibility problems.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

CHROMIUM = Path("/usr/bin/chromium")


def skip_module(reason: str) -> None:
    """Skip these tests, except in CI (CI=true), where .ci/run installs the browser and a skip would hide that."""
    if os.environ.get("CI") == "true":
        pytest.fail(f"browser tests cannot run in CI: {reason}", pytrace=False)
    pytest.skip(reason, allow_module_level=True)


try:
    from axe_playwright_python.sync_playwright import Axe
    from playwright.sync_api import (
        Browser,
        BrowserContext,
        Page,
        expect,
        sync_playwright,
    )
except ImportError:
    skip_module("Playwright or axe-playwright-python is not installed; install the test extra: pip install -e '.[test]'")
if not CHROMIUM.exists():
    skip_module(f"no browser at {CHROMIUM}; install Debian's package: apt-get install chromium chromium-driver")

from calsync.config import Config, load_config  # noqa: E402
from calsync.sandbox import Sandbox, format_timestamp  # noqa: E402
from calsync.server import FeedApp  # noqa: E402
from calsync.service import Service  # noqa: E402
from calsync.wsgi import make_server, server_url, start_server_thread, stop_server  # noqa: E402

ADMIN_TOKEN = "browser-admin-token"
SECRET = "browser-secret"
MARKUP_TITLE = '<script>window.owned = true</script><img src=x onerror="window.owned = true"> Yoga & <b>tea</b>'
# Playwright's launch() gives every browser a new temporary --user-data-dir and rejects one passed in args
# (checked in Playwright 1.65).
# The other flags turn off Chromium's background requests (component updates, sync) and any proxy,
# so that it talks only to the loopback servers of the tests.
CHROMIUM_FLAGS = [
    "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run", "--disable-background-networking",
    "--disable-component-update", "--disable-sync", "--no-proxy-server",
]
PHONE = {"width": 360, "height": 740}
# Upper bound for a requested sync of the small data set to show up in the history.
SYNC_WAIT_MS = 30_000


def write_config(directory: Path, base_url: str, admin_token: str = ADMIN_TOKEN) -> Config:
    path = directory / "calsync.toml"
    admin = f'admin_token = "{admin_token}"' if admin_token else ""
    path.write_text(
        f"""
[cashfin]
base_url = "{base_url}"
client_secret = "{SECRET}"

[sync]
interval = "1h"
state_dir = "{(directory / 'state').as_posix()}"

[calendar]
uid_domain = "browser.calsync.invalid"

[server]
{admin}

[[feeds]]
name = "bookings"
title = "Studio bookings"
token = "browser-feed-token"
""",
        encoding="utf-8",
    )
    return load_config(str(path), env={})


@dataclass
class RunningDaemon:
    url: str
    service: Service


@pytest.fixture(scope="module")
def api() -> Iterator[Sandbox]:
    """The sandbox around today's date with one booking, tomorrow, whose title is markup."""
    with Sandbox(secret=SECRET, count=80) as sandbox:
        start = (datetime.now(UTC) + timedelta(days=1)).replace(hour=8, minute=0, second=0, microsecond=0)
        sandbox.add({
            "title": MARKUP_TITLE,
            "starttime": format_timestamp(start),
            "endtime": format_timestamp(start + timedelta(hours=1)),
        })
        yield sandbox


@pytest.fixture(scope="module")
def daemon(tmp_path_factory: pytest.TempPathFactory, api: Sandbox) -> Iterator[RunningDaemon]:
    """``calsync serve`` in process: the scheduler has run its first sync, and waitress serves the app."""
    config = write_config(tmp_path_factory.mktemp("browser"), api.base_url)
    service = Service(config)
    service.scheduler.start()
    assert service.first_sync_done.wait(60), "the first sync did not finish within 60 s"
    server = make_server(service.app, "127.0.0.1", 0, threads=4)
    start_server_thread(server)

    yield RunningDaemon(server_url(server), service)

    stop_server(server)
    service.cancel.set()
    service.scheduler.shutdown()
    service.scheduler.wait_idle(10)


@pytest.fixture(scope="module")
def browser() -> Iterator[Browser]:
    with sync_playwright() as playwright:
        launched = playwright.chromium.launch(executable_path=str(CHROMIUM), headless=True, args=CHROMIUM_FLAGS)
        yield launched
        launched.close()


@pytest.fixture
def context(browser: Browser) -> Iterator[BrowserContext]:
    created = browser.new_context()
    yield created
    created.close()


@pytest.fixture
def page(context: BrowserContext) -> Page:
    return context.new_page()


def log_in(page: Page, url: str, token: str = ADMIN_TOKEN) -> None:
    page.goto(f"{url}/login")
    page.fill("#token", token)
    page.click("button[type=submit]")


def run_rows(page: Page) -> int:
    """Count the history rows that stand for runs, leaving out their error and warning rows."""
    return page.locator("#history tbody tr:not(.detail)").count()


def test_wrong_token_rejected(page, daemon) -> None:
    log_in(page, daemon.url, "not-the-token")

    assert page.locator("[role=alert]").inner_text() == "Wrong admin token."
    assert page.url == f"{daemon.url}/login"
    assert page.context.cookies() == []


def test_login_shows_feeds_and_history(page, daemon) -> None:
    log_in(page, daemon.url)

    assert page.url == f"{daemon.url}/"
    assert page.locator("#feed-bookings").inner_text() == "Studio bookings (bookings)"
    assert page.locator("#feed-bookings").is_visible()
    assert run_rows(page) >= 1
    assert page.locator("svg.chart").is_visible()
    assert page.get_by_role("link", name="Add Studio bookings to Google Calendar").is_visible()
    assert page.locator("#url-bookings").input_value().startswith(f"http://{daemon.service.config.server.listen}/")


def test_sync_now_adds_run(page, daemon) -> None:
    log_in(page, daemon.url)
    before = run_rows(page)

    page.get_by_role("button", name="Sync now").click()

    assert page.url.startswith(f"{daemon.url}/?sync=queued&at=")
    deadline = datetime.now(UTC) + timedelta(milliseconds=SYNC_WAIT_MS)
    while run_rows(page) <= before and datetime.now(UTC) < deadline:
        page.wait_for_timeout(200)
        page.reload()
    assert run_rows(page) == before + 1
    assert page.locator(".notice").count() == 0
    assert page.locator("#history tbody tr:not(.detail) td").first.inner_text().endswith("(manual)")


def test_sync_notice_shown_while_pending(page, daemon) -> None:
    log_in(page, daemon.url)
    # A request time in the future stands for a requested sync that has not started yet.
    later = int((datetime.now(UTC) + timedelta(hours=1)).timestamp() * 1000)

    page.goto(f"{daemon.url}/?sync=queued&at={later}")

    assert "It runs in the background and has not finished yet" in page.locator(".notice").inner_text()


def test_markup_title_shown_as_text(page, daemon) -> None:
    dialogs: list[str] = []
    page.on("dialog", lambda dialog: (dialogs.append(dialog.message), dialog.dismiss()))

    log_in(page, daemon.url)

    assert page.locator(".agenda .summary", has_text="Yoga & <b>tea</b>").inner_text() == MARKUP_TITLE
    assert page.evaluate("window.owned") is None
    assert page.locator(".agenda b, .agenda img").count() == 0
    assert dialogs == []


def test_session_cookie_flags(page, daemon) -> None:
    log_in(page, daemon.url)

    cookies = page.context.cookies()

    assert len(cookies) == 1
    cookie = cookies[0]
    assert cookie["name"] == "calsync_session"
    assert cookie["httpOnly"] is True
    assert cookie["sameSite"] == "Strict"
    assert cookie["secure"] is False
    assert cookie["path"] == "/"
    assert ADMIN_TOKEN not in cookie["value"]
    assert page.evaluate("document.cookie") == ""


def test_sync_without_form_token_rejected(page, daemon) -> None:
    log_in(page, daemon.url)
    before = run_rows(page)

    response = page.request.post(f"{daemon.url}/sync", form={"csrf_token": "forged"}, max_redirects=0)
    page.reload()

    assert response.status == 403
    assert "Request rejected" in response.text()
    assert run_rows(page) == before


def test_pages_absent_without_admin_token(page, daemon, tmp_path, api) -> None:
    shutil.copytree(daemon.service.config.sync.state_dir, tmp_path / "state")
    config = write_config(tmp_path, api.base_url, admin_token="")
    server = make_server(FeedApp(config), "127.0.0.1", 0, threads=2)
    start_server_thread(server)
    try:
        response = page.goto(f"{server_url(server)}/")
        login = page.goto(f"{server_url(server)}/login")
    finally:
        stop_server(server)

    assert response is not None
    assert response.status == 404
    assert login is not None
    assert login.status == 404


@pytest.mark.parametrize("path", ["/login", "/"])
def test_phone_viewport_has_no_horizontal_scroll(browser, daemon, path) -> None:
    context = browser.new_context(viewport=PHONE, is_mobile=True, has_touch=True)
    try:
        page = context.new_page()
        log_in(page, daemon.url)
        page.goto(f"{daemon.url}{path}")

        scroll_width = page.evaluate("document.documentElement.scrollWidth")
        client_width = page.evaluate("document.documentElement.clientWidth")
    finally:
        context.close()

    assert client_width == PHONE["width"]
    assert scroll_width <= client_width


@pytest.mark.parametrize("path", ["/login", "/"])
def test_pages_log_nothing_to_console(page, daemon, path) -> None:
    messages: list[str] = []
    if path == "/":
        log_in(page, daemon.url)
        page.wait_for_url(f"{daemon.url}/")
    page.on("console", lambda message: messages.append(f"{message.type}: {message.text}"))
    page.on("requestfailed", lambda request: messages.append(f"failed: {request.url}"))

    page.goto(f"{daemon.url}{path}")
    page.wait_for_load_state("networkidle")

    assert messages == []


def test_chart_text_readable_on_phone(browser, daemon) -> None:
    context = browser.new_context(viewport={"width": 390, "height": 844}, is_mobile=True, has_touch=True)
    try:
        page = context.new_page()
        log_in(page, daemon.url)
        heights = page.eval_on_selector_all(
            "svg.chart text.label", "texts => texts.map(text => text.getBoundingClientRect().height)",
        )
        legend_font = page.eval_on_selector(".chart-legend", "legend => getComputedStyle(legend).fontSize")
    finally:
        context.close()

    # A box 13 px tall holds text of about 11 px, the smallest size commonly called readable on a phone.
    assert len(heights) == 4
    assert min(heights) >= 13
    assert float(legend_font.removesuffix("px")) >= 14


@pytest.mark.parametrize("path", ["/login", "/"])
def test_pages_pass_axe_check(page, daemon, path) -> None:
    if path == "/":
        log_in(page, daemon.url)
    page.goto(f"{daemon.url}{path}")

    results = Axe().run(page)

    assert results.violations_count == 0, results.generate_report()


def test_copy_button_copies_feed_url(page, daemon) -> None:
    page.context.grant_permissions(["clipboard-read", "clipboard-write"], origin=daemon.url)
    log_in(page, daemon.url)
    button = page.locator("button[data-copy=url-bookings]")

    button.click()

    # The clipboard write is asynchronous, so the status text appears a moment after the click.
    expect(page.locator("#copied-bookings")).to_have_text("Copied")
    assert page.evaluate("navigator.clipboard.readText()") == page.locator("#url-bookings").input_value()


def test_page_works_without_javascript(browser, daemon) -> None:
    context = browser.new_context(java_script_enabled=False)
    try:
        page = context.new_page()
        log_in(page, daemon.url)
        copy_hidden = page.locator("button[data-copy=url-bookings]").is_hidden()
        url_visible = page.locator("#url-bookings").is_visible()
        page.get_by_role("button", name="Sync now").click()
        queued = page.url
    finally:
        context.close()

    assert copy_hidden
    assert url_visible
    assert queued.startswith(f"{daemon.url}/?sync=queued&at=")
