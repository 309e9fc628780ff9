"""Faults injected by the sandbox Cashfin API, as a client sees them over real HTTP.

Every HTTP test talks to a real waitress server on 127.0.0.1.
"""

from __future__ import annotations

import signal
import subprocess
import sys
import threading
from collections.abc import Iterator
from typing import Any

import pytest
import requests

from calsync.cli import main
from calsync.sandbox import Fault, Sandbox
from calsync.sandbox_faults import parse_fault_spec
from tests.conftest import SANDBOX_ANCHOR
from tests.helpers import threads_end, wait_until

LIST = "/business/booking/list"
DETAILS = "/business/booking/details/"
TOTAL = 300


@pytest.fixture
def client(sandbox: Sandbox) -> Iterator[requests.Session]:
    """A session that sends the sandbox's secret and ignores proxy settings from the environment."""
    with requests.Session() as session:
        session.trust_env = False
        session.headers["Authorization"] = sandbox.secret
        yield session


def get_list(client: requests.Session, sandbox: Sandbox, timeout: float = 10, **params: Any) -> requests.Response:
    return client.get(sandbox.base_url + LIST, params=params, timeout=timeout)


def get_details(client: requests.Session, sandbox: Sandbox, booking_id: str) -> requests.Response:
    return client.get(sandbox.base_url + DETAILS + booking_id, timeout=10)






# --- One test per kind -------------------------------------------------------


def test_429_sends_retry_after(client: requests.Session, sandbox: Sandbox) -> None:
    fault = sandbox.faults.add(Fault("429", endpoint="list"))

    response = get_list(client, sandbox)

    assert response.status_code == 429
    assert response.headers["Retry-After"] == "1"
    assert response.json() == {"success": False, "error": "Too many requests"}
    assert fault.fired == 1


def test_429_retry_after_configurable(client: requests.Session, sandbox: Sandbox) -> None:
    sandbox.faults.add(Fault("429", retry_after_seconds=7))

    response = get_list(client, sandbox)

    assert response.status_code == 429
    assert response.headers["Retry-After"] == "7"


@pytest.mark.parametrize(
    ("kind", "status", "error"),
    [("500", 500, "Internal server error"), ("503", 503, "Service unavailable")],
)
def test_server_errors_have_json_body(
    client: requests.Session, sandbox: Sandbox, kind: str, status: int, error: str
) -> None:
    fault = sandbox.faults.add(Fault(kind))

    response = get_list(client, sandbox)

    assert response.status_code == status
    assert response.headers["Content-Type"].startswith("application/json")
    assert response.json() == {"success": False, "error": error}
    assert fault.fired == 1


def test_502_has_html_body(client: requests.Session, sandbox: Sandbox) -> None:
    fault = sandbox.faults.add(Fault("502", endpoint="details"))

    response = get_details(client, sandbox, sandbox.ids()[0])

    assert response.status_code == 502
    assert response.headers["Content-Type"].startswith("text/html")
    assert "<h1>502 Bad Gateway</h1>" in response.text
    with pytest.raises(requests.JSONDecodeError):
        response.json()
    assert fault.fired == 1


def test_hang_outlasts_client_timeout(client: requests.Session, sandbox: Sandbox) -> None:
    fault = sandbox.faults.add(Fault("hang", endpoint="list", hang_seconds=5))

    with pytest.raises(requests.ReadTimeout):
        get_list(client, sandbox, timeout=0.5)
    assert fault.fired == 1


def test_reset_closes_without_response(client: requests.Session, sandbox: Sandbox) -> None:
    fault = sandbox.faults.add(Fault("reset", endpoint="list", times=1))

    with pytest.raises(requests.ConnectionError) as raised:
        get_list(client, sandbox)

    # requests wraps urllib3's ProtocolError, whose second argument is the socket error.
    protocol_error = raised.value.args[0]
    assert isinstance(protocol_error.args[1], ConnectionResetError)
    assert fault.fired == 1
    assert get_list(client, sandbox).status_code == 200


def test_truncated_body_declares_full_length(client: requests.Session, sandbox: Sandbox) -> None:
    whole = get_list(client, sandbox, limit=20).content
    fault = sandbox.faults.add(Fault("truncated", endpoint="list"))

    response = client.get(sandbox.base_url + LIST, params={"limit": 20}, timeout=10, stream=True)

    assert response.status_code == 200
    assert response.headers["Content-Length"] == str(len(whole))
    with pytest.raises(requests.exceptions.ChunkedEncodingError, match="IncompleteRead"):
        _ = response.content
    response.close()
    assert fault.fired == 1


