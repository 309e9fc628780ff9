"""Run a WSGI application on waitress, and stop it completely.

``make_server`` binds exactly one listening socket itself, so that a host
name never makes waitress listen on several addresses. It also bounds what
one client can hold: connections, request header and body sizes, idle time,
and the time to send one request (see ``REQUEST_TIMEOUT_SECONDS``). In waitress 3.0.2,
``server.close()`` closes the listening socket but leaves the worker threads
and open connections running. ``stop_server`` ends all of them.

The server loop ends once its socket map is empty. ``stop_server`` empties
it from the loop thread, through the server's trigger (a pipe that wakes the
loop and runs callbacks there), because closing sockets from another thread
could race with the loop's ``poll()``. The trigger's own pipe is closed only
after the loop has ended. ``pull_trigger`` queues the callback before it
writes to the pipe, so a loop that is already awake can run a callback that
closes the pipe (as ``wasyncore.close_all`` does) before that write. The
write then fails with EBADF, or lands in another file that reused the
descriptor.
"""

from __future__ import annotations

import logging
import resource
import socket
import threading
import time
import weakref
from collections.abc import Callable, Iterable
from functools import partial
from typing import Any

import waitress
from waitress import wasyncore
from waitress.channel import HTTPChannel
from waitress.server import BaseWSGIServer

log = logging.getLogger(__name__)

WSGIApp = Callable[[dict[str, Any], Callable[..., Any]], Iterable[bytes]]

STOP_TIMEOUT_SECONDS = 5.0
# A subscriber that stays idle this long is disconnected, so idle keep-alive connections cannot pile up.
CHANNEL_TIMEOUT_SECONDS = 60
# A client must send a whole request (line, headers and body) within this time after its first byte,
# however slowly it trickles bytes, so that slow senders ("slowloris") cannot hold connections forever.
REQUEST_TIMEOUT_SECONDS = 30
# How often waitress looks for idle connections and, here, for requests past REQUEST_TIMEOUT_SECONDS.
CLEANUP_INTERVAL_SECONDS = 5
# waitress's default (100 in waitress 3.0.2) lets 100 idle or slow clients lock everyone else out.
# poll() (asyncore_use_poll) accepts any descriptor number, unlike select(), which fails from 1024 on.
CONNECTION_LIMIT = 1000
# Each connection needs a socket, and a temporary file for a response beyond waitress's 1 MB in-memory
# buffer (its outbuf_overflow). The spare descriptors are for the database, feed files, logs and API calls.
FILES_PER_CONNECTION = 2
SPARE_FILES = 64
# A calendar client sends a short request line and a few headers. The request line counts towards this.
MAX_REQUEST_HEADER_BYTES = 32 * 1024
# Only the status page's forms send a body, of a few hundred bytes, so a large one can only be a mistake or an attack.
MAX_REQUEST_BODY_BYTES = 64 * 1024


class _ServerState:
    """The socket map of a server made by ``make_server``, and the thread that runs its loop, if any."""

    def __init__(self, socket_map: dict[int, Any]) -> None:
        self.socket_map = socket_map
        self.loop_thread: threading.Thread | None = None
        self.stopped = False
        # Set when stop_server runs on the loop thread, so that the loop closes the trigger after it ends.
        self.close_trigger_after_loop = False
        self.lock = threading.Lock()


_states: weakref.WeakKeyDictionary[BaseWSGIServer, _ServerState] = weakref.WeakKeyDictionary()
_states_lock = threading.Lock()


