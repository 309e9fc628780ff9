"""``calsync serve``: the scheduler and the feed server in one long-lived process.

The scheduler runs a sync at start and every ``sync.interval``, and the server
serves feed requests from the last published bytes. A failed sync is logged
and the daemon keeps serving the feeds published before. When the sync could
not use the state database or write a feed file, ``/readyz`` also returns 503
until a sync succeeds. On SIGTERM, SIGINT or SIGHUP the service stops
accepting requests, signals a running sync to stop before it commits or
publishes, waits for it up to ``SHUTDOWN_SECONDS``, and exits 0.
"""

from __future__ import annotations

import errno
import logging
import os
import signal
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from types import FrameType

from waitress.server import BaseWSGIServer

from calsync.config import Config
from calsync.engine import SyncEngine
from calsync.errors import (
    CalsyncError,
    ConfigError,
    LockHeldError,
    PublishError,
    StateError,
)
from calsync.metrics import Metrics, api_request_counts
from calsync.scheduler import SyncScheduler
from calsync.server import FeedApp, check_serving, warn_public_feeds
from calsync.status import ServiceStatus
from calsync.store import TRIGGER_SCHEDULED, open_or_rebuild
from calsync.wsgi import make_server, server_url, start_server_thread, stop_server

log = logging.getLogger(__name__)

# Time a running sync gets to stop after SIGTERM or SIGINT before the process exits anyway.
# Publishing is an atomic rename and the commit one SQLite transaction, so exiting mid-sync is safe.
SHUTDOWN_SECONDS = 30.0
# A scheduled sync that finds a cron 'calsync sync' running waits this long, then skips the tick.
LOCK_WAIT_SECONDS = 30.0


@dataclass
class Service:
    """The parts of a running ``calsync serve`` and the sync they share."""

    config: Config
    engine: SyncEngine = field(init=False)
    status: ServiceStatus = field(init=False)
    metrics: Metrics = field(init=False)
    scheduler: SyncScheduler = field(init=False)
    app: FeedApp = field(init=False)
    cancel: threading.Event = field(default_factory=threading.Event)
    first_sync_done: threading.Event = field(default_factory=threading.Event)

    def __post_init__(self) -> None:
        self.engine = SyncEngine(self.config)
        self.status = ServiceStatus.from_store(self.config.sync.state_dir)
        self.metrics = Metrics()
        if self.status.last_success is not None:
            # After a restart the gauge starts from the stored run, as /readyz does, so staleness alerts hold.
            self.metrics.last_success.set(self.status.last_success.timestamp())
        self.scheduler = SyncScheduler(self.sync_once, self.config.sync.interval)
        request_sync = self.scheduler.request_now if self.config.server.admin_token else None
        self.app = FeedApp(
            self.config, status=self.status, metrics=self.metrics, request_sync=request_sync,
            sync_running=lambda: self.scheduler.syncing,
        )

    def sync_once(self, trigger: str = TRIGGER_SCHEDULED) -> None:
        """Run one sync and record its outcome; errors are logged, not raised.

        ``trigger``, a ``TRIGGER_*`` value of ``calsync.store``, names what started it and goes into the run record.
        """
        try:
            self._sync_and_record(trigger)
        finally:
            self.first_sync_done.set()

    def _sync_and_record(self, trigger: str) -> None:
        try:
            result = self.engine.run(lock_wait=LOCK_WAIT_SECONDS, cancel=self.cancel, trigger=trigger)
        except LockHeldError as error:
            log.warning("skipped this sync: %s", error)
            self.status.record_skipped(datetime.now(UTC), str(error))
        except CalsyncError as error:
            self._record_failure(error)
        except Exception as error:  # a bug must not stop the daemon; the next tick tries again
            log.exception("sync failed with an unexpected error")
            self._record_failure(error)
        else:
            finished = datetime.now(UTC)
            self.status.record_success(finished)
            self.metrics.observe_sync_success(result.stats, result.stats.bookings_by_status, finished)

    def _record_failure(self, error: Exception) -> None:
        if isinstance(error, CalsyncError) and not error.logged:
            # The engine logs the failures of syncs that got as far as opening the state database, not earlier ones.
            log.error("sync failed, feeds left as they were: %s", error)
        stats = self.engine.last_stats
        self.status.record_failure(
            datetime.now(UTC),
            str(error),
            publish_failed=isinstance(error, PublishError),
            state_failed=isinstance(error, StateError),
        )
        self.metrics.observe_sync_failure(stats.seconds, api_request_counts(stats.api_requests))


