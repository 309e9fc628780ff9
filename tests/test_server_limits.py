"""The feed server against hostile clients: idle and slow connections, oversized requests, odd paths.

Every test runs a real waitress server from ``calsync.wsgi.make_server`` on
loopback and talks to it over raw sockets where ``requests`` would clean up
the request first.
"""

from __future__ import annotations

import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import ExitStack
from pathlib import Path

import pytest
import requests
from freezegun import freeze_time

from calsync.config import Config, load_config
from calsync.engine import SyncEngine
from calsync.feed_cache import FeedVersion
from calsync.feeds import feed_path
from calsync.metrics import Metrics
from calsync.sandbox import Sandbox
from calsync.server import FeedApp
from calsync.wsgi import (
    CONNECTION_LIMIT,
    FILES_PER_CONNECTION,
    MAX_REQUEST_HEADER_BYTES,
    SPARE_FILES,
    make_server,
    start_server_thread,
    stop_server,
)
from tests.conftest import SANDBOX_ANCHOR
from tests.helpers import environment_without_calsync, parse_both

SECRET = "limits-secret"
TOKEN = "limits-token"
ADMIN_TOKEN = "limits-admin"
# waitress's own default connection limit, which the server must go beyond.
WAITRESS_DEFAULT_CONNECTION_LIMIT = 100
# Bound on every wait for the server. A response that takes longer counts as a hang.
RESPONSE_TIMEOUT = 10.0


@pytest.fixture(scope="module")
def config(tmp_path_factory: pytest.TempPathFactory) -> Config:
    """A config whose state directory contains a feed published by a real sync, and decoy files beside it."""
    directory = tmp_path_factory.mktemp("limits")
    path = directory / "calsync.toml"
    with Sandbox(secret=SECRET, count=30, anchor=SANDBOX_ANCHOR) as sandbox:
        path.write_text(
            f'[cashfin]\nbase_url = "{sandbox.base_url}"\nclient_secret = "{SECRET}"\n'
            f'[sync]\nstate_dir = "{(directory / "state").as_posix()}"\n'
            f'[server]\nadmin_token = "{ADMIN_TOKEN}"\n'
            f'[[feeds]]\nname = "bookings"\ntoken = "{TOKEN}"\n',
            encoding="utf-8",
        )
        loaded = load_config(str(path), env={})
        with freeze_time("2026-01-15T08:00:00Z"):
            SyncEngine(loaded).run()

    # Files that a path traversal bug would serve, at the targets of the requests below.
    state_dir = loaded.sync.state_dir
    (state_dir / "state.sqlite3.ics").write_bytes(b"DECOY: state directory\r\n")
    (state_dir / "x.ics").write_bytes(b"DECOY: x\r\n")
    (state_dir / "feeds" / "a").mkdir(exist_ok=True)
    (state_dir / "feeds" / "a" / "b.ics").write_bytes(b"DECOY: subdirectory\r\n")
    return loaded


@pytest.fixture
def feed(config: Config) -> bytes:
    return feed_path(config.sync.state_dir, "bookings").read_bytes()


class RecordingCache:
    """Wraps the app's FeedCache and records every feed name that reached it."""

    def __init__(self, cache) -> None:
        self.cache = cache
        self.names: list[str] = []

    def get(self, name: str) -> FeedVersion | None:
        self.names.append(name)
        return self.cache.get(name)


class RunningServer:
    """A started waitress server for a FeedApp, with its address and its cache recorder."""

    def __init__(self, app: FeedApp, **limits: float) -> None:
        self.app = app
        self.cache = RecordingCache(app.cache)
        app.cache = self.cache
        self.server = make_server(app, "127.0.0.1", 0, threads=4, **limits)
        self.port = self.server.effective_port
        self.url = f"http://127.0.0.1:{self.port}"
        start_server_thread(self.server)

    def stop(self) -> None:
        assert stop_server(self.server)


