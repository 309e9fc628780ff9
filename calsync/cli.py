"""The ``calsync`` command line: argument parsing, logging set-up and exit codes.

Each command imports its work inside its function so that ``calsync --help``
stays fast. Every error reaches ``main``, which turns it into one message and
an exit code: 0 success, 1 sync failed (feeds untouched), 2 invalid config or
usage, 3 another sync holds the lock.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING

from calsync import __version__
from calsync.errors import CalsyncError, ConfigError, LockHeldError
from calsync.logs import FORMATS, LEVELS, configure_logging, redact

if TYPE_CHECKING:
    from calsync.config import Config

log = logging.getLogger("calsync")

EXIT_OK = 0
EXIT_SYNC_FAILED = 1
EXIT_USAGE = 2
EXIT_LOCKED = 3

Command = Callable[[argparse.Namespace], int]


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    _check_choice(parser, "--log-level", "CALSYNC_LOG_LEVEL", args.log_level, LEVELS)
    _check_choice(parser, "--log-format", "CALSYNC_LOG_FORMAT", args.log_format, FORMATS)
    configure_logging(args.log_level, args.log_format)

    command: Command = args.command
    try:
        return command(args)
    except ConfigError as error:
        log.error("invalid configuration: %s", error)
        return EXIT_USAGE
    except LockHeldError as error:
        log.error("%s; try again when it has finished", error)
        return EXIT_LOCKED
    except CalsyncError as error:
        if not error.logged:
            log.error("%s", error)
        log.debug("traceback of the error above", exc_info=True)
        return EXIT_SYNC_FAILED
    except KeyboardInterrupt:
        log.info("interrupted")
        return 130
    except OSError as error:
        log.error("%s%s", error.strerror or error, f": {error.filename}" if error.filename else "")
        log.debug("traceback of the error above", exc_info=True)
        return EXIT_SYNC_FAILED
    except Exception:
        log.exception("unexpected error; please report it with the traceback above (secrets are masked)")
        return EXIT_SYNC_FAILED


def _check_choice(parser: argparse.ArgumentParser, option: str, variable: str, value: str, choices: Sequence[str]) -> None:
    """Reject a value from the environment as argparse rejects one from the command line (exit 2)."""
    if value not in choices:
        parser.error(f"invalid {option} {value!r} (from {option} or ${variable}); choose from {', '.join(choices)}")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="calsync",
        description="Keep iCalendar feeds in step with a business's bookings on Cashfin.",
        epilog="Exit codes: 0 success, 1 sync failed (feeds untouched), 2 invalid config or usage, "
        "3 another sync holds the lock.",
    )
    parser.add_argument("--version", action="version", version=f"calsync {__version__}")
    parser.add_argument(
        "--config",
        metavar="PATH",
        help="TOML config file (default: $CALSYNC_CONFIG, else ./calsync.toml)",
    )
    parser.add_argument(
        "--log-level",
        default=os.environ.get("CALSYNC_LOG_LEVEL", "info").lower(),
        choices=LEVELS,
        help="lowest level of log message to print on stderr (default: $CALSYNC_LOG_LEVEL, else info)",
    )
    parser.add_argument(
        "--log-format",
        default=os.environ.get("CALSYNC_LOG_FORMAT", "text").lower(),
        choices=FORMATS,
        help="text lines, or one JSON object per line for log collectors (default: $CALSYNC_LOG_FORMAT, else text)",
    )
    commands = parser.add_subparsers(title="commands", metavar="COMMAND", required=True)

    sync = commands.add_parser("sync", help="run one sync and publish the feeds (for cron)")
    sync.add_argument(
        "--lock-wait",
        type=float,
        default=5.0,
        metavar="SECONDS",
        help="how long to wait for another sync of the same state_dir to finish (default: 5)",
    )
    sync.set_defaults(command=cmd_sync)

    export = commands.add_parser("export", help="render a feed from stored state, without network access")
    export.add_argument("--feed", metavar="NAME", help="feed to render (default: the first feed)")
    export.add_argument("-o", "--output", metavar="PATH", default="-", help="file to write, or - for stdout (default)")
    export.set_defaults(command=cmd_export)

    serve = commands.add_parser("serve", help="sync on schedule and serve the feeds over HTTP (the daemon)")
    serve.set_defaults(command=cmd_serve)

    urls = commands.add_parser("urls", help="print each feed's subscription links for Google, Outlook and Apple")
    urls.set_defaults(command=cmd_urls)

    check = commands.add_parser("check", help="validate the config and make one authenticated API request")
    check.add_argument(
        "--show-config",
        action="store_true",
        help="print every effective setting with its source (default, file or environment), secrets masked, "
        "instead of contacting the API",
    )
    check.set_defaults(command=cmd_check)

    sandbox = commands.add_parser("sandbox", help="run the local Cashfin sandbox API alone")
    sandbox.add_argument("--host", default="127.0.0.1", help="address to listen on (default: 127.0.0.1)")
    sandbox.add_argument("--port", type=int, default=8765, help="port to listen on, 0 for any free port (default: 8765)")
    sandbox.add_argument("--secret", default="sandbox-secret", help="client secret the sandbox accepts")
    sandbox.add_argument("--count", type=int, default=300, help="number of bookings to generate (default: 300)")
    sandbox.add_argument("--seed", type=int, default=7, help="random seed of the generated data (default: 7)")
    sandbox.add_argument(
        "--latency-ms",
        type=float,
        default=0.0,
        help="delay every response by this many milliseconds, like a network round trip (default: 0)",
    )
    sandbox.add_argument(
        "--fault",
        action="append",
        default=[],
        metavar="KIND[=VALUE][:ENDPOINT][@N[,M...]][/BOOKING_ID]",
        help="inject a fault. Repeat the option to inject several. KIND is one of 429, 500, 502, 503, hang, "
        "reset, truncated, not-json, success-false, repeat-rows, total-inflated, empty-page, not-found, unauthorized, "
        "slow. VALUE sets the Retry-After seconds of 429 (default 1), the seconds of hang (default 30), "
        "the milliseconds of slow (default 500) or the extra rows of total-inflated (default 5). "
        "ENDPOINT is list, details or any (default any). @N,M limits the fault to those request numbers "
        "of the endpoint, counted from 1 since the sandbox started. /BOOKING_ID limits it to details of that booking. "
        "Examples: --fault 503:list@2,3  --fault hang=10:details@1  --fault not-found/<id>",
    )
    sandbox.set_defaults(command=cmd_sandbox)

    demo = commands.add_parser("demo", help="run the sandbox, sync from it and serve the feed on loopback")
    demo.add_argument("--port", type=int, default=8080, help="feed server port, 0 for any free port (default: 8080)")
    demo.add_argument("--count", type=int, default=300, help="number of sandbox bookings (default: 300)")
    demo.add_argument(
        "--state-dir",
        metavar="PATH",
        help="keep the demo's state and feeds here (default: a temporary directory removed on exit)",
    )
    demo.set_defaults(command=cmd_demo)
    return parser


def load(args: argparse.Namespace, require_secret: bool = True) -> Config:
    """Load the config named by the arguments and keep its secrets out of every later log line."""
    from calsync.config import load_config

    config = load_config(args.config, require_secret=require_secret)
    secrets = [config.cashfin.client_secret, config.server.admin_token, *(feed.token for feed in config.feeds)]
    redact(secret for secret in secrets if secret)
    return config


def cmd_sync(args: argparse.Namespace) -> int:
    from calsync.engine import SyncEngine

    config = load(args)
    SyncEngine(config).run(lock_wait=args.lock_wait)
    return EXIT_OK


def cmd_serve(args: argparse.Namespace) -> int:
    from calsync.service import run_service

    return run_service(load(args))


def cmd_urls(args: argparse.Namespace) -> int:
    from calsync.links import feed_links, public_url_problems

    config = load(args, require_secret=False)
    for problem in public_url_problems(config):
        log.warning("%s", problem)
    for feed in config.feeds:
        if not feed.token and not feed.public:
            log.warning("feed %s has no token and is not public, so its links get 404; set its token", feed.name)

    for feed in config.feeds:
        links = feed_links(config, feed)
        print(f"{links.title} ({links.feed})")
        print(f"  URL:                   {links.url}")
        print(f"  Apple Calendar:        {links.webcal}")
        print(f"  Google Calendar:       {links.google}")
        print(f"  Outlook.com:           {links.outlook_personal}")
        print(f"  Outlook (work/school): {links.outlook_work}")
    return EXIT_OK


def cmd_export(args: argparse.Namespace) -> int:
    from calsync.feeds import export_feed

    config = load(args, require_secret=False)
    feed = config.feed(args.feed) if args.feed else config.feeds[0]
    data = export_feed(config, feed)

    if args.output == "-":
        sys.stdout.buffer.write(data)
        sys.stdout.buffer.flush()
    else:
        from pathlib import Path

        from calsync.feeds import publish

        publish(Path(args.output), data, mode=None)
    return EXIT_OK


def cmd_check(args: argparse.Namespace) -> int:
    from calsync.cashfin import client_for
    from calsync.server import serving_problems

    config = load(args, require_secret=not args.show_config)
    print(f"config: {config.path or 'defaults and environment'} is valid, {len(config.feeds)} feed(s)")
    for problem in serving_problems(config):
        log.warning("%s", problem)
    if args.show_config:
        print_config(config)
        return EXIT_OK

    with client_for(config) as client:
        total = client.count_bookings()
    print(f"api: {config.cashfin.base_url} accepted the client secret and reports {total} bookings")
    return EXIT_OK


def print_config(config: Config) -> None:
    rows = config.describe()
    width = max(len(key) for key, _, _ in rows)
    value_width = min(48, max(len(value) for _, value, _ in rows))
    for key, value, source in rows:
        print(f"  {key:<{width}}  {value:<{value_width}}  {source}")


def cmd_sandbox(args: argparse.Namespace) -> int:
    from calsync.sandbox import Sandbox
    from calsync.sandbox_faults import parse_fault_spec

    faults = []
    for spec in args.fault:
        try:
            faults.append(parse_fault_spec(spec))
        except ValueError as error:
            log.error("--fault: %s", error)
            return EXIT_USAGE
    if args.latency_ms < 0:
        log.error("--latency-ms must not be negative, got %s", args.latency_ms)
        return EXIT_USAGE
    if args.count < 0:
        log.error("--count must be 0 or more, got %d", args.count)
        return EXIT_USAGE
    if not 0 <= args.port <= 65535:
        log.error("--port must be from 0 to 65535, got %d", args.port)
        return EXIT_USAGE
    sandbox = Sandbox(
        secret=args.secret,
        count=args.count,
        seed=args.seed,
        host=args.host,
        port=args.port,
        latency_ms=args.latency_ms,
        faults=faults,
    )
    try:
        base_url = sandbox.start()
    except OSError as error:
        log.error("%s", error.strerror or error)
        return EXIT_USAGE
    print(f"Cashfin sandbox with {args.count} bookings at {base_url}")
    for spec in args.fault:
        print(f"fault: {spec}")
    print(f"use: CASHFIN_CLIENT_SECRET={args.secret} with cashfin.base_url = \"{base_url}\"; Ctrl-C stops it")
    try:
        sandbox.wait()
    finally:
        sandbox.stop()
    return EXIT_OK


def cmd_demo(args: argparse.Namespace) -> int:
    from calsync.demo import run_demo

    return run_demo(port=args.port, count=args.count, state_dir=args.state_dir)
