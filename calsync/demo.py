"""``calsync demo``: the whole job on loopback, with nothing to configure.

It starts the sandbox API on a free loopback port, writes a config for it in
a state directory, and runs the real daemon (scheduler and feed server) on
that config. Once the first sync has finished it prints the feed URL, the
status page URL with the admin token to log in, and a command that triggers
a sync. Ctrl-C stops the daemon and the sandbox and removes a temporary
state directory.
"""

from __future__ import annotations

import logging
import os
import secrets
import shutil
import socket
import tempfile
from pathlib import Path

from calsync.config import Config, load_config
from calsync.errors import ConfigError
from calsync.links import feed_url
from calsync.sandbox import Sandbox
from calsync.service import Service, run_service

log = logging.getLogger(__name__)

DEMO_SECRET = "sandbox-secret"
# Seconds to wait for the first sync before printing the links anyway.
FIRST_SYNC_WAIT = 120.0
DEMO_CONFIG = """\
# Written by 'calsync demo' for its sandbox; safe to delete.
[cashfin]
base_url = "{base_url}"
client_secret = "{secret}"

[sync]
state_dir = "{state_dir}"
interval = "5m"

[calendar]
uid_domain = "demo.calsync.invalid"

[server]
listen = "127.0.0.1:{port}"
admin_token = "{admin_token}"

[[feeds]]
name = "bookings"
title = "Bookings (calsync demo)"
token = "{token}"
alarms = ["15m"]
"""


def write_demo_config(state_dir: Path, base_url: str, port: int) -> Path:
    path = state_dir / "calsync.toml"
    text = DEMO_CONFIG.format(
        base_url=base_url,
        secret=DEMO_SECRET,
        state_dir=state_dir.as_posix(),
        port=port,
        admin_token=secrets.token_urlsafe(16),
        token=secrets.token_urlsafe(16),
    )
    path.write_text(text, encoding="utf-8")
    return path


def load_demo_config(path: Path) -> Config:
    """Load the demo config ignoring CALSYNC_* and CASHFIN_* variables meant for a real account."""
    environment = {key: value for key, value in os.environ.items() if not key.startswith(("CALSYNC_", "CASHFIN_"))}
    return load_config(str(path), env=environment)


def free_port() -> int:
    """Return a loopback port that was free a moment ago; the demo binds it right after."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def run_demo(port: int = 8080, count: int = 300, state_dir: str | None = None) -> int:
    """Run the demo until Ctrl-C; return the exit code."""
    temporary = state_dir is None
    directory = Path(tempfile.mkdtemp(prefix="calsync-demo-") if temporary else state_dir).resolve()
    directory.mkdir(parents=True, exist_ok=True)

    sandbox = Sandbox(secret=DEMO_SECRET, count=count)
    try:
        base_url = sandbox.start()
        log.info("sandbox API with %d bookings listening on %s", count, base_url)
        config = load_demo_config(write_demo_config(directory, base_url, port or free_port()))
        try:
            return run_service(config, on_started=_print_links)
        except ConfigError as error:
            if error.key != "server.listen":
                raise
            raise ConfigError("--port", "the command line", error.problem, "Choose another --port, or --port 0 for any free one") from error
    finally:
        sandbox.stop()
        if temporary:
            shutil.rmtree(directory, ignore_errors=True)


def _print_links(service: Service, base_url: str) -> None:
    service.first_sync_done.wait(FIRST_SYNC_WAIT)
    config = service.config
    events = service.engine.last_stats.events

    print(f"\ncalsync demo: state and feeds in {config.sync.state_dir}")
    for feed in config.feeds:
        print(f"  {feed.title}: {events.get(feed.name, 0)} events")
        print(f"    {feed_url(base_url, feed)}")
    print(f"  Status page: {base_url}/ (log in with the admin token {config.server.admin_token})")
    print(f"  Sync now:  curl -X POST -H 'Authorization: Bearer {config.server.admin_token}' {base_url}/sync")
    print(f"  Health:    {base_url}/readyz and {base_url}/metrics")
    print("Open the feed URL in a browser, or subscribe to it from a calendar on this machine. Ctrl-C stops.\n", flush=True)
