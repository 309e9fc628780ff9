"""Tests of calsync.config: defaults, the TOML file, environment overrides and every rejected value."""

from __future__ import annotations

import logging
import re
import tomllib
from datetime import timedelta
from pathlib import Path

import pytest

from calsync.config import (
    SCHEMA,
    Config,
    format_duration,
    load_config,
    parse_duration,
    resolve_config_path,
)
from calsync.config_schema import options_of
from calsync.durations import MAX_DURATION, DurationTooLargeError
from calsync.errors import ConfigError

REPO = Path(__file__).resolve().parent.parent
EXAMPLE = REPO / "config.example.toml"
SECRET = "test-secret-7f3a9c"
ENV = {"CASHFIN_CLIENT_SECRET": SECRET}


@pytest.fixture(autouse=True)
def _work_in_tmp_path(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # A calsync.toml in the directory that pytest started from must not leak in.
    monkeypatch.chdir(tmp_path)


def write(path: Path, text: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text, encoding="utf-8")
    return path


def load_text(tmp_path: Path, text: str, env: dict[str, str] | None = None) -> Config:
    path = write(tmp_path / "conf" / "calsync.toml", text)
    return load_config(str(path), env=ENV if env is None else env)


def error_for(tmp_path: Path, text: str, env: dict[str, str] | None = None) -> tuple[ConfigError, Path]:
    path = write(tmp_path / "conf" / "calsync.toml", text)
    with pytest.raises(ConfigError) as info:
        load_config(str(path), env=ENV if env is None else env)
    return info.value, path


def assert_names(error: ConfigError, key: str, source: str | Path, fix: str) -> None:
    """Check that the error names the key, the source and the fix, also in its message."""
    assert error.key == key
    assert error.source == str(source)
    assert fix in error.fix
    message = str(error)
    assert key in message
    assert str(source) in message
    assert fix in message


# Defaults and complete files.


def test_defaults_without_file(tmp_path: Path) -> None:
    config = load_config(env=ENV)

    assert config.path is None
    assert config.cashfin.base_url == "https://api.cashfin.africa"
    assert config.cashfin.client_secret == SECRET
    assert config.cashfin.timeout == 10.0
    assert config.cashfin.page_size == 100
    assert config.cashfin.concurrency == 4
    assert config.sync.interval == timedelta(minutes=15)
    assert config.sync.state_dir == tmp_path / "calsync-data"
    assert config.sync.timezone.key == "Africa/Nairobi"
    assert config.sync.timezone_name == "Africa/Nairobi"
    assert config.sync.details_max_age == timedelta(hours=24)
    assert config.calendar.uid_domain == "bookings.example.com"
    assert config.calendar.organizer == ""
    assert config.server.listen == "127.0.0.1:8080"
    assert config.server.host == "127.0.0.1"
    assert config.server.port == 8080
    assert config.server.public_url == ""
    assert config.server.admin_token == ""


def test_default_feed_without_feeds_table(tmp_path: Path) -> None:
    config = load_text(tmp_path, '[sync]\ninterval = "5m"\n')

    assert len(config.feeds) == 1
    feed = config.feeds[0]
    assert feed.name == "bookings"
    assert feed.title == "Bookings"
    assert feed.token == ""
    assert feed.public is False
    assert feed.statuses == ("scheduled", "completed", "no-show", "cancelled")
    assert feed.types == ()
    assert feed.past_days == 90
    assert feed.details == "full"
    assert feed.alarms == ()
    assert feed.gzip is False
    assert config.feed("bookings") is feed


def test_empty_feeds_array_gives_default_feed(tmp_path: Path) -> None:
    config = load_text(tmp_path, "feeds = []\n")

    assert [feed.name for feed in config.feeds] == ["bookings"]


def test_calsync_toml_in_cwd_read(tmp_path: Path) -> None:
    write(tmp_path / "calsync.toml", '[sync]\ninterval = "20m"\n')

    config = load_config(env=ENV)

    assert config.path == tmp_path / "calsync.toml"
    assert config.sync.interval == timedelta(minutes=20)


def test_example_file_loads(tmp_path: Path) -> None:
    config = load_config(str(EXAMPLE), env=ENV)

    assert config.path == EXAMPLE
    assert config.cashfin.client_secret == SECRET
    assert config.sync.state_dir == REPO / "calsync-data"
    assert [feed.name for feed in config.feeds] == ["bookings"]


def test_example_file_lists_every_key() -> None:
    # Uncommenting every "# key = value" line must give a file with every key in its section.
    lines = EXAMPLE.read_text(encoding="utf-8").splitlines()
    uncommented = [re.sub(r"^# (\w+ = )", r"\1", line) for line in lines]
    document = tomllib.loads("\n".join(uncommented))

    for option in SCHEMA:
        table = document["feeds"][0] if option.section == "feeds" else document[option.section]
        assert option.key in table, f"{option.section}.{option.key} is missing from config.example.toml"


def test_schema_options_have_help() -> None:
    for option in SCHEMA:
        assert option.help.strip(), f"{option.section}.{option.key} has no help text"


def test_example_values_match_defaults() -> None:
    document = tomllib.loads(EXAMPLE.read_text(encoding="utf-8"))

    for option in SCHEMA:
        table = document["feeds"][0] if option.section == "feeds" else document[option.section]
        if option.key in table:
            assert table[option.key] == option.default, f"{option.section}.{option.key}"


FULL = """
[cashfin]
base_url = "http://127.0.0.1:9000/"
client_secret = "file-secret"
timeout = "30s"
page_size = 50
concurrency = 8

[sync]
interval = "1h30m"
state_dir = "/var/lib/calsync"
timezone = "Europe/London"
details_max_age = "7d"

[calendar]
uid_domain = "calendar.example.org"
organizer = "ops@example.org"

[server]
listen = "[::1]:9090"
public_url = "https://cal.example.org/"
admin_token = "admin-secret"

[[feeds]]
name = "bookings"
title = "All bookings"
token = "feed-secret"
statuses = ["scheduled", "cancelled"]
types = ["consultation", "workshop"]
past_days = 0
details = "limited"
alarms = ["15m", 3600]
gzip = true

[[feeds]]
name = "busy_times"
title = "Busy"
public = true
details = "busy"
"""


def test_full_file(tmp_path: Path) -> None:
    config = load_text(tmp_path, FULL, env={})

    assert config.cashfin.base_url == "http://127.0.0.1:9000"
    assert config.cashfin.client_secret == "file-secret"
    assert config.cashfin.timeout == 30.0
    assert config.cashfin.page_size == 50
    assert config.cashfin.concurrency == 8
    assert config.sync.interval == timedelta(hours=1, minutes=30)
    assert config.sync.state_dir == Path("/var/lib/calsync")
    assert config.sync.timezone_name == "Europe/London"
    assert config.sync.details_max_age == timedelta(days=7)
    assert config.calendar.uid_domain == "calendar.example.org"
    assert config.calendar.organizer == "mailto:ops@example.org"
    assert config.server.host == "::1"
    assert config.server.port == 9090
    assert config.server.public_url == "https://cal.example.org"
    assert config.server.admin_token == "admin-secret"


def test_full_file_feeds(tmp_path: Path) -> None:
    config = load_text(tmp_path, FULL, env={})

    first, second = config.feeds
    assert first.title == "All bookings"
    assert first.token == "feed-secret"
    assert first.statuses == ("scheduled", "cancelled")
    assert first.types == ("consultation", "workshop")
    assert first.past_days == 0
    assert first.details == "limited"
    assert first.alarms == (timedelta(minutes=15), timedelta(hours=1))
    assert first.gzip is True
    assert second.name == "busy_times"
    assert second.public is True
    assert second.token == ""
    assert second.statuses == ("scheduled", "completed", "no-show", "cancelled")
    assert config.feed("busy_times") is second


def test_unknown_feed_lists_known_names(tmp_path: Path) -> None:
    config = load_text(tmp_path, FULL, env={})

    with pytest.raises(ConfigError) as info:
        config.feed("staff")

    assert info.value.key == "feeds"
    assert "'staff'" in info.value.problem
    assert "bookings, busy_times" in info.value.fix


def test_repr_leaves_out_secrets(tmp_path: Path) -> None:
    config = load_text(tmp_path, FULL, env={})

    text = repr(config)
    assert "file-secret" not in text
    assert "admin-secret" not in text
    assert "feed-secret" not in text


# The config file path.


def test_resolve_config_path_order() -> None:
    named = {"CALSYNC_CONFIG": "/etc/calsync/env.toml"}

    assert resolve_config_path("/tmp/cli.toml", named) == (Path("/tmp/cli.toml"), True)
    assert resolve_config_path(None, named) == (Path("/etc/calsync/env.toml"), True)
    assert resolve_config_path(None, {}) == (Path("calsync.toml"), False)
    assert resolve_config_path(None, {"CALSYNC_CONFIG": ""}) == (Path("calsync.toml"), False)


def test_config_from_calsync_config_variable(tmp_path: Path) -> None:
    path = write(tmp_path / "elsewhere.toml", '[cashfin]\nconcurrency = 2\n')

    config = load_config(env={**ENV, "CALSYNC_CONFIG": str(path)})

    assert config.path == path
    assert config.cashfin.concurrency == 2


def test_missing_named_file_is_error(tmp_path: Path) -> None:
    missing = tmp_path / "missing.toml"

    with pytest.raises(ConfigError) as info:
        load_config(str(missing), env=ENV)
    assert_names(info.value, "config", "--config", "Create it")
    assert str(missing) in info.value.problem

    with pytest.raises(ConfigError) as info:
        load_config(env={**ENV, "CALSYNC_CONFIG": str(missing)})
    assert_names(info.value, "config", "CALSYNC_CONFIG", "Create it")


def test_unreadable_file_is_error(tmp_path: Path) -> None:
    # Reading a directory fails even for root, who may run the tests and can read any file.
    directory = tmp_path / "calsync.toml"
    directory.mkdir()

    with pytest.raises(ConfigError) as info:
        load_config(str(directory), env=ENV)

    assert_names(info.value, "config", directory, "permissions")
    assert "cannot read" in info.value.problem


def test_toml_syntax_error_position(tmp_path: Path) -> None:
    error, path = error_for(tmp_path, "[sync]\ninterval = 15m\n")

    assert_names(error, "config", path, "Correct the TOML syntax")
    assert "line 2, column 14" in error.problem


def test_file_not_utf8_is_error(tmp_path: Path) -> None:
    path = tmp_path / "calsync.toml"
    path.write_bytes(b'[calendar]\nuid_domain = "\xff"\n')

    with pytest.raises(ConfigError) as info:
        load_config(str(path), env=ENV)

    assert_names(info.value, "config", path, "UTF-8")


def test_file_with_byte_order_mark_loads(tmp_path: Path) -> None:
    path = tmp_path / "calsync.toml"
    path.write_bytes(b'\xef\xbb\xbf[sync]\ninterval = "5m"\n')

    config = load_config(str(path), env=ENV)

    assert config.sync.interval == timedelta(minutes=5)


def test_byte_order_mark_keeps_error_position(tmp_path: Path) -> None:
    path = tmp_path / "calsync.toml"
    path.write_bytes(b"\xef\xbb\xbf[sync]\ninterval = 15m\n")

    with pytest.raises(ConfigError) as info:
        load_config(str(path), env=ENV)

    assert_names(info.value, "config", path, "Correct the TOML syntax")
    assert "line 2, column 14" in info.value.problem


# Unknown sections and keys.


def test_unknown_section_suggests_closest(tmp_path: Path) -> None:
    error, path = error_for(tmp_path, '[snyc]\ninterval = "5m"\n')

    assert_names(error, "snyc", path, "Did you mean sync?")
    assert "unknown section" in error.problem


def test_unknown_key_suggests_closest(tmp_path: Path) -> None:
    error, path = error_for(tmp_path, '[sync]\nintervall = "5m"\n')

    assert_names(error, "sync.intervall", path, "Did you mean interval?")


def test_unknown_key_lists_known_keys(tmp_path: Path) -> None:
    error, path = error_for(tmp_path, '[calendar]\ncolour = "red"\n')

    assert_names(error, "calendar.colour", path, "uid_domain, organizer")


def test_unknown_feed_key_names_feed(tmp_path: Path) -> None:
    error, path = error_for(tmp_path, '[[feeds]]\nname = "staff"\ntokne = "x"\n')

    assert_names(error, "feeds.staff.tokne", path, "Did you mean token?")


def test_key_outside_section_names_section(tmp_path: Path) -> None:
    error, path = error_for(tmp_path, 'interval = "5m"\n')

    assert_names(error, "interval", path, "Move it into the [sync] section")


def test_feeds_as_single_table_is_error(tmp_path: Path) -> None:
    error, path = error_for(tmp_path, '[feeds]\nname = "x"\n')

    assert_names(error, "feeds", path, "[[feeds]]")


def test_section_of_wrong_type_is_error(tmp_path: Path) -> None:
    error, path = error_for(tmp_path, 'sync = "15m"\n')

    assert_names(error, "sync", path, "[sync] section")


# Wrong TOML types.


@pytest.mark.parametrize(
    ("text", "key", "expected", "fix"),
    [
        ('[cashfin]\npage_size = "100"\n', "cashfin.page_size", 'expected an integer, got a string "100"', "page_size = 100"),
        (
            '[cashfin]\npage_size = "ten"\n', "cashfin.page_size", 'got a string "ten"',
            "Write it as a whole number from 1 to 100, such as page_size = 100",
        ),
        ("[cashfin]\npage_size = true\n", "cashfin.page_size", "expected an integer, got a boolean", "page_size = 100"),
        ("[cashfin]\ntimeout = 2.5\n", "cashfin.timeout", "expected a duration, got a float", 'timeout = "10s"'),
        ("[sync]\ntimezone = 3\n", "sync.timezone", "expected a string", 'timezone = "Africa/Nairobi"'),
        ('[[feeds]]\npublic = "yes"\n', "feeds.bookings.public", "expected a boolean", "public = true"),
        ('[[feeds]]\nstatuses = "scheduled"\n', "feeds.bookings.statuses", "expected a list of strings", "statuses = ["),
        ("[[feeds]]\nalarms = [1.5]\n", "feeds.bookings.alarms", "expected a list of durations", 'alarms = ["15m", "1h"]'),
    ],
)
def test_wrong_toml_type(tmp_path: Path, text: str, key: str, expected: str, fix: str) -> None:
    error, path = error_for(tmp_path, text)

    assert_names(error, key, path, fix)
    assert expected in error.problem


# Invalid values.


@pytest.mark.parametrize(
    ("text", "key", "problem", "fix"),
    [
        ('[sync]\ninterval = "15 minutes"\n', "sync.interval", "invalid duration", '"1h30m"'),
        ('[sync]\ninterval = "0s"\n', "sync.interval", "not longer than zero", '"15m"'),
        ("[cashfin]\ntimeout = 0\n", "cashfin.timeout", "not longer than zero", '"90s"'),
        ("[cashfin]\ntimeout = -5\n", "cashfin.timeout", "invalid duration", '"90s"'),
        ('[sync]\ndetails_max_age = "-1h"\n', "sync.details_max_age", "invalid duration", '"7d"'),
        ('[[feeds]]\nalarms = ["15 min"]\n', "feeds.bookings.alarms", "invalid duration", '"15m"'),
        ('[cashfin]\nbase_url = "ftp://api.cashfin.africa"\n', "cashfin.base_url", "not an http or https URL", "https://api.cashfin.africa"),
        ('[cashfin]\nbase_url = "api.cashfin.africa"\n', "cashfin.base_url", "not an http or https URL", "full URL"),
        ('[cashfin]\nbase_url = "https://"\n', "cashfin.base_url", "no host name", "full URL"),
        ('[cashfin]\nbase_url = "https://host:99999"\n', "cashfin.base_url", "invalid port", "full URL"),
        ('[server]\npublic_url = "calendar.example.com"\n', "server.public_url", "not an http or https URL", "full URL"),
        ("[cashfin]\npage_size = 0\n", "cashfin.page_size", "less than 1", "between 1 and 100"),
        ("[cashfin]\nconcurrency = 0\n", "cashfin.concurrency", "outside 1 to 32", "between 1 and 32"),
        ("[cashfin]\nconcurrency = 33\n", "cashfin.concurrency", "outside 1 to 32", "between 1 and 32"),
        ("[[feeds]]\npast_days = -1\n", "feeds.bookings.past_days", "negative", "from 0 to 36500"),
        ("[[feeds]]\npast_days = 1000000\n", "feeds.bookings.past_days", "more than 36500 days", "from 0 to 36500"),
        ('[sync]\ninterval = "999ms"\n', "sync.interval", "shorter than 1 second", "whole number of seconds, at least 1s"),
        ('[sync]\ninterval = "1ms"\n', "sync.interval", "shorter than 1 second", "whole number of seconds, at least 1s"),
        ('[sync]\ninterval = "1500ms"\n', "sync.interval", "not a whole number of seconds", "at least 1s"),
        ('[sync]\ninterval = "99999999999d"\n', "sync.interval", "too large", '"3650d"'),
        ('[cashfin]\ntimeout = "3651d"\n', "cashfin.timeout", "too large", '"3650d"'),
        ('[sync]\ndetails_max_age = 999999999999\n', "sync.details_max_age", "too large", '"3650d"'),
        ('[[feeds]]\nalarms = ["1ms"]\n', "feeds.bookings.alarms", "alarm '1ms' is not a whole number of seconds", '"0s"'),
        ('[[feeds]]\nalarms = ["15m", "1m500ms"]\n', "feeds.bookings.alarms", "'1m500ms'", "whole seconds"),
        ('[[feeds]]\nalarms = ["99999999999d"]\n', "feeds.bookings.alarms", "too large", '"3650d"'),
        ('[[feeds]]\ndetails = "secret"\n', "feeds.bookings.details", "unknown detail level", "full, limited, busy"),
        ('[[feeds]]\nstatuses = ["pending"]\n', "feeds.bookings.statuses", "unknown status 'pending'", "scheduled, completed, cancelled, no-show"),
        ("[[feeds]]\nstatuses = []\n", "feeds.bookings.statuses", "select no bookings", "Remove the key"),
        ('[[feeds]]\ntypes = [""]\n', "feeds.bookings.types", "empty type", "empty list"),
        ('[[feeds]]\ntitle = " "\n', "feeds.bookings.title", "title is empty", "Bookings"),
        ('[calendar]\nuid_domain = ""\n', "calendar.uid_domain", "empty", "bookings.example.com"),
        ('[calendar]\nuid_domain = "a b"\n', "calendar.uid_domain", "not a domain name", "bookings.example.com"),
        ('[calendar]\norganizer = "bookings team"\n', "calendar.organizer", "not an email address", "mailto:bookings@example.com"),
        ('[calendar]\norganizer = "ops@example.org\\r\\nX-A:1"\n', "calendar.organizer", "not an email address", "mailto:"),
        ('[calendar]\nuid_domain = "a\\u0000b"\n', "calendar.uid_domain", "not a domain name", "bookings.example.com"),
        ('[sync]\nstate_dir = ""\n', "sync.state_dir", "empty", "./calsync-data"),
    ],
)
def test_invalid_value(tmp_path: Path, text: str, key: str, problem: str, fix: str) -> None:
    error, path = error_for(tmp_path, text)

    assert_names(error, key, path, fix)
    assert problem in error.problem


@pytest.mark.parametrize(
    ("key", "url", "shown"),
    [
        ("base_url", "https://opsuser:pa55word@api.cashfin.africa", "'https://api.cashfin.africa'"),
        ("base_url", "https://:pa55word@api.cashfin.africa/v1", "'https://api.cashfin.africa/v1'"),
        ("base_url", "https://pa55word@api.cashfin.africa", "'https://api.cashfin.africa'"),
        ("base_url", "https://opsuser:pa55word@api.cashfin.africa:99999", "'https://api.cashfin.africa:99999'"),
        ("public_url", "https://opsuser:pa55word@calendar.example.com/", "'https://calendar.example.com/'"),
        ("public_url", "ftp://opsuser:pa55word@calendar.example.com", "'ftp://calendar.example.com'"),
    ],
)
def test_url_with_userinfo_rejected(tmp_path: Path, key: str, url: str, shown: str) -> None:
    section = "cashfin" if key == "base_url" else "server"

    error, path = error_for(tmp_path, f'[{section}]\n{key} = "{url}"\n')

    assert_names(error, f"{section}.{key}", path, "Remove the user name and password")
    assert "contains a user name or password" in error.problem
    assert shown in error.problem
    assert "pa55word" not in str(error)
    assert "opsuser" not in str(error)


def test_url_with_userinfo_from_env_rejected() -> None:
    variable = "CALSYNC_CASHFIN_BASE_URL"

    with pytest.raises(ConfigError) as info:
        load_config(env={**ENV, variable: "http://ops:pa55word@127.0.0.1:9000"})

    assert_names(info.value, "cashfin.base_url", variable, "Remove the user name and password")
    assert "'http://127.0.0.1:9000'" in info.value.problem
    assert "pa55word" not in str(info.value)


@pytest.mark.parametrize("url", ["https:/ops:pa55word@calendar.example.com", "ops:pa55word@calendar.example.com"])
def test_malformed_url_hides_userinfo(tmp_path: Path, url: str) -> None:
    error, path = error_for(tmp_path, f'[server]\npublic_url = "{url}"\n')

    assert_names(error, "server.public_url", path, "https://calendar.example.com")
    assert "pa55word" not in str(error)
    assert "ops" not in error.problem


def test_public_url_fix_shows_feed_server(tmp_path: Path) -> None:
    error, path = error_for(tmp_path, '[server]\npublic_url = "calendar.example.com"\n')

    assert_names(error, "server.public_url", path, "such as https://calendar.example.com")
    assert "cashfin" not in error.fix


def test_base_url_fix_shows_cashfin(tmp_path: Path) -> None:
    error, path = error_for(tmp_path, '[cashfin]\nbase_url = "api.cashfin.africa"\n')

    assert_names(error, "cashfin.base_url", path, "such as https://api.cashfin.africa")


def test_url_with_at_sign_in_path_accepted(tmp_path: Path) -> None:
    config = load_text(tmp_path, '[server]\npublic_url = "https://calendar.example.com/@team/"\n')

    assert config.server.public_url == "https://calendar.example.com/@team"


@pytest.mark.parametrize(
    ("text", "expected"),
    [("1s", timedelta(seconds=1)), ("1m30s", timedelta(seconds=90)), ("2000ms", timedelta(seconds=2)), (1, timedelta(seconds=1))],
)
def test_interval_in_whole_seconds_accepted(tmp_path: Path, text: str | int, expected: timedelta) -> None:
    value = f'"{text}"' if isinstance(text, str) else str(text)

    config = load_text(tmp_path, f"[sync]\ninterval = {value}\n")

    assert config.sync.interval == expected


def test_alarm_at_start_accepted(tmp_path: Path) -> None:
    config = load_text(tmp_path, '[[feeds]]\nalarms = ["0s", 0, "1h", "3650d"]\n')

    assert config.feeds[0].alarms == (timedelta(0), timedelta(0), timedelta(hours=1), timedelta(days=3650))


def test_fractional_timeout_accepted(tmp_path: Path) -> None:
    config = load_text(tmp_path, '[cashfin]\ntimeout = "1s500ms"\n')

    assert config.cashfin.timeout == 1.5


def test_past_days_at_maximum_accepted(tmp_path: Path) -> None:
    config = load_text(tmp_path, "[[feeds]]\npast_days = 36500\n")

    assert config.feeds[0].past_days == 36500


@pytest.mark.parametrize(
    ("name", "suggestion"),
    [
        ("Africa/Nairob", "Africa/Nairobi"),
        ("Europe/Lndon", "Europe/London"),
        ("EAT+3", "IANA time zone name"),
        ("../etc/passwd", "IANA time zone name"),
        ("", "IANA time zone name"),
    ],
)
def test_unknown_time_zone(tmp_path: Path, name: str, suggestion: str) -> None:
    error, path = error_for(tmp_path, f'[sync]\ntimezone = "{name}"\n')

    assert_names(error, "sync.timezone", path, suggestion)
    assert "unknown time zone" in error.problem


@pytest.mark.parametrize(
    ("listen", "problem"),
    [
        ("8080", "not host:port"),
        ("localhost", "not host:port"),
        (":8080", "not host:port"),
        ("::1:8080", "IPv6 address without brackets"),
        ("[not-an-address]:8080", "invalid IPv6 address"),
        ("local host:8080", "invalid host"),
        ("127.0.0.1:0", "not between 1 and 65535"),
        ("127.0.0.1:65536", "not between 1 and 65535"),
        ("127.0.0.1:http", "not between 1 and 65535"),
    ],
)
def test_invalid_listen(tmp_path: Path, listen: str, problem: str) -> None:
    error, path = error_for(tmp_path, f'[server]\nlisten = "{listen}"\n')

    assert_names(error, "server.listen", path, "[::1]:8080")
    assert problem in error.problem


@pytest.mark.parametrize(
    ("listen", "host", "port"),
    [("0.0.0.0:80", "0.0.0.0", 80), ("localhost:65535", "localhost", 65535), ("[::]:8080", "::", 8080)],
)
def test_valid_listen(tmp_path: Path, listen: str, host: str, port: int) -> None:
    config = load_text(tmp_path, f'[server]\nlisten = "{listen}"\n')

    assert config.server.listen == listen
    assert config.server.host == host
    assert config.server.port == port


@pytest.mark.parametrize("organizer", ["ops@example.org", "mailto:ops@example.org", "MAILTO:ops@example.org"])
def test_organizer_becomes_mailto_uri(tmp_path: Path, organizer: str) -> None:
    config = load_text(tmp_path, f'[calendar]\norganizer = "{organizer}"\n')

    assert config.calendar.organizer == "mailto:ops@example.org"


@pytest.mark.parametrize("name", ["Bookings", "../bookings", "staff feed", "-staff", "", "a" * 65])
def test_unsafe_feed_name(tmp_path: Path, name: str) -> None:
    error, path = error_for(tmp_path, f'[[feeds]]\nname = "{name}"\n')

    assert_names(error, "feeds[0].name", path, "lowercase letters, digits")
    assert "not a valid feed name" in error.problem


def test_duplicate_feed_name(tmp_path: Path) -> None:
    error, path = error_for(tmp_path, '[[feeds]]\nname = "staff"\n\n[[feeds]]\nname = "staff"\n')

    assert_names(error, "feeds[1].name", path, "its own name")
    assert "also used by feeds[0]" in error.problem


def test_unnamed_second_feed_is_duplicate(tmp_path: Path) -> None:
    error, path = error_for(tmp_path, '[[feeds]]\ntitle = "One"\n\n[[feeds]]\ntitle = "Two"\n')

    assert_names(error, "feeds[1].name", path, "its own name")
    assert "no name" in error.problem
    assert "'bookings'" in error.problem


def test_duplicate_statuses_are_dropped(tmp_path: Path) -> None:
    config = load_text(tmp_path, '[[feeds]]\nstatuses = ["cancelled", "cancelled", "no-show"]\n')

    assert config.feeds[0].statuses == ("cancelled", "no-show")


def test_page_size_above_maximum_is_clamped(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.WARNING, logger="calsync.config"):
        config = load_text(tmp_path, "[cashfin]\npage_size = 500\n")

    assert config.cashfin.page_size == 100
    assert len(caplog.records) == 1
    record = caplog.records[0]
    assert record.levelno == logging.WARNING
    assert "cashfin.page_size" in record.getMessage()
    assert "500" in record.getMessage()
    assert str(config.path) in record.getMessage()


def test_page_size_at_maximum_logs_nothing(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.WARNING, logger="calsync.config"):
        load_text(tmp_path, "[cashfin]\npage_size = 100\n")

    assert caplog.records == []


# The client secret.


def test_missing_secret_names_three_ways(tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as info:
        load_config(env={})

    error = info.value
    assert error.key == "cashfin.client_secret"
    assert error.source == "default"
    assert "CASHFIN_CLIENT_SECRET" in error.fix
    assert "client_secret " in error.fix
    assert "client_secret_file" in error.fix


def test_missing_secret_fix_names_file(tmp_path: Path) -> None:
    error, path = error_for(tmp_path, '[cashfin]\nclient_secret = ""\n', env={})

    assert_names(error, "cashfin.client_secret", path, f"[cashfin] section of {path}")


def test_missing_secret_allowed_when_not_required(tmp_path: Path) -> None:
    config = load_config(env={}, require_secret=False)

    assert config.cashfin.client_secret == ""


def test_secret_from_file_strips_line_break(tmp_path: Path) -> None:
    write(tmp_path / "conf" / "secrets" / "cashfin", SECRET + "\n")

    config = load_text(tmp_path, '[cashfin]\nclient_secret_file = "secrets/cashfin"\n', env={})

    assert config.cashfin.client_secret == SECRET


def test_secret_file_from_env_is_relative_to_cwd(tmp_path: Path) -> None:
    write(tmp_path / "run" / "secret", SECRET + "\r\n")

    config = load_config(env={"CALSYNC_CASHFIN_CLIENT_SECRET_FILE": "run/secret"})

    assert config.cashfin.client_secret == SECRET


def test_unreadable_secret_file(tmp_path: Path) -> None:
    error, path = error_for(tmp_path, '[cashfin]\nclient_secret_file = "missing"\n', env={})

    assert_names(error, "cashfin.client_secret_file", path, "exists")
    assert str(tmp_path / "conf" / "missing") in error.problem


def test_empty_secret_file_is_error(tmp_path: Path) -> None:
    write(tmp_path / "empty", "\n")

    with pytest.raises(ConfigError) as info:
        load_config(env={"CALSYNC_CASHFIN_CLIENT_SECRET_FILE": str(tmp_path / "empty")})

    assert_names(info.value, "cashfin.client_secret_file", "CALSYNC_CASHFIN_CLIENT_SECRET_FILE", "Write the secret")


def test_secret_twice_in_file_rejected(tmp_path: Path) -> None:
    text = '[cashfin]\nclient_secret = "in-file-secret"\nclient_secret_file = "x"\n'

    error, path = error_for(tmp_path, text, env={})

    assert_names(error, "cashfin.client_secret", path, "Remove client_secret or client_secret_file")
    assert "in-file-secret" not in str(error)


def test_secret_twice_in_env_rejected(tmp_path: Path) -> None:
    env = {"CASHFIN_CLIENT_SECRET": SECRET, "CALSYNC_CASHFIN_CLIENT_SECRET_FILE": "x"}

    with pytest.raises(ConfigError) as info:
        load_config(env=env)

    assert info.value.source == "CALSYNC_CASHFIN_CLIENT_SECRET_FILE and CASHFIN_CLIENT_SECRET"
    assert SECRET not in str(info.value)


def test_both_secret_variables_rejected(tmp_path: Path) -> None:
    env = {"CASHFIN_CLIENT_SECRET": SECRET, "CALSYNC_CASHFIN_CLIENT_SECRET": "other"}

    with pytest.raises(ConfigError) as info:
        load_config(env=env)

    assert info.value.key == "cashfin.client_secret"
    assert "CASHFIN_CLIENT_SECRET" in info.value.source
    assert SECRET not in str(info.value)


def test_env_secret_replaces_secret_file(tmp_path: Path) -> None:
    config = load_text(tmp_path, '[cashfin]\nclient_secret_file = "does-not-exist"\n', env=ENV)

    assert config.cashfin.client_secret == SECRET
    assert config.sources["cashfin.client_secret"] == "CASHFIN_CLIENT_SECRET"


def test_env_secret_file_replaces_file_secret(tmp_path: Path) -> None:
    write(tmp_path / "secret", "from-secret-file\n")
    env = {"CALSYNC_CASHFIN_CLIENT_SECRET_FILE": str(tmp_path / "secret")}

    config = load_text(tmp_path, '[cashfin]\nclient_secret = "in-file"\n', env=env)

    assert config.cashfin.client_secret == "from-secret-file"


def test_secret_of_wrong_type_is_not_shown(tmp_path: Path) -> None:
    error, path = error_for(tmp_path, "[cashfin]\nclient_secret = 918273645\n", env={})

    assert_names(error, "cashfin.client_secret", path, "client_secret = ")
    assert "918273645" not in str(error)


def test_feed_and_admin_token_files(tmp_path: Path) -> None:
    write(tmp_path / "conf" / "feed-token", "feed-token-value\n")
    write(tmp_path / "conf" / "admin-token", "admin-token-value\n")
    text = '[server]\nadmin_token_file = "admin-token"\n\n[[feeds]]\ntoken_file = "feed-token"\n'

    config = load_text(tmp_path, text)

    assert config.feeds[0].token == "feed-token-value"
    assert config.server.admin_token == "admin-token-value"


# Secrets that cannot be sent: HTTP header values carry printable ASCII only.

HEADER_SECRET_CASES = [
    pytest.param("se-7f3a9c ", "starts or ends with whitespace", id="trailing space"),
    pytest.param(" se-7f3a9c", "starts or ends with whitespace", id="leading space"),
    pytest.param("se-7f3a9c\n", "starts or ends with whitespace", id="trailing line break"),
    pytest.param("se-7f3a9c\u00a0", "starts or ends with whitespace", id="trailing no-break space"),
    pytest.param("se-7f\r\n3a9c", "control character", id="inner CR LF"),
    pytest.param("se-7f\t3a9c", "control character", id="inner tab"),
    pytest.param("se-7f\x7f3a9c", "control character", id="DEL"),
    pytest.param("se-7f\u00e93a9c", "outside printable ASCII", id="Latin-1 letter"),
    pytest.param("\u201cse-7f3a9c\u201d", "outside printable ASCII", id="typographic quotes"),
    pytest.param("se-7f\udcff3a9c", "outside printable ASCII", id="undecodable byte"),
]


def assert_secret_hidden(error: ConfigError, secret: str) -> None:
    message = str(error)
    assert secret not in message
    assert secret.strip() not in message
    assert "7f3a9c" not in message


def toml_string(text: str) -> str:
    """Write text as a TOML basic string, escaping every character outside printable ASCII."""
    escaped = "".join(c if " " <= c <= "~" and c not in '"\\' else f"\\u{ord(c):04x}" for c in text)
    return f'"{escaped}"'


@pytest.mark.parametrize(("secret", "problem"), [case for case in HEADER_SECRET_CASES if case.id != "undecodable byte"])
def test_client_secret_in_file_rejected(tmp_path: Path, secret: str, problem: str) -> None:
    error, path = error_for(tmp_path, f"[cashfin]\nclient_secret = {toml_string(secret)}\n", env={})

    assert_names(error, "cashfin.client_secret", path, "Copy the secret again without surrounding spaces or line breaks")
    assert problem in error.problem
    assert_secret_hidden(error, secret)


@pytest.mark.parametrize(("secret", "problem"), HEADER_SECRET_CASES)
def test_client_secret_in_env_rejected(secret: str, problem: str) -> None:
    with pytest.raises(ConfigError) as info:
        load_config(env={"CASHFIN_CLIENT_SECRET": secret})

    assert_names(info.value, "cashfin.client_secret", "CASHFIN_CLIENT_SECRET", "without surrounding spaces")
    assert problem in info.value.problem
    assert_secret_hidden(info.value, secret)


@pytest.mark.parametrize(
    ("content", "problem"),
    [
        ("se-7f3a9c \n", "starts or ends with whitespace"),
        ("\tse-7f3a9c\n", "starts or ends with whitespace"),
        ("se-7f\n3a9c\n", "control character"),
        ("se-7f\u00e93a9c\n", "outside printable ASCII"),
    ],
)
def test_client_secret_file_content_rejected(tmp_path: Path, content: str, problem: str) -> None:
    secret_path = write(tmp_path / "conf" / "secret", content)

    error, path = error_for(tmp_path, '[cashfin]\nclient_secret_file = "secret"\n', env={})

    assert_names(error, "cashfin.client_secret_file", path, "without surrounding spaces")
    assert problem in error.problem
    assert str(secret_path) in error.problem
    assert_secret_hidden(error, content)


def test_secret_with_inner_space_accepted(tmp_path: Path) -> None:
    config = load_config(env={"CASHFIN_CLIENT_SECRET": "two words~"})

    assert config.cashfin.client_secret == "two words~"


def test_secret_file_removes_bom_and_newlines(tmp_path: Path) -> None:
    path = tmp_path / "secret"
    path.write_bytes(b"\xef\xbb\xbf" + SECRET.encode() + b"\r\n\n")

    config = load_config(env={"CALSYNC_CASHFIN_CLIENT_SECRET_FILE": str(path)})

    assert config.cashfin.client_secret == SECRET


def test_secret_file_help_matches_trimming() -> None:
    for option in SCHEMA:
        if option.reads_into is not None:
            assert "line breaks at its end are removed" in option.help, option.key
            assert "byte order mark" in option.help, option.key


@pytest.mark.parametrize(("token", "problem"), HEADER_SECRET_CASES)
def test_admin_token_in_env_rejected(token: str, problem: str) -> None:
    variable = "CALSYNC_SERVER_ADMIN_TOKEN"

    with pytest.raises(ConfigError) as info:
        load_config(env={**ENV, variable: token})

    assert_names(info.value, "server.admin_token", variable, "Copy the token again")
    assert problem in info.value.problem
    assert_secret_hidden(info.value, token)


def test_admin_token_in_file_rejected(tmp_path: Path) -> None:
    error, path = error_for(tmp_path, '[server]\nadmin_token = "ad-7f3a9c\\u00e9"\n')

    assert_names(error, "server.admin_token", path, "printable ASCII")
    assert "outside printable ASCII" in error.problem
    assert "7f3a9c" not in str(error)


def test_admin_token_file_content_rejected(tmp_path: Path) -> None:
    write(tmp_path / "conf" / "admin", "ad-7f3a9c\t\n")

    error, path = error_for(tmp_path, '[server]\nadmin_token_file = "admin"\n')

    assert_names(error, "server.admin_token_file", path, "Copy the token again")
    assert "starts or ends with whitespace" in error.problem
    assert "7f3a9c" not in str(error)


def test_admin_token_help_names_endpoints() -> None:
    help_text = options_of("server")["admin_token"].help
    example = EXAMPLE.read_text(encoding="utf-8")

    assert "`POST /sync`" in help_text
    assert "`Authorization: Bearer <token>`" in help_text
    assert "`/healthz`, `/readyz` and `/metrics` need no token" in help_text
    assert "POST /sync" in example
    assert "/healthz, /readyz and /metrics need no token" in example


@pytest.mark.parametrize(
    ("token", "problem", "fix"),
    [
        pytest.param(" fe-7f3a9c", "starts or ends with whitespace", "Copy the token again", id="leading space"),
        pytest.param("fe-7f3a9c\r\n", "starts or ends with whitespace", "Copy the token again", id="trailing CR LF"),
        pytest.param("fe-7f\n3a9c", "control character", "Copy the token again", id="inner line break"),
        pytest.param("fe-7f\x003a9c", "control character", "Copy the token again", id="NUL"),
        pytest.param("fe-7f\x853a9c", "control character", "Copy the token again", id="C1 control"),
        pytest.param("fe-7f\udcff3a9c", "not valid UTF-8", "Set it as UTF-8 text", id="undecodable byte"),
    ],
)
def test_feed_token_in_env_rejected(token: str, problem: str, fix: str) -> None:
    variable = "CALSYNC_FEED_TOKEN"

    with pytest.raises(ConfigError) as info:
        load_config(env={**ENV, variable: token})

    assert_names(info.value, "feeds.bookings.token", variable, fix)
    assert problem in info.value.problem
    assert "7f3a9c" not in str(info.value)


def test_feed_token_file_content_rejected(tmp_path: Path) -> None:
    write(tmp_path / "conf" / "token", "fe-7f3a9c \n")

    error, path = error_for(tmp_path, '[[feeds]]\ntoken_file = "token"\n')

    assert_names(error, "feeds.bookings.token_file", path, "Copy the token again")
    assert "starts or ends with whitespace" in error.problem
    assert "7f3a9c" not in str(error)


def test_feed_token_outside_ascii_accepted(tmp_path: Path) -> None:
    # A feed token travels URL-encoded in the query string, so any printable text works.
    config = load_text(tmp_path, '[[feeds]]\ntoken = "t\u00f6k\u00e9n with space"\n')

    assert config.feeds[0].token == "t\u00f6k\u00e9n with space"


# Environment variables.


def test_env_overrides_file(tmp_path: Path) -> None:
    env = {
        **ENV,
        "CALSYNC_SYNC_INTERVAL": "10m",
        "CALSYNC_SERVER_LISTEN": "0.0.0.0:8080",
        "CALSYNC_CASHFIN_PAGE_SIZE": "25",
        "CALSYNC_FEED_TOKEN": "env-token",
        "CALSYNC_FEED_TITLE": "From env",
        "CALSYNC_FEED_STATUSES": "scheduled, completed",
        "CALSYNC_FEED_PUBLIC": "yes",
        "CALSYNC_FEED_ALARMS": "15m,1h",
    }

    config = load_text(tmp_path, '[sync]\ninterval = "1h"\n\n[[feeds]]\ntitle = "From file"\n', env=env)

    assert config.sync.interval == timedelta(minutes=10)
    assert config.server.host == "0.0.0.0"
    assert config.cashfin.page_size == 25
    feed = config.feeds[0]
    assert feed.token == "env-token"
    assert feed.title == "From env"
    assert feed.statuses == ("scheduled", "completed")
    assert feed.public is True
    assert feed.alarms == (timedelta(minutes=15), timedelta(hours=1))
    assert config.sources["sync.interval"] == "CALSYNC_SYNC_INTERVAL"
    assert config.sources["feeds.bookings.title"] == "CALSYNC_FEED_TITLE"
    assert config.sources["sync.timezone"] == "default"


def test_env_bare_number_duration_is_seconds(tmp_path: Path) -> None:
    config = load_config(env={**ENV, "CALSYNC_SYNC_INTERVAL": "900"})

    assert config.sync.interval == timedelta(minutes=15)


def test_env_feed_name_renames_default_feed(tmp_path: Path) -> None:
    config = load_config(env={**ENV, "CALSYNC_FEED_NAME": "staff"})

    assert config.feed("staff").title == "Bookings"
    assert config.sources["feeds.staff.name"] == "CALSYNC_FEED_NAME"


def test_empty_env_variable_is_ignored(tmp_path: Path) -> None:
    config = load_text(tmp_path, '[sync]\ninterval = "1h"\n', env={**ENV, "CALSYNC_SYNC_INTERVAL": ""})

    assert config.sync.interval == timedelta(hours=1)


@pytest.mark.parametrize(
    ("variable", "text", "key", "problem", "fix"),
    [
        (
            "CALSYNC_CASHFIN_PAGE_SIZE", "ten", "cashfin.page_size", "expected an integer, got 'ten'",
            "Set it to a whole number from 1 to 100, such as 100",
        ),
        ("CALSYNC_CASHFIN_CONCURRENCY", "many", "cashfin.concurrency", "expected an integer", "from 1 to 32, such as 4"),
        ("CALSYNC_FEED_PAST_DAYS", "all", "feeds[0].past_days", "expected an integer", "from 0 to 36500, such as 90"),
        ("CALSYNC_SYNC_INTERVAL", "500ms", "sync.interval", "shorter than 1 second", "at least 1s"),
        ("CALSYNC_FEED_ALARMS", "15m,10ms", "feeds.bookings.alarms", "'10ms'", "whole seconds"),
        ("CALSYNC_FEED_GZIP", "maybe", "feeds[0].gzip", "expected a boolean", "Set it to true"),
        ("CALSYNC_SYNC_INTERVAL", "0m", "sync.interval", "not longer than zero", '"15m"'),
        ("CALSYNC_SYNC_TIMEZONE", "Nairobi", "sync.timezone", "unknown time zone", "Africa/Nairobi"),
        ("CALSYNC_SERVER_LISTEN", "8080", "server.listen", "not host:port", "127.0.0.1:8080"),
        ("CALSYNC_FEED_STATUSES", "scheduled,pending", "feeds.bookings.statuses", "unknown status", "no-show"),
        ("CALSYNC_FEED_NAME", "Staff", "feeds[0].name", "not a valid feed name", "lowercase"),
    ],
)
def test_invalid_env_value_names_variable(variable: str, text: str, key: str, problem: str, fix: str) -> None:
    with pytest.raises(ConfigError) as info:
        load_config(env={**ENV, variable: text})

    assert_names(info.value, key, variable, fix)
    assert problem in info.value.problem


def test_unknown_env_key_suggests_closest() -> None:
    with pytest.raises(ConfigError) as info:
        load_config(env={**ENV, "CALSYNC_SYNC_INTERVL": "5m"})

    assert_names(info.value, "sync.intervl", "CALSYNC_SYNC_INTERVL", "Did you mean CALSYNC_SYNC_INTERVAL?")


def test_unknown_env_key_without_close_match_lists_keys() -> None:
    with pytest.raises(ConfigError) as info:
        load_config(env={**ENV, "CALSYNC_SYNC_FOO": "x"})

    known = "CALSYNC_SYNC_INTERVAL, CALSYNC_SYNC_STATE_DIR, CALSYNC_SYNC_TIMEZONE, CALSYNC_SYNC_DETAILS_MAX_AGE"
    assert_names(info.value, "sync.foo", "CALSYNC_SYNC_FOO", known)
    assert "Did you mean" not in info.value.fix


def test_misspelled_env_section_is_error() -> None:
    with pytest.raises(ConfigError) as info:
        load_config(env={**ENV, "CALSYNC_FEEDS_TOKEN": "x"})

    assert_names(info.value, "feeds[0]", "CALSYNC_FEEDS_TOKEN", "CALSYNC_FEED_")


def test_unrelated_calsync_variables_are_ignored() -> None:
    config = load_config(env={**ENV, "CALSYNC_LOG_LEVEL": "debug", "CALSYNC_HOME": "/x"})

    assert config.path is None


def test_env_feed_keys_need_single_feed(tmp_path: Path) -> None:
    text = '[[feeds]]\nname = "one"\n\n[[feeds]]\nname = "two"\n'

    error, _ = error_for(tmp_path, text, env={**ENV, "CALSYNC_FEED_TOKEN": "x"})

    assert_names(error, "feeds", "CALSYNC_FEED_TOKEN", "[[feeds]] table")


def test_env_feed_keys_apply_to_single_file_feed(tmp_path: Path) -> None:
    config = load_text(tmp_path, '[[feeds]]\nname = "staff"\n', env={**ENV, "CALSYNC_FEED_TOKEN": "tok"})

    assert config.feed("staff").token == "tok"


# Relative paths.


def test_state_dir_relative_to_file(tmp_path: Path) -> None:
    config = load_text(tmp_path, '[sync]\nstate_dir = "data"\n')

    assert config.sync.state_dir == tmp_path / "conf" / "data"


def test_state_dir_from_env_relative_to_cwd(tmp_path: Path) -> None:
    env = {**ENV, "CALSYNC_SYNC_STATE_DIR": "data"}

    config = load_text(tmp_path, '[sync]\nstate_dir = "ignored"\n', env=env)

    assert config.sync.state_dir == tmp_path / "data"


def test_default_state_dir_relative_to_cwd(tmp_path: Path) -> None:
    config = load_text(tmp_path, "[sync]\n")

    assert config.sync.state_dir == tmp_path / "calsync-data"


def test_absolute_state_dir_is_kept(tmp_path: Path) -> None:
    config = load_text(tmp_path, f'[sync]\nstate_dir = "{tmp_path / "abs"}"\n')

    assert config.sync.state_dir == tmp_path / "abs"


# describe().


def test_describe_masks_secrets(tmp_path: Path) -> None:
    write(tmp_path / "conf" / "token", "feed-token-value\n")
    text = '[server]\nadmin_token = "admin-secret"\n\n[[feeds]]\ntoken_file = "token"\ntitle = "Mine"\n'

    config = load_text(tmp_path, text, env={**ENV, "CALSYNC_SYNC_INTERVAL": "10m"})
    rows = {key: (value, source) for key, value, source in config.describe()}

    assert rows["cashfin.client_secret"] == ("********", "CASHFIN_CLIENT_SECRET")
    assert rows["server.admin_token"] == ("********", str(config.path))
    token_value, token_source = rows["feeds.bookings.token"]
    assert token_value == "********"
    assert token_source.startswith(str(tmp_path / "conf" / "token"))
    assert rows["feeds.bookings.title"] == ("Mine", str(config.path))
    assert rows["sync.interval"] == ("10m", "CALSYNC_SYNC_INTERVAL")
    assert rows["cashfin.timeout"] == ("10s", "default")
    assert rows["feeds.bookings.statuses"] == ("scheduled,completed,no-show,cancelled", "default")
    assert rows["feeds.bookings.public"] == ("false", "default")
    for value, source in rows.values():
        assert SECRET not in value
        assert "admin-secret" not in value
        assert "feed-token-value" not in value + source


def test_describe_shows_unset_secret_as_empty(tmp_path: Path) -> None:
    rows = {key: value for key, value, _ in load_config(env=ENV).describe()}

    assert rows["server.admin_token"] == ""
    assert rows["feeds.bookings.token"] == ""


def test_describe_lists_every_key(tmp_path: Path) -> None:
    keys = [key for key, _, _ in load_config(env=ENV).describe()]

    expected = [
        f"feeds.bookings.{option.key}" if option.section == "feeds" else f"{option.section}.{option.key}"
        for option in SCHEMA
        if option.reads_into is None
    ]
    assert keys == expected


# Durations.


@pytest.mark.parametrize(
    ("text", "expected", "formatted"),
    [
        ("90s", timedelta(seconds=90), "1m30s"),
        ("15m", timedelta(minutes=15), "15m"),
        ("24h", timedelta(hours=24), "1d"),
        ("7d", timedelta(days=7), "7d"),
        ("1h30m", timedelta(hours=1, minutes=30), "1h30m"),
        ("1h 30m", timedelta(hours=1, minutes=30), "1h30m"),
        ("2d3h4m5s", timedelta(days=2, hours=3, minutes=4, seconds=5), "2d3h4m5s"),
        ("500ms", timedelta(milliseconds=500), "500ms"),
        ("1m5ms", timedelta(minutes=1, milliseconds=5), "1m5ms"),
        ("0s", timedelta(0), "0s"),
        (" 15m ", timedelta(minutes=15), "15m"),
        ("900", timedelta(seconds=900), "15m"),
        (3600, timedelta(hours=1), "1h"),
        (0, timedelta(0), "0s"),
    ],
)
def test_parse_and_format_duration(text: str | int, expected: timedelta, formatted: str) -> None:
    assert parse_duration(text) == expected
    assert format_duration(expected) == formatted
    assert parse_duration(formatted) == expected


@pytest.mark.parametrize(
    "text",
    ["", "m", "15 minutes", "1.5h", "-15m", "30m1h", "1h1h", "15M", "1w", -1, True, 1.5],
)
def test_parse_duration_rejects(text: object) -> None:
    with pytest.raises(ValueError) as info:
        parse_duration(text)  # type: ignore[arg-type]

    assert "invalid duration" in str(info.value)


@pytest.mark.parametrize(
    "text",
    ["99999999999d", "3650d1ms", "3651d", "87601h", 315_360_001, "315360001", "9" * 5000 + "s", 10**30],
)
def test_parse_duration_too_large(text: str | int) -> None:
    with pytest.raises(DurationTooLargeError) as info:
        parse_duration(text)

    assert "too large" in str(info.value)
    assert "3650d" in str(info.value)


@pytest.mark.parametrize("text", ["3650d", "87600h", 315_360_000, "000000000000000000000000005s"])
def test_parse_duration_at_maximum(text: str | int) -> None:
    assert parse_duration(text) <= MAX_DURATION


def test_format_duration_rejects_negative() -> None:
    with pytest.raises(ValueError):
        format_duration(timedelta(seconds=-1))


def test_format_duration_rounds_to_milliseconds() -> None:
    assert format_duration(timedelta(microseconds=1_499)) == "1ms"