def make_server(
    app: WSGIApp,
    listen_host: str,
    port: int,
    threads: int = 8,
    *,
    connection_limit: int = CONNECTION_LIMIT,
    request_timeout: float = REQUEST_TIMEOUT_SECONDS,
    cleanup_interval: int = CLEANUP_INTERVAL_SECONDS,
) -> BaseWSGIServer:
    """Create a waitress server for ``app`` on ``listen_host:port`` that is not yet running.

    Port 0 picks a free port, which ``server_url`` reports. Proxy headers
    such as ``X-Forwarded-For`` are removed from requests, because no proxy
    is trusted. Run the server with ``server.run()`` on any thread, or with
    ``start_server_thread``, and end it with ``stop_server``. Raises OSError
    naming the address when the port cannot be bound.

    ``connection_limit`` is lowered when the open-file limit cannot fit it
    (see ``fit_connection_limit``). A connection that has not sent a whole
    request ``request_timeout`` seconds after its first byte is closed at
    the next cleanup, which runs every ``cleanup_interval`` seconds.
    """
    limit = fit_connection_limit(connection_limit)
    listener = _bind_listener(listen_host, port)
    socket_map: dict[int, Any] = {}
    try:
        server = waitress.create_server(
            app,
            map=socket_map,
            sockets=[listener],
            threads=threads,
            ident="calsync",
            clear_untrusted_proxy_headers=True,
            connection_limit=limit,
            channel_timeout=CHANNEL_TIMEOUT_SECONDS,
            cleanup_interval=cleanup_interval,
            max_request_header_size=MAX_REQUEST_HEADER_BYTES,
            max_request_body_size=MAX_REQUEST_BODY_BYTES,
            asyncore_use_poll=True,
        )
    except Exception:
        listener.close()
        raise

    state = _ServerState(socket_map)
    with _states_lock:
        _states[server] = state
    # The instance attributes shadow BaseWSGIServer's. The run wrapper records the loop thread for
    # stop_server, and the channel class and maintenance enforce the request deadline.
    server.run = partial(_run_loop, server, state, server.run)  # type: ignore[method-assign]
    server.channel_class = _TimedChannel
    server.maintenance = partial(_close_slow_requests, server, server.maintenance, request_timeout)  # type: ignore[method-assign]
    return server


