"""Authentication for the HTTP server: secret comparison, status page sessions, CSRF tokens, a login throttle.

A session cookie never contains the admin token. Its value is
``<expiry>.<nonce>.<signature>``: the expiry in Unix seconds, a random
nonce, and an HMAC-SHA256 of both under a key derived from the admin token.
Changing the admin token therefore ends every session, and a restarted
daemon still accepts the sessions it issued before. The CSRF token of a
session is an HMAC of its nonce under the same key, so a forged form needs
the key as well.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import secrets
import threading
import time
from collections import OrderedDict, deque
from dataclasses import dataclass

SESSION_COOKIE = "calsync_session"
SESSION_SECONDS = 12 * 3600
# A client address is throttled after this many failed logins within the window.
MAX_LOGIN_FAILURES = 10
LOGIN_WINDOW_SECONDS = 600
# Client addresses tracked by the throttle. Beyond this the oldest is forgotten, which bounds memory.
MAX_TRACKED_ADDRESSES = 1024
_KEY_LABEL = b"calsync status page session v1"


def secrets_equal(received: str, expected: str) -> bool:
    """Compare in constant time. Hashing both values first keeps their lengths from showing in the timing too."""
    received_digest = hashlib.sha256(received.encode("utf-8", "surrogateescape")).digest()
    expected_digest = hashlib.sha256(expected.encode("utf-8")).digest()
    return hmac.compare_digest(received_digest, expected_digest)


@dataclass(frozen=True)
class Session:
    """One valid login: the cookie value, its CSRF token and its expiry in Unix seconds."""

    cookie: str
    nonce: str
    csrf_token: str
    expires: int


class SessionSigner:
    """Issues and verifies session cookies for one admin token. It is safe to use from many threads."""

    def __init__(self, admin_token: str, lifetime: int = SESSION_SECONDS) -> None:
        self._key = hmac.new(admin_token.encode("utf-8"), _KEY_LABEL, hashlib.sha256).digest()
        self.lifetime = lifetime
        self._revoked: dict[str, int] = {}
        self._lock = threading.Lock()

    def issue(self) -> Session:
        """Create a session that expires ``lifetime`` seconds from now."""
        expires = int(time.time()) + self.lifetime
        nonce = secrets.token_urlsafe(16)
        cookie = f"{expires}.{nonce}.{self._sign(f'{expires}.{nonce}')}"
        return Session(cookie=cookie, nonce=nonce, csrf_token=self._sign(f"csrf.{nonce}"), expires=expires)

    def verify(self, cookie: str | None) -> Session | None:
        """Return the session of a cookie value, or None when it is malformed, forged, expired or revoked."""
        if not cookie:
            return None
        expiry_text, _, rest = cookie.partition(".")
        nonce, _, signature = rest.partition(".")
        if not expiry_text.isdigit() or not nonce or not signature:
            return None
        if not hmac.compare_digest(signature, self._sign(f"{expiry_text}.{nonce}")):
            return None

        expires = int(expiry_text)
        now = time.time()
        if expires <= now or expires > now + self.lifetime:
            return None
        with self._lock:
            if nonce in self._revoked:
                return None
        return Session(cookie=cookie, nonce=nonce, csrf_token=self._sign(f"csrf.{nonce}"), expires=expires)

    def csrf_valid(self, session: Session, submitted: str | None) -> bool:
        """Check a form's CSRF token against the session's, in constant time."""
        return bool(submitted) and secrets_equal(str(submitted), session.csrf_token)

    def revoke(self, session: Session) -> None:
        """Reject this session from now on, as after logging out. Revocations last until the session expires.

        NOTE: revocations live in memory, so after a restart a logged-out
        cookie is accepted again until it expires. Changing the admin token
        ends every session for good.
        """
        now = time.time()
        with self._lock:
            for nonce, expires in list(self._revoked.items()):
                if expires <= now:
                    del self._revoked[nonce]
            self._revoked[session.nonce] = session.expires

    def _sign(self, message: str) -> str:
        digest = hmac.new(self._key, message.encode("ascii"), hashlib.sha256).digest()
        return base64.urlsafe_b64encode(digest).rstrip(b"=").decode("ascii")


class LoginThrottle:
    """Counts failed logins per client address and rejects an address that failed too often.

    Behind a reverse proxy every client has the proxy's address, because
    the server trusts no forwarding header. A run of wrong tokens then
    throttles every client for the rest of the window.
    """

    def __init__(self, max_failures: int = MAX_LOGIN_FAILURES, window: int = LOGIN_WINDOW_SECONDS) -> None:
        self.max_failures = max_failures
        self.window = window
        self._failures: OrderedDict[str, deque[float]] = OrderedDict()
        self._lock = threading.Lock()

    def retry_after(self, address: str) -> int:
        """Return the seconds until ``address`` may try again, or 0 when it may try now."""
        now = time.time()
        with self._lock:
            failures = self._recent(address, now)
            if len(failures) < self.max_failures:
                return 0
            return max(1, int(failures[0] + self.window - now) + 1)

    def record_failure(self, address: str) -> int:
        """Count one failed login from ``address`` and return its failures within the window."""
        now = time.time()
        with self._lock:
            failures = self._recent(address, now)
            failures.append(now)
            self._failures[address] = failures
            self._failures.move_to_end(address)
            while len(self._failures) > MAX_TRACKED_ADDRESSES:
                self._failures.popitem(last=False)
            return len(failures)

    def reset(self, address: str) -> None:
        with self._lock:
            self._failures.pop(address, None)

    def _recent(self, address: str, now: float) -> deque[float]:
        failures = self._failures.get(address, deque())
        while failures and failures[0] <= now - self.window:
            failures.popleft()
        return failures


def read_cookie(cookie_header: str, name: str) -> str | None:
    """Return the value of cookie ``name`` in a ``Cookie`` request header, or None when it is absent."""
    for pair in cookie_header.split(";"):
        key, separator, value = pair.strip().partition("=")
        if separator and key == name:
            return value.strip().strip('"')
    return None


def session_cookie(value: str, secure: bool, max_age: int) -> str:
    """Return a ``Set-Cookie`` value for the session: HttpOnly, SameSite=Strict, for the whole site."""
    attributes = [f"{SESSION_COOKIE}={value}", "Path=/", f"Max-Age={max_age}", "HttpOnly", "SameSite=Strict"]
    if secure:
        attributes.append("Secure")
    return "; ".join(attributes)


def expired_session_cookie(secure: bool) -> str:
    """Return a ``Set-Cookie`` value that deletes the session cookie."""
    return session_cookie("", secure, 0)