@pytest.fixture
def start(config: Config) -> Iterator[Callable[..., RunningServer]]:
    servers: list[RunningServer] = []

    def start_server(**limits: float) -> RunningServer:
        running = RunningServer(FeedApp(config, metrics=Metrics(), request_sync=lambda: True), **limits)
        servers.append(running)
        return running

    yield start_server
    for running in servers:
        running.stop()


def get_feed(url: str) -> requests.Response:
    with requests.Session() as session:
        session.trust_env = False
        return session.get(f"{url}/feeds/bookings.ics", params={"token": TOKEN}, timeout=RESPONSE_TIMEOUT)


def connect(port: int) -> socket.socket:
    return socket.create_connection(("127.0.0.1", port), timeout=RESPONSE_TIMEOUT)


def exchange(port: int, request: bytes) -> bytes:
    """Send raw request bytes and return everything the server sends until it closes the connection.

    A reset connection counts as closed. Fails when the server neither responds
    nor closes within ``RESPONSE_TIMEOUT``.
    """
    with connect(port) as connection:
        try:
            connection.sendall(request)
        except (BrokenPipeError, ConnectionResetError):
            pass  # the server may reject and close before the whole request is sent
        return read_until_closed(connection)


def read_until_closed(connection: socket.socket) -> bytes:
    received = b""
    while True:
        try:
            chunk = connection.recv(65536)
        except ConnectionResetError:
            return received
        except TimeoutError:
            raise AssertionError(f"the server neither responded nor closed within {RESPONSE_TIMEOUT}s") from None
        if not chunk:
            return received
        received += chunk


def status_of(response: bytes) -> int:
    """Return the status code of a raw HTTP response, or 0 when the server closed without one."""
    if not response:
        return 0
    return int(response.split(b" ", 2)[1])


def raw_get(path: bytes, token: bool = True) -> bytes:
    query = f"?token={TOKEN}".encode() if token else b""
    return b"GET " + path + query + b" HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n"


# Many idle and slow connections.


def test_idle_connections_beyond_default_limit(start, feed) -> None:
    running = start()
    idle_count = WAITRESS_DEFAULT_CONNECTION_LIMIT + 50

    with ExitStack() as stack:
        idle = [stack.enter_context(connect(running.port)) for _ in range(idle_count)]
        response = get_feed(running.url)

        assert len(idle) == idle_count
        assert response.status_code == 200
        assert response.content == feed


def test_slowloris_trickle_does_not_block(start, feed) -> None:
    running = start()
    stop = threading.Event()
    trickling = [connect(running.port) for _ in range(50)]
    for connection in trickling:
        connection.sendall(b"GET /feeds/bookings.ics HTTP/1.1\r\n")

    def trickle() -> None:
        # One more header byte per connection every 0.2 s, so that none ever looks idle.
        while not stop.wait(0.2):
            for connection in trickling:
                try:
                    connection.sendall(b"X")
                except OSError:
                    pass

    sender = threading.Thread(target=trickle)
    sender.start()
    try:
        responses = []
        for _ in range(5):
            responses.append(get_feed(running.url))
            time.sleep(0.2)
    finally:
        stop.set()
        sender.join()
        for connection in trickling:
            connection.close()

    assert [response.status_code for response in responses] == [200] * 5
    assert all(response.content == feed for response in responses)


def test_slow_request_closed_after_deadline(start, feed) -> None:
    # A limit this low lets a handful of trickling clients take every connection slot.
    running = start(connection_limit=5, request_timeout=1, cleanup_interval=1)
    stop = threading.Event()
    trickling = [connect(running.port) for _ in range(5)]
    for connection in trickling:
        connection.sendall(b"GET /feeds/bookings.ics HTTP/1.1\r\n")

    def trickle() -> None:
        while not stop.wait(0.2):
            for connection in trickling:
                try:
                    connection.sendall(b"X")
                except OSError:
                    pass

    sender = threading.Thread(target=trickle)
    sender.start()
    try:
        # This client waits in the listen backlog until the deadline frees a slot.
        response = get_feed(running.url)
    finally:
        stop.set()
        sender.join()

    closed = []
    for connection in trickling:
        with connection:
            closed.append(read_until_closed(connection) == b"")

    assert response.status_code == 200
    assert response.content == feed
    assert closed == [True] * 5


