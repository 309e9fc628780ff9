"""Load calsync's configuration from defaults, a TOML file and the environment.

Each source overrides the one before it:

1. the defaults declared in ``calsync.config_schema``;
2. the TOML file named by ``--config``, else by ``CALSYNC_CONFIG``, else
   ``./calsync.toml`` if that file exists;
3. the environment: ``CALSYNC_<SECTION>_<KEY>`` for any key of a section,
   ``CALSYNC_FEED_<KEY>`` for the only feed (lists comma-separated), and
   ``CASHFIN_CLIENT_SECRET`` for the client secret. An empty variable counts
   as unset.

Every value goes through the same converter whatever its source, and the
loaded ``Config`` remembers where each value came from. A relative path is
resolved against the directory of the config file that set it, or against
the current directory when it comes from the environment or a default.
Invalid input raises ``ConfigError`` naming the dotted key, the source and
the fix, and never a secret's value.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import timedelta
from pathlib import Path
from types import MappingProxyType
from typing import Any
from zoneinfo import ZoneInfo

from calsync.config_schema import (
    DETAIL_LEVELS,
    FEED_NAME_PATTERN,
    FEEDS,
    MAX_PAGE_SIZE,
    SCHEMA,
    SECTIONS,
    STATUSES,
    Invalid,
    Option,
    options_of,
    split_listen,
)
from calsync.config_sources import (
    CONFIG_ENV,
    DEFAULT_SOURCE,
    SECRET_ENV,
    Layer,
    RawValue,
    check_document,
    file_layer,
    is_set,
    read_document,
    read_environment,
    toml_literal,
    toml_type,
)
from calsync.durations import format_duration, parse_duration
from calsync.errors import ConfigError

__all__ = [
    "DETAIL_LEVELS",
    "SCHEMA",
    "STATUSES",
    "CalendarSettings",
    "CashfinSettings",
    "Config",
    "FeedSettings",
    "ServerSettings",
    "SyncSettings",
    "format_duration",
    "load_config",
    "parse_duration",
    "resolve_config_path",
]

logger = logging.getLogger(__name__)

DEFAULT_CONFIG_NAME = "calsync.toml"
MASK = "********"


@dataclass(frozen=True)
class CashfinSettings:
    """Connection settings of the Cashfin API.

    ``timeout`` is in seconds. Like every secret in these settings,
    ``client_secret`` is left out of repr().
    """

    base_url: str
    client_secret: str = field(repr=False)
    timeout: float
    page_size: int
    concurrency: int


@dataclass(frozen=True)
class SyncSettings:
    """Schedule, state directory and business time zone of the sync."""

    interval: timedelta
    state_dir: Path
    timezone: ZoneInfo
    timezone_name: str
    details_max_age: timedelta


@dataclass(frozen=True)
class CalendarSettings:
    """Event properties shared by every feed. ``organizer`` is a ``mailto:`` URI or ""."""

    uid_domain: str
    organizer: str


@dataclass(frozen=True)
class ServerSettings:
    """HTTP server address, split into ``host`` (IPv6 without brackets) and ``port``."""

    listen: str
    host: str
    port: int
    public_url: str
    admin_token: str = field(repr=False)


@dataclass(frozen=True)
class FeedSettings:
    """One published feed: its selection, privacy level and access token.

    ``token`` is "" when unset. A feed needs a token unless ``public`` is
    true, but load_config does not check this, so that commands which do not
    serve feeds work without one.
    """

    name: str
    title: str
    token: str = field(repr=False)
    public: bool
    statuses: tuple[str, ...]
    types: tuple[str, ...]
    past_days: int
    details: str
    alarms: tuple[timedelta, ...]
    gzip: bool


@dataclass(frozen=True)
class Config:
    """The loaded configuration and the source of each value.

    ``path`` is the config file that was read, or None. ``sources`` maps a
    dotted key (``sync.interval``, ``feeds.bookings.token``) to a file path,
    an environment variable or ``default``.
    """

    cashfin: CashfinSettings
    sync: SyncSettings
    calendar: CalendarSettings
    server: ServerSettings
    feeds: tuple[FeedSettings, ...]
    path: Path | None
    sources: Mapping[str, str] = field(default_factory=dict, repr=False, compare=False)

    def feed(self, name: str) -> FeedSettings:
        """Return the feed named ``name``, or raise ConfigError listing the known names."""
        for feed in self.feeds:
            if feed.name == name:
                return feed
        known = ", ".join(feed.name for feed in self.feeds)
        source = str(self.path) if self.path else DEFAULT_SOURCE
        raise ConfigError("feeds", source, f"feed {name!r} not found", f"Use one of: {known}")

    def describe(self) -> list[tuple[str, str, str]]:
        """Return (dotted key, display value, source) for every setting, with secrets masked.

        Display values use the syntax of the environment variables: durations
        such as "15m" and lists joined by commas. A non-empty secret shows as
        "********". A ``*_file`` key has no row of its own: the source of the
        secret it read names the file.
        """
        rows = []
        for section in SECTIONS:
            rows += _describe_settings(section, getattr(self, section), self.sources)
        for feed in self.feeds:
            rows += _describe_settings(f"{FEEDS}.{feed.name}", feed, self.sources)
        return rows


def resolve_config_path(cli_path: str | None, env: Mapping[str, str]) -> tuple[Path, bool]:
    """Return the config file path and whether it was named explicitly.

    The path comes from ``--config``, else ``CALSYNC_CONFIG``, else
    ``./calsync.toml``. A missing file is an error only when named explicitly.
    """
    if cli_path:
        return Path(cli_path).expanduser(), True
    if env.get(CONFIG_ENV):
        return Path(env[CONFIG_ENV]).expanduser(), True
    return Path(DEFAULT_CONFIG_NAME), False


def load_config(
    cli_path: str | None = None,
    *,
    env: Mapping[str, str] | None = None,
    require_secret: bool = True,
) -> Config:
    """Load and validate the configuration, raising ConfigError on the first invalid value.

    ``env`` defaults to ``os.environ``. With ``require_secret`` false, a
    missing client secret is allowed and left as "".
    """
    env = os.environ if env is None else env
    cwd = Path.cwd()
    path, explicit = resolve_config_path(cli_path, env)
    named_by = "--config" if cli_path else CONFIG_ENV
    document = read_document(path, explicit, named_by)
    file = None if document is None else path.absolute()
    if document is not None:
        check_document(document, str(file))

    env_layers = read_environment(env, cwd)
    loader = _Loader(document or {}, file, env_layers, cwd)
    cashfin = loader.section("cashfin")
    sync = loader.section("sync")
    calendar = loader.section("calendar")
    server = loader.section("server")
    feeds = loader.feeds()

    return Config(
        cashfin=_build_cashfin(cashfin, loader.sources, require_secret, file),
        sync=_build_sync(sync),
        calendar=CalendarSettings(**calendar),
        server=_build_server(server),
        feeds=tuple(FeedSettings(**values) for values in feeds),
        path=file,
        sources=MappingProxyType(loader.sources),
    )


# Merging and converting the layers.


class _Loader:
    """Merges defaults, the file and the environment, table by table, and converts them.

    ``sources`` collects the source of every value under its dotted key.
    """

    def __init__(self, document: dict[str, Any], file: Path | None, env_layers: dict[str, Layer], cwd: Path) -> None:
        self.document = document
        self.file = file
        self.env_layers = env_layers
        self.cwd = cwd
        self.sources: dict[str, str] = {}

    def section(self, section: str) -> dict[str, Any]:
        """Return the converted values of one section by key."""
        return self._table(section, section, self.document.get(section, {}), self.env_layers[section])

    def feeds(self) -> list[dict[str, Any]]:
        """Return the converted values of each feed, or of one default feed if the file has none."""
        tables = self.document.get(FEEDS) or [{}]
        env_layer = self.env_layers[FEEDS]
        if env_layer and len(tables) > 1:
            variable = min(raw.source for raw in env_layer.values())
            problem = f"CALSYNC_FEED_* variables set the only feed, but the file defines {len(tables)} feeds"
            raise ConfigError(FEEDS, variable, problem, "Set the value in the feed's [[feeds]] table instead")

        feeds: list[dict[str, Any]] = []
        for index, table in enumerate(tables):
            label = _feed_label(index, table, env_layer)
            values = self._table(FEEDS, label, table, env_layer)
            self._check_unique_name(values["name"], index, feeds, self.sources[f"{label}.name"])
            feeds.append(values)
        return feeds

    def _table(self, section: str, label: str, table: dict[str, Any], env_layer: Layer) -> dict[str, Any]:
        options = options_of(section)
        from_file = file_layer(table, section, label, self.file) if self.file else {}
        merged = _merge(options, [self._default_layer(options), from_file, env_layer])

        values = {}
        for key, option in options.items():
            values[key] = _convert(option, merged[key], f"{label}.{key}")
            self.sources[f"{label}.{key}"] = merged[key].source
        self._read_secret_files(options, values, merged, label)
        return {key: value for key, value in values.items() if options[key].reads_into is None}

    def _check_unique_name(self, name: str, index: int, feeds: list[dict[str, Any]], source: str) -> None:
        for other_index, other in enumerate(feeds):
            if other["name"] != name:
                continue
            problem = f"duplicate feed name {name!r}, also used by {FEEDS}[{other_index}]"
            if source == DEFAULT_SOURCE and self.file:
                source = str(self.file)
                problem = f"the feed has no name, and the default name {name!r} is used by {FEEDS}[{other_index}]"
            raise ConfigError(f"{FEEDS}[{index}].name", source, problem, "Give each feed its own name")

    def _default_layer(self, options: dict[str, Option]) -> Layer:
        return {key: RawValue(option.default, DEFAULT_SOURCE, self.cwd) for key, option in options.items()}

    def _read_secret_files(self, options: dict[str, Option], values: dict[str, Any], merged: Layer, label: str) -> None:
        for key, option in options.items():
            path = values[key]
            if option.reads_into is None or path is None:
                continue
            secret = _read_secret_file(path, f"{label}.{key}", merged[key].source)
            try:
                values[option.reads_into] = options[option.reads_into].convert(secret)
            except Invalid as exc:
                raise ConfigError(f"{label}.{key}", merged[key].source, f"{exc.problem} (in {path})", exc.fix) from None
            self.sources[f"{label}.{option.reads_into}"] = f"{path} (via {merged[key].source})"


def _merge(options: dict[str, Option], layers: list[Layer]) -> Layer:
    """Overlay the layers in order.

    A layer that sets a secret or its ``*_file`` key also resets the other
    one to its default, so the environment can replace a file's secret file.
    """
    merged: Layer = {}
    for layer in layers:
        for key, raw in layer.items():
            merged[key] = raw
            partner = _partner(options, key)
            if partner and is_set(raw) and partner in merged and partner not in layer:
                merged[partner] = layers[0][partner]
    return merged


def _partner(options: dict[str, Option], key: str) -> str | None:
    """Return the other key of a secret and its ``*_file`` key, or None."""
    for option in options.values():
        if option.reads_into == key:
            return option.key
        if option.key == key and option.reads_into:
            return option.reads_into
    return None


def _convert(option: Option, raw: RawValue, key: str) -> Any:
    if not option.type.accepts(raw.value):
        problem = f"expected {option.type.name}, got {toml_type(raw.value, show_value=not option.secret)}"
        example = f"{option.key} = {toml_literal(option.sample)}"
        fix = f"Write it as {option.expected}, such as {example}" if option.expected else f"Write it as {example}"
        raise ConfigError(key, raw.source, problem, fix)

    value = raw.value
    if option.path:
        value = Path(raw.base_dir, Path(value).expanduser()) if value else None
    try:
        return option.convert(value)
    except Invalid as exc:
        raise ConfigError(key, raw.source, exc.problem, exc.fix) from None


def _read_secret_file(path: Path, key: str, source: str) -> str:
    """Read a secret from a file, without a byte order mark at its start or line breaks (CR, LF) at its end.

    Other whitespace is kept, so that the secret's converter rejects it.
    """
    fix = "Check that the file exists and that calsync may read it"
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigError(key, source, f"cannot read {path}: {exc.strerror}", fix) from None
    except UnicodeDecodeError:
        raise ConfigError(key, source, f"{path} is not valid UTF-8", "Save the file as UTF-8") from None

    secret = text.removeprefix("\N{BYTE ORDER MARK}").rstrip("\r\n")
    if not secret:
        raise ConfigError(key, source, f"{path} is empty", "Write the secret into the file")
    return secret


def _feed_label(index: int, table: dict[str, Any], env_layer: Layer) -> str:
    """Name a feed in messages as ``feeds.<name>``, or ``feeds[<index>]`` if its name is invalid."""
    name = env_layer["name"].value if "name" in env_layer else table.get("name", "bookings")
    if isinstance(name, str) and FEED_NAME_PATTERN.fullmatch(name):
        return f"{FEEDS}.{name}"
    return f"{FEEDS}[{index}]"


# Building the settings.


def _build_cashfin(
    values: dict[str, Any], sources: dict[str, str], require_secret: bool, file: Path | None
) -> CashfinSettings:
    if require_secret and not values["client_secret"]:
        raise _missing_secret(sources["cashfin.client_secret"], file)

    if values["page_size"] > MAX_PAGE_SIZE:
        logger.warning(
            "cashfin.page_size %d from %s is above the Cashfin API maximum of %d, so calsync uses %d",
            values["page_size"], sources["cashfin.page_size"], MAX_PAGE_SIZE, MAX_PAGE_SIZE,
        )
        values = {**values, "page_size": MAX_PAGE_SIZE}
    return CashfinSettings(**values)


def _missing_secret(source: str, file: Path | None) -> ConfigError:
    where = f"in the [cashfin] section of {file}" if file else "in the [cashfin] section of the config file"
    fix = (
        f"Set the {SECRET_ENV} environment variable, or client_secret {where}, "
        "or client_secret_file to the path of a file that contains the secret"
    )
    return ConfigError("cashfin.client_secret", source, "the client secret is missing", fix)


def _build_sync(values: dict[str, Any]) -> SyncSettings:
    return SyncSettings(**values, timezone_name=values["timezone"].key)


def _build_server(values: dict[str, Any]) -> ServerSettings:
    host, port = split_listen(values["listen"])
    return ServerSettings(**values, host=host, port=port)


# Describing the settings.


def _describe_settings(label: str, settings: Any, sources: Mapping[str, str]) -> list[tuple[str, str, str]]:
    section = FEEDS if label.startswith(f"{FEEDS}.") else label
    rows = []
    for option in options_of(section).values():
        if option.reads_into is not None:
            continue
        key = f"{label}.{option.key}"
        rows.append((key, _display(option, getattr(settings, option.key)), sources.get(key, DEFAULT_SOURCE)))
    return rows


def _display(option: Option, value: Any) -> str:
    if option.secret:
        return MASK if value else ""
    if isinstance(value, float) and option.key == "timeout":
        value = timedelta(seconds=value)
    if isinstance(value, tuple):
        return ",".join(_display_item(item) for item in value)
    return _display_item(value)


def _display_item(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, timedelta):
        return format_duration(value)
    return str(value)