def test_truncated_without_stream_raises(client: requests.Session, sandbox: Sandbox) -> None:
    sandbox.faults.add(Fault("truncated", endpoint="details"))

    with pytest.raises(requests.exceptions.ChunkedEncodingError):
        get_details(client, sandbox, sandbox.ids()[0])


def test_not_json_is_plain_text(client: requests.Session, sandbox: Sandbox) -> None:
    fault = sandbox.faults.add(Fault("not-json"))

    response = get_list(client, sandbox)

    assert response.status_code == 200
    assert response.headers["Content-Type"].startswith("text/plain")
    with pytest.raises(requests.JSONDecodeError):
        response.json()
    assert fault.fired == 1


def test_success_false_has_200(client: requests.Session, sandbox: Sandbox) -> None:
    fault = sandbox.faults.add(Fault("success-false", error="Database timeout"))

    response = get_list(client, sandbox)

    assert response.status_code == 200
    assert response.json() == {"success": False, "error": "Database timeout"}
    assert fault.fired == 1


def test_repeat_rows_repeats_previous_page(client: requests.Session, sandbox: Sandbox) -> None:
    fault = sandbox.faults.add(Fault("repeat-rows", endpoint="list"))

    first = get_list(client, sandbox, page=1, limit=10).json()
    assert fault.fired == 0
    second = get_list(client, sandbox, page=2, limit=10).json()

    assert fault.fired == 1
    assert [row["_id"] for row in second["data"]] == [row["_id"] for row in first["data"]]
    assert second["pagination"] == {"total": TOTAL, "page": 2, "limit": 10, "pages": 30}


def test_total_inflated_adds_rows(client: requests.Session, sandbox: Sandbox) -> None:
    fault = sandbox.faults.add(Fault("total-inflated", total_extra=3))

    first = get_list(client, sandbox, page=1, limit=100).json()
    last = get_list(client, sandbox, page=4, limit=100).json()

    assert first["pagination"]["total"] == TOTAL + 3
    assert first["pagination"]["pages"] == 4
    assert len(first["data"]) == 100
    assert last["data"] == []
    assert fault.fired == 2


def test_empty_page_in_middle(client: requests.Session, sandbox: Sandbox) -> None:
    fault = sandbox.faults.add(Fault("empty-page", endpoint="list", on_requests={2}))

    pages = [get_list(client, sandbox, page=page, limit=100).json() for page in (1, 2, 3)]

    assert [len(page["data"]) for page in pages] == [100, 0, 100]
    assert pages[1]["success"] is True
    assert pages[1]["pagination"] == {"total": TOTAL, "page": 2, "limit": 100, "pages": 3}
    assert fault.fired == 1


def test_not_found_hits_one_booking(client: requests.Session, sandbox: Sandbox) -> None:
    first_id, second_id = sandbox.ids()[:2]
    fault = sandbox.faults.add(Fault("not-found", booking_id=second_id))

    missing = get_details(client, sandbox, second_id)
    present = get_details(client, sandbox, first_id)

    assert missing.status_code == 404
    assert missing.json() == {"success": False, "error": "Booking not found"}
    assert present.status_code == 200
    assert present.json()["data"]["_id"] == first_id
    assert get_list(client, sandbox).status_code == 200
    assert fault.fired == 1


def test_unauthorized_rejects_right_secret(client: requests.Session, sandbox: Sandbox) -> None:
    fault = sandbox.faults.add(Fault("unauthorized"))

    listed = get_list(client, sandbox)
    details = get_details(client, sandbox, sandbox.ids()[0])

    assert listed.status_code == 401
    assert listed.json() == {"success": False, "error": "Unauthorized"}
    assert details.status_code == 401
    assert fault.fired == 2


def test_slow_returns_full_response(client: requests.Session, sandbox: Sandbox) -> None:
    # Checks that the fault fires and the response is intact, not the clock: tests never assert durations.
    fault = sandbox.faults.add(Fault("slow", delay_ms=50))

    response = get_list(client, sandbox)

    assert response.status_code == 200
    assert len(response.json()["data"]) == 10
    assert fault.fired == 1


# --- Which requests a fault hits ---------------------------------------------


