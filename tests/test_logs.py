"""Log output: text and JSON lines, structured summary fields, and secret redaction."""

import json
import logging
import subprocess
import sys

import pytest

from calsync.logs import REDACTED, JsonFormatter, RedactSecrets
from calsync.sandbox import Sandbox
from tests.conftest import SANDBOX_ANCHOR
from tests.helpers import environment_without_calsync


def make_record(message: str, *args: object, **extra: object) -> logging.LogRecord:
    record = logging.LogRecord("calsync.engine", logging.INFO, __file__, 1, message, args, None)
    for key, value in extra.items():
        setattr(record, key, value)
    return record


def test_json_line_has_standard_keys():
    line = JsonFormatter().format(make_record("listed %d bookings", 3))

    entry = json.loads(line)
    assert entry["message"] == "listed 3 bookings"
    assert entry["level"] == "info"
    assert entry["logger"] == "calsync.engine"
    assert entry["timestamp"].endswith("+00:00")


def test_json_line_carries_fields():
    line = JsonFormatter().format(make_record("sync finished", fields={"added": 2, "events": {"bookings": 9}}))

    entry = json.loads(line)
    assert entry["added"] == 2
    assert entry["events"] == {"bookings": 9}


def test_fields_cannot_replace_message():
    line = JsonFormatter().format(make_record("real message", fields={"message": "spoofed"}))

    assert json.loads(line)["message"] == "real message"


def test_redaction_replaces_secret_in_arguments():
    record = make_record("request failed: %s", "401 for secret hunter2-secret")

    RedactSecrets(["hunter2-secret"]).filter(record)

    assert record.getMessage() == f"request failed: 401 for secret {REDACTED}"


def test_redaction_prefers_longest_secret():
    record = make_record("token abcd-efgh-ijkl")

    RedactSecrets(["abcd", "abcd-efgh-ijkl"]).filter(record)

    assert record.getMessage() == f"token {REDACTED}"


def test_short_values_not_treated_as_secrets():
    record = make_record("page 1 of 3")

    RedactSecrets(["1"]).filter(record)

    assert record.getMessage() == "page 1 of 3"


@pytest.fixture
def api():
    with Sandbox(secret="json-log-secret", count=30, anchor=SANDBOX_ANCHOR) as sandbox:
        yield sandbox


def test_sync_in_json_format_logs_summary_fields(tmp_path, api):
    config = tmp_path / "calsync.toml"
    config.write_text(
        f"""
[cashfin]
base_url = "{api.base_url}"
client_secret = "json-log-secret"
[sync]
state_dir = "{(tmp_path / 'state').as_posix()}"
[[feeds]]
name = "bookings"
token = "json-feed-token"
""",
        encoding="utf-8",
    )
    environment = environment_without_calsync()

    result = subprocess.run(
        [sys.executable, "-m", "calsync", "--log-format", "json", "--log-level", "debug", "--config", str(config), "sync"],
        capture_output=True,
        text=True,
        timeout=120,
        env=environment,
    )

    assert result.returncode == 0, result.stderr
    entries = [json.loads(line) for line in result.stderr.splitlines()]
    summaries = [entry for entry in entries if entry.get("event") == "sync_finished"]
    assert len(summaries) == 1
    assert summaries[0]["added"] == 30
    assert summaries[0]["details_fetched"] == 30
    assert "json-log-secret" not in result.stderr
    assert "json-feed-token" not in result.stderr


def test_traceback_text_redacted():
    from calsync.logs import RedactingFormatter, redact

    redact(["traceback-secret-value"])
    try:
        raise ValueError("header contains traceback-secret-value")
    except ValueError:
        import sys as system

        record = logging.LogRecord("calsync", logging.ERROR, __file__, 1, "failed", (), system.exc_info())

    text = RedactingFormatter().format(record)
    line = JsonFormatter().format(record)

    assert "traceback-secret-value" not in text
    assert REDACTED in text
    assert "traceback-secret-value" not in line
