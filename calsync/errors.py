"""The exception tree of calsync.

Every error that calsync raises on purpose derives from ``CalsyncError`` and
carries its data as attributes; the CLI turns each type into a message and an
exit code in one place::

    CalsyncError
    ├── ConfigError              invalid or missing configuration (exit 2)
    ├── CashfinError             the Cashfin API could not be used
    │   ├── AuthenticationError  401 or 403: the client secret was rejected
    │   ├── ApiError             an HTTP error, a non-JSON body or success: false
    │   │   └── NotFoundError    404 for one booking's details
    │   ├── TransportError       no response: connection failed or timed out
    │   └── RateLimitedError     not sent: 429s went on past the retry budget
    ├── SyncError                a sync could not complete (exit 1)
    │   ├── ListingIncompleteError  the listing disagrees with pagination.total
    │   └── SyncCancelledError   shutdown began before the sync published
    ├── MappingError             one booking cannot become a VEVENT
    ├── StateError               the state database cannot be used
    │   └── CorruptStateError    the database file is damaged
    ├── PublishError             a feed file could not be written
    └── LockHeldError            another process is syncing this state_dir (exit 3)
"""

from __future__ import annotations


class CalsyncError(Exception):
    """Base class of every error calsync raises on purpose.

    ``logged`` is set by the code that already logged the error, so that the
    command line does not print the same failure twice.
    """

    logged: bool = False


class ConfigError(CalsyncError):
    """A configuration value is invalid or missing.

    ``key`` is the dotted key (``cashfin.timeout``), ``source`` where the value
    came from (a file path, an environment variable or ``default``), and
    ``fix`` a sentence telling the operator what to change.
    """

    def __init__(self, key: str, source: str, problem: str, fix: str) -> None:
        self.key = key
        self.source = source
        self.problem = problem
        self.fix = fix
        super().__init__(f"{key} ({source}): {problem}. {fix}")


class CashfinError(CalsyncError):
    """The Cashfin API could not be used."""


class AuthenticationError(CashfinError):
    """The API rejected the client secret (HTTP 401 or 403)."""

    def __init__(self, status: int, url: str) -> None:
        self.status = status
        self.url = url
        super().__init__(
            f"Cashfin rejected the client secret (HTTP {status} from {url}); "
            "check cashfin.client_secret or CASHFIN_CLIENT_SECRET"
        )


class ApiError(CashfinError):
    """The API responded, but not with a usable JSON body.

    ``status`` is the HTTP status and ``excerpt`` the first characters of the
    body, so that an operator can see what came back (an HTML error page, a
    truncated document, ``success: false`` with its error text).
    """

    EXCERPT_CHARS = 200

    def __init__(self, url: str, status: int, problem: str, body: str = "") -> None:
        self.url = url
        self.status = status
        self.problem = problem
        self.excerpt = body[: self.EXCERPT_CHARS]
        detail = f": {self.excerpt!r}" if self.excerpt else ""
        super().__init__(f"{problem} (HTTP {status} from {url}){detail}")


class NotFoundError(ApiError):
    """The API reported that a booking does not exist (HTTP 404)."""


class TransportError(CashfinError):
    """No usable response arrived: the connection failed or timed out after retries."""

    def __init__(self, url: str, cause: str) -> None:
        self.url = url
        self.cause = cause
        super().__init__(f"request to {url} failed: {cause}")


class RateLimitedError(CashfinError):
    """The request was not sent because the API kept answering 429 past the retry budget."""

    def __init__(self, url: str) -> None:
        self.url = url
        super().__init__(
            f"request to {url} not sent: the API kept answering 429 Too Many Requests past the retry budget"
        )


class SyncError(CalsyncError):
    """A sync could not complete; nothing was published."""


class ListingIncompleteError(SyncError):
    """The booking listing is not consistent with ``pagination.total``."""

    def __init__(self, expected: int, received: int, reason: str) -> None:
        self.expected = expected
        self.received = received
        self.reason = reason
        super().__init__(
            f"booking listing is incomplete: {reason} "
            f"(pagination.total {expected}, unique bookings received {received})"
        )


class SyncCancelledError(SyncError):
    """The process is shutting down, so the sync stopped before it committed or published."""

    def __init__(self, step: str) -> None:
        self.step = step
        super().__init__(f"sync abandoned before {step} because calsync is shutting down")


class MappingError(CalsyncError):
    """One booking cannot be turned into a VEVENT; the sync skips it."""

    def __init__(self, booking_id: str, reason: str) -> None:
        self.booking_id = booking_id
        self.reason = reason
        super().__init__(f"booking {booking_id}: {reason}")


class StateError(CalsyncError):
    """The state database cannot be opened, read or written."""

    def __init__(self, path: str, reason: str) -> None:
        self.path = path
        self.reason = reason
        super().__init__(f"state database {path}: {reason}")


class CorruptStateError(StateError):
    """The state database file is damaged or is not a SQLite database."""


class PublishError(CalsyncError):
    """A feed file could not be written; the previous file is still in place."""

    def __init__(self, path: str, reason: str) -> None:
        self.path = path
        self.reason = reason
        super().__init__(f"could not write feed {path}: {reason}")


class LockHeldError(CalsyncError):
    """Another process holds the sync lock of this ``state_dir``.

    ``holder`` is what that process wrote into the lock file (its pid, host
    and start time), or an empty string if it wrote nothing readable.
    """

    def __init__(self, path: str, holder: str) -> None:
        self.path = path
        self.holder = holder
        who = holder or "an unknown process"
        super().__init__(f"another sync is running ({who}); lock file {path}")
