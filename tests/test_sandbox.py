"""The sandbox Cashfin API: its HTTP behaviour, its data set and its mutation helpers.

Every HTTP test talks to a real waitress server on 127.0.0.1.
"""

from __future__ import annotations

import _thread
import logging
import math
import re
import socket
import threading
import zoneinfo
from collections import Counter
from collections.abc import Iterator
from datetime import UTC, date, datetime, timedelta
from typing import Any
from urllib.parse import quote

import pytest
import requests

from calsync.sandbox import (
    DETAIL_FIELDS,
    LIST_FIELDS,
    PRIORITIES,
    STATUSES,
    TYPES,
    Sandbox,
    format_timestamp,
    generate_bookings,
    parse_timestamp,
    snapshot_time,
)
from tests.helpers import threads_end, wait_until

LIST = "/business/booking/list"
DETAILS = "/business/booking/details/"
TOTAL = 300
TIMESTAMP = re.compile(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z")
OBJECT_ID = re.compile(r"[0-9a-f]{24}")
# The anchor of the ``sandbox`` fixture in conftest.py.
SANDBOX_ANCHOR = date(2026, 1, 15)


@pytest.fixture
def client(sandbox: Sandbox) -> Iterator[requests.Session]:
    """A session that sends the sandbox's secret and ignores proxy settings from the environment."""
    with requests.Session() as session:
        session.trust_env = False
        session.headers["Authorization"] = sandbox.secret
        yield session


@pytest.fixture(scope="module")
def dataset() -> list[dict[str, Any]]:
    return generate_bookings(anchor=SANDBOX_ANCHOR)


def get_list(client: requests.Session, sandbox: Sandbox, **params: Any) -> requests.Response:
    return client.get(sandbox.base_url + LIST, params=params, timeout=10)


def get_details(client: requests.Session, sandbox: Sandbox, raw_id: str) -> requests.Response:
    return client.get(sandbox.base_url + DETAILS + raw_id, timeout=10)


def list_all(client: requests.Session, sandbox: Sandbox, limit: int, **filters: Any) -> list[dict]:
    first = get_list(client, sandbox, page=1, limit=limit, **filters).json()
    rows = list(first["data"])
    for page in range(2, first["pagination"]["pages"] + 1):
        rows += get_list(client, sandbox, page=page, limit=limit, **filters).json()["data"]
    return rows


# --- Authentication and error shapes -----------------------------------------


def test_missing_authorization_returns_401(sandbox: Sandbox) -> None:
    with requests.Session() as session:
        session.trust_env = False
        reply = session.get(sandbox.base_url + LIST, timeout=10)

    assert reply.status_code == 401
    assert reply.json() == {"success": False, "error": "Unauthorized"}
    assert reply.headers["Content-Type"] == "application/json; charset=utf-8"


@pytest.mark.parametrize("value", ["wrong", "Bearer sandbox-secret", "SANDBOX-SECRET", "sandbox-secret2", ""])
def test_wrong_authorization_returns_401(client: requests.Session, sandbox: Sandbox, value: str) -> None:
    client.headers["Authorization"] = value
    for path in (LIST, DETAILS + sandbox.ids()[0]):
        reply = client.get(sandbox.base_url + path, timeout=10)

        assert reply.status_code == 401, path
        assert reply.json() == {"success": False, "error": "Unauthorized"}


def test_custom_secret_accepted() -> None:
    with Sandbox(secret="s3cr3t-ü", count=5, anchor=SANDBOX_ANCHOR) as sandbox, requests.Session() as session:
        session.trust_env = False
        session.headers["Authorization"] = "s3cr3t-ü".encode()
        assert session.get(sandbox.base_url + LIST, timeout=10).status_code == 200

        session.headers["Authorization"] = "sandbox-secret"
        assert session.get(sandbox.base_url + LIST, timeout=10).status_code == 401


def test_empty_secret_rejected() -> None:
    with pytest.raises(ValueError, match="secret"):
        Sandbox(secret="", count=1)


def test_unknown_path_returns_404_json(client: requests.Session, sandbox: Sandbox) -> None:
    for path in ("/", "/business/booking", "/business/booking/lists", DETAILS, DETAILS + "a/b"):
        reply = client.get(sandbox.base_url + path, timeout=10)

        assert reply.status_code == 404, path
        assert reply.json() == {"success": False, "error": "Route not found"}, path
        assert reply.headers["Content-Type"] == "application/json; charset=utf-8"


def test_non_get_returns_405(client: requests.Session, sandbox: Sandbox) -> None:
    for method in ("POST", "PUT", "DELETE", "PATCH"):
        reply = client.request(method, sandbox.base_url + LIST, timeout=10)

        assert reply.status_code == 405, method
        assert reply.headers["Allow"] == "GET"
        assert reply.json()["success"] is False
        assert method in reply.json()["error"]


def test_trailing_slash_accepted(client: requests.Session, sandbox: Sandbox) -> None:
    assert client.get(sandbox.base_url + LIST + "/", timeout=10).status_code == 200


# --- Listing: pagination -----------------------------------------------------


def test_limit_defaults_to_10(client: requests.Session, sandbox: Sandbox) -> None:
    body = get_list(client, sandbox).json()

    assert body["success"] is True
    assert len(body["data"]) == 10
    assert body["pagination"] == {"total": TOTAL, "page": 1, "limit": 10, "pages": 30}


@pytest.mark.parametrize("limit", [101, 500, 10**30])
def test_limit_capped_at_100(client: requests.Session, sandbox: Sandbox, limit: int) -> None:
    body = get_list(client, sandbox, limit=limit).json()

    assert len(body["data"]) == 100
    assert body["pagination"] == {"total": TOTAL, "page": 1, "limit": 100, "pages": 3}


@pytest.mark.parametrize("limit", [1, 7, 25, 100])
def test_pages_cover_every_booking_once(client: requests.Session, sandbox: Sandbox, limit: int) -> None:
    first = get_list(client, sandbox, limit=limit).json()
    rows = list_all(client, sandbox, limit)
    ids = [row["_id"] for row in rows]

    assert first["pagination"]["pages"] == math.ceil(TOTAL / limit)
    assert len(ids) == TOTAL
    assert len(set(ids)) == TOTAL
    assert ids == sandbox.ids()


def test_last_page_holds_remainder(client: requests.Session, sandbox: Sandbox) -> None:
    # 300 = 42 * 7 + 6
    body = get_list(client, sandbox, page=43, limit=7).json()

    assert len(body["data"]) == 6
    assert body["pagination"] == {"total": TOTAL, "page": 43, "limit": 7, "pages": 43}


def test_page_past_end_is_empty(client: requests.Session, sandbox: Sandbox) -> None:
    for page in (31, 1000):
        body = get_list(client, sandbox, page=page).json()

        assert body["success"] is True
        assert body["data"] == []
        assert body["pagination"] == {"total": TOTAL, "page": page, "limit": 10, "pages": 30}


@pytest.mark.parametrize(
    ("name", "value"),
    [("page", "0"), ("page", "-1"), ("page", "abc"), ("page", "1.5"), ("page", " 2"), ("page", "+2"),
     ("limit", "0"), ("limit", "-10"), ("limit", "ten"), ("limit", "1e2"), ("limit", "٣")],
)
def test_invalid_page_or_limit_returns_400(
    client: requests.Session, sandbox: Sandbox, name: str, value: str
) -> None:
    reply = get_list(client, sandbox, **{name: value})

    assert reply.status_code == 400
    body = reply.json()
    assert body["success"] is False
    assert name in body["error"]
    assert repr(value) in body["error"]


def test_empty_page_and_limit_use_defaults(client: requests.Session, sandbox: Sandbox) -> None:
    reply = client.get(sandbox.base_url + LIST + "?page=&limit=&status=&search=", timeout=10)

    assert reply.status_code == 200
    assert reply.json()["pagination"] == {"total": TOTAL, "page": 1, "limit": 10, "pages": 30}


def test_list_order_newest_created_first(client: requests.Session, sandbox: Sandbox) -> None:
    rows = list_all(client, sandbox, 100)
    keys = [(row["createdat"], row["_id"]) for row in rows]

    for newer, older in zip(keys, keys[1:]):
        assert newer[0] >= older[0]
        if newer[0] == older[0]:
            assert newer[1] < older[1]


def test_list_order_breaks_ties_by_id(dataset: list[dict]) -> None:
    created = Counter(booking["createdat"] for booking in dataset)
    assert max(created.values()) >= 2, "the data set should contain a createdat tie"


# --- Listing: filters --------------------------------------------------------


@pytest.mark.parametrize("status", STATUSES)
def test_status_filter_exact(client: requests.Session, sandbox: Sandbox, status: str) -> None:
    rows = list_all(client, sandbox, 100, status=status)
    expected = [i for i in sandbox.ids() if sandbox.get(i)["status"] == status]

    assert rows
    assert {row["status"] for row in rows} == {status}
    assert [row["_id"] for row in rows] == expected


def test_status_totals_add_up(client: requests.Session, sandbox: Sandbox) -> None:
    totals = [get_list(client, sandbox, status=s).json()["pagination"]["total"] for s in STATUSES]

    assert sum(totals) == TOTAL


@pytest.mark.parametrize("status", ["Scheduled", "noshow", "done", "scheduled,completed"])
def test_unknown_status_matches_nothing(client: requests.Session, sandbox: Sandbox, status: str) -> None:
    body = get_list(client, sandbox, status=status).json()

    assert body["data"] == []
    assert body["pagination"] == {"total": 0, "page": 1, "limit": 10, "pages": 0}


def test_search_title_case_insensitive(client: requests.Session, sandbox: Sandbox) -> None:
    lower = list_all(client, sandbox, 100, search="yoga")
    upper = list_all(client, sandbox, 100, search="YOGA CLASS")

    assert lower
    assert all("yoga" in row["title"].lower() for row in lower)
    assert [row["_id"] for row in upper] == [row["_id"] for row in lower]


def test_search_matches_participant_name(client: requests.Session, sandbox: Sandbox) -> None:
    target = next(
        i for i in sandbox.ids()
        if sandbox.get(i)["participant"]["name"] not in sandbox.get(i)["title"]
    )
    name = sandbox.get(target)["participant"]["name"]

    rows = list_all(client, sandbox, 100, search=name.swapcase())

    assert target in [row["_id"] for row in rows]
    for row in rows:
        booking = sandbox.get(row["_id"])
        assert name.lower() in (booking["title"] + "|" + booking["participant"]["name"]).lower()


def test_search_non_ascii_and_specials(client: requests.Session, sandbox: Sandbox) -> None:
    for needle in ("NGŨGĨ", "🎂", "c:\\users", "vat & paye", "; tax,"):
        rows = get_list(client, sandbox, search=needle).json()["data"]

        assert len(rows) == 1, needle


def test_search_and_status_combined(client: requests.Session, sandbox: Sandbox) -> None:
    rows = list_all(client, sandbox, 100, search="consultation", status="completed")

    assert rows
    assert all(row["status"] == "completed" for row in rows)
    assert all("consultation" in row["title"].lower() for row in rows)


def test_search_without_match(client: requests.Session, sandbox: Sandbox) -> None:
    body = get_list(client, sandbox, search="no such booking anywhere").json()

    assert body["data"] == []
    assert body["pagination"]["total"] == 0


# --- Rows and details --------------------------------------------------------


def test_list_rows_carry_only_list_fields(client: requests.Session, sandbox: Sandbox) -> None:
    rows = list_all(client, sandbox, 100)

    for row in rows:
        assert set(row) <= set(LIST_FIELDS), row["_id"]
        assert "updatedat" not in row
        assert set(LIST_FIELDS) - set(row) <= {"endtime"}, row["_id"]
    assert sum("endtime" not in row for row in rows) == 1


def test_details_carry_every_field(client: requests.Session, sandbox: Sandbox) -> None:
    for booking_id in sandbox.ids()[:40]:
        reply = get_details(client, sandbox, booking_id)
        body = reply.json()

        assert reply.status_code == 200
        assert reply.headers["Content-Type"] == "application/json; charset=utf-8"
        assert body["success"] is True
        assert set(DETAIL_FIELDS) - set(body["data"]) <= {"endtime"}
        assert body["data"] == sandbox.get(booking_id)


def test_details_match_list_row(client: requests.Session, sandbox: Sandbox) -> None:
    row = get_list(client, sandbox, limit=1).json()["data"][0]
    details = get_details(client, sandbox, row["_id"]).json()["data"]

    assert {name: details[name] for name in row} == row


def test_details_unknown_id_returns_404(client: requests.Session, sandbox: Sandbox) -> None:
    for raw_id in ("000000000000000000000000", "nope", "%20"):
        reply = get_details(client, sandbox, raw_id)

        assert reply.status_code == 404
        assert reply.json() == {"success": False, "error": "Booking not found"}


def test_details_id_percent_decoded(client: requests.Session, sandbox: Sandbox) -> None:
    plain = sandbox.ids()[0]
    encoded = "".join(f"%{ord(c):02X}" for c in plain)
    unusual = sandbox.add({"_id": "a b/c?d#é", "title": "Odd id"})["_id"]

    assert get_details(client, sandbox, encoded).json()["data"]["_id"] == plain
    assert get_details(client, sandbox, quote(unusual, safe="")).json()["data"]["_id"] == unusual


def test_details_invalid_utf8_id_returns_400(client: requests.Session, sandbox: Sandbox) -> None:
    reply = get_details(client, sandbox, "%FF%FE")

    assert reply.status_code == 400
    assert reply.json()["success"] is False


def test_body_is_raw_utf8(client: requests.Session, sandbox: Sandbox) -> None:
    target = next(i for i in sandbox.ids() if "🎂" in sandbox.get(i)["title"])
    reply = get_details(client, sandbox, target)

    assert "🎂".encode() in reply.content
    assert reply.json()["data"]["title"] == "Birthday photo shoot 🎂📸"
    assert int(reply.headers["Content-Length"]) == len(reply.content)


# --- Data set ----------------------------------------------------------------


def test_generate_deterministic() -> None:
    first = generate_bookings(120, seed=3, anchor=SANDBOX_ANCHOR)
    second = generate_bookings(120, seed=3, anchor=SANDBOX_ANCHOR)

    assert first == second
    assert generate_bookings(40, seed=3, anchor=SANDBOX_ANCHOR) == first[:40]
    assert generate_bookings(120, seed=4, anchor=SANDBOX_ANCHOR) != first
    assert generate_bookings(120, seed=3, anchor=SANDBOX_ANCHOR + timedelta(days=1)) != first


def test_generate_anchor_defaults_to_today() -> None:
    before = datetime.now(UTC).date()
    generated = generate_bookings(30)
    after = datetime.now(UTC).date()

    assert generated in (generate_bookings(30, anchor=before), generate_bookings(30, anchor=after))


def test_generate_zero_and_negative() -> None:
    assert generate_bookings(0) == []
    with pytest.raises(ValueError, match="count"):
        generate_bookings(-1)


def test_dataset_ids_and_timestamps(dataset: list[dict]) -> None:
    ids = [booking["_id"] for booking in dataset]

    assert len(set(ids)) == len(ids)
    for booking in dataset:
        assert OBJECT_ID.fullmatch(booking["_id"]), booking["_id"]
        for name in ("starttime", "endtime", "createdat", "updatedat"):
            value = booking.get(name)
            if value is not None:
                assert TIMESTAMP.fullmatch(value), (booking["_id"], name, value)


def test_dataset_time_window(dataset: list[dict]) -> None:
    earliest = datetime(2025, 9, 16, tzinfo=UTC) - timedelta(days=1)
    latest = datetime(2026, 4, 15, tzinfo=UTC) + timedelta(days=1)
    now = snapshot_time(SANDBOX_ANCHOR)

    for booking in dataset:
        start = parse_timestamp(booking["starttime"])
        created = parse_timestamp(booking["createdat"])
        updated = parse_timestamp(booking["updatedat"])

        assert earliest <= start <= latest, booking["_id"]
        assert created <= updated <= now, booking["_id"]


def test_dataset_status_fits_time(dataset: list[dict]) -> None:
    now = snapshot_time(SANDBOX_ANCHOR)
    by_status: dict[str, list[bool]] = {status: [] for status in STATUSES}
    for booking in dataset:
        by_status[booking["status"]].append(parse_timestamp(booking["starttime"]) > now)

    assert not any(by_status["completed"])
    assert not any(by_status["no-show"])
    assert sum(by_status["scheduled"]) > 0.7 * len(by_status["scheduled"])
    assert any(by_status["cancelled"])
    assert not all(by_status["cancelled"])


def test_dataset_covers_statuses_and_types(dataset: list[dict]) -> None:
    statuses = Counter(booking["status"] for booking in dataset)
    types = Counter(booking["type"] for booking in dataset)

    assert set(statuses) == set(STATUSES)
    assert set(types) == set(TYPES)
    assert min(statuses.values()) >= 5
    assert min(types.values()) >= 5


def test_dataset_allday_storage_styles(dataset: list[dict]) -> None:
    allday = [booking for booking in dataset if booking["allday"]]
    utc_midnight = [b for b in allday if b["starttime"].endswith("T00:00:00.000Z")]
    nairobi_midnight = [b for b in allday if b["starttime"].endswith("T21:00:00.000Z")]
    multi_day = [
        b for b in allday
        if parse_timestamp(b["endtime"]) - parse_timestamp(b["starttime"]) > timedelta(days=1)
    ]

    assert len(utc_midnight) + len(nairobi_midnight) == len(allday)
    assert utc_midnight
    assert nairobi_midnight
    assert any(b["starttime"].endswith("T00:00:00.000Z") for b in multi_day)
    assert any(b["starttime"].endswith("T21:00:00.000Z") for b in multi_day)


def test_dataset_locations(dataset: list[dict]) -> None:
    virtual = [b["location"] for b in dataset if b["location"]["type"] == "virtual"]
    physical = [b["location"] for b in dataset if b["location"]["type"] == "physical"]

    assert len(virtual) + len(physical) == len(dataset)
    assert virtual
    assert physical
    assert all(location["bookinglink"].startswith("https://") for location in virtual)
    assert all(location["address"] for location in physical)


def test_dataset_participants(dataset: list[dict]) -> None:
    participants = [booking["participant"] for booking in dataset]
    phones = [p["phone"] for p in participants if p["phone"]]

    assert all(set(p) == {"name", "email", "phone"} for p in participants)
    assert any(p["email"] for p in participants)
    assert any(p["email"] is None for p in participants)
    assert any(p["email"] == "" for p in participants)
    assert sum(phone.startswith("+254") for phone in phones) > len(phones) / 2


def test_dataset_unusual_text(dataset: list[dict]) -> None:
    texts = [booking["title"] + "\n" + booking["description"] for booking in dataset]
    joined = "\n".join(texts)
    descriptions = [booking["description"] for booking in dataset]

    for fragment in (",", ";", "\\", '"', "'", "🎂", "é", "ũ", "<b>markup</b>", "\r\n"):
        assert fragment in joined, fragment
    assert any(len(d) > 1000 and d.count("\n") > 5 for d in descriptions)
    assert any(booking["title"] == "" for booking in dataset)
    assert any(len(booking["title"].encode()) > 75 for booking in dataset)


def test_dataset_odd_endtimes(dataset: list[dict]) -> None:
    absent = [b for b in dataset if "endtime" not in b]
    null = [b for b in dataset if "endtime" in b and b["endtime"] is None]
    equal = [b for b in dataset if b.get("endtime") == b["starttime"]]
    earlier = [b for b in dataset if b.get("endtime") and b["endtime"] < b["starttime"]]

    assert len(absent) == 1
    assert len(null) == 1
    assert len(equal) == 2
    assert len(earlier) == 1


def test_dataset_field_values(dataset: list[dict]) -> None:
    for booking in dataset:
        assert booking["priority"] in PRIORITIES
        assert isinstance(booking["amount"], int)
        assert booking["amount"] >= 0
        assert isinstance(booking["billed"], bool)
        assert isinstance(booking["allday"], bool)
    assert any(booking["amount"] == 0 for booking in dataset)


def test_generate_20k_unique_ids() -> None:
    # Benchmarks generate up to 100,000 bookings; the speed of that is measured there, not here.
    bookings = generate_bookings(20_000, anchor=SANDBOX_ANCHOR)

    assert len(bookings) == 20_000
    assert len({booking["_id"] for booking in bookings}) == 20_000


def test_timestamp_round_trip() -> None:
    moment = datetime(2024, 1, 20, 10, 0, 0, 123456, tzinfo=UTC)

    assert format_timestamp(moment) == "2024-01-20T10:00:00.123Z"
    assert parse_timestamp("2024-01-20T10:00:00.000Z") == datetime(2024, 1, 20, 10, tzinfo=UTC)
    nairobi = datetime(2024, 1, 20, 16, 0, tzinfo=zoneinfo.ZoneInfo("Africa/Nairobi"))
    assert format_timestamp(nairobi) == "2024-01-20T13:00:00.000Z"


# --- Mutation helpers --------------------------------------------------------


def test_add_lists_booking_first(client: requests.Session, sandbox: Sandbox) -> None:
    newest = sandbox.get(sandbox.ids()[0])
    added = sandbox.add({"title": "Added in a test"})

    body = get_list(client, sandbox).json()
    assert body["pagination"]["total"] == TOTAL + 1
    assert body["data"][0]["_id"] == added["_id"]
    assert OBJECT_ID.fullmatch(added["_id"])
    assert parse_timestamp(added["createdat"]) == parse_timestamp(newest["createdat"]) + timedelta(minutes=1)
    assert added["updatedat"] == added["createdat"]
    assert set(DETAIL_FIELDS) <= set(added)
    assert get_details(client, sandbox, added["_id"]).json()["data"] == added


def test_add_keeps_given_fields(sandbox: Sandbox) -> None:
    fields = {"_id": "65a0000000000000000000ff", "title": "Given", "createdat": "2024-01-01T00:00:00.000Z"}
    added = sandbox.add(fields)

    assert added["_id"] == fields["_id"]
    assert added["title"] == "Given"
    assert added["createdat"] == fields["createdat"]
    assert sandbox.ids()[-1] == fields["_id"]


def test_add_duplicate_id_rejected(sandbox: Sandbox) -> None:
    with pytest.raises(ValueError, match="duplicate"):
        sandbox.add({"_id": sandbox.ids()[0]})


def test_add_copies_input(sandbox: Sandbox) -> None:
    booking = {"title": "Copied", "participant": {"name": "A", "email": None, "phone": None}}
    added = sandbox.add(booking)
    booking["participant"]["name"] = "changed"
    added["title"] = "changed"

    stored = sandbox.get(added["_id"])
    assert stored["participant"]["name"] == "A"
    assert stored["title"] == "Copied"


def test_update_bumps_updatedat(client: requests.Session, sandbox: Sandbox) -> None:
    booking_id = sandbox.ids()[5]
    before = sandbox.get(booking_id)

    first = sandbox.update(booking_id, title="Renamed")
    second = sandbox.update(booking_id, status="cancelled")

    assert parse_timestamp(first["updatedat"]) == parse_timestamp(before["updatedat"]) + timedelta(minutes=1)
    assert parse_timestamp(second["updatedat"]) == parse_timestamp(before["updatedat"]) + timedelta(minutes=2)
    assert second["title"] == "Renamed"
    assert second["createdat"] == before["createdat"]
    row = next(r for r in get_list(client, sandbox, limit=100).json()["data"] if r["_id"] == booking_id)
    assert row["title"] == "Renamed"
    assert row["status"] == "cancelled"
    assert get_details(client, sandbox, booking_id).json()["data"] == second


def test_update_given_updatedat(sandbox: Sandbox) -> None:
    booking_id = sandbox.ids()[0]
    updated = sandbox.update(booking_id, description="x", updatedat="2030-01-01T00:00:00.000Z")

    assert updated["updatedat"] == "2030-01-01T00:00:00.000Z"


def test_update_refreshes_filters(client: requests.Session, sandbox: Sandbox) -> None:
    before = get_list(client, sandbox, status="cancelled").json()["pagination"]["total"]
    booking_id = next(i for i in sandbox.ids() if sandbox.get(i)["status"] == "scheduled")
    sandbox.update(booking_id, status="cancelled", title="Zanzibar retreat")

    assert get_list(client, sandbox, status="cancelled").json()["pagination"]["total"] == before + 1
    assert [r["_id"] for r in get_list(client, sandbox, search="zanzibar").json()["data"]] == [booking_id]


def test_update_rejects_id_and_unknown(sandbox: Sandbox) -> None:
    with pytest.raises(ValueError, match="_id"):
        sandbox.update(sandbox.ids()[0], _id="other")
    with pytest.raises(KeyError):
        sandbox.update("missing", title="x")


def test_delete_removes_booking(client: requests.Session, sandbox: Sandbox) -> None:
    booking_id = sandbox.ids()[3]
    sandbox.delete(booking_id)

    assert booking_id not in sandbox.ids()
    assert get_list(client, sandbox).json()["pagination"]["total"] == TOTAL - 1
    assert get_details(client, sandbox, booking_id).status_code == 404
    with pytest.raises(KeyError):
        sandbox.get(booking_id)
    with pytest.raises(KeyError):
        sandbox.delete(booking_id)


def test_get_returns_copy(sandbox: Sandbox) -> None:
    booking_id = sandbox.ids()[0]
    copy = sandbox.get(booking_id)
    copy["participant"]["name"] = "changed"

    assert sandbox.get(booking_id)["participant"]["name"] != "changed"


def test_given_bookings_served() -> None:
    bookings = generate_bookings(3, anchor=SANDBOX_ANCHOR)
    with Sandbox(bookings=bookings, count=999) as sandbox:
        assert sorted(sandbox.ids()) == sorted(b["_id"] for b in bookings)

    with pytest.raises(ValueError, match="duplicate"):
        Sandbox(bookings=bookings + bookings[:1])


def test_add_to_empty_sandbox() -> None:
    sandbox = Sandbox(bookings=[], anchor=SANDBOX_ANCHOR)
    added = sandbox.add({})

    assert added["createdat"] == "2026-01-15T06:01:00.000Z"
    assert sandbox.ids() == [added["_id"]]


# --- Request counters and log ------------------------------------------------


def test_request_counts_by_route(client: requests.Session, sandbox: Sandbox) -> None:
    get_list(client, sandbox, page=1, limit=5)
    get_list(client, sandbox, page=2, limit=5)
    get_details(client, sandbox, sandbox.ids()[0])
    get_details(client, sandbox, "missing")
    client.get(sandbox.base_url + "/other", timeout=10)
    client.post(sandbox.base_url + LIST, timeout=10)

    assert sandbox.request_counts() == {"list": 3, "details": 2, "other": 1}
    assert sandbox.request_log() == [
        ("GET", LIST + "?page=1&limit=5"),
        ("GET", LIST + "?page=2&limit=5"),
        ("GET", DETAILS + sandbox.ids()[0]),
        ("GET", DETAILS + "missing"),
        ("GET", "/other"),
        ("POST", LIST),
    ]


def test_reset_counts(client: requests.Session, sandbox: Sandbox) -> None:
    get_list(client, sandbox)
    sandbox.reset_counts()

    assert sandbox.request_counts() == {"list": 0, "details": 0, "other": 0}
    assert sandbox.request_log() == []
    get_list(client, sandbox)
    assert sandbox.request_counts()["list"] == 1


def test_unauthorized_requests_counted(sandbox: Sandbox) -> None:
    with requests.Session() as session:
        session.trust_env = False
        session.get(sandbox.base_url + LIST, timeout=10)

    assert sandbox.request_counts()["list"] == 1


def test_debug_log_omits_secret(
    client: requests.Session, sandbox: Sandbox, caplog: pytest.LogCaptureFixture
) -> None:
    with caplog.at_level(logging.DEBUG, logger="calsync.sandbox"):
        get_list(client, sandbox, limit=3)

    messages = [r.getMessage() for r in caplog.records if r.name == "calsync.sandbox"]
    assert any(LIST + "?limit=3 -> 200" in message for message in messages)
    assert not any(sandbox.secret in message for message in messages)


def test_concurrent_requests_and_updates(sandbox: Sandbox) -> None:
    errors: list[str] = []
    ids = sandbox.ids()

    def read_pages(worker: int) -> None:
        with requests.Session() as session:
            session.trust_env = False
            session.headers["Authorization"] = sandbox.secret
            for n in range(10):
                list_reply = session.get(sandbox.base_url + LIST, params={"page": n + 1}, timeout=10)
                details_reply = session.get(sandbox.base_url + DETAILS + ids[worker * 10 + n], timeout=10)
                if list_reply.status_code != 200 or details_reply.status_code != 200:
                    errors.append(f"{list_reply.status_code} {details_reply.status_code}")

    readers = [threading.Thread(target=read_pages, args=(worker,)) for worker in range(8)]
    for reader in readers:
        reader.start()
    for n in range(50):
        sandbox.update(ids[-1 - n], title=f"Updated {n}")
    for reader in readers:
        reader.join()

    assert errors == []
    assert sandbox.request_counts() == {"list": 80, "details": 80, "other": 0}


# --- Lifecycle ---------------------------------------------------------------


def test_stop_releases_port_and_threads() -> None:
    threads_before = set(threading.enumerate())
    sandbox = Sandbox(count=5, anchor=SANDBOX_ANCHOR)
    base_url = sandbox.start()
    port = int(base_url.rsplit(":", 1)[1])
    with requests.Session() as session:
        session.trust_env = False
        assert session.get(base_url + LIST, timeout=10).status_code == 401

        with pytest.raises(OSError):
            socket.create_server(("127.0.0.1", port)).close()

        sandbox.stop()

        with pytest.raises(requests.ConnectionError):
            session.get(base_url + LIST, timeout=10)
    socket.create_server(("127.0.0.1", port)).close()
    assert threads_end(threads_before)
    assert not sandbox.running




def test_restart_on_same_port() -> None:
    sandbox = Sandbox(count=5, anchor=SANDBOX_ANCHOR)
    first = sandbox.start()
    sandbox.stop()
    again = Sandbox(count=5, anchor=SANDBOX_ANCHOR, port=int(first.rsplit(":", 1)[1]))

    with again:
        assert again.base_url == first


def test_start_on_busy_port_fails() -> None:
    with socket.create_server(("127.0.0.1", 0)) as busy:
        sandbox = Sandbox(count=1, port=busy.getsockname()[1])

        with pytest.raises(OSError, match="cannot listen on"):
            sandbox.start()
        assert not sandbox.running


def test_start_twice_returns_same_url() -> None:
    with Sandbox(count=1) as sandbox:
        assert sandbox.start() == sandbox.base_url


def test_stop_is_idempotent() -> None:
    sandbox = Sandbox(count=1)
    sandbox.stop()
    sandbox.start()
    sandbox.stop()
    sandbox.stop()

    with pytest.raises(RuntimeError, match="not running"):
        sandbox.base_url


def test_stop_with_open_connections() -> None:
    threads_before = set(threading.enumerate())
    sandbox = Sandbox(count=5, anchor=SANDBOX_ANCHOR)
    sandbox.start()
    sessions = []
    for _ in range(3):
        session = requests.Session()
        session.trust_env = False
        session.get(sandbox.base_url + LIST, timeout=10)
        sessions.append(session)

    sandbox.stop()

    assert not sandbox.running
    assert threads_end(threads_before)
    for session in sessions:
        session.close()


def test_serve_forever_returns_after_stop() -> None:
    sandbox = Sandbox(count=1)
    server = threading.Thread(target=sandbox.serve_forever)
    server.start()
    wait_until(lambda: sandbox.running)
    sandbox.stop()
    server.join(5)

    assert not server.is_alive()


def test_serve_forever_stops_on_keyboard_interrupt() -> None:
    threads_before = set(threading.enumerate())
    sandbox = Sandbox(count=1)

    def interrupt_when_serving() -> None:
        wait_until(lambda: sandbox.running)
        with requests.Session() as session:
            session.trust_env = False
            session.get(sandbox.base_url + LIST, timeout=10)
        _thread.interrupt_main()

    threading.Thread(target=interrupt_when_serving, daemon=True).start()
    sandbox.serve_forever()

    assert not sandbox.running
    assert threads_end(threads_before)


def test_wait_returns_when_not_running() -> None:
    Sandbox(count=1).wait()




def test_latency_delays_each_response() -> None:
    # Checks the setting reaches the application, not the clock: tests never assert durations.
    with Sandbox(count=3, anchor=SANDBOX_ANCHOR, latency_ms=20) as sandbox:
        assert sandbox.latency_ms == 20
        sandbox.latency_ms = 0
        assert sandbox.latency_ms == 0


def test_negative_latency_rejected() -> None:
    with pytest.raises(ValueError, match="latency_ms"):
        Sandbox(count=1, latency_ms=-1)
