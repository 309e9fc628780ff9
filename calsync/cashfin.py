"""A client for the two read-only endpoints of the Cashfin Bookings API.

``CashfinClient.list_bookings`` pages through every booking at the maximum
page size, fetching pages 2..n concurrently once page 1 has reported the
total, and returns a ``Listing`` that records whether it is complete.
``CashfinClient.fetch_details`` fetches details for many ids with a bounded
thread pool. Both use one connection pool of ``concurrency`` connections.

Transient failures are retried with exponential backoff and jitter, bounded
in count and in total time per request (``calsync.retries``): connection
errors and resets, read timeouts, bodies cut short, HTTP 429, 500, 502, 503
and 504, and a 200 whose body is not JSON (a proxy's error page). Every
request is a GET, so a retry cannot repeat a side effect. A 429 pauses and
shrinks the whole pool, not only the worker that received it. 401 and 403
are never retried, and neither is a well-formed ``success: false``.
"""

from __future__ import annotations

import logging
import math
import threading
import time
from collections import Counter
from collections.abc import Iterable, Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from functools import partial
from typing import TYPE_CHECKING, Any
from urllib.parse import quote

import requests
from requests.adapters import HTTPAdapter
from urllib3.exceptions import MaxRetryError

from calsync import __version__, json_keys
from calsync.errors import (
    ApiError,
    AuthenticationError,
    CashfinError,
    NotFoundError,
    RateLimitedError,
    SyncCancelledError,
    TransportError,
)
from calsync.retries import BoundedRetry, PoolBackoff

if TYPE_CHECKING:
    from calsync.config import Config

log = logging.getLogger(__name__)

LIST_PATH = "/business/booking/list"
DETAILS_PATH = "/business/booking/details/"

# The API documents 100 as the largest page size it serves.
MAX_PAGE_SIZE = 100

# GETs are idempotent, so a 500 is retried like the gateway errors.
RETRY_STATUSES = (429, 500, 502, 503, 504)
NOT_JSON = "response is not JSON"

# Failures before a complete response arrived. An SSLError is a ConnectionError too, but retrying
# a certificate problem cannot help, so it is left out.
TRANSIENT_EXCEPTIONS = (requests.ConnectionError, requests.Timeout, requests.exceptions.ChunkedEncodingError)


class _TransientFailure(Exception):
    """One failed attempt that a retry may fix, with the error to raise if none does."""

    def __init__(self, error: CashfinError, response: requests.Response | None = None) -> None:
        super().__init__(str(error))
        self.error = error
        self.response = response

    @property
    def status(self) -> int | None:
        return self.response.status_code if self.response is not None else None

    @property
    def cause(self) -> str:
        if self.response is None:
            cause = self.error.__cause__
            return type(cause).__name__ if cause is not None else "no response"
        if isinstance(self.error, ApiError) and self.error.problem == NOT_JSON:
            return f"HTTP {self.response.status_code} with a body that is not JSON"
        return f"HTTP {self.response.status_code}"


def _strip_query(url: str | None) -> str:
    return (url or "").split("?", 1)[0]


@dataclass
class Listing:
    """The result of paging through every booking.

    ``rows`` maps each ``_id`` to its list row, in the order first seen.
    ``complete`` is true only when every page came back well-formed and the
    number of unique ids agrees with ``pagination.total``. Only then may ids
    absent from ``rows`` be taken as deleted. ``problems`` lists the reasons when it is not.
    """

    rows: dict[str, dict[str, Any]] = field(default_factory=dict)
    total: int = 0
    pages: int = 0
    page_size: int = MAX_PAGE_SIZE
    malformed: int = 0
    problems: list[str] = field(default_factory=list)

    @property
    def complete(self) -> bool:
        return not self.problems


