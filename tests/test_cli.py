"""The calsync command line: commands, help, exit codes and the demo."""

import os
import re
import signal
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest
import requests
from freezegun import freeze_time

from calsync import __version__
from calsync.cli import main
from calsync.lock import sync_lock
from calsync.sandbox import Sandbox
from tests.conftest import SANDBOX_ANCHOR
from tests.helpers import environment_without_calsync, parse_both

SECRET = "cli-secret"
SYNC_TIME = "2026-01-15T08:00:00Z"
COMMANDS = ["sync", "export", "check", "sandbox", "demo"]


@pytest.fixture
def api():
    with Sandbox(secret=SECRET, count=60, anchor=SANDBOX_ANCHOR) as sandbox:
        sandbox.start()
        yield sandbox


@pytest.fixture(autouse=True)
def clean_environment(monkeypatch):
    """Keep the machine's calsync variables out of these tests."""
    for name in list(os.environ):
        if name.startswith(("CALSYNC_", "CASHFIN_")):
            monkeypatch.delenv(name)


def write_config(tmp_path: Path, base_url: str, secret: str = SECRET) -> Path:
    path = tmp_path / "calsync.toml"
    path.write_text(
        f"""
[cashfin]
base_url = "{base_url}"
client_secret = "{secret}"

[sync]
state_dir = "{(tmp_path / 'state').as_posix()}"

[calendar]
uid_domain = "cli.calsync.invalid"

[[feeds]]
name = "bookings"
token = "cli-token"
""",
        encoding="utf-8",
    )
    return path


def run_cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "calsync", *args],
        capture_output=True,
        text=True,
        timeout=120,
        env=environment_without_calsync(),
    )


def test_version_flag():
    result = run_cli("--version")

    assert result.returncode == 0
    assert result.stdout.strip() == f"calsync {__version__}"


def test_help_lists_commands_and_exit_codes():
    result = run_cli("--help")

    assert result.returncode == 0
    for command in COMMANDS:
        assert command in result.stdout
    assert "Exit codes" in result.stdout


@pytest.mark.parametrize("command", COMMANDS)
def test_each_command_has_help(command, capsys):
    with pytest.raises(SystemExit) as exited:
        main([command, "--help"])

    assert exited.value.code == 0
    assert f"usage: calsync {command}" in capsys.readouterr().out


def test_unknown_command_is_usage_error():
    result = run_cli("synchronise")

    assert result.returncode == 2
    assert "invalid choice" in result.stderr


@freeze_time(SYNC_TIME)
def test_sync_succeeds_with_exit_zero(tmp_path, api):
    config = write_config(tmp_path, api.base_url)

    code = main(["--config", str(config), "sync"])

    assert code == 0
    parse_both((tmp_path / "state" / "feeds" / "bookings.ics").read_bytes())


def test_sync_with_wrong_secret_exits_one(tmp_path, api):
    config = write_config(tmp_path, api.base_url, secret="wrong-secret")

    result = run_cli("--config", str(config), "sync")

    assert result.returncode == 1
    assert "rejected the client secret" in result.stderr
    assert "wrong-secret" not in result.stderr
    assert "Traceback" not in result.stderr


def test_failed_sync_leaves_feed_untouched(tmp_path, api):
    config = write_config(tmp_path, api.base_url)
    assert run_cli("--config", str(config), "sync").returncode == 0
    feed = tmp_path / "state" / "feeds" / "bookings.ics"
    before = feed.read_bytes()
    config.write_text(config.read_text().replace(SECRET, "revoked"))

    result = run_cli("--config", str(config), "sync")

    assert result.returncode == 1
    assert feed.read_bytes() == before


def test_invalid_config_exits_two(tmp_path):
    config = tmp_path / "calsync.toml"
    config.write_text('[sync]\ninterval = "fortnightly"\n[cashfin]\nclient_secret = "x"\n')

    result = run_cli("--config", str(config), "sync")

    assert result.returncode == 2
    assert "sync.interval" in result.stderr
    assert str(config) in result.stderr
    assert "Traceback" not in result.stderr


def test_missing_secret_exits_two(tmp_path):
    config = tmp_path / "calsync.toml"
    config.write_text('[calendar]\nuid_domain = "example.com"\n')

    result = run_cli("--config", str(config), "sync")

    assert result.returncode == 2
    assert "CASHFIN_CLIENT_SECRET" in result.stderr


