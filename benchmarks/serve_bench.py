"""Throughput of serving one feed: calsync's server against static file servers, under a load tool.

Each server serves the same published feed file on loopback: calsync's
waitress application (``calsync.server.FeedApp``, with the feed token), and
as references nginx (when installed) and Python's ``http.server``. The load
tool measures warm ``GET`` responses (200) and conditional ones (304).
The tool is wrk when it is on the PATH. Otherwise it is a Python load
generator in a separate process, which is much slower, so it caps the
figures at its own speed. The results name the tool used.
"""

from __future__ import annotations

import http.client
import logging
import os
import pwd
import re
import shutil
import socket
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass
from multiprocessing.connection import Connection
from pathlib import Path
from typing import IO, Any
from urllib.parse import urlsplit

from benchmarks.child_process import SPAWN, run_in_child

NGINX = "/usr/sbin/nginx"
START_TIMEOUT_SECONDS = 10.0
WRK_THREADS = 1


@dataclass(frozen=True)
class ServeResult:
    """Requests per second of one server and one kind of request."""

    server: str
    request: str
    status: int
    requests_per_second: float
    bytes_per_response: int
    tool: str


@dataclass(frozen=True)
class Target:
    """A URL to load and the headers of a conditional request for it."""

    url: str
    conditional_headers: dict[str, str]
    size: int


def measure_serving(config_path: Path, seconds: float, connections: int) -> list[ServeResult]:
    """Measure every available server for ``seconds`` per kind of request with ``connections`` connections."""
    from calsync.config import load_config
    from calsync.feeds import feed_path

    config = load_config(str(config_path), env={})
    feed = config.feeds[0]
    feed_file = feed_path(config.sync.state_dir, feed.name)
    tool = "wrk" if shutil.which("wrk") else "python load generator"

    results = []
    with CalsyncServer(config_path) as server:
        target = probe(f"{server.base_url}/feeds/{feed.name}.ics?token={feed.token}", validator="etag")
        results += _load_both("calsync (waitress)", target, seconds, connections, tool)
    if Path(NGINX).exists():
        with NginxServer(feed_file.parent) as server:
            target = probe(f"{server.base_url}/{feed_file.name}", validator="etag")
            results += _load_both("nginx", target, seconds, connections, tool)
    with HttpServer(feed_file.parent) as server:
        target = probe(f"{server.base_url}/{feed_file.name}", validator="last-modified")
        results += _load_both("python http.server", target, seconds, connections, tool)
    return results


def _load_both(server: str, target: Target, seconds: float, connections: int, tool: str) -> list[ServeResult]:
    full = load(target.url, {}, seconds, connections, tool)
    conditional = load(target.url, target.conditional_headers, seconds, connections, tool)
    return [
        ServeResult(server, "GET", 200, full, target.size, tool),
        ServeResult(server, "conditional GET", 304, conditional, 0, tool),
    ]


def probe(url: str, validator: str) -> Target:
    """Fetch ``url`` once, check that a conditional request gets 304, and return the load target."""
    status, headers, body = _get(url, {})
    if status != 200:
        raise RuntimeError(f"GET {_without_query(url)} returned HTTP {status}, expected 200")

    if validator == "etag":
        conditional = {"If-None-Match": headers["etag"]}
    else:
        conditional = {"If-Modified-Since": headers["last-modified"]}
    status, _, _ = _get(url, conditional)
    if status != 304:
        raise RuntimeError(f"conditional GET {_without_query(url)} returned HTTP {status}, expected 304")
    return Target(url, conditional, len(body))


def load(url: str, headers: dict[str, str], seconds: float, connections: int, tool: str) -> float:
    """Return the requests per second that ``tool`` reaches against ``url``."""
    if tool == "wrk":
        return _load_with_wrk(url, headers, seconds, connections)
    return run_in_child(generate_load, url, headers, seconds, connections)


