"""The status page's routes: ``GET /``, ``GET``/``POST /login``, ``POST /logout`` and the form ``POST /sync``.

All of them exist only when ``server.admin_token`` is set, and return the
feed server's plain 404 otherwise. An operator logs in with the admin token
and gets a session cookie (HttpOnly, SameSite=Strict, Path=/, and Secure
when the request came over https). Every form post carries the session's
CSRF token. A script keeps using ``POST /sync`` with ``Authorization: Bearer``,
which ``calsync.server`` handles before a request reaches this module.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from datetime import UTC, datetime
from http import HTTPStatus
from typing import Any
from urllib.parse import parse_qs, urlsplit

from calsync.config import Config
from calsync.feed_cache import FeedCache
from calsync.responses import Response, method_not_allowed, not_found, require_read
from calsync.status import ServiceStatus
from calsync.status_page import (
    CONTENT_SECURITY_POLICY,
    REFUSED_NOTICE,
    queued_notice,
    render_login_page,
    render_message_page,
    render_status_page,
)
from calsync.status_report import (
    AgendaCache,
    StatusCountCache,
    StatusReport,
    build_report,
)
from calsync.web_auth import (
    SESSION_COOKIE,
    LoginThrottle,
    Session,
    SessionSigner,
    expired_session_cookie,
    read_cookie,
    secrets_equal,
    session_cookie,
)

log = logging.getLogger(__name__)

Environ = dict[str, Any]

FORM_TYPE = "application/x-www-form-urlencoded"
# The forms send a token of at most a few hundred bytes. The server itself caps bodies at 64 KiB.
MAX_FORM_BYTES = 8 * 1024
HTML_HEADERS = [
    ("Content-Type", "text/html; charset=utf-8"),
    ("Cache-Control", "no-store"),
    ("Content-Security-Policy", CONTENT_SECURITY_POLICY),
    ("X-Frame-Options", "DENY"),
    ("X-Content-Type-Options", "nosniff"),
    ("Referrer-Policy", "no-referrer"),
]


class StatusPages:
    """Serves the status page for one config. ``enabled`` is false without an admin token.

    ``request_sync`` queues a sync and returns False when it cannot.
    ``sync_running`` returns whether a sync runs now. Without
    ``request_sync`` the page has no "Sync now" button.
    """

    def __init__(
        self,
        config: Config,
        cache: FeedCache,
        *,
        status: ServiceStatus | None = None,
        request_sync: Callable[[], bool] | None = None,
        sync_running: Callable[[], bool] | None = None,
    ) -> None:
        self.config = config
        self.cache = cache
        self.status = status
        self.request_sync = request_sync
        self.sync_running = sync_running
        self.admin_token = config.server.admin_token
        self.signer = SessionSigner(self.admin_token) if self.admin_token else None
        self.throttle = LoginThrottle()
        self.agenda_cache = AgendaCache()
        self.status_counts = StatusCountCache()

    @property
    def enabled(self) -> bool:
        return self.signer is not None

    # GET /

    def page(self, method: str, environ: Environ) -> Response:
        if self.signer is None:
            return not_found()
        not_allowed = require_read(method)
        if not_allowed is not None:
            return not_allowed
        session = self._session(environ)
        if session is None:
            return _redirect("/login")

        report = build_report(
            self.config, self.cache, datetime.now(UTC),
            status=self.status, agenda_cache=self.agenda_cache, status_counts=self.status_counts,
            sync_running=self._is_syncing(),
        )
        notice = sync_notice(parse_qs(environ.get("QUERY_STRING", "")), report)
        html = render_status_page(report, session.csrf_token, can_sync=self.request_sync is not None, notice=notice)
        return _html(HTTPStatus.OK, html)

    # /login and /logout

    def login(self, method: str, environ: Environ) -> Response:
        if self.signer is None:
            return not_found()
        if method == "POST":
            return self._log_in(environ, self.signer)
        not_allowed = require_read(method)
        if not_allowed is not None:
            return method_not_allowed("GET, HEAD, POST")
        if self._session(environ) is not None:
            return _redirect("/")
        return _html(HTTPStatus.OK, render_login_page())

    def _log_in(self, environ: Environ, signer: SessionSigner) -> Response:
        address = environ.get("REMOTE_ADDR", "-")
        wait = self.throttle.retry_after(address)
        if wait:
            log.debug("throttled a status page login from %s", address)
            message = f"Too many failed logins from your address. Try again in {wait} seconds."
            return _html(HTTPStatus.TOO_MANY_REQUESTS, render_login_page(message), [("Retry-After", str(wait))])

        submitted = _form(environ).get("token", "")
        if not secrets_equal(submitted, self.admin_token):
            self._record_failed_login(address)
            return _html(HTTPStatus.FORBIDDEN, render_login_page("Wrong admin token."))

        self.throttle.reset(address)
        session = signer.issue()
        log.info("status page login from %s", address)
        cookie = session_cookie(session.cookie, self._secure(environ), signer.lifetime)
        return _redirect("/", [("Set-Cookie", cookie)])

    def _record_failed_login(self, address: str) -> None:
        # The submitted value is never logged: it may be a mistyped admin token or another secret.
        failures = self.throttle.record_failure(address)
        log.warning(
            "rejected a status page login from %s: wrong admin token (%d failure(s) in the last %d s)",
            address, failures, self.throttle.window,
        )
        if failures == self.throttle.max_failures:
            log.warning(
                "throttling status page logins from %s for up to %d s after %d failures",
                address, self.throttle.window, failures,
            )

    def logout(self, method: str, environ: Environ) -> Response:
        if self.signer is None:
            return not_found()
        if method != "POST":
            return method_not_allowed("POST")
        session = self._checked_form_session(environ, "/logout", self.signer)
        if isinstance(session, Response):
            return session

        self.signer.revoke(session)
        log.info("status page logout from %s", environ.get("REMOTE_ADDR", "-"))
        return _redirect("/login", [("Set-Cookie", expired_session_cookie(self._secure(environ)))])

    # POST /sync from the page

    def has_session_cookie(self, environ: Environ) -> bool:
        """Tell whether a request carries a session cookie at all, valid or not."""
        return read_cookie(environ.get("HTTP_COOKIE", ""), SESSION_COOKIE) is not None

    def form_sync(self, environ: Environ, request_sync: Callable[[], bool]) -> Response:
        """Queue a sync for the page's "Sync now" form and redirect back to the page."""
        if self.signer is None:
            return not_found()
        session = self._checked_form_session(environ, "/sync", self.signer)
        if isinstance(session, Response):
            return session

        # The time is taken before queueing, so the requested sync starts after it whichever thread runs first.
        requested_ms = int(datetime.now(UTC).timestamp() * 1000)
        if request_sync():
            log.info("sync requested from the status page by %s", environ.get("REMOTE_ADDR", "-"))
            return _redirect(f"/?sync=queued&at={requested_ms}")
        return _redirect("/?sync=refused")

    # Helpers

    def _session(self, environ: Environ) -> Session | None:
        if self.signer is None:
            return None
        return self.signer.verify(read_cookie(environ.get("HTTP_COOKIE", ""), SESSION_COOKIE))

    def _checked_form_session(self, environ: Environ, path: str, signer: SessionSigner) -> Session | Response:
        """Return the session of a form post, or the 403 response when its session or CSRF token is invalid."""
        address = environ.get("REMOTE_ADDR", "-")
        session = self._session(environ)
        if session is None:
            log.warning("rejected POST %s from %s: no valid session", path, address)
            return _html(HTTPStatus.FORBIDDEN, render_message_page(
                "Session expired", "Your session has expired or is invalid. Log in again, then repeat the action.",
            ))
        if not signer.csrf_valid(session, _form(environ).get("csrf_token")):
            log.warning("rejected POST %s from %s: missing or invalid CSRF token", path, address)
            return _html(HTTPStatus.FORBIDDEN, render_message_page(
                "Request rejected", "The form was missing its security token. Reload the status page and try again.",
            ))
        return session

    def _is_syncing(self) -> bool:
        return self.sync_running() if self.sync_running is not None else False

    def _secure(self, environ: Environ) -> bool:
        """Tell whether the request came over https, so that the cookie gets the Secure attribute.

        waitress reports the scheme of its own connection, which is http
        behind a TLS-terminating proxy, and it drops X-Forwarded-Proto
        because calsync trusts no proxy. A request for the host of an https
        ``server.public_url`` therefore counts as https, while a direct
        request to the listen address over loopback http does not.
        """
        if environ.get("wsgi.url_scheme") == "https":
            return True
        public = urlsplit(self.config.server.public_url)
        return public.scheme == "https" and environ.get("HTTP_HOST", "").lower() == public.netloc.lower()