def test_held_lock_exits_three(tmp_path, api):
    config = write_config(tmp_path, api.base_url)

    with sync_lock(tmp_path / "state"):
        result = run_cli("--config", str(config), "sync", "--lock-wait", "0.2")

    assert result.returncode == 3
    assert f"pid {os.getpid()}" in result.stderr


@freeze_time(SYNC_TIME)
def test_export_to_stdout_matches_published_feed(tmp_path, api, capsysbinary):
    config = write_config(tmp_path, api.base_url)
    assert main(["--config", str(config), "sync"]) == 0
    capsysbinary.readouterr()

    code = main(["--config", str(config), "export", "--feed", "bookings"])

    assert code == 0
    assert capsysbinary.readouterr().out == (tmp_path / "state" / "feeds" / "bookings.ics").read_bytes()


@freeze_time(SYNC_TIME)
def test_export_to_file_needs_no_secret_or_network(tmp_path, api):
    config = write_config(tmp_path, api.base_url)
    assert main(["--config", str(config), "sync"]) == 0
    api.stop()
    config.write_text(config.read_text().replace(f'client_secret = "{SECRET}"', ""))
    output = tmp_path / "exported.ics"

    code = main(["--config", str(config), "export", "-o", str(output)])

    assert code == 0
    assert output.read_bytes() == (tmp_path / "state" / "feeds" / "bookings.ics").read_bytes()


def test_export_unknown_feed_exits_two(tmp_path, api, caplog):
    config = write_config(tmp_path, api.base_url)

    code = main(["--config", str(config), "export", "--feed", "nosuchfeed"])

    assert code == 2
    assert "bookings" in caplog.text


def test_export_before_first_sync_exits_one(tmp_path, api, caplog):
    config = write_config(tmp_path, api.base_url)

    code = main(["--config", str(config), "export"])

    assert code == 1
    assert "calsync sync" in caplog.text


def test_check_reports_booking_total(tmp_path, api, capsys):
    config = write_config(tmp_path, api.base_url)

    code = main(["--config", str(config), "check"])

    output = capsys.readouterr().out
    assert code == 0
    assert "is valid" in output
    assert "reports 60 bookings" in output
    assert SECRET not in output


def test_check_with_wrong_secret_exits_one(tmp_path, api):
    config = write_config(tmp_path, api.base_url, secret="wrong-secret")

    result = run_cli("--config", str(config), "check")

    assert result.returncode == 1
    assert "client secret" in result.stderr