def test_request_numbers_select_requests(client: requests.Session, sandbox: Sandbox) -> None:
    fault = sandbox.faults.add(Fault("503", endpoint="list", on_requests={2, 3}))

    statuses = [get_list(client, sandbox).status_code for _ in range(4)]

    assert statuses == [200, 503, 503, 200]
    assert fault.fired == 2


def test_request_numbers_count_per_endpoint(client: requests.Session, sandbox: Sandbox) -> None:
    booking_id = sandbox.ids()[0]
    fault = sandbox.faults.add(Fault("500", on_requests={2}))

    details_statuses = [get_details(client, sandbox, booking_id).status_code for _ in range(3)]
    list_statuses = [get_list(client, sandbox).status_code for _ in range(3)]

    assert details_statuses == [200, 500, 200]
    assert list_statuses == [200, 500, 200]
    assert fault.fired == 2


def test_endpoint_limits_fault(client: requests.Session, sandbox: Sandbox) -> None:
    sandbox.faults.add(Fault("503", endpoint="details"))

    assert get_list(client, sandbox).status_code == 200
    assert get_details(client, sandbox, sandbox.ids()[0]).status_code == 503


def test_times_limits_firing(client: requests.Session, sandbox: Sandbox) -> None:
    fault = sandbox.faults.add(Fault("500", times=2))

    statuses = [get_list(client, sandbox).status_code for _ in range(4)]

    assert statuses == [500, 500, 200, 200]
    assert fault.fired == 2


def test_reset_counts_restarts_numbers(client: requests.Session, sandbox: Sandbox) -> None:
    fault = sandbox.faults.add(Fault("503", endpoint="list", on_requests={1}))

    assert get_list(client, sandbox).status_code == 503
    assert get_list(client, sandbox).status_code == 200
    sandbox.reset_counts()
    assert get_list(client, sandbox).status_code == 503
    assert fault.fired == 2


def test_first_added_fault_wins(client: requests.Session, sandbox: Sandbox) -> None:
    first = sandbox.faults.add(Fault("503"))
    second = sandbox.faults.add(Fault("500"))

    assert get_list(client, sandbox).status_code == 503
    assert first.fired == 1
    assert second.fired == 0


def test_clear_removes_faults(client: requests.Session, sandbox: Sandbox) -> None:
    fault = sandbox.faults.add(Fault("503"))
    assert get_list(client, sandbox).status_code == 503

    sandbox.faults.clear()

    assert len(sandbox.faults) == 0
    assert get_list(client, sandbox).status_code == 200
    assert fault.fired == 1


def test_remove_keeps_other_faults(client: requests.Session, sandbox: Sandbox) -> None:
    removed = sandbox.faults.add(Fault("503", endpoint="list"))
    remaining = sandbox.faults.add(Fault("502", endpoint="details"))

    sandbox.faults.remove(removed)

    assert list(sandbox.faults) == [remaining]
    assert get_list(client, sandbox).status_code == 200
    assert get_details(client, sandbox, sandbox.ids()[0]).status_code == 502


def test_faults_skip_unknown_paths(client: requests.Session, sandbox: Sandbox) -> None:
    fault = sandbox.faults.add(Fault("503"))

    response = client.get(sandbox.base_url + "/business/other", timeout=10)

    assert response.status_code == 404
    assert fault.fired == 0


def test_constructor_faults_registered() -> None:
    fault = Fault("503", endpoint="list", on_requests={1})
    with Sandbox(count=5, anchor=SANDBOX_ANCHOR, faults=[fault]) as sandbox, requests.Session() as session:
        session.trust_env = False
        session.headers["Authorization"] = sandbox.secret

        assert list(sandbox.faults) == [fault]
        assert session.get(sandbox.base_url + LIST, timeout=10).status_code == 503


# --- Stopping with a hanging request -----------------------------------------


def test_stop_releases_hanging_request() -> None:
    threads_before = set(threading.enumerate())
    sandbox = Sandbox(count=5, anchor=SANDBOX_ANCHOR)
    fault = sandbox.faults.add(Fault("hang", hang_seconds=600))
    sandbox.start()
    outcomes: list[object] = []

    def request_list() -> None:
        with requests.Session() as session:
            session.trust_env = False
            try:
                outcomes.append(session.get(sandbox.base_url + LIST, timeout=30).status_code)
            except requests.RequestException as error:
                outcomes.append(error)

    client_thread = threading.Thread(target=request_list)
    client_thread.start()
    wait_until(lambda: fault.fired == 1)

    sandbox.stop()
    client_thread.join(10)

    assert not sandbox.running
    assert not client_thread.is_alive()
    assert len(outcomes) == 1
    assert threads_end(threads_before)