def run_service(config: Config, on_started: Callable[[Service, str], None] | None = None) -> int:
    """Serve feeds and sync on schedule until SIGTERM or SIGINT; return the exit code.

    ``on_started`` is called on the main thread with the service and the
    server's base URL once both run; ``calsync demo`` prints its links there.
    """
    check_serving(config)
    warn_public_feeds(config)
    state_problem = _check_state(config)

    service = Service(config)
    if state_problem is not None:
        service.status.record_failure(datetime.now(UTC), str(state_problem), state_failed=True)
    server = _bind(service.app, config)
    stop = threading.Event()
    _install_signal_handlers(stop)

    server_thread = start_server_thread(server)
    log.info("serving %d feed(s) on %s (pid %d)", len(config.feeds), server_url(server), os.getpid())
    service.scheduler.start()
    if on_started is not None:
        on_started(service, server_url(server))
    stop.wait()

    _shut_down(service, server, server_thread)
    return 0


def _check_state(config: Config) -> StateError | None:
    """Open the state database before serving; return the error if it cannot be used, after logging it.

    A damaged database is moved aside and replaced by an empty one, which
    the first sync fills. One that cannot be opened (permissions, a full
    disk) does not stop the daemon: it serves the feeds published before
    and tries again at every sync.
    """
    try:
        with open_or_rebuild(config.sync.state_dir):
            return None
    except StateError as error:
        log.error("%s; serving the feeds published before and trying again at every sync", error)
        error.logged = True
        return error


def _bind(app: FeedApp, config: Config) -> BaseWSGIServer:
    try:
        return make_server(app, config.server.host, config.server.port)
    except OSError as error:
        source = config.sources.get("server.listen", "default")
        if error.errno == errno.EADDRINUSE:
            fix = "Stop the other process on that port or set server.listen to a free port"
        else:
            fix = "Set server.listen to an address of this machine, such as 0.0.0.0 or 127.0.0.1, and a free port"
        raise ConfigError(
            "server.listen", source, f"cannot listen on {config.server.listen}: {_reason(error)}", fix
        ) from error


def _reason(error: OSError) -> str:
    return os.strerror(error.errno) if error.errno else str(error)


def _install_signal_handlers(stop: threading.Event) -> None:
    def handle(signum: int, frame: FrameType | None) -> None:
        log.info("received %s, shutting down", signal.Signals(signum).name)
        stop.set()

    signal.signal(signal.SIGTERM, handle)
    signal.signal(signal.SIGINT, handle)
    # A closed terminal sends SIGHUP; calsync has no configuration reload, so it shuts down cleanly instead.
    signal.signal(signal.SIGHUP, handle)


def _shut_down(service: Service, server: BaseWSGIServer, server_thread: threading.Thread) -> None:
    started = time.monotonic()
    log.info("shutdown: closing the HTTP server")
    if not stop_server(server):
        log.warning("shutdown: the HTTP server did not stop in time; continuing")
    server_thread.join(timeout=5)

    log.info("shutdown: stopping the scheduler")
    service.cancel.set()
    service.scheduler.shutdown()
    if service.scheduler.syncing:
        log.info("shutdown: waiting up to %ds for the running sync to stop", SHUTDOWN_SECONDS)
    if not service.scheduler.wait_idle(max(0.0, SHUTDOWN_SECONDS - (time.monotonic() - started))):
        log.warning("shutdown: the sync did not stop in %ds; exiting without it", SHUTDOWN_SECONDS)
        logging.shutdown()
        os._exit(0)
    log.info("shutdown complete")