def test_idle_keepalive_not_cut_by_request_deadline(start, feed) -> None:
    running = start(request_timeout=1, cleanup_interval=1)

    with requests.Session() as session:
        session.trust_env = False
        first = session.get(f"{running.url}/feeds/bookings.ics", params={"token": TOKEN}, timeout=RESPONSE_TIMEOUT)
        # Idle between requests is not an unfinished request, so only the idle timeout (60 s) applies.
        time.sleep(2.5)
        second = session.get(f"{running.url}/feeds/bookings.ics", params={"token": TOKEN}, timeout=RESPONSE_TIMEOUT)

    assert first.status_code == 200
    assert second.status_code == 200
    assert second.content == feed


# Oversized requests.


def test_oversized_request_line_rejected(start, feed) -> None:
    running = start()
    path = b"/feeds/" + b"a" * (MAX_REQUEST_HEADER_BYTES + 1024) + b".ics"

    response = exchange(running.port, raw_get(path))

    assert status_of(response) == 431
    assert get_feed(running.url).content == feed


def test_oversized_headers_rejected(start, feed) -> None:
    running = start()
    headers = b"".join(b"X-Filler-%d: %s\r\n" % (number, b"v" * 1000) for number in range(64))
    request = raw_get(b"/feeds/bookings.ics").replace(b"\r\n\r\n", b"\r\n" + headers + b"\r\n")

    response = exchange(running.port, request)

    assert status_of(response) == 431
    assert get_feed(running.url).content == feed


