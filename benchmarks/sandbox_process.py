"""The sandbox Cashfin API in a child process, controlled through a pipe.

The sandbox and calsync each need a core, and in one process the GIL would
make them wait for each other, so the benchmark serves the sandbox from
its own process. The parent reads request counts and the request log,
resets them, and changes bookings between syncs.
"""

from __future__ import annotations

import os
from datetime import date
from multiprocessing.connection import Connection
from types import TracebackType
from typing import Any

from benchmarks.child_process import SPAWN

SECRET = "benchmark-secret"
STOP_TIMEOUT_SECONDS = 10.0
# The request log keeps this many entries beyond the bookings, for list pages and retries.
LOG_MARGIN = 10_000


class SandboxProcess:
    """A running sandbox with ``count`` bookings, ``latency_ms`` per response and ``threads`` server threads."""

    def __init__(self, count: int, latency_ms: float, threads: int, anchor: date | None = None) -> None:
        self.count = count
        self.latency_ms = latency_ms
        self.threads = threads
        self.anchor = anchor
        self.secret = SECRET
        self.base_url = ""
        self._connection: Connection | None = None
        self._process: Any = None

    def start(self) -> str:
        """Start the child process, wait until the sandbox listens, and return its base URL."""
        parent, child = SPAWN.Pipe()
        options = {
            "count": self.count,
            "latency_ms": self.latency_ms,
            "threads": self.threads,
            "anchor": self.anchor,
            "secret": self.secret,
        }
        self._process = SPAWN.Process(target=_serve, args=(child, options), name="benchmark-sandbox", daemon=True)
        self._process.start()
        child.close()
        self._connection = parent
        self.base_url = self._receive()
        return self.base_url

    def request_counts(self) -> dict[str, int]:
        return self._call("counts")

    def request_log(self) -> list[tuple[str, str]]:
        return self._call("log")

    def reset_counts(self) -> None:
        self._call("reset")

    def change_share(self, share: float) -> int:
        """Change the title of ``share`` of the bookings, evenly spread, and return how many changed."""
        return self._call("change", share)

    def cpu_seconds(self) -> float:
        """Return the CPU seconds (user and system) the sandbox process has used so far."""
        return self._call("cpu")

    def stop(self) -> None:
        if self._connection is None:
            return
        try:
            self._connection.send(("stop", ()))
        except OSError:
            pass
        self._process.join(STOP_TIMEOUT_SECONDS)
        if self._process.is_alive():
            self._process.terminate()
            self._process.join(STOP_TIMEOUT_SECONDS)
        self._connection.close()
        self._connection = None

    def __enter__(self) -> SandboxProcess:
        self.start()
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, traceback: TracebackType | None
    ) -> None:
        self.stop()

    def _call(self, command: str, *args: Any) -> Any:
        if self._connection is None:
            raise RuntimeError("the sandbox process is not running; call start() first")
        self._connection.send((command, args))
        return self._receive()

    def _receive(self) -> Any:
        if self._connection is None:
            raise RuntimeError("the sandbox process is not running; call start() first")
        reply = self._connection.recv()
        if isinstance(reply, BaseException):
            raise RuntimeError(f"the sandbox process failed: {reply!r}") from reply
        return reply


def _serve(connection: Connection, options: dict[str, Any]) -> None:
    """Serve the sandbox in the child process and run the parent's commands until ``stop``."""
    from calsync.sandbox import Sandbox

    try:
        sandbox = Sandbox(
            secret=options["secret"],
            count=options["count"],
            anchor=options["anchor"],
            latency_ms=options["latency_ms"],
            threads=options["threads"],
            request_log_size=options["count"] + LOG_MARGIN,
        )
        connection.send(sandbox.start())
    except Exception as error:
        connection.send(error)
        connection.close()
        return

    try:
        _handle_commands(connection, sandbox)
    finally:
        sandbox.stop()
        connection.close()


def _handle_commands(connection: Connection, sandbox: Any) -> None:
    handlers = {
        "counts": sandbox.request_counts,
        "log": sandbox.request_log,
        "reset": sandbox.reset_counts,
        "change": lambda share: _change_share(sandbox, share),
        "cpu": _cpu_seconds,
    }
    while True:
        command, args = connection.recv()
        if command == "stop":
            return
        try:
            reply = handlers[command](*args)
        except Exception as error:
            reply = error
        connection.send(reply)


def _change_share(sandbox: Any, share: float) -> int:
    ids = sandbox.ids()
    step = max(1, round(1 / share))
    changed = ids[::step]
    for booking_id in changed:
        title = sandbox.get(booking_id)["title"]
        sandbox.update(booking_id, title=f"{title} (moved)")
    return len(changed)


def _cpu_seconds() -> float:
    times = os.times()
    return times.user + times.system
