"""The Cashfin client against scripted HTTP servers on loopback: retries, errors and completeness."""

import json
import threading
from collections import defaultdict, deque

import pytest

from calsync.cashfin import MAX_PAGE_SIZE, BoundedRetry, CashfinClient
from calsync.errors import (
    ApiError,
    AuthenticationError,
    NotFoundError,
    RateLimitedError,
    TransportError,
)
from calsync.sandbox import Fault, Sandbox
from calsync.wsgi import make_server, server_url, start_server_thread, stop_server
from tests.conftest import SANDBOX_ANCHOR

SECRET = "client-secret"


class ScriptedApi:
    """A WSGI app that serves each path from a queue of scripted responses, then from a default."""

    def __init__(self) -> None:
        self.scripts: dict[str, deque] = defaultdict(deque)
        self.defaults: dict[str, tuple] = {}
        self.requests: list[tuple[str, str, str]] = []
        self.lock = threading.Lock()

    def script(self, path: str, *responses: tuple) -> None:
        self.scripts[path].extend(responses)

    def __call__(self, environ, start_response):
        path = environ["PATH_INFO"]
        with self.lock:
            self.requests.append((path, environ.get("REQUEST_URI", ""), environ.get("HTTP_AUTHORIZATION", "")))
            queue = self.scripts[path]
            status, headers, body = queue.popleft() if queue else self.defaults.get(path, (404, [], b"{}"))
        start_response(f"{status} Scripted", [("Content-Type", "application/json"), *headers])
        return [body if isinstance(body, bytes) else json.dumps(body).encode()]

    def count(self, path: str) -> int:
        return sum(1 for request in self.requests if request[0] == path)


@pytest.fixture
def scripted():
    api = ScriptedApi()
    server = make_server(api, "127.0.0.1", 0)
    start_server_thread(server)
    api.base_url = server_url(server)
    yield api
    stop_server(server)


def client_for(api, **options) -> CashfinClient:
    options.setdefault("backoff_factor", 0.01)
    return CashfinClient(api.base_url, SECRET, timeout=5, **options)


