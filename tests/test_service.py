"""`calsync serve` as a real process: start-up checks, scheduled and requested syncs, shutdown."""

import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import requests

from calsync.demo import free_port
from calsync.sandbox import Sandbox
from calsync.store import RunRecord, StateStore
from tests.helpers import environment_without_calsync, parse_both, wait_until

SECRET = "serve-secret"
ADMIN = "serve-admin-token"
TOKEN = "serve-feed-token"
WAIT = 60.0


@pytest.fixture
def api():
    # Anchored at today's date: the daemon runs unfrozen, and the feed's past_days window follows the clock.
    with Sandbox(secret=SECRET, count=40) as sandbox:
        yield sandbox


def write_config(tmp_path: Path, base_url: str, port: int, feed: str = f'token = "{TOKEN}"') -> Path:
    path = tmp_path / "calsync.toml"
    path.write_text(
        f"""
[cashfin]
base_url = "{base_url}"
client_secret = "{SECRET}"

[sync]
state_dir = "{(tmp_path / 'state').as_posix()}"
interval = "1h"

[server]
listen = "127.0.0.1:{port}"
admin_token = "{ADMIN}"

[[feeds]]
name = "bookings"
{feed}
""",
        encoding="utf-8",
    )
    return path


def start_serve(config: Path) -> subprocess.Popen:
    environment = environment_without_calsync()
    return subprocess.Popen(
        [sys.executable, "-m", "calsync", "--config", str(config), "serve"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=environment,
    )


def wait_for(url: str, status: int, **kwargs) -> requests.Response:
    """Poll ``url`` until it returns ``status``; fail after ``WAIT`` seconds."""
    deadline = time.monotonic() + WAIT
    last = None
    while time.monotonic() < deadline:
        try:
            last = requests.get(url, timeout=5, **kwargs)
            if last.status_code == status:
                return last
        except requests.ConnectionError:
            pass
        time.sleep(0.1)
    raise AssertionError(f"{url} did not return {status} in {WAIT}s; last: {last and last.status_code}")


def stored_runs(state_dir: Path) -> list[RunRecord]:
    with StateStore.open_in(state_dir) as store:
        return store.recent_runs()


def stop(process: subprocess.Popen, sig: int = signal.SIGTERM) -> str:
    process.send_signal(sig)
    _, stderr = process.communicate(timeout=WAIT)
    return stderr


@pytest.fixture
def served(tmp_path, api):
    port = free_port()
    process = start_serve(write_config(tmp_path, api.base_url, port))
    base = f"http://127.0.0.1:{port}"
    try:
        wait_for(f"{base}/readyz", 200)
        yield process, base, api
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()


def test_serves_feed_after_first_sync(served):
    process, base, api = served

    response = requests.get(f"{base}/feeds/bookings.ics", params={"token": TOKEN}, timeout=10)

    assert response.status_code == 200
    assert response.headers["Content-Type"] == "text/calendar; charset=utf-8"
    assert parse_both(response.content).walk("VEVENT")
    assert api.request_counts()["details"] == 40


def test_sigterm_exits_zero_and_logs_steps(served):
    process, base, api = served

    stderr = stop(process)

    assert process.returncode == 0
    assert "received SIGTERM" in stderr
    assert "shutdown complete" in stderr
    assert TOKEN not in stderr
    assert SECRET not in stderr
    assert ADMIN not in stderr


def test_sigint_exits_zero(served):
    process, base, api = served

    stop(process, signal.SIGINT)

    assert process.returncode == 0


def test_post_sync_runs_another_sync(served, tmp_path):
    process, base, api = served
    state_dir = tmp_path / "state"
    target = next(booking_id for booking_id in api.ids() if api.get(booking_id)["status"] == "scheduled")
    api.update(target, title="Requested sync picked this up")

    response = requests.post(f"{base}/sync", headers={"Authorization": f"Bearer {ADMIN}"}, timeout=10)

    assert response.status_code == 202
    deadline = time.monotonic() + WAIT
    body = b""
    while time.monotonic() < deadline and b"Requested sync picked this up" not in body:
        time.sleep(0.1)
        body = requests.get(f"{base}/feeds/bookings.ics", params={"token": TOKEN}, timeout=10).content
    assert b"Requested sync picked this up" in body
    # The run record is written after publishing, so it may lag the feed by a moment.
    wait_until(lambda: len(stored_runs(state_dir)) == 2, WAIT)
    assert [run.trigger for run in stored_runs(state_dir)] == ["manual", "scheduled"]


def test_post_sync_rejects_wrong_admin_token(served):
    process, base, api = served

    response = requests.post(f"{base}/sync", headers={"Authorization": "Bearer wrong"}, timeout=10)

    assert response.status_code == 401


def test_metrics_count_the_sync(served):
    process, base, api = served

    text = requests.get(f"{base}/metrics", timeout=10).text

    assert 'calsync_sync_runs_total{outcome="success"}' in text


def test_cron_sync_waits_for_lock_or_runs(served, tmp_path):
    process, base, api = served
    environment = environment_without_calsync()

    result = subprocess.run(
        [sys.executable, "-m", "calsync", "--config", str(tmp_path / "calsync.toml"), "sync", "--lock-wait", "30"],
        capture_output=True,
        text=True,
        timeout=120,
        env=environment,
    )

    assert result.returncode == 0, result.stderr
    assert stored_runs(tmp_path / "state")[0].trigger == "command"


def test_feed_without_token_refuses_to_start(tmp_path, api):
    config = write_config(tmp_path, api.base_url, free_port(), feed="")
    process = start_serve(config)

    _, stderr = process.communicate(timeout=WAIT)

    assert process.returncode == 2
    assert "feeds.bookings.token" in stderr
    assert "public = true" in stderr


def test_public_feed_warned_at_start(tmp_path, api):
    port = free_port()
    process = start_serve(write_config(tmp_path, api.base_url, port, feed="public = true"))
    try:
        wait_for(f"http://127.0.0.1:{port}/readyz", 200)
        response = requests.get(f"http://127.0.0.1:{port}/feeds/bookings.ics", timeout=10)
    finally:
        stderr = stop(process)

    assert response.status_code == 200
    assert "public" in stderr
    assert "WARNING" in stderr


def test_busy_port_fails_with_clear_error(tmp_path, api):
    import socket

    with socket.create_server(("127.0.0.1", 0)) as busy:
        port = busy.getsockname()[1]
        process = start_serve(write_config(tmp_path, api.base_url, port))
        _, stderr = process.communicate(timeout=WAIT)

    assert process.returncode == 2
    assert "Traceback" not in stderr
    assert f"cannot listen on 127.0.0.1:{port}" in stderr
    assert "server.listen" in stderr


def test_sigterm_abandons_running_sync_without_publishing(tmp_path):
    with Sandbox(secret=SECRET, count=200, latency_ms=50) as slow:
        config = write_config(tmp_path, slow.base_url, free_port())
        # One request at a time at 50 ms each: the first sync needs 10 s, far longer than the test waits.
        config.write_text(config.read_text().replace(f'client_secret = "{SECRET}"', f'client_secret = "{SECRET}"\nconcurrency = 1'))
        process = start_serve(config)
        try:
            deadline = time.monotonic() + WAIT
            while slow.request_counts()["details"] < 5 and time.monotonic() < deadline:
                time.sleep(0.05)
            stderr = stop(process)
        finally:
            if process.poll() is None:
                process.kill()
                process.wait()
        details_requested = slow.request_counts()["details"]

    assert process.returncode == 0
    assert details_requested < 200
    assert "sync abandoned" in stderr
    assert "shutdown complete" in stderr
    assert not (tmp_path / "state" / "feeds" / "bookings.ics").exists()


def test_restart_keeps_last_success_in_metrics_and_readiness(tmp_path, api):
    port = free_port()
    config = write_config(tmp_path, api.base_url, port)
    first = start_serve(config)
    try:
        wait_for(f"http://127.0.0.1:{port}/readyz", 200)
    finally:
        stop(first)
    config.write_text(config.read_text().replace(api.base_url, "http://127.0.0.1:9"))

    second = start_serve(config)
    try:
        ready = wait_for(f"http://127.0.0.1:{port}/readyz", 200)
        metrics = requests.get(f"http://127.0.0.1:{port}/metrics", timeout=10).text
    finally:
        stop(second)

    assert ready.status_code == 200
    gauge = next(line for line in metrics.splitlines() if line.startswith("calsync_last_success_timestamp_seconds "))
    assert float(gauge.split()[1]) > 0