def _load_with_wrk(url: str, headers: dict[str, str], seconds: float, connections: int) -> float:
    command = ["wrk", f"-t{WRK_THREADS}", f"-c{connections}", f"-d{max(1, round(seconds))}s"]
    for name, value in headers.items():
        command += ["-H", f"{name}: {value}"]
    output = subprocess.run([*command, url], capture_output=True, text=True, check=True).stdout
    match = re.search(r"Requests/sec:\s+([\d.]+)", output)
    if match is None:
        raise RuntimeError(f"wrk printed no Requests/sec line: {output!r}")
    if "Non-2xx or 3xx responses" in output:
        raise RuntimeError(f"wrk received error responses from {_without_query(url)}: {output!r}")
    return float(match.group(1))


def generate_load(url: str, headers: dict[str, str], seconds: float, connections: int) -> float:
    """Send requests on ``connections`` keep-alive connections for ``seconds`` and return requests per second."""
    counts = [0] * connections
    deadline = time.perf_counter() + seconds

    def run(index: int) -> None:
        parts = urlsplit(url)
        connection = http.client.HTTPConnection(parts.hostname, parts.port, timeout=30)
        path = f"{parts.path}?{parts.query}" if parts.query else parts.path
        while time.perf_counter() < deadline:
            connection.request("GET", path, headers=headers)
            response = connection.getresponse()
            response.read()
            if response.status >= 400:
                raise RuntimeError(f"load generator: HTTP {response.status} from {parts.path}")
            counts[index] += 1
        connection.close()

    started = time.perf_counter()
    threads = [threading.Thread(target=run, args=(index,)) for index in range(connections)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return sum(counts) / (time.perf_counter() - started)


def _get(url: str, headers: dict[str, str]) -> tuple[int, dict[str, str], bytes]:
    parts = urlsplit(url)
    connection = http.client.HTTPConnection(parts.hostname, parts.port, timeout=30)
    try:
        path = f"{parts.path}?{parts.query}" if parts.query else parts.path
        connection.request("GET", path, headers=headers)
        response = connection.getresponse()
        body = response.read()
        return response.status, {name.lower(): value for name, value in response.getheaders()}, body
    finally:
        connection.close()


def _without_query(url: str) -> str:
    """Drop the query string, which carries the feed token, from a URL shown in a message."""
    return url.split("?", 1)[0]


# --- Servers -----------------------------------------------------------------


class CalsyncServer:
    """calsync's feed server (``FeedApp`` on waitress, as ``calsync serve`` runs it) in a child process."""

    def __init__(self, config_path: Path) -> None:
        self.config_path = config_path
        self.base_url = ""
        self._connection: Connection | None = None
        self._process: Any = None

    def __enter__(self) -> CalsyncServer:
        parent, child = SPAWN.Pipe()
        self._process = SPAWN.Process(target=_serve_feeds, args=(child, str(self.config_path)), daemon=True)
        self._process.start()
        child.close()
        self._connection = parent
        if not parent.poll(START_TIMEOUT_SECONDS):
            raise RuntimeError(f"calsync's feed server did not start within {START_TIMEOUT_SECONDS:.0f} s")
        self.base_url = parent.recv()
        return self

    def __exit__(self, *exc_info: object) -> None:
        if self._connection is not None:
            self._connection.send("stop")
            self._connection.close()
        self._process.join(START_TIMEOUT_SECONDS)
        if self._process.is_alive():
            self._process.terminate()


def _serve_feeds(connection: Connection, config_path: str) -> None:
    """Serve the feeds of ``config_path`` in the child process until the parent sends ``stop``."""
    from calsync.config import load_config
    from calsync.server import FeedApp
    from calsync.wsgi import make_server, server_url, start_server_thread, stop_server

    # waitress warns on every queued request once the load tool has more connections than it has threads.
    logging.getLogger("waitress.queue").setLevel(logging.ERROR)
    config = load_config(config_path, env={})
    server = make_server(FeedApp(config), "127.0.0.1", 0)
    start_server_thread(server)
    connection.send(server_url(server))
    try:
        connection.recv()
    except EOFError:
        pass
    stop_server(server)


class _ProcessServer:
    """A static file server run as a command on a free loopback port."""

    name = ""

    def __init__(self, directory: Path) -> None:
        self.directory = directory
        self.port = free_port()
        self.base_url = f"http://127.0.0.1:{self.port}"
        self._process: subprocess.Popen[bytes] | None = None
        # A file, not a pipe: http.server logs every request, and a full pipe would block it.
        self._stderr = tempfile.TemporaryFile()

    def command(self) -> list[str]:
        raise NotImplementedError

    def __enter__(self) -> _ProcessServer:
        self._process = subprocess.Popen(self.command(), stdout=subprocess.DEVNULL, stderr=self._stderr)
        wait_for_port(self.port, self._process, self.name, self._stderr)
        return self

    def __exit__(self, *exc_info: object) -> None:
        if self._process is not None:
            self._process.terminate()
            self._process.wait(START_TIMEOUT_SECONDS)
        self._stderr.close()


class HttpServer(_ProcessServer):
    """``python3 -m http.server`` serving a directory."""

    name = "python http.server"

    def command(self) -> list[str]:
        return [sys.executable, "-m", "http.server", str(self.port), "--bind", "127.0.0.1", "--directory", str(self.directory)]


class NginxServer(_ProcessServer):
    """nginx in the foreground with a minimal config in a temporary prefix directory."""

    name = "nginx"

    def __init__(self, directory: Path) -> None:
        super().__init__(directory)
        self._prefix = tempfile.TemporaryDirectory(prefix="calsync-bench-nginx-")

    def command(self) -> list[str]:
        prefix = Path(self._prefix.name)
        config = prefix / "nginx.conf"
        config.write_text(_nginx_config(prefix, self.directory, self.port), encoding="utf-8")
        return [NGINX, "-p", str(prefix), "-e", str(prefix / "error.log"), "-c", str(config)]

    def __exit__(self, *exc_info: object) -> None:
        super().__exit__(*exc_info)
        self._prefix.cleanup()


def _nginx_config(prefix: Path, root: Path, port: int) -> str:
    # Started as root, nginx runs its worker as the user "nobody", who cannot read a private temporary directory.
    user = f"user {pwd.getpwuid(os.geteuid()).pw_name};" if os.geteuid() == 0 else ""
    # One worker, so that nginx and the load tool share the two cores as the Python servers do.
    return f"""daemon off;
{user}
master_process on;
worker_processes 1;
pid {prefix}/nginx.pid;
error_log {prefix}/error.log warn;
events {{ worker_connections 256; }}
http {{
    access_log off;
    client_body_temp_path {prefix}/body;
    proxy_temp_path {prefix}/proxy;
    fastcgi_temp_path {prefix}/fastcgi;
    uwsgi_temp_path {prefix}/uwsgi;
    scgi_temp_path {prefix}/scgi;
    types {{ text/calendar ics; }}
    charset utf-8;
    charset_types text/calendar;
    sendfile on;
    server {{
        listen 127.0.0.1:{port};
        root {root};
    }}
}}
"""


def free_port() -> int:
    """Return a loopback port that was free a moment ago; the server binds it right after."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe_socket:
        probe_socket.bind(("127.0.0.1", 0))
        return probe_socket.getsockname()[1]


def wait_for_port(port: int, process: subprocess.Popen[bytes], name: str, stderr: IO[bytes]) -> None:
    deadline = time.monotonic() + START_TIMEOUT_SECONDS
    while time.monotonic() < deadline:
        if process.poll() is not None:
            stderr.seek(0)
            error = stderr.read().decode(errors="replace")
            raise RuntimeError(f"{name} exited with code {process.returncode} before listening: {error}")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.5):
                return
        except OSError:
            time.sleep(0.05)
    raise RuntimeError(f"{name} did not listen on 127.0.0.1:{port} within {START_TIMEOUT_SECONDS:.0f} s")
