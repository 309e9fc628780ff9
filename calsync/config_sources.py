"""Read the config file and the environment into layers of raw values.

A layer maps the keys of one table (a section or a feed) to ``RawValue``s
that remember their source. ``calsync.config`` merges the layers and converts
them. This module only reads them, and it rejects the errors that show
without the other layers, such as invalid TOML syntax, unknown sections, keys
and variables, or a secret set twice in one source.
"""

from __future__ import annotations

import difflib
import re
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from calsync.config_schema import FEEDS, SCHEMA, SECTIONS, Option, options_of
from calsync.errors import ConfigError

CONFIG_ENV = "CALSYNC_CONFIG"
SECRET_ENV = "CASHFIN_CLIENT_SECRET"
ENV_PREFIX = "CALSYNC_"
ENV_SECTIONS = {"CASHFIN": "cashfin", "SYNC": "sync", "CALENDAR": "calendar", "SERVER": "server", "FEED": FEEDS}
DEFAULT_SOURCE = "default"
# The difflib ratio from which a misspelt name gets "Did you mean ...?". It accepts a
# swap of two letters in a four-letter name ("snyc" for "sync", 0.75) but not "foo" for "timezone".
SUGGESTION_CUTOFF = 0.75


@dataclass(frozen=True)
class RawValue:
    """One value as a source provides it, before conversion."""

    value: Any
    source: str  # a file path, an environment variable or "default"
    base_dir: Path  # the directory against which a relative path is resolved


Layer = dict[str, RawValue]


def read_document(path: Path, explicit: bool, named_by: str) -> dict[str, Any] | None:
    """Parse the TOML file at ``path``, or return None if it is missing and was not named explicitly.

    ``named_by`` is the option or variable that named the file, reported as
    the source when an explicitly named file is missing.
    """
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        if not explicit:
            return None
        fix = "Create it (config.example.toml lists every key) or correct the path"
        raise ConfigError("config", named_by, f"the config file {path.absolute()} was not found", fix) from None
    except OSError as exc:
        fix = "Check the path and the file's permissions"
        raise ConfigError("config", str(path.absolute()), f"cannot read the file: {exc.strerror}", fix) from None
    return _parse_toml(data, str(path.absolute()))


def _parse_toml(data: bytes, source: str) -> dict[str, Any]:
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as exc:
        problem = f"the file is not valid UTF-8 (byte offset {exc.start})"
        raise ConfigError("config", source, problem, "Save the file as UTF-8") from None

    # tomllib rejects a byte order mark, which some Windows editors write at the start of UTF-8 files.
    text = text.removeprefix("\N{BYTE ORDER MARK}")
    try:
        return tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError("config", source, _toml_problem(str(exc)), "Correct the TOML syntax there") from None


def _toml_problem(message: str) -> str:
    """Move tomllib's "(at line L, column C)" to the front of its message."""
    match = re.fullmatch(r"(?P<what>.*) \(at (?P<where>line \d+, column \d+|end of document)\)", message)
    if match is None:
        return f"invalid TOML: {message}"
    return f"invalid TOML at {match['where']}: {match['what']}"


def check_document(document: dict[str, Any], source: str) -> None:
    """Reject unknown top-level keys and sections of the wrong TOML type."""
    for key, value in document.items():
        if key in SECTIONS and not isinstance(value, dict):
            problem = f"expected a table, got {toml_type(value)}"
            raise ConfigError(key, source, problem, f"Write it as a [{key}] section")
        if key == FEEDS and not (isinstance(value, list) and all(isinstance(item, dict) for item in value)):
            fix = "Write each feed as a [[feeds]] table, with double brackets"
            raise ConfigError(key, source, f"expected an array of tables, got {toml_type(value)}", fix)
        if key not in SECTIONS and key != FEEDS:
            raise _unknown_top_level(key, value, source)


def _unknown_top_level(key: str, value: Any, source: str) -> ConfigError:
    known = [*SECTIONS, FEEDS]
    if isinstance(value, dict):
        fix = suggestion(key, known, "Known sections are: " + ", ".join(known))
        return ConfigError(key, source, f"unknown section [{key}]", fix)

    owners = [option.section for option in SCHEMA if option.key == key]
    if owners:
        return ConfigError(key, source, "the key is outside any section", f"Move it into the [{owners[0]}] section")
    fix = suggestion(key, known, "Put keys inside a section: " + ", ".join(known))
    return ConfigError(key, source, "unknown top-level key", fix)


def file_layer(table: dict[str, Any], section: str, label: str, path: Path) -> Layer:
    """Turn one table of the config file into a layer, rejecting unknown keys.

    ``label`` names the table in messages, such as ``sync`` or ``feeds.bookings``.
    """
    options = options_of(section)
    for key in table:
        if key not in options:
            fix = suggestion(key, list(options), "Known keys here are: " + ", ".join(options))
            raise ConfigError(f"{label}.{key}", str(path), "unknown key", fix)

    layer = {key: RawValue(value, str(path), path.parent) for key, value in table.items()}
    check_pairs(layer, section, label)
    return layer