def page(rows: list[dict], total: int, page_number: int = 1, limit: int = 100) -> tuple:
    pages = -(-total // limit)
    body = {"success": True, "data": rows, "pagination": {"total": total, "page": page_number, "limit": limit, "pages": pages}}
    return (200, [], body)


LIST = "/business/booking/list"
DETAILS = "/business/booking/details/"


@pytest.mark.parametrize("status", [429, 502, 503, 504])
def test_transient_status_retried_then_succeeds(scripted, status):
    scripted.script(LIST, (status, [("Retry-After", "0")], {"success": False}), page([{"_id": "a"}], 1))

    listing = client_for(scripted).list_bookings()

    assert listing.complete
    assert list(listing.rows) == ["a"]
    assert scripted.count(LIST) == 2


def test_retry_after_read_and_capped_by_budget():
    retry = BoundedRetry(total=3, budget=10.0, respect_retry_after_header=True)

    assert retry.parse_retry_after("5") == 5
    assert retry.parse_retry_after("3600") == 10.0


def test_retry_policy_honours_retry_after():
    client = CashfinClient("http://127.0.0.1:9", SECRET)
    adapter = client.session.get_adapter("http://127.0.0.1:9")

    assert client.retry_policy.respect_retry_after_header
    assert set(client.retry_policy.status_forcelist) == {429, 500, 502, 503, 504}
    assert client.retry_policy.allowed_methods == frozenset({"GET"})
    # One retry loop in the client, under one budget, so urllib3 must not retry underneath it.
    assert adapter.max_retries.total == 0


def test_429_with_retry_after_retried(scripted):
    scripted.script(LIST, (429, [("Retry-After", "1")], {"success": False}), page([], 0))

    listing = client_for(scripted).list_bookings()

    assert listing.complete
    assert scripted.count(LIST) == 2


def test_retries_bounded_in_count(scripted):
    scripted.defaults[LIST] = (503, [], {"success": False, "error": "down"})

    with pytest.raises(ApiError) as raised:
        client_for(scripted, retries=2).list_bookings()

    assert raised.value.status == 503
    assert scripted.count(LIST) == 3


def test_retries_bounded_in_time(scripted):
    scripted.defaults[LIST] = (503, [], {"success": False})

    with pytest.raises(ApiError):
        client_for(scripted, retries=50, retry_budget=0.3, backoff_factor=0.1).list_bookings()

    # Backoffs of 0.2 s, 0.4 s and more spend the budget of 0.3 s long before the count of 50.
    assert scripted.count(LIST) < 5


def test_retry_after_beyond_budget_gives_up_at_once(scripted):
    scripted.defaults[LIST] = (503, [("Retry-After", "3600")], {"success": False})

    with pytest.raises(ApiError) as raised:
        client_for(scripted, retries=50, retry_budget=0.5).list_bookings()

    # Waiting out the budget would only end in another refusal.
    assert raised.value.status == 503
    assert scripted.count(LIST) == 1


@pytest.mark.parametrize("status", [401, 403])
def test_authentication_failure_not_retried(scripted, status):
    scripted.defaults[LIST] = (status, [], {"success": False, "error": "Unauthorized"})

    with pytest.raises(AuthenticationError) as raised:
        client_for(scripted).list_bookings()

    assert scripted.count(LIST) == 1
    assert raised.value.status == status
    assert SECRET not in str(raised.value)
    assert "client_secret" in str(raised.value)


def test_non_json_body_carries_status_and_excerpt(scripted):
    scripted.defaults[LIST] = (500, [], b"<html><body>Internal Server Error from the proxy</body></html>")

    with pytest.raises(ApiError) as raised:
        client_for(scripted).list_bookings()

    assert raised.value.status == 500
    assert "not JSON" in str(raised.value)
    assert "Internal Server Error from the proxy" in raised.value.excerpt


def test_success_false_carries_error_text(scripted):
    scripted.defaults[LIST] = (200, [], {"success": False, "error": "Business suspended"})

    with pytest.raises(ApiError) as raised:
        client_for(scripted).list_bookings()

    assert raised.value.status == 200
    assert "Business suspended" in str(raised.value)


def test_excerpt_is_short(scripted):
    scripted.defaults[LIST] = (500, [], b"x" * 50_000)

    with pytest.raises(ApiError) as raised:
        client_for(scripted).list_bookings()

    assert len(raised.value.excerpt) == ApiError.EXCERPT_CHARS


def test_authorization_header_is_secret_as_is(scripted):
    scripted.script(LIST, page([], 0))

    client_for(scripted).list_bookings()

    assert scripted.requests[0][2] == SECRET


def test_details_id_percent_encoded(scripted):
    odd_id = "a/b?c#d e"
    scripted.script(DETAILS + odd_id, (200, [], {"success": True, "data": {"_id": odd_id}}))

    details = client_for(scripted).get_details(odd_id)

    assert details == {"_id": odd_id}
    assert scripted.requests[0][1] == DETAILS + "a%2Fb%3Fc%23d%20e"


def test_details_404_means_not_found(scripted):
    scripted.script(DETAILS + "gone", (404, [], {"success": False, "error": "Booking not found"}))

    with pytest.raises(NotFoundError):
        client_for(scripted).get_details("gone")


def test_one_failing_detail_does_not_fail_others(scripted):
    scripted.script(DETAILS + "good", (200, [], {"success": True, "data": {"_id": "good"}}))
    scripted.script(DETAILS + "gone", (404, [], {"success": False, "error": "Booking not found"}))
    scripted.defaults[DETAILS + "bad"] = (200, [], b"truncated {")

    result = client_for(scripted).fetch_details(["good", "gone", "bad"])

    assert list(result.found) == ["good"]
    assert result.missing == {"gone"}
    assert list(result.failed) == ["bad"]
    assert "not JSON" in result.failed["bad"]


def test_connection_refused_is_transport_error():
    client = CashfinClient("http://127.0.0.1:9", SECRET, timeout=2, retries=1, backoff_factor=0.01)

    with pytest.raises(TransportError) as raised:
        client.list_bookings()

    assert "127.0.0.1:9" in str(raised.value)


def test_duplicate_rows_make_listing_incomplete(scripted):
    scripted.script(LIST, page([{"_id": "a"}, {"_id": "b"}], 3, 1, 2), page([{"_id": "b"}], 3, 2, 2))

    listing = client_for(scripted, page_size=2).list_bookings()

    assert list(listing.rows) == ["a", "b"]
    assert not listing.complete
    assert "received 2 of 3" in listing.problems[0]


def test_failed_page_makes_listing_incomplete(scripted):
    scripted.script(LIST, page([{"_id": "a"}, {"_id": "b"}], 3, 1, 2))
    scripted.defaults[LIST] = (500, [], {"success": False, "error": "boom"})

    listing = client_for(scripted, page_size=2, retries=0).list_bookings()

    assert not listing.complete
    assert "page 2 failed" in listing.problems[0]


def test_row_without_id_counted_and_skipped(scripted, caplog):
    scripted.script(LIST, page([{"_id": "a"}, {"title": "no id"}], 2))

    listing = client_for(scripted).list_bookings()

    assert list(listing.rows) == ["a"]
    assert listing.malformed == 1
    assert listing.complete
    assert "no string _id" in caplog.text


def test_invalid_pagination_block_rejected(scripted):
    scripted.script(LIST, (200, [], {"success": True, "data": [], "pagination": {"total": "many"}}))

    with pytest.raises(ApiError, match="invalid pagination"):
        client_for(scripted).list_bookings()


def test_page_size_above_maximum_clamped(caplog):
    client = CashfinClient("http://127.0.0.1:9", SECRET, page_size=500)

    assert client.page_size == MAX_PAGE_SIZE
    assert "above the API's maximum" in caplog.text


@pytest.mark.parametrize("page_size", [100, 30, 7])
def test_listing_sandbox_at_page_sizes(page_size):
    with Sandbox(secret=SECRET, count=90, anchor=SANDBOX_ANCHOR) as sandbox:
        client = CashfinClient(sandbox.base_url, SECRET, page_size=page_size, concurrency=3)

        listing = client.list_bookings()

        assert listing.complete
        assert set(listing.rows) == set(sandbox.ids())
        assert sandbox.request_counts()["list"] == -(-90 // page_size)
        assert client.status_counts[("list", "200")] == -(-90 // page_size)


def test_count_bookings_probe():
    with Sandbox(secret=SECRET, count=12, anchor=SANDBOX_ANCHOR) as sandbox:
        assert CashfinClient(sandbox.base_url, SECRET).count_bookings() == 12
        assert "limit=1" in sandbox.request_log()[0][1]


def test_429_pauses_every_worker():
    concurrency = 4
    with Sandbox(secret=SECRET, count=160, anchor=SANDBOX_ANCHOR, latency_ms=30) as sandbox:
        fault = sandbox.faults.add(Fault("429", endpoint="details", on_requests={9}, retry_after_seconds=1))
        client = CashfinClient(sandbox.base_url, SECRET, concurrency=concurrency, backoff_factor=0.01)

        result = client.fetch_details(sandbox.ids())

        details = [target for _, target in sandbox.request_log() if "/details/" in target]
    assert fault.fired == 1
    assert len(result.found) == 160
    retried = next(target for target in details if details.count(target) == 2)
    first = details.index(retried)
    second = details.index(retried, first + 1)
    # Between the 429 and its retry the sandbox serves only requests sent before the pool
    # paused. That is at most one per other worker, and one more each if they sent it while
    # the 429 was on its way. Without a shared pause the other workers would send about 100
    # requests during the one-second Retry-After.
    assert second - first - 1 <= 2 * (concurrency - 1)
    assert client.backoff.rate_limit_events == 1
    # The limit halved to 2 and grew back by one per run of successes.
    assert client.backoff.limit == concurrency


def test_persistent_429_stops_whole_pool():
    concurrency = 8
    with Sandbox(secret=SECRET, count=100, anchor=SANDBOX_ANCHOR) as sandbox:
        fault = sandbox.faults.add(Fault("429", endpoint="details", retry_after_seconds=0))
        client = CashfinClient(sandbox.base_url, SECRET, concurrency=concurrency, backoff_factor=0.01)

        result = client.fetch_details(sandbox.ids())

        sent = sandbox.request_counts()["details"]
    assert len(result.failed) == 100
    assert client.backoff.gave_up
    assert sent == fault.fired
    # Each request alone would retry 4 times: 500 requests. The pool halves its
    # limit on every 429 and stops after 5 in a row, so most ids are never sent.
    assert sent <= 5 * concurrency
    unsent = [booking_id for booking_id, error in result.failed.items() if "not sent" in error]
    assert len(unsent) >= 100 - sent


def test_pool_gave_up_refuses_list(scripted):
    scripted.defaults[LIST] = (429, [("Retry-After", "0")], {"success": False, "error": "slow down"})
    client = client_for(scripted, retries=2)

    with pytest.raises(ApiError) as raised:
        client.list_bookings()
    with pytest.raises(RateLimitedError):
        client.count_bookings()

    assert raised.value.status == 429
    assert scripted.count(LIST) == 3