def test_demo_serves_a_valid_feed_and_stops_on_ctrl_c(tmp_path):
    demo = subprocess.Popen(
        [sys.executable, "-m", "calsync", "demo", "--port", "0", "--count", "80"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=environment_without_calsync(),
    )
    try:
        output = read_demo_output(demo)
        response = requests.get(output.url, timeout=10)
        wrong_token = requests.get(re.sub(r"token=[^&]+", "token=wrong", output.url), timeout=10)
        status_page = log_in_to_status_page(output)
    finally:
        demo.send_signal(signal.SIGINT)
        _, stderr = demo.communicate(timeout=30)

    assert response.status_code == 200
    assert response.headers["Content-Type"] == "text/calendar; charset=utf-8"
    assert len(parse_both(response.content).walk("VEVENT")) > 20
    assert wrong_token.status_code == 404
    assert status_page.status_code == 200
    assert "calsync status" in status_page.text
    assert demo.returncode == 0
    assert not Path(output.state_dir).exists()
    assert "Traceback" not in stderr


@dataclass
class DemoOutput:
    """What the demo printed: the feed URL, the state directory, the status page URL and the admin token."""

    url: str
    state_dir: str
    status_url: str
    admin_token: str


def read_demo_output(demo: subprocess.Popen) -> DemoOutput:
    url = state_dir = status = None
    for line in demo.stdout:
        if "state and feeds in" in line:
            state_dir = line.rsplit(" ", 1)[1].strip()
        match = re.search(r"(http://127\.0\.0\.1:\d+/feeds/\S+)", line)
        if match:
            url = match.group(1)
        status = status or re.search(r"Status page: (http://127\.0\.0\.1:\d+/) \(log in with the admin token (\S+)\)", line)
        if "Ctrl-C stops" in line:
            break
    assert url, "the demo printed no feed URL"
    assert state_dir, "the demo printed no state directory"
    assert status, "the demo printed no status page URL with its admin token"
    return DemoOutput(url, state_dir, status.group(1), status.group(2))


def log_in_to_status_page(output: DemoOutput) -> requests.Response:
    """Log in with the admin token that the demo printed, and return the status page."""
    with requests.Session() as session:
        session.trust_env = False
        session.post(f"{output.status_url}login", data={"token": output.admin_token}, timeout=10)
        return session.get(output.status_url, timeout=10)


def test_check_show_config_masks_secrets_and_names_sources(tmp_path, api, capsys, monkeypatch):
    config = write_config(tmp_path, api.base_url)
    monkeypatch.setenv("CALSYNC_SYNC_INTERVAL", "10m")

    code = main(["--config", str(config), "check", "--show-config"])

    output = capsys.readouterr().out
    assert code == 0
    assert SECRET not in output
    assert "cli-token" not in output
    assert "********" in output
    interval = next(line for line in output.splitlines() if "sync.interval" in line)
    assert "10m" in interval
    assert "CALSYNC_SYNC_INTERVAL" in interval
    base_url = next(line for line in output.splitlines() if "cashfin.base_url" in line)
    assert str(config) in base_url
    timeout = next(line for line in output.splitlines() if "cashfin.timeout" in line)
    assert "default" in timeout


def test_bad_log_level_from_environment_exits_two():
    environment = environment_without_calsync()
    environment["CALSYNC_LOG_LEVEL"] = "verbose"

    result = subprocess.run(
        [sys.executable, "-m", "calsync", "urls"], capture_output=True, text=True, timeout=60, env=environment
    )

    assert result.returncode == 2
    assert "CALSYNC_LOG_LEVEL" in result.stderr
    assert "Traceback" not in result.stderr


def test_corrupt_state_database_moved_aside_and_rebuilt(tmp_path, api):
    config = write_config(tmp_path, api.base_url)
    (tmp_path / "state").mkdir()
    (tmp_path / "state" / "state.sqlite3").write_bytes(b"not a database " * 100)

    result = run_cli("--config", str(config), "sync")

    assert result.returncode == 0, result.stderr
    assert "is damaged" in result.stderr
    moved = list((tmp_path / "state").glob("state.sqlite3.corrupt-*"))
    assert len(moved) == 1
    assert moved[0].read_bytes().startswith(b"not a database")
    assert "60 added" in result.stderr
    assert "Traceback" not in result.stderr


def test_corrupt_state_database_explained_by_export(tmp_path, api):
    config = write_config(tmp_path, api.base_url)
    (tmp_path / "state").mkdir()
    (tmp_path / "state" / "state.sqlite3").write_bytes(b"not a database " * 100)

    result = run_cli("--config", str(config), "export")

    assert result.returncode == 1
    assert "move it aside" in result.stderr
    assert "Traceback" not in result.stderr


def test_state_dir_under_a_file_explained(tmp_path, api):
    config = write_config(tmp_path, api.base_url)
    (tmp_path / "state").write_text("a file where the state directory should be")

    result = run_cli("--config", str(config), "sync")

    assert result.returncode == 1
    assert "sync.lock" in result.stderr
    assert "Traceback" not in result.stderr


def test_unexpected_error_exits_one(tmp_path, api, caplog, monkeypatch):
    config = write_config(tmp_path, api.base_url)

    def explode(self, lock_wait=5.0, cancel=None):
        raise RuntimeError(f"bug while holding {SECRET}")

    monkeypatch.setattr("calsync.engine.SyncEngine.run", explode)
    code = main(["--config", str(config), "sync"])

    assert code == 1
    assert "unexpected error" in caplog.text


def test_check_warns_when_serve_would_refuse(tmp_path, api, caplog):
    config = tmp_path / "calsync.toml"
    config.write_text(
        f'[cashfin]\nbase_url = "{api.base_url}"\nclient_secret = "{SECRET}"\n'
        f'[sync]\nstate_dir = "{(tmp_path / "state").as_posix()}"\n'
    )

    code = main(["--config", str(config), "check"])

    assert code == 0
    assert "calsync serve would refuse" in caplog.text


def test_demo_busy_port_names_the_option(tmp_path):
    import socket

    with socket.create_server(("127.0.0.1", 0)) as busy:
        port = busy.getsockname()[1]
        result = run_cli("demo", "--port", str(port), "--count", "5")

    assert result.returncode == 2
    assert "--port" in result.stderr
    assert "Traceback" not in result.stderr