def fit_connection_limit(wanted: int) -> int:
    """Raise the soft open-file limit so that ``wanted`` connections fit; return the limit that fits.

    The soft limit is raised up to the hard limit, as only root may raise
    the hard one. When even the hard limit is too low, the connection
    limit is lowered to fit, with a warning that names the limit needed.
    """
    needed = wanted * FILES_PER_CONNECTION + SPARE_FILES
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft == resource.RLIM_INFINITY or soft >= needed:
        return wanted

    target = needed if hard == resource.RLIM_INFINITY else min(needed, hard)
    if target > soft:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
            soft = target
        except (ValueError, OSError) as error:
            log.warning("could not raise the open-file limit from %d to %d: %s", soft, target, error)
    if soft >= needed:
        return wanted

    fitted = max(1, (soft - SPARE_FILES) // FILES_PER_CONNECTION)
    log.warning(
        "the open-file limit is %d, so the HTTP server accepts at most %d connections instead of %d; "
        "raise it to %d or more (ulimit -n, LimitNOFILE= in systemd, --ulimit nofile= in Docker)",
        soft, fitted, wanted, needed,
    )
    return fitted


def server_url(server: BaseWSGIServer) -> str:
    """Return ``http://host:port`` of the address the server listens on, with IPv6 hosts in brackets."""
    host, port = server.effective_host, server.effective_port
    if ":" in str(host):
        host = f"[{host}]"
    return f"http://{host}:{port}"


def start_server_thread(server: BaseWSGIServer, name: str = "calsync-http") -> threading.Thread:
    """Run the server loop on a new daemon thread and return the thread."""
    thread = threading.Thread(target=server.run, name=name, daemon=True)
    thread.start()
    return thread


def stop_server(server: BaseWSGIServer, timeout: float = STOP_TIMEOUT_SECONDS) -> bool:
    """Stop the worker threads, close every socket and end the server loop.

    Returns False when the loop or a worker thread was still running after
    ``timeout`` seconds. When called on the loop's own thread (from a signal
    handler), the loop ends as soon as the handler returns. A server that
    has been stopped does not start again, and calling this again does nothing.
    """
    state = _state_of(server)
    with state.lock:
        state.stopped = True
        loop_thread = state.loop_thread
        on_loop_thread = loop_thread is threading.current_thread()
        state.close_trigger_after_loop = on_loop_thread

    server.task_dispatcher.shutdown(timeout=timeout)
    workers_stopped = not server.task_dispatcher.threads
    if loop_thread is None:
        # No loop runs, and none can start now, so closing every socket here cannot race with one.
        wasyncore.close_all(state.socket_map)
        return workers_stopped

    # An empty map means that an earlier call already emptied it.
    if state.socket_map:
        server.trigger.pull_trigger(partial(_empty_socket_map, server, state.socket_map))
    if on_loop_thread:
        return workers_stopped

    loop_thread.join(timeout)
    if loop_thread.is_alive():
        log.warning("HTTP server loop on %s did not stop within %.0f s", server_url(server), timeout)
        return False
    _close_trigger(server)
    return workers_stopped


def _empty_socket_map(server: BaseWSGIServer, socket_map: dict[int, Any]) -> None:
    """Close every connection and the listening socket, and remove the trigger from the map without closing it.

    Runs on the loop thread. The loop ends when it finds the map empty.
    """
    for dispatcher in list(socket_map.values()):
        if dispatcher is server.trigger:
            continue
        try:
            if dispatcher is server:
                # BaseWSGIServer.close() closes the trigger too, so only the listening socket is closed here.
                wasyncore.dispatcher.close(server)
            else:
                dispatcher.close()
        except OSError as error:
            log.debug("closing %r while stopping the server failed: %s", dispatcher, error)
    server.trigger.del_channel()


class _TimedChannel(HTTPChannel):
    """waitress's HTTP channel, which also records when the request it is reading began.

    ``request_started`` is a ``time.monotonic()`` value. It is meaningful
    only while ``request`` (waitress's parser of an unfinished request) is set.
    """

    request_started: float = 0.0

    def received(self, data: bytes) -> bool:
        if self.request is None and data:
            self.request_started = time.monotonic()
        return super().received(data)


def _close_slow_requests(
    server: BaseWSGIServer, maintenance: Callable[[float], None], request_timeout: float, now: float
) -> None:
    """Run waitress's cleanup of idle connections, then close those whose request is past its deadline.

    Runs on the loop thread. waitress's own cleanup spares these connections,
    because every byte received counts as activity.
    """
    # NOTE: active_channels, requests, request and will_close are waitress internals (checked with 3.0.2).
    maintenance(now)
    cutoff = time.monotonic() - request_timeout
    slow = [
        channel
        for channel in server.active_channels.values()
        if isinstance(channel, _TimedChannel)
        and channel.request is not None
        and not channel.requests
        and channel.request_started < cutoff
    ]
    for channel in slow:
        channel.will_close = True
    if slow:
        log.warning(
            "closing %d connection(s) that sent no complete request within %.0f s of their first byte",
            len(slow), request_timeout,
        )


def _close_trigger(server: BaseWSGIServer) -> None:
    """Close the trigger's pipe once no thread can write to it any more."""
    if server.task_dispatcher.threads:
        # NOTE: a worker that outlived the stop timeout may still pull the trigger, so its pipe stays open.
        log.warning("HTTP server worker threads are still running, so the server's trigger pipe stays open")
        return
    server.trigger.close()


def _run_loop(server: BaseWSGIServer, state: _ServerState, run: Callable[[], None]) -> None:
    with state.lock:
        if state.stopped:
            return
        state.loop_thread = threading.current_thread()
    try:
        run()
    except Exception:
        log.exception("HTTP server loop on %s failed", server_url(server))
    finally:
        with state.lock:
            state.loop_thread = None
            close_trigger = state.close_trigger_after_loop
        if close_trigger:
            _close_trigger(server)


def _state_of(server: BaseWSGIServer) -> _ServerState:
    with _states_lock:
        state = _states.get(server)
    if state is None:
        raise ValueError("this server was not created by calsync.wsgi.make_server")
    return state


def _bind_listener(host: str, port: int) -> socket.socket:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    try:
        return socket.create_server((host, port), family=family)
    except OSError as error:
        message = (
            f"cannot listen on {host} port {port}: {error.strerror or error}. "
            "Choose another server.listen address or port, or port 0 for any free one."
        )
        raise OSError(error.errno, message) from error
