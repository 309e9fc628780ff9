"""Run a WSGI application on waitress, and stop it completely.

``make_server`` binds exactly one listening socket itself, so that a host
name never makes waitress listen on several addresses. In waitress 3.0.2,
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
import socket
import threading
import weakref
from collections.abc import Callable, Iterable
from functools import partial
from typing import Any

import waitress
from waitress import wasyncore
from waitress.server import BaseWSGIServer

log = logging.getLogger(__name__)

WSGIApp = Callable[[dict[str, Any], Callable[..., Any]], Iterable[bytes]]

STOP_TIMEOUT_SECONDS = 5.0
# A subscriber that stays idle this long is disconnected, so idle keep-alive connections cannot pile up.
CHANNEL_TIMEOUT_SECONDS = 60
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


def make_server(app: WSGIApp, listen_host: str, port: int, threads: int = 8) -> BaseWSGIServer:
    """Create a waitress server for ``app`` on ``listen_host:port`` that is not yet running.

    Port 0 picks a free port, which ``server_url`` reports. Proxy headers
    such as ``X-Forwarded-For`` are removed from requests, because no proxy
    is trusted. Run the server with ``server.run()`` on any thread, or with
    ``start_server_thread``, and end it with ``stop_server``. Raises OSError
    naming the address when the port cannot be bound.
    """
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
            channel_timeout=CHANNEL_TIMEOUT_SECONDS,
            max_request_body_size=MAX_REQUEST_BODY_BYTES,
            asyncore_use_poll=True,
        )
    except Exception:
        listener.close()
        raise

    state = _ServerState(socket_map)
    with _states_lock:
        _states[server] = state
    # The instance attribute shadows BaseWSGIServer.run, so that stop_server learns which thread runs the loop.
    server.run = partial(_run_loop, server, state, server.run)  # type: ignore[method-assign]
    return server


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