@dataclass
class DetailsResult:
    """Details fetched for a set of ids: found, reported missing (404), or failed."""

    found: dict[str, dict[str, Any]] = field(default_factory=dict)
    missing: set[str] = field(default_factory=set)
    failed: dict[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class _Page:
    number: int
    rows: list[Any]
    total: int
    pages: int


class CashfinClient:
    """A thread-safe client for the Cashfin Bookings API over one ``requests.Session``.

    ``timeout`` is in seconds and applies to the connection and to each read.
    One request makes at most ``retries`` retries and stops retrying
    ``retry_budget`` seconds after its first failure. ``backoff`` is the
    pool's shared back-off; once it gives up, the client sends nothing more,
    so use a new client for the next sync. ``request_counts`` counts the
    requests made per endpoint (``list`` and ``details``). ``status_counts``
    counts them per endpoint and final HTTP status, with ``"error"`` when no
    response arrived. A retried request counts once, with the status of its
    last attempt.
    """

    def __init__(
        self,
        base_url: str,
        client_secret: str,
        *,
        timeout: float = 10.0,
        page_size: int = MAX_PAGE_SIZE,
        concurrency: int = 4,
        retries: int = 4,
        retry_budget: float = 60.0,
        backoff_factor: float = 0.5,
    ) -> None:
        self.base_url = base_url.rstrip("/")
        self.timeout = timeout
        self.page_size = self._clamp_page_size(page_size)
        self.concurrency = max(1, concurrency)
        self.request_counts: Counter[str] = Counter()
        self.status_counts: Counter[tuple[str, str]] = Counter()
        self._counts_lock = threading.Lock()
        self.retry_policy = _retry_policy(retries, retry_budget, backoff_factor)
        self.backoff = PoolBackoff(self.concurrency, self.retry_policy)
        self.session = self._build_session(client_secret)

    @staticmethod
    def _clamp_page_size(page_size: int) -> int:
        if page_size > MAX_PAGE_SIZE:
            log.warning("page size %d is above the API's maximum; using %d", page_size, MAX_PAGE_SIZE)
            return MAX_PAGE_SIZE
        return max(1, page_size)

    def _build_session(self, client_secret: str) -> requests.Session:
        # urllib3 itself does not retry: every retry goes through _get_with_retries, under one budget.
        adapter = HTTPAdapter(max_retries=0, pool_connections=1, pool_maxsize=self.concurrency)

        session = requests.Session()
        session.mount("http://", adapter)
        session.mount("https://", adapter)
        session.headers["Authorization"] = client_secret
        session.headers["Accept"] = "application/json"
        session.headers["User-Agent"] = f"calsync/{__version__}"
        return session

    def close(self) -> None:
        self.session.close()

    def __enter__(self) -> CashfinClient:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    # -- requests -----------------------------------------------------------

    def _get(self, endpoint: str, path: str, params: Mapping[str, Any] | None = None) -> dict[str, Any]:
        """Send one GET, with retries, and return the JSON body of a ``success: true`` response."""
        url = self.base_url + path
        try:
            body, status = self._get_with_retries(url, params)
        except CashfinError as error:
            self._count(endpoint, _status_label(error))
            raise

        self._count(endpoint, str(status))
        log.debug("GET %s %s -> %d", url, dict(params or {}), status)
        return body

    def _get_with_retries(self, url: str, params: Mapping[str, Any] | None) -> tuple[dict[str, Any], int]:
        """Run attempts until one succeeds, one fails for good, or the retry budget is spent."""
        retry = self.retry_policy
        failure: _TransientFailure | None = None
        owns_pause = False
        try:
            while True:
                epoch = self.backoff.acquire(retry.deadline(), probe=owns_pause)
                if epoch is None:
                    raise failure.error if failure is not None else RateLimitedError(url)

                try:
                    body, status = self._attempt(url, params)
                except _TransientFailure as caught:
                    failure = caught
                else:
                    self.backoff.record_success()
                    return body, status
                finally:
                    self.backoff.release()

                paused_again = self._pause_pool_if_rate_limited(url, failure, epoch)
                if owns_pause and not paused_again:
                    self.backoff.resume()
                owns_pause = paused_again
                retry = self._next_retry(retry, url, failure)
        finally:
            if owns_pause:
                self.backoff.resume()

    def _attempt(self, url: str, params: Mapping[str, Any] | None) -> tuple[dict[str, Any], int]:
        """Send one request; raise ``_TransientFailure`` for a failure that a retry may fix."""
        try:
            response = self.session.get(url, params=params, timeout=self.timeout)
        except requests.exceptions.SSLError as error:
            raise TransportError(url, _describe_transport_error(error)) from error
        except TRANSIENT_EXCEPTIONS as error:
            raise _TransientFailure(TransportError(url, _describe_transport_error(error))) from error
        except requests.RequestException as error:
            raise TransportError(url, f"{type(error).__name__}: {error}") from error

        try:
            return self._decode(url, response), response.status_code
        except ApiError as error:
            if _is_transient(response, error):
                raise _TransientFailure(error, response) from None
            raise

    def _pause_pool_if_rate_limited(self, url: str, failure: _TransientFailure, epoch: int) -> bool:
        """After a 429, pause every worker and wait the pause out; return True if this worker owns the pause.

        The owner's retry then goes out alone, as a probe, and the pool
        resumes once that retry gets a response. A server that still
        rate-limits thus receives one request and not one from every worker.
        """
        if failure.status != 429 or failure.response is None:
            return False
        pause = self.backoff.record_rate_limit(epoch, url, failure.response.raw)
        if pause <= 0:
            return False
        try:
            time.sleep(pause)
        except BaseException:
            self.backoff.resume()
            raise
        return True

    def _next_retry(self, retry: BoundedRetry, url: str, failure: _TransientFailure) -> BoundedRetry:
        """Count one retry and wait before it; raise the failure's error when the budget is spent."""
        if self.backoff.gave_up:
            raise failure.error
        raw = failure.response.raw if failure.response is not None else None
        try:
            retry = retry.increment("GET", url, response=raw, error=None if raw is not None else failure.error)
        except MaxRetryError:
            log.info("giving up on GET %s after %s: retry budget spent", _strip_query(url), failure.cause)
            raise failure.error from None

        delay = retry.next_delay(raw)
        if delay is None:
            log.info(
                "giving up on GET %s after %s: its Retry-After is beyond the retry budget",
                _strip_query(url), failure.cause,
            )
            raise failure.error
        if failure.status == 429:
            # A 429 waits for the pool's pause in acquire(), so it adds no backoff of its own.
            delay = 0.0
        log.warning(
            "retrying GET %s after %s (retry %d of %d, in %.2f s)",
            _strip_query(url), failure.cause, len(retry.history), self.retry_policy.total, delay,
        )
        time.sleep(delay)
        return retry

    def _count(self, endpoint: str, status: str) -> None:
        with self._counts_lock:
            self.request_counts[endpoint] += 1
            self.status_counts[(endpoint, status)] += 1

    @staticmethod
    def _decode(url: str, response: requests.Response) -> dict[str, Any]:
        status = response.status_code
        if status in (401, 403):
            raise AuthenticationError(status, url)

        try:
            body = json_keys.loads(response.content)
        except ValueError:
            raise ApiError(url, status, NOT_JSON, response.text) from None

        if status == 404:
            raise NotFoundError(url, status, _api_error_text(body), response.text)
        if not isinstance(body, dict) or body.get("success") is not True:
            raise ApiError(url, status, f"API reported failure: {_api_error_text(body)}", response.text)
        if status >= 400:
            raise ApiError(url, status, "HTTP error", response.text)
        return body

    # -- listing ------------------------------------------------------------

    def count_bookings(self) -> int:
        """Return ``pagination.total`` from one request for a single row: a cheap authenticated probe."""
        body = self._get("list", LIST_PATH, {"page": 1, "limit": 1})
        pagination = body.get("pagination")
        total = pagination.get("total") if isinstance(pagination, dict) else None
        if not _is_count(total):
            raise ApiError(self.base_url + LIST_PATH, 200, "invalid pagination block", repr(pagination))
        return total

    def list_bookings(self) -> Listing:
        """Page through every booking; see ``Listing`` for what complete means."""
        first = self._list_page(1)
        listing = Listing(total=first.total, page_size=self.page_size)

        expected_pages = math.ceil(first.total / self.page_size)
        if first.pages != expected_pages:
            log.warning(
                "pagination.pages is %d but total %d at limit %d needs %d pages; fetching %d",
                first.pages, first.total, self.page_size, expected_pages, max(first.pages, expected_pages),
            )
        listing.pages = max(first.pages, expected_pages, 1)

        pages = [first, *self._list_pages(range(2, listing.pages + 1), listing)]
        for page in sorted(pages, key=lambda page: page.number):
            self._add_rows(listing, page)

        self._check_complete(listing, pages)
        log.info(
            "listed %d bookings in %d pages (pagination.total %d)",
            len(listing.rows), listing.pages, listing.total,
        )
        return listing

    def _list_pages(self, numbers: range, listing: Listing) -> list[_Page]:
        """Fetch the given pages concurrently; a failed page becomes a listing problem."""
        if not numbers:
            return []
        pages: list[_Page] = []
        with ThreadPoolExecutor(max_workers=self.concurrency, thread_name_prefix="calsync-list") as pool:
            futures = {number: pool.submit(self._list_page, number) for number in numbers}
            for number, future in futures.items():
                try:
                    pages.append(future.result())
                except AuthenticationError:
                    raise
                except CashfinError as error:
                    listing.problems.append(f"page {number} failed: {error}")
        return pages

    def _list_page(self, number: int) -> _Page:
        params = {"page": number, "limit": self.page_size}
        url = self.base_url + LIST_PATH
        body = self._get("list", LIST_PATH, params)

        rows = body.get("data")
        pagination = body.get("pagination")
        if not isinstance(rows, list) or not isinstance(pagination, dict):
            raise ApiError(url, 200, f"page {number} lacks a data list or a pagination object", repr(body))

        total = pagination.get("total")
        pages = pagination.get("pages")
        if not _is_count(total) or not _is_count(pages):
            raise ApiError(url, 200, f"page {number} has an invalid pagination block", repr(pagination))
        return _Page(number=number, rows=rows, total=total, pages=pages)

    @staticmethod
    def _add_rows(listing: Listing, page: _Page) -> None:
        for index, row in enumerate(page.rows):
            booking_id = row.get("_id") if isinstance(row, dict) else None
            if not isinstance(booking_id, str) or not booking_id:
                listing.malformed += 1
                log.warning("skipping row %d of page %d: it has no string _id", index, page.number)
                continue
            listing.rows.setdefault(booking_id, row)

    @staticmethod
    def _check_complete(listing: Listing, pages: list[_Page]) -> None:
        """Record why the listing cannot be trusted for deletions, if it cannot.

        Page 1's total is the reference. With a newest-first order, a booking
        inserted while paging repeats a row on a later page, which keeps the
        unique count at page 1's total. A booking deleted while paging hides a
        row, which drops the count below it. So a count below the reference
        means a row was missed.

        NOTE: the newest-first order is the sandbox's. The real API's order is
        undocumented; with another order an insert and a delete during one
        listing could cancel out in the count.
        """
        received = len(listing.rows) + listing.malformed
        largest_total = max(page.total for page in pages)
        if received < listing.total:
            listing.problems.append(f"received {received} of {listing.total} bookings")
        elif received > largest_total:
            listing.problems.append(f"received {received} bookings but pagination.total is at most {largest_total}")

    # -- details ------------------------------------------------------------

    def get_details(self, booking_id: str) -> dict[str, Any]:
        """Return one booking's details; raise ``NotFoundError`` if it no longer exists."""
        path = DETAILS_PATH + quote(booking_id, safe="")
        body = self._get("details", path)

        data = body.get("data")
        if not isinstance(data, dict):
            raise ApiError(self.base_url + path, 200, "details lack a data object", repr(body))
        if data.get("_id") != booking_id:
            raise ApiError(self.base_url + path, 200, f"details carry _id {data.get('_id')!r}", "")
        return data

    def fetch_details(self, booking_ids: Iterable[str], cancel: threading.Event | None = None) -> DetailsResult:
        """Fetch details for every id with at most ``concurrency`` requests in flight.

        An authentication failure stops at once; any other failure is recorded
        per id, so one bad booking never fails the rest. Setting ``cancel``
        drops the requests not yet sent and raises ``SyncCancelledError``.
        Each worker takes the next id when it is free, so the memory held for
        requests does not grow with the number of ids.
        """
        result = DetailsResult()
        queue = _IdQueue(booking_ids, cancel)
        workers = min(self.concurrency, len(queue))
        if workers == 0:
            return result

        with ThreadPoolExecutor(max_workers=workers, thread_name_prefix="calsync-details") as pool:
            runs = [pool.submit(self._details_worker, queue) for _ in range(workers)]
        for run in runs:
            part = run.result()
            result.found.update(part.found)
            result.missing.update(part.missing)
            result.failed.update(part.failed)
        return result

    def _details_worker(self, queue: _IdQueue) -> DetailsResult:
        """Fetch ids from ``queue`` until it is empty; on an error that ends the fetch, stop the other workers too."""
        part = DetailsResult()
        try:
            while (booking_id := queue.next()) is not None:
                self._collect_details(part, booking_id, partial(self.get_details, booking_id))
        except BaseException:
            queue.stop()
            raise
        return part

    @staticmethod
    def _collect_details(result: DetailsResult, booking_id: str, get: Any) -> None:
        try:
            result.found[booking_id] = get()
        except NotFoundError:
            result.missing.add(booking_id)
        except AuthenticationError:
            raise
        except CashfinError as error:
            log.warning("could not fetch details of booking %s: %s", booking_id, error)
            result.failed[booking_id] = str(error)


class _IdQueue:
    """The ids that the details workers share; ``next`` hands out each id once."""

    def __init__(self, booking_ids: Iterable[str], cancel: threading.Event | None) -> None:
        self._ids = list(booking_ids)
        self._position = 0
        self._cancel = cancel
        self._stopped = False
        self._lock = threading.Lock()

    def __len__(self) -> int:
        return len(self._ids)

    def next(self) -> str | None:
        """Return the next id, or None once every id is taken or ``stop`` was called.

        Raises ``SyncCancelledError`` once ``cancel`` is set.
        """
        if self._cancel is not None and self._cancel.is_set():
            raise SyncCancelledError("fetching details")
        with self._lock:
            if self._stopped or self._position >= len(self._ids):
                return None
            booking_id = self._ids[self._position]
            self._position += 1
            return booking_id

    def stop(self) -> None:
        with self._lock:
            self._stopped = True


def client_for(config: Config) -> CashfinClient:
    """Build a client from the ``[cashfin]`` settings of a config."""
    settings = config.cashfin
    return CashfinClient(
        settings.base_url,
        settings.client_secret,
        timeout=settings.timeout,
        page_size=settings.page_size,
        concurrency=settings.concurrency,
    )


def _retry_policy(retries: int, budget: float, backoff_factor: float) -> BoundedRetry:
    """Build the retry policy of one request: ``retries`` retries of any transient kind within ``budget`` seconds."""
    return BoundedRetry(
        total=retries,
        connect=None,
        read=None,
        status=None,
        other=None,
        allowed_methods=frozenset({"GET"}),
        status_forcelist=RETRY_STATUSES,
        backoff_factor=backoff_factor,
        backoff_max=min(30.0, budget),
        backoff_jitter=backoff_factor,
        respect_retry_after_header=True,
        retry_after_max=max(1, math.ceil(budget)),
        budget=budget,
    )


def _is_transient(response: requests.Response, error: ApiError) -> bool:
    status = response.status_code
    return status in RETRY_STATUSES or (status == 200 and error.problem == NOT_JSON)


def _status_label(error: CashfinError) -> str:
    """Return the HTTP status of a failed request as text, or ``error`` when no response arrived."""
    status = getattr(error, "status", None)
    return str(status) if isinstance(status, int) else "error"


def _is_count(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= 0


def _api_error_text(body: object) -> str:
    if isinstance(body, dict) and isinstance(body.get("error"), str):
        return body["error"]
    return "no error message"


def _describe_transport_error(error: Exception) -> str:
    if isinstance(error, requests.Timeout):
        return "timed out"
    if isinstance(error, requests.exceptions.ChunkedEncodingError):
        return f"the response body was cut short ({error})"
    reason = getattr(error, "args", [None])[0]
    inner = getattr(reason, "reason", None)
    return str(inner or reason or error)