def read_environment(env: Mapping[str, str], cwd: Path) -> dict[str, Layer]:
    """Collect the environment variables that set config keys into one layer per section.

    A ``CALSYNC_<SECTION>_<KEY>`` variable with an unknown key raises
    ConfigError, as does a section name close to a known one, such as
    ``CALSYNC_FEEDS_TOKEN``. Other variables, including ``CALSYNC_CONFIG``,
    are ignored, and so is any variable set to "".
    """
    layers: dict[str, Layer] = {section: {} for section in (*SECTIONS, FEEDS)}
    for variable in sorted(env):
        option = _env_option(variable)
        if option is None or env[variable] == "":
            continue
        layer = layers[option.section]
        if option.key in layer:
            both = f"{layer[option.key].source} and {variable}"
            raise ConfigError(_env_key(option), both, "both variables are set", "Unset one of them")
        layer[option.key] = RawValue(_from_env(option, variable, env[variable]), variable, cwd)

    for section, layer in layers.items():
        check_pairs(layer, section, env_label(section))
    return layers


def _env_option(variable: str) -> Option | None:
    if variable == SECRET_ENV:
        return options_of("cashfin")["client_secret"]
    if not variable.startswith(ENV_PREFIX) or variable == CONFIG_ENV:
        return None

    section_part, _, key_part = variable[len(ENV_PREFIX) :].partition("_")
    section = ENV_SECTIONS.get(section_part)
    if section is None:
        _reject_close_env_section(variable, section_part)
        return None

    options = options_of(section)
    option = options.get(key_part.lower())
    if option is None:
        raise _unknown_env_key(variable, section, key_part.lower())
    return option


def _unknown_env_key(variable: str, section: str, key: str) -> ConfigError:
    # Only the keys are compared: with the shared CALSYNC_<SECTION>_ prefix, any two names look alike.
    options = options_of(section)
    names = [env_name(option) for option in options.values()]
    close = difflib.get_close_matches(key, options, n=1, cutoff=SUGGESTION_CUTOFF)
    if close:
        fix = f"Did you mean {env_name(options[close[0]])}?"
    else:
        fix = "Known variables for this section are: " + ", ".join(names)
    return ConfigError(f"{env_label(section)}.{key}", variable, "unknown environment variable", fix)


def _reject_close_env_section(variable: str, section_part: str) -> None:
    close = difflib.get_close_matches(section_part, ENV_SECTIONS, n=1, cutoff=SUGGESTION_CUTOFF)
    if close:
        fix = f"Did you mean a {ENV_PREFIX}{close[0]}_... variable?"
        raise ConfigError(env_label(ENV_SECTIONS[close[0]]), variable, "unknown environment variable", fix)


def _from_env(option: Option, variable: str, text: str) -> Any:
    try:
        return option.type.from_env(text)
    except ValueError:
        problem = f"expected {option.type.name}, got {text!r}"
        sample = env_literal(option.sample)
        fix = f"Set it to {option.expected}, such as {sample}" if option.expected else f"Set it to {sample}"
        raise ConfigError(_env_key(option), variable, problem, fix) from None


def env_name(option: Option) -> str:
    """Return the environment variable that sets ``option``, such as ``CALSYNC_FEED_TOKEN``."""
    section = "FEED" if option.section == FEEDS else option.section.upper()
    return f"{ENV_PREFIX}{section}_{option.key.upper()}"


def env_label(section: str) -> str:
    """Return the label in messages of the table that a section's variables set, such as ``feeds[0]``."""
    return f"{FEEDS}[0]" if section == FEEDS else section


def _env_key(option: Option) -> str:
    return f"{env_label(option.section)}.{option.key}"


def check_pairs(layer: Layer, section: str, label: str) -> None:
    """Reject a layer that sets both a secret and the file to read it from."""
    for option in options_of(section).values():
        target = option.reads_into
        if target is None or not (is_set(layer.get(option.key)) and is_set(layer.get(target))):
            continue
        sources = sorted({layer[option.key].source, layer[target].source})
        fix = f"Remove {target} or {option.key}"
        raise ConfigError(f"{label}.{target}", " and ".join(sources), f"both {target} and {option.key} are set", fix)


def is_set(raw: RawValue | None) -> bool:
    """Tell whether a layer provides a value. An empty string counts as unset."""
    return raw is not None and raw.value != ""


def suggestion(name: str, known: list[str], otherwise: str) -> str:
    """Return "Did you mean X?" for the closest known name, else ``otherwise``."""
    close = difflib.get_close_matches(name, known, n=1, cutoff=SUGGESTION_CUTOFF)
    return f"Did you mean {close[0]}?" if close else otherwise


def toml_type(value: Any, show_value: bool = False) -> str:
    """Name the TOML type of a parsed value, with the value itself if ``show_value``."""
    names = {bool: "a boolean", int: "an integer", float: "a float", str: "a string", list: "an array", dict: "a table"}
    name = names.get(type(value), "a date or time")
    if show_value and isinstance(value, (bool, int, float, str)):
        return f"{name} {toml_literal(value)}"
    return name


def toml_literal(value: Any) -> str:
    """Write a string, number, boolean or list as TOML."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, str):
        return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'
    if isinstance(value, list):
        return "[" + ", ".join(toml_literal(item) for item in value) + "]"
    return str(value)


def env_literal(value: Any) -> str:
    """Write a value as an environment variable would set it: lists joined by commas."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, list):
        return ",".join(str(item) for item in value)
    return str(value)
