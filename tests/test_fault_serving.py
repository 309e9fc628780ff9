"""What subscribers see while the Cashfin API misbehaves: the same feed bytes, until a sync succeeds again.

Each case injects a fault that makes a sync fail whatever the retry policy,
because it hits every request or the API reports bad data. The daemon's
parts run as in ``calsync serve``: the ``Service`` with its feed app on a
real waitress server. While the fault lasts, the served bytes, the ETag and the file stay
as they were, conditional requests still get 304, and ``/readyz`` stays 200
for up to 3 sync intervals after the last success, as docs/docker.md says.
Once the fault clears, the next sync publishes the change made meanwhile.
"""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
import requests

from calsync.cashfin import CashfinClient
from calsync.config import Config, load_config
from calsync.sandbox import Fault, Sandbox
from calsync.service import Service
from calsync.wsgi import make_server, server_url, start_server_thread, stop_server
from tests.helpers import parse_both

SECRET = "matrix-secret"
TOKEN = "matrix-token"
COUNT = 250
# Every sandbox of this module serves the same bookings, generated around today's date because the
# service runs unfrozen and the feed's past_days window follows the clock.
ANCHOR = datetime.now(UTC).date()
CHANGED_TITLE = "Changed while the API failed"
FAILED_SYNCS = 2

# Faults that fail a sync whether or not their kind is retried: each one hits every request it matches.
FAILING_FAULTS = [
    Fault("500"),
    Fault("502"),
    Fault("503"),
    Fault("429", retry_after_seconds=0),
    Fault("reset"),
    Fault("truncated"),
    Fault("not-json"),
    Fault("hang", hang_seconds=2),
    Fault("success-false"),
    Fault("unauthorized"),
    Fault("repeat-rows", endpoint="list"),
    Fault("total-inflated", endpoint="list"),
    Fault("empty-page", endpoint="list"),
    Fault("503", endpoint="list", on_requests=set(range(2, 200))),
]


@pytest.fixture
def api() -> Iterator[Sandbox]:
    with Sandbox(secret=SECRET, count=COUNT, anchor=ANCHOR) as sandbox:
        yield sandbox


def write_config(directory: Path, base_url: str) -> Config:
    path = directory / "calsync.toml"
    path.write_text(
        f'[cashfin]\nbase_url = "{base_url}"\nclient_secret = "{SECRET}"\ntimeout = "500ms"\n'
        f'[sync]\nstate_dir = "{(directory / "state").as_posix()}"\ninterval = "15m"\n'
        f'[[feeds]]\nname = "bookings"\ntoken = "{TOKEN}"\n',
        encoding="utf-8",
    )
    return load_config(str(path), env={})


@pytest.fixture(scope="module")
def synced_state(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A state directory after a full sync of the module's bookings, which each test copies."""
    directory = tmp_path_factory.mktemp("synced")
    with Sandbox(secret=SECRET, count=COUNT, anchor=ANCHOR) as sandbox:
        service = Service(write_config(directory, sandbox.base_url))
        service.sync_once()
    assert service.status.last_success is not None
    return directory / "state"


def fast_client(config: Config) -> CashfinClient:
    """Build the client with one quick retry, so that a persistent fault fails the sync in about a second."""
    settings = config.cashfin
    return CashfinClient(
        settings.base_url, settings.client_secret, timeout=settings.timeout, concurrency=settings.concurrency,
        retries=1, backoff_factor=0.01, retry_budget=5,
    )


@pytest.fixture
def service(tmp_path: Path, api: Sandbox, synced_state: Path) -> Iterator[tuple[Service, str]]:
    shutil.copytree(synced_state, tmp_path / "state")
    running = Service(write_config(tmp_path, api.base_url))
    running.engine.client_factory = fast_client
    server = make_server(running.app, "127.0.0.1", 0, threads=4)
    start_server_thread(server)
    try:
        yield running, server_url(server)
    finally:
        assert stop_server(server)


def get(url: str, **options) -> requests.Response:
    with requests.Session() as session:
        session.trust_env = False
        return session.get(url, timeout=10, **options)


def fault_id(fault: Fault) -> str:
    scope = "" if fault.endpoint == "any" else f"-{fault.endpoint}"
    pages = "-after-page-1" if fault.on_requests else ""
    return f"{fault.kind}{scope}{pages}"


@pytest.mark.parametrize("fault", FAILING_FAULTS, ids=fault_id)
def test_fault_keeps_served_feed(service, api, fault) -> None:
    running, base = service
    feed_url = f"{base}/feeds/bookings.ics?token={TOKEN}"
    running.sync_once()
    before = get(feed_url)
    ready_before = get(f"{base}/readyz")
    feed_file = running.config.sync.state_dir / "feeds" / "bookings.ics"
    tomorrow = (datetime.now(UTC) + timedelta(days=1)).isoformat()
    target = next(i for i in api.ids() if api.get(i)["status"] == "scheduled" and api.get(i)["starttime"] > tomorrow)
    api.update(target, title=CHANGED_TITLE)
    api.faults.add(fault)

    during = []
    for _ in range(FAILED_SYNCS):
        running.sync_once()
        during.append((get(feed_url), get(feed_url, headers={"If-None-Match": before.headers["ETag"]}),
                       get(f"{base}/readyz"), feed_file.read_bytes()))
    long_after = running.status.ready(datetime.now(UTC) + 4 * running.config.sync.interval,
                                      running.config.sync.interval)

    api.faults.clear()
    running.sync_once()
    after = get(feed_url)
    ready_after = get(f"{base}/readyz")
    metrics = get(f"{base}/metrics").text

    assert before.status_code == 200
    assert ready_before.status_code == 200
    assert fault.fired >= FAILED_SYNCS
    for served, conditional, ready, on_disk in during:
        assert served.status_code == 200
        assert served.content == before.content
        assert served.headers["ETag"] == before.headers["ETag"]
        assert conditional.status_code == 304
        assert on_disk == before.content
        assert ready.status_code == 200
        assert ready.text == ready_before.text
    assert running.status.last_error
    assert long_after[0] is False
    assert "is older than 45m" in long_after[1]
    assert f'calsync_sync_runs_total{{outcome="failed"}} {FAILED_SYNCS}.0' in metrics
    assert after.status_code == 200
    assert after.headers["ETag"] != before.headers["ETag"]
    assert CHANGED_TITLE.encode() in after.content
    assert len(parse_both(after.content).walk("VEVENT")) == len(parse_both(before.content).walk("VEVENT"))
    assert ready_after.status_code == 200
