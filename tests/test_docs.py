"""The docs: the generated configuration reference, and the variables and commands that the guides name."""

import argparse
import importlib.util
import re
from pathlib import Path
from types import ModuleType

import pytest

from calsync.cli import build_parser
from calsync.config_schema import SCHEMA
from calsync.config_sources import CONFIG_ENV, SECRET_ENV, env_name

ROOT = Path(__file__).resolve().parent.parent
DOCS = ROOT / "docs"
GENERATOR = ROOT / "scripts" / "gen_config_docs.py"
GUIDES = sorted(DOCS.glob("*.md"))
KNOWN_VARIABLES = {env_name(option) for option in SCHEMA} | {CONFIG_ENV, SECRET_ENV}

# A CALSYNC_ or CASHFIN_ variable name. Placeholders such as CALSYNC_<SECTION>_<KEY> end in "_" and are skipped.
VARIABLE = re.compile(r"\b(?:CALSYNC|CASHFIN)_[A-Z0-9_]+")
CODE = re.compile(r"```(\w*)\n(.*?)```|`([^`\n]+)`", re.DOTALL)
SHELL_LANGUAGES = {"", "sh", "console", "cron"}
# "calsync" as a word or at the end of a path, followed by a space.
PROGRAM = re.compile(r"(?<![^\s/=])calsync(?=[ \t])")
SHELL_OPERATOR = re.compile(r"[|;&<>]| #")


def load_generator() -> ModuleType:
    spec = importlib.util.spec_from_file_location("gen_config_docs", GENERATOR)
    assert spec is not None and spec.loader is not None, f"cannot load {GENERATOR}"
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def command_lines(path: Path) -> list[str]:
    """Return the lines that may run commands: shell code blocks, ExecStart lines and inline code spans."""
    lines = []
    for language, block, span in CODE.findall(path.read_text(encoding="utf-8")):
        if span:
            lines.append(span)
        elif language in SHELL_LANGUAGES:
            lines += block.splitlines()
        elif language == "ini":
            lines += [line for line in block.splitlines() if line.startswith("ExecStart=")]
    return lines


def first_words() -> set[str]:
    """Return the words that can follow "calsync": its commands and its top-level options."""
    parser = build_parser()
    words = {option for action in parser._actions for option in action.option_strings}
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            words |= set(action.choices)
    return words


def documented_invocations(line: str, known_first_words: set[str]) -> list[list[str]]:
    """Return the argument lists of the calsync commands in one line of code.

    Only a "calsync" followed by one of ``known_first_words`` counts, so that
    a container, user or group named calsync (``docker compose exec calsync
    calsync urls``, ``useradd ... calsync``) is not taken for the program.
    A misspelt command name is therefore not found here.
    """
    invocations = []
    for match in PROGRAM.finditer(line):
        rest = SHELL_OPERATOR.split(line[match.end():], maxsplit=1)[0]
        arguments = rest.split()
        if arguments and arguments[0] in known_first_words:
            invocations.append(arguments)
    return invocations


def invocations_in(path: Path) -> list[list[str]]:
    known = first_words()
    return [arguments for line in command_lines(path) for arguments in documented_invocations(line, known)]


def test_configuration_reference_is_current():
    generator = load_generator()
    committed = (DOCS / "configuration.md").read_text(encoding="utf-8")

    assert committed == generator.render(), (
        "docs/configuration.md differs from what scripts/gen_config_docs.py renders from "
        f"calsync/config_schema.py. Regenerate it with: {generator.REGENERATE_COMMAND}"
    )


def test_configuration_reference_lists_every_key():
    text = load_generator().render()

    for option in SCHEMA:
        assert f"### `{option.section}.{option.key}`" in text, f"{option.section}.{option.key} is missing"
        assert f"`{env_name(option)}`" in text, f"{env_name(option)} is missing"


@pytest.mark.parametrize("path", GUIDES, ids=[path.name for path in GUIDES])
def test_guide_names_only_known_variables(path):
    text = path.read_text(encoding="utf-8")
    names = {name for name in VARIABLE.findall(text) if not name.endswith("_")}

    unknown = sorted(names - KNOWN_VARIABLES)
    assert unknown == [], f"{path.name} names variables that calsync does not read: {unknown}"


@pytest.mark.parametrize("path", GUIDES, ids=[path.name for path in GUIDES])
def test_guide_commands_parse(path, capsys):
    parser = build_parser()

    for arguments in invocations_in(path):
        try:
            parser.parse_args(arguments)
        except SystemExit as error:
            usage = capsys.readouterr().err
            assert error.code == 0, f"{path.name}: 'calsync {' '.join(arguments)}' is rejected:\n{usage}"


def test_guides_contain_commands():
    for name in ("docker.md", "cron.md", "subscribing.md"):
        assert invocations_in(DOCS / name), f"no calsync command found in {name}"


def test_invocation_finder_skips_container_names():
    known = first_words()

    assert documented_invocations("docker compose exec calsync calsync urls  # links", known) == [["urls"]]
    assert documented_invocations("useradd --system --home-dir /var/lib/calsync --shell x calsync", known) == []
    assert documented_invocations("ExecStart=/opt/calsync/bin/calsync --config /etc/c.toml sync", known) == [
        ["--config", "/etc/c.toml", "sync"]
    ]
