"""A client for the two read-only endpoints of the Cashfin Bookings API.

``CashfinClient.list_bookings`` pages through every booking at the maximum
page size, fetching pages 2..n concurrently once page 1 has reported the
total, and returns a ``Listing`` that records whether it is complete.
``CashfinClient.fetch_details`` fetches details for many ids with a bounded
thread pool. Transient failures (connection errors, read timeouts, 429, 502,
503, 504) are retried by urllib3 with exponential backoff and jitter, bounded
in count and in total time; 401 and 403 are never retried.
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
from typing import TYPE_CHECKING, Any
from urllib.parse import quote

import requests
from requests.adapters import HTTPAdapter
from urllib3.util.retry import Retry

from calsync import __version__
from calsync.errors import (
    ApiError,
    AuthenticationError,
    CashfinError,
    NotFoundError,
    SyncCancelledError,
    TransportError,
)

if TYPE_CHECKING:
    from calsync.config import Config

log = logging.getLogger(__name__)

LIST_PATH = "/business/booking/list"
DETAILS_PATH = "/business/booking/details/"

# The API documents 100 as the largest page size it serves.
MAX_PAGE_SIZE = 100

RETRY_STATUSES = (429, 502, 503, 504)


class BoundedRetry(Retry):
    """urllib3's ``Retry`` with a budget of seconds on top of its counts.

    The clock starts at the first failure of a request. Once the budget is
    spent no further attempt is made, and no single sleep (backoff or
    ``Retry-After``) runs past the budget's end.
    """

    def __init__(self, *args: Any, budget: float = 60.0, started: float | None = None, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.budget = budget
        self.started = started

    def new(self, **kw: Any) -> BoundedRetry:
        kw.setdefault("budget", self.budget)
        kw.setdefault("started", self.started if self.started is not None else time.monotonic())
        return super().new(**kw)

    def remaining(self) -> float:
        if self.started is None:
            return self.budget
        return self.budget - (time.monotonic() - self.started)

    def is_exhausted(self) -> bool:
        return super().is_exhausted() or self.remaining() <= 0

    def get_backoff_time(self) -> float:
        return max(0.0, min(super().get_backoff_time(), self.remaining()))

    def parse_retry_after(self, retry_after: str) -> float:
        return max(0.0, min(super().parse_retry_after(retry_after), self.remaining()))

    def increment(self, method: str | None = None, url: str | None = None, *args: Any, **kwargs: Any) -> BoundedRetry:
        response = kwargs.get("response")
        error = kwargs.get("error")
        cause = f"HTTP {response.status}" if response is not None else type(error).__name__
        new_retry = super().increment(method, url, *args, **kwargs)
        log.warning("retrying GET %s after %s (retry %d)", _strip_query(url), cause, len(new_retry.history))
        return new_retry


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
    ``retry_budget`` bounds, in seconds, the time one request may spend on
    retries. ``request_counts`` counts the requests made per endpoint
    (``list`` and ``details``). ``status_counts`` counts them per endpoint and
    final HTTP status, with ``"error"`` when no response arrived. A request
    retried by urllib3 counts once, with the status of its last attempt.
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
        self.session = self._build_session(client_secret, retries, retry_budget, backoff_factor)

    @staticmethod
    def _clamp_page_size(page_size: int) -> int:
        if page_size > MAX_PAGE_SIZE:
            log.warning("page size %d is above the API's maximum; using %d", page_size, MAX_PAGE_SIZE)
            return MAX_PAGE_SIZE
        return max(1, page_size)

    def _build_session(self, client_secret: str, retries: int, budget: float, backoff_factor: float) -> requests.Session:
        retry = BoundedRetry(
            total=retries,
            connect=retries,
            read=retries,
            status=retries,
            other=0,
            allowed_methods=frozenset({"GET"}),
            status_forcelist=RETRY_STATUSES,
            backoff_factor=backoff_factor,
            backoff_max=min(30.0, budget),
            backoff_jitter=backoff_factor,
            respect_retry_after_header=True,
            retry_after_max=max(1, math.ceil(budget)),
            raise_on_status=False,
            budget=budget,
        )
        adapter = HTTPAdapter(max_retries=retry, pool_connections=1, pool_maxsize=self.concurrency)

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
        """Send one GET and return the JSON body of a ``success: true`` response."""
        url = self.base_url + path
        try:
            response = self.session.get(url, params=params, timeout=self.timeout)
        except requests.exceptions.RetryError as error:
            self._count(endpoint, "error")
            raise TransportError(url, f"gave up after retries: {error}") from error
        except (requests.ConnectionError, requests.Timeout) as error:
            self._count(endpoint, "error")
            raise TransportError(url, _describe_transport_error(error)) from error
        except requests.RequestException as error:
            # A body cut short (ChunkedEncodingError) and other failures while reading the response.
            self._count(endpoint, "error")
            raise TransportError(url, f"{type(error).__name__}: {error}") from error

        self._count(endpoint, str(response.status_code))
        log.debug("GET %s %s -> %d", url, dict(params or {}), response.status_code)
        return self._decode(url, response)

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
            body = response.json()
        except ValueError:
            raise ApiError(url, status, "response is not JSON", response.text) from None

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
        """
        result = DetailsResult()
        ids = list(booking_ids)
        if not ids:
            return result

        with ThreadPoolExecutor(max_workers=self.concurrency, thread_name_prefix="calsync-details") as pool:
            futures = {booking_id: pool.submit(self.get_details, booking_id) for booking_id in ids}
            try:
                for booking_id, future in futures.items():
                    if cancel is not None and cancel.is_set():
                        raise SyncCancelledError("fetching details")
                    self._collect_details(result, booking_id, future.result)
            except (AuthenticationError, SyncCancelledError):
                for future in futures.values():
                    future.cancel()
                raise
        return result

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


def _is_count(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= 0


def _api_error_text(body: object) -> str:
    if isinstance(body, dict) and isinstance(body.get("error"), str):
        return body["error"]
    return "no error message"


def _describe_transport_error(error: Exception) -> str:
    if isinstance(error, requests.Timeout):
        return "timed out"
    reason = getattr(error, "args", [None])[0]
    inner = getattr(reason, "reason", None)
    return str(inner or reason or error)