def test_endless_header_line_rejected(start, feed) -> None:
    running = start()

    with connect(running.port) as connection:
        connection.sendall(b"GET /feeds/bookings.ics HTTP/1.1\r\nX-Endless: ")
        try:
            # Without a line end, the header never finishes: the server must reject it at its size limit.
            for _ in range(MAX_REQUEST_HEADER_BYTES // 4096 + 4):
                connection.sendall(b"v" * 4096)
        except (BrokenPipeError, ConnectionResetError):
            pass
        response = read_until_closed(connection)

    assert status_of(response) in (0, 431)
    assert get_feed(running.url).content == feed


def test_oversized_body_rejected(start) -> None:
    running = start()
    body = b"x" * (1024 * 1024)
    request = (
        b"POST /sync HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n"
        + f"Authorization: Bearer {ADMIN_TOKEN}\r\nContent-Length: {len(body)}\r\n\r\n".encode()
        + body
    )

    response = exchange(running.port, request)

    assert status_of(response) == 413
    assert get_feed(running.url).status_code == 200


# Paths outside the served ones.


NOT_FOUND_PATHS = [
    b"/feeds",
    b"/feeds/",
    b"/feeds/.ics",
    b"/feeds/bookings",
    b"/feeds/../state.sqlite3",
    b"/feeds/../state.sqlite3.ics",
    b"/feeds/%2e%2e%2fstate.sqlite3.ics",
    b"/feeds/%2E%2E%2Fstate.sqlite3.ics",
    b"/feeds/..%2Fx.ics",
    b"/feeds/..%2fx.ics",
    b"/feeds/..%5Cx.ics",
    b"/feeds/%2e%2e/x.ics",
    b"/feeds/a/b.ics",
    b"/feeds/a%2Fb.ics",
    b"/feeds/./bookings.ics",
    b"/feeds/bookings.ics/",
    b"/feeds/bookings.ics/..",
    b"/feeds//bookings.ics",
    b"//feeds/bookings.ics",
    b"/feeds/bookings.ICS",
    b"/FEEDS/bookings.ics",
    b"/feeds/bookings.ics%00",
    b"/feeds/bookings%00.ics",
    b"/feeds/%00.ics",
    b"/feeds/" + b"a" * 4000 + b".ics",
    b"/feeds/" + b"%2e%2e%2f" * 400 + b"state.sqlite3.ics",
    b"/state.sqlite3",
    b"/sync.lock",
    b"/metricsx",
    b"/metrics/",
    b"/healthz/",
    b"/healthzx",
    b"/readyz/",
    b"/sync/",
    b"/HEALTHZ",
]


@pytest.mark.parametrize("path", NOT_FOUND_PATHS, ids=lambda path: path.decode()[:60])
def test_unserved_path_404(start, path) -> None:
    running = start()

    response = exchange(running.port, raw_get(path))

    assert status_of(response) == 404
    assert b"DECOY" not in response
    assert b"BEGIN:VCALENDAR" not in response
    assert running.cache.names == []


def test_raw_control_bytes_in_path_rejected(start) -> None:
    running = start()

    for path in (b"/feeds/bookings\x00.ics", b"/feeds/book ings.ics", b"/feeds/\x7f.ics", b"/feeds/\xff.ics"):
        response = exchange(running.port, raw_get(path))

        assert status_of(response) in (400, 404), path
        assert b"BEGIN:VCALENDAR" not in response, path
    assert running.cache.names == []


@pytest.mark.parametrize("method", [b"POST", b"PUT", b"DELETE", b"PATCH", b"OPTIONS", b"TRACE"])
def test_wrong_method_on_feed_405(start, method) -> None:
    running = start()
    request = raw_get(b"/feeds/bookings.ics").replace(b"GET ", method + b" ", 1)

    response = exchange(running.port, request)

    assert status_of(response) == 405
    assert b"BEGIN:VCALENDAR" not in response
    assert running.cache.names == []


def test_served_paths_still_work(start, feed) -> None:
    running = start()

    feed_response = exchange(running.port, raw_get(b"/feeds/bookings.ics"))
    health = exchange(running.port, raw_get(b"/healthz", token=False))

    assert status_of(feed_response) == 200
    assert feed_response.endswith(feed)
    parse_both(feed_response.split(b"\r\n\r\n", 1)[1])
    assert status_of(health) == 200
    assert running.cache.names == ["bookings"]


# The open-file limit.


FILE_LIMIT_CHECK = """
import logging, resource, sys
logging.basicConfig(level=logging.WARNING, format="%(message)s")
soft, hard = int(sys.argv[1]), int(sys.argv[2])
resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))
from calsync.wsgi import fit_connection_limit
limit = fit_connection_limit(int(sys.argv[3]))
print(limit, *resource.getrlimit(resource.RLIMIT_NOFILE))
"""


def check_file_limit(soft: int, hard: int, wanted: int) -> tuple[list[int], str]:
    result = subprocess.run(
        [sys.executable, "-c", FILE_LIMIT_CHECK, str(soft), str(hard), str(wanted)],
        capture_output=True, text=True, timeout=60, env=environment_without_calsync(),
        cwd=Path(__file__).resolve().parent.parent,
    )
    assert result.returncode == 0, result.stderr
    return [int(word) for word in result.stdout.split()], result.stderr


def test_file_limit_raised_to_fit_connections() -> None:
    needed = CONNECTION_LIMIT * FILES_PER_CONNECTION + SPARE_FILES

    (limit, soft, hard), warnings = check_file_limit(256, needed + 100, CONNECTION_LIMIT)

    assert limit == CONNECTION_LIMIT
    assert soft == needed
    assert hard == needed + 100
    assert warnings == ""


def test_file_limit_too_low_lowers_connections() -> None:
    (limit, soft, hard), warnings = check_file_limit(256, 512, CONNECTION_LIMIT)

    assert soft == 512
    assert limit == (512 - SPARE_FILES) // FILES_PER_CONNECTION
    assert "the open-file limit is 512" in warnings
    assert f"accepts at most {limit} connections" in warnings