def sync_notice(query: dict[str, list[str]], report: StatusReport) -> str | None:
    """Return the notice for the page that "Sync now" redirects to, or None.

    ``sync=queued&at=<Unix time in ms>`` gets the notice only until a run
    that started at or after that time is in the history, so reloading the
    page once the requested sync has run shows no stale notice.
    """
    outcome = query.get("sync", [""])[0]
    if outcome == "refused":
        return REFUSED_NOTICE
    if outcome != "queued":
        return None
    requested_at = _milliseconds_time(query.get("at", [""])[0])
    if requested_at is None or any(run.started_at >= requested_at for run in report.runs):
        return None
    return queued_notice(requested_at, report.timezone)


def _milliseconds_time(text: str) -> datetime | None:
    """Parse Unix time in milliseconds, or return None for anything else."""
    if not text.isdigit():
        return None
    try:
        return datetime.fromtimestamp(int(text) / 1000, UTC)
    except (OverflowError, OSError, ValueError):
        return None


def _form(environ: Environ) -> dict[str, str]:
    """Read an urlencoded form body. Any other content type gives an empty form."""
    content_type = environ.get("CONTENT_TYPE", "").split(";")[0].strip().lower()
    if content_type != FORM_TYPE:
        return {}
    try:
        length = min(int(environ.get("CONTENT_LENGTH") or 0), MAX_FORM_BYTES)
    except ValueError:
        return {}
    body = environ["wsgi.input"].read(length) if length > 0 else b""
    fields = parse_qs(body.decode("utf-8", "replace"), keep_blank_values=True)
    return {name: values[0] for name, values in fields.items()}


def _html(status: HTTPStatus, html: str, extra: list[tuple[str, str]] | None = None) -> Response:
    return Response(status, [*HTML_HEADERS, *(extra or [])], html.encode("utf-8"))


def _redirect(location: str, extra: list[tuple[str, str]] | None = None) -> Response:
    headers = [("Location", location), ("Cache-Control", "no-store"), *(extra or [])]
    return Response(HTTPStatus.SEE_OTHER, headers)
