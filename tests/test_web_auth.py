"""Session cookies, CSRF tokens, the login throttle and cookie headers of the status page."""

from __future__ import annotations

from datetime import timedelta

from freezegun import freeze_time

from calsync.web_auth import (
    LoginThrottle,
    SessionSigner,
    expired_session_cookie,
    read_cookie,
    secrets_equal,
    session_cookie,
)

START = "2026-01-15T08:00:00Z"


def test_session_round_trip() -> None:
    signer = SessionSigner("admin-token")

    session = signer.issue()
    verified = signer.verify(session.cookie)

    assert verified == session
    assert "admin-token" not in session.cookie


def test_session_expires_after_lifetime() -> None:
    signer = SessionSigner("admin-token", lifetime=3600)
    with freeze_time(START) as clock:
        session = signer.issue()
        clock.tick(timedelta(seconds=3599))
        still_valid = signer.verify(session.cookie)
        clock.tick(timedelta(seconds=1))
        expired = signer.verify(session.cookie)

    assert still_valid is not None
    assert expired is None


def test_session_rejected_under_other_token() -> None:
    session = SessionSigner("admin-token").issue()

    assert SessionSigner("changed-admin-token").verify(session.cookie) is None


def test_session_with_edited_expiry_rejected() -> None:
    signer = SessionSigner("admin-token")
    session = signer.issue()
    _, nonce, signature = session.cookie.split(".")

    assert signer.verify(f"{session.expires + 3600}.{nonce}.{signature}") is None


def test_session_expiry_beyond_lifetime_rejected() -> None:
    """A cookie signed for a longer lifetime, as by an older configuration, is not accepted."""
    long_lived = SessionSigner("admin-token", lifetime=10 * 24 * 3600).issue()

    assert SessionSigner("admin-token", lifetime=3600).verify(long_lived.cookie) is None


def test_malformed_cookies_rejected() -> None:
    signer = SessionSigner("admin-token")

    for value in (None, "", "abc", "1.2", "x.nonce.sig", "-5.nonce.sig", "..", "1..sig"):
        assert signer.verify(value) is None, value


def test_revoked_session_rejected() -> None:
    signer = SessionSigner("admin-token")
    revoked = signer.issue()
    other = signer.issue()

    signer.revoke(revoked)

    assert signer.verify(revoked.cookie) is None
    assert signer.verify(other.cookie) == other


def test_revocations_forgotten_after_expiry() -> None:
    signer = SessionSigner("admin-token", lifetime=60)
    with freeze_time(START) as clock:
        signer.revoke(signer.issue())
        clock.tick(timedelta(seconds=61))
        signer.revoke(signer.issue())

    assert len(signer._revoked) == 1


def test_csrf_token_bound_to_session() -> None:
    signer = SessionSigner("admin-token")
    first, second = signer.issue(), signer.issue()

    assert signer.csrf_valid(first, first.csrf_token)
    assert not signer.csrf_valid(first, second.csrf_token)
    assert not signer.csrf_valid(first, "")
    assert not signer.csrf_valid(first, None)


def test_throttle_after_max_failures() -> None:
    throttle = LoginThrottle(max_failures=3, window=600)
    with freeze_time(START) as clock:
        for _ in range(3):
            assert throttle.retry_after("192.0.2.1") == 0
            throttle.record_failure("192.0.2.1")
            clock.tick(timedelta(seconds=10))
        blocked = throttle.retry_after("192.0.2.1")
        other_address = throttle.retry_after("192.0.2.2")
        clock.tick(timedelta(seconds=571))
        released = throttle.retry_after("192.0.2.1")

    # The first failure was 30 s before the check, so it leaves the window 570 s later.
    assert blocked == 571
    assert other_address == 0
    assert released == 0


def test_throttle_reset_by_success() -> None:
    throttle = LoginThrottle(max_failures=2, window=600)
    throttle.record_failure("192.0.2.1")
    throttle.record_failure("192.0.2.1")

    throttle.reset("192.0.2.1")

    assert throttle.retry_after("192.0.2.1") == 0


def test_throttle_forgets_oldest_addresses() -> None:
    throttle = LoginThrottle(max_failures=1, window=600)
    for number in range(1100):
        throttle.record_failure(f"10.0.{number // 256}.{number % 256}")

    assert len(throttle._failures) == 1024
    assert throttle.retry_after("10.0.0.0") == 0
    assert throttle.retry_after("10.0.4.75") > 0


def test_read_cookie() -> None:
    header = 'theme=dark; calsync_session="1.abc.def" ; other=1'

    assert read_cookie(header, "calsync_session") == "1.abc.def"
    assert read_cookie(header, "missing") is None
    assert read_cookie("", "calsync_session") is None
    assert read_cookie("calsync_session", "calsync_session") is None


def test_cookie_headers() -> None:
    assert session_cookie("v", secure=False, max_age=60) == "calsync_session=v; Path=/; Max-Age=60; HttpOnly; SameSite=Strict"
    assert session_cookie("v", secure=True, max_age=60).endswith("; Secure")
    assert expired_session_cookie(secure=False) == "calsync_session=; Path=/; Max-Age=0; HttpOnly; SameSite=Strict"


def test_secrets_equal() -> None:
    assert secrets_equal("token", "token")
    assert not secrets_equal("token", "token2")
    assert not secrets_equal("", "token")
    assert not secrets_equal("t\udcffoken", "token")