def test_restart_after_stop_hangs_again() -> None:
    sandbox = Sandbox(count=5, anchor=SANDBOX_ANCHOR)
    fault = sandbox.faults.add(Fault("hang", hang_seconds=5))
    sandbox.start()
    sandbox.stop()

    with sandbox, requests.Session() as session:
        session.trust_env = False
        with pytest.raises(requests.ReadTimeout):
            session.get(sandbox.base_url + LIST, timeout=0.5)
    assert fault.fired == 1


# --- Validation and the --fault syntax ---------------------------------------


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"kind": "teapot"}, "unknown fault kind"),
        ({"kind": "503", "endpoint": "both"}, "invalid fault endpoint"),
        ({"kind": "503", "on_requests": {0}}, "on_requests"),
        ({"kind": "503", "on_requests": set()}, "on_requests"),
        ({"kind": "503", "times": 0}, "times"),
        ({"kind": "repeat-rows", "endpoint": "details"}, "list pages"),
        ({"kind": "empty-page", "booking_id": "abc"}, "list pages"),
        ({"kind": "not-found", "endpoint": "list"}, "details requests only"),
        ({"kind": "503", "endpoint": "list", "booking_id": "abc"}, "booking_id"),
        ({"kind": "hang", "hang_seconds": -1}, "hang_seconds"),
        ({"kind": "slow", "delay_ms": -1}, "delay_ms"),
        ({"kind": "total-inflated", "total_extra": 0}, "total_extra"),
    ],
)
def test_invalid_fault_rejected(options: dict[str, Any], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        Fault(**options)


def test_parse_spec_kind_only() -> None:
    fault = parse_fault_spec("503")

    assert fault.kind == "503"
    assert fault.endpoint == "any"
    assert fault.on_requests is None
    assert fault.booking_id is None


def test_parse_spec_every_part() -> None:
    fault = parse_fault_spec("hang=2.5:details@1,3/abc123")

    assert fault.kind == "hang"
    assert fault.hang_seconds == 2.5
    assert fault.endpoint == "details"
    assert fault.on_requests == frozenset({1, 3})
    assert fault.booking_id == "abc123"


@pytest.mark.parametrize(
    ("spec", "field", "value"),
    [
        ("429=9", "retry_after_seconds", 9),
        ("slow=250:list", "delay_ms", 250.0),
        ("total-inflated=4", "total_extra", 4),
        ("not-found/6560a1b2c3d4e5f601234567", "booking_id", "6560a1b2c3d4e5f601234567"),
        ("empty-page:list@2", "on_requests", frozenset({2})),
    ],
)
def test_parse_spec_fields(spec: str, field: str, value: object) -> None:
    assert getattr(parse_fault_spec(spec), field) == value


@pytest.mark.parametrize(
    ("spec", "message"),
    [
        ("", "expected KIND"),
        ("503:", "expected KIND"),
        ("teapot", "unknown fault kind"),
        ("503@x", "must be integers"),
        ("503@1,,2", "must be integers"),
        ("503@0", "on_requests"),
        ("503=5", "only these kinds take =VALUE"),
        ("hang=soon", "not a valid float"),
        ("429=1.5", "not a valid int"),
        ("503:everywhere", "invalid fault endpoint"),
    ],
)
def test_parse_spec_invalid(spec: str, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        parse_fault_spec(spec)


def test_cli_rejects_invalid_fault(caplog: pytest.LogCaptureFixture) -> None:
    assert main(["sandbox", "--port", "0", "--fault", "teapot"]) == 2
    assert "unknown fault kind" in caplog.text


def test_cli_serves_fault() -> None:
    command = [
        sys.executable, "-u", "-m", "calsync", "sandbox",
        "--port", "0", "--count", "5", "--fault", "503:list@1",
    ]
    with subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True) as process:
        try:
            banner = process.stdout.readline() if process.stdout else ""
            base_url = banner.rsplit(" at ", 1)[1].strip()
            with requests.Session() as session:
                session.trust_env = False
                session.headers["Authorization"] = "sandbox-secret"
                first = session.get(base_url + LIST, timeout=10)
                second = session.get(base_url + LIST, timeout=10)
        finally:
            process.send_signal(signal.SIGINT)
            try:
                process.wait(10)
            except subprocess.TimeoutExpired:
                process.kill()

    assert first.status_code == 503
    assert second.status_code == 200
