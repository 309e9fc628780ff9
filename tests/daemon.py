"""A ``calsync serve`` child process for tests: its config, its log file and its HTTP address."""

from __future__ import annotations

import re
import signal
import subprocess
import time
from pathlib import Path

import pytest
import requests
from prometheus_client.parser import text_string_to_metric_families

from calsync.demo import free_port
from tests.privileges import Runner

# Bound on every wait for the daemon: start-up, a sync, a status change.
WAIT_SECONDS = 60.0
ADDRESS_LINE = re.compile(r"serving \d+ feed\(s\) on (http://\S+) \(pid")


def write_config(
    path: Path,
    *,
    base_url: str,
    secret: str,
    state_dir: Path,
    token: str,
    admin_token: str = "",
    interval: str = "1h",
    cashfin: str = "",
    sync: str = "",
    feeds: str = "",
) -> Path:
    """Write a config that listens on a free loopback port; ``cashfin``, ``sync`` and ``feeds`` add TOML lines.

    The config rejects port 0, so the port is one that the system reported free a moment before.
    """
    path.write_text(
        f'[cashfin]\nbase_url = "{base_url}"\nclient_secret = "{secret}"\n{cashfin}\n'
        f'[sync]\nstate_dir = "{state_dir.as_posix()}"\ninterval = "{interval}"\n{sync}\n'
        f'[server]\nlisten = "127.0.0.1:{free_port()}"\nadmin_token = "{admin_token}"\n'
        f'[[feeds]]\nname = "bookings"\ntoken = "{token}"\n{feeds}\n',
        encoding="utf-8",
    )
    path.chmod(0o644)
    return path


class ServeProcess:
    """A running ``calsync serve``. Its output goes to ``log_path``, and ``url`` is its base URL."""

    def __init__(self, runner: Runner, config: Path, log_path: Path, admin_token: str = "") -> None:
        self.log_path = log_path
        self.admin_token = admin_token
        self.session = requests.Session()
        self.session.trust_env = False  # no proxy between the test and the loopback server
        with log_path.open("wb") as log:
            self.process = subprocess.Popen(
                runner.command("--config", str(config), "serve"),
                stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT, env=runner.environment(),
            )
        self.url = self._wait_for_address()

    def _wait_for_address(self) -> str:
        deadline = time.monotonic() + WAIT_SECONDS
        while time.monotonic() < deadline:
            match = ADDRESS_LINE.search(self.log())
            if match:
                return match.group(1)
            if self.process.poll() is not None:
                pytest.fail(f"calsync serve exited with code {self.process.returncode}:\n{self.log()}")
            time.sleep(0.05)
        pytest.fail(f"calsync serve logged no address within {WAIT_SECONDS}s:\n{self.log()}")

    def log(self) -> str:
        return self.log_path.read_text(encoding="utf-8", errors="replace")

    def get(self, path: str, **options) -> requests.Response:
        return self.session.get(f"{self.url}{path}", timeout=10, **options)

    def feed(self, token: str, **options) -> requests.Response:
        return self.get("/feeds/bookings.ics", params={"token": token}, **options)

    def request_sync(self) -> None:
        response = self.session.post(
            f"{self.url}/sync", headers={"Authorization": f"Bearer {self.admin_token}"}, timeout=10
        )
        assert response.status_code == 202, response.text

    def wait_for(self, path: str, status: int) -> requests.Response:
        """Poll ``path`` until it returns ``status``; fail with the daemon's log after ``WAIT_SECONDS``."""
        deadline = time.monotonic() + WAIT_SECONDS
        last = "no response"
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                pytest.fail(f"calsync serve exited with code {self.process.returncode}:\n{self.log()}")
            response = self.get(path)
            if response.status_code == status:
                return response
            last = f"{response.status_code} {response.text.strip()}"
            time.sleep(0.05)
        pytest.fail(f"{path} did not return {status} within {WAIT_SECONDS}s (last: {last}):\n{self.log()}")

    def sync_runs(self) -> dict[str, int]:
        """Return the daemon's count of finished syncs by outcome (``success``, ``failed``), from ``/metrics``."""
        response = self.get("/metrics")
        assert response.status_code == 200, response.text
        counts = {"success": 0, "failed": 0}
        for family in text_string_to_metric_families(response.text):
            for sample in family.samples:
                if sample.name == "calsync_sync_runs_total":
                    counts[sample.labels["outcome"]] = int(sample.value)
        return counts

    def wait_for_syncs(self, count: int) -> dict[str, int]:
        """Poll ``/metrics`` until ``count`` syncs have finished, whatever their outcome; return the counts."""
        deadline = time.monotonic() + WAIT_SECONDS
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                pytest.fail(f"calsync serve exited with code {self.process.returncode}:\n{self.log()}")
            runs = self.sync_runs()
            if sum(runs.values()) >= count:
                return runs
            time.sleep(0.05)
        pytest.fail(f"{count} syncs did not finish within {WAIT_SECONDS}s (finished: {runs}):\n{self.log()}")

    def stop(self) -> int:
        """Send SIGTERM and return the exit code; kill the process if it does not exit in time."""
        self.session.close()
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout=WAIT_SECONDS)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        return self.process.returncode
