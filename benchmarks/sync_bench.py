"""Measure calsync's syncs against the lower bound, a hand-written script, and static file servers.

For each size, the benchmark starts the sandbox Cashfin API in its own
process with that many bookings and a fixed latency per response. It then
measures three syncs of calsync, each in a fresh process: the first sync,
a sync with no changes, and a sync after 1% of the bookings changed. After
each, the null client replays the requests that calsync sent, against the
same sandbox, and its time is the floor for the ratio. The hand-written
script runs against the same sandbox for comparison. Last, a load tool
measures how fast calsync serves the feed, next to nginx and Python's
http.server serving the same file.

Run from the repository root:

    .venv/bin/python -m benchmarks.sync_bench --markdown docs/benchmarks.md

The 100,000-booking case takes long and is opt-in: ``--sizes 1000,10000,100000``.
"""

from __future__ import annotations

import argparse
import os
import shlex
import sys
import tempfile
import time
from collections.abc import Sequence
from datetime import UTC, datetime
from pathlib import Path

from benchmarks.baseline_sync import sync as baseline_sync
from benchmarks.calsync_sync import sync_once
from benchmarks.child_process import run_in_child
from benchmarks.null_client import replay, replay_from_log
from benchmarks.report import machine_description, render_text, write_markdown
from benchmarks.results import (
    CHANGED,
    FIRST_SYNC,
    NO_CHANGES,
    BaselineResult,
    BenchmarkRun,
    ScenarioResult,
    Settings,
)
from benchmarks.sandbox_process import SandboxProcess
from benchmarks.serve_bench import measure_serving

CHANGED_SHARE = 0.01
FEED_TOKEN = "benchmark-token"
PROXY_VARIABLES = ("HTTP_PROXY", "HTTPS_PROXY", "ALL_PROXY", "http_proxy", "https_proxy", "all_proxy")


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.sync_bench", description=__doc__.split("\n\n")[0])
    parser.add_argument("--sizes", default="1000,10000", help="comma-separated numbers of bookings (default: 1000,10000)")
    parser.add_argument("--latency-ms", type=float, default=20.0, help="sandbox delay per response in ms (default: 20)")
    parser.add_argument("--concurrency", type=int, default=8, help="calsync's and the null client's requests in flight (default: 8)")
    parser.add_argument(
        "--baseline-runs", type=int, default=1, help="runs of the hand-written script per size, 0 to skip it (default: 1)"
    )
    parser.add_argument(
        "--baseline-max-size", type=int, default=10_000,
        help="largest size at which the hand-written script runs, because it waits for one request per booking "
        "in turn (default: 10000)",
    )
    parser.add_argument(
        "--serve-events", type=int, default=10_000,
        help="bookings in the feed for the serving benchmark, 0 to skip it (default: 10000)",
    )
    parser.add_argument("--serve-seconds", type=float, default=5.0, help="seconds per serving measurement (default: 5)")
    parser.add_argument("--serve-connections", type=int, default=16, help="connections of the load tool (default: 16)")
    parser.add_argument("--markdown", type=Path, help="write the results into this Markdown page, such as docs/benchmarks.md")
    parser.add_argument("--work-dir", type=Path, help="directory for state and feeds (default: a temporary directory)")
    args = parser.parse_args(argv)
    try:
        args.sizes = [int(size) for size in args.sizes.split(",")]
    except ValueError:
        parser.error(f"--sizes must be comma-separated whole numbers, got {args.sizes!r}")
    if any(size < 1 for size in args.sizes):
        parser.error(f"--sizes must be 1 or more, got {args.sizes}")
    if args.concurrency < 1:
        parser.error(f"--concurrency must be 1 or more, got {args.concurrency}")
    return args


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    command = "python -m benchmarks.sync_bench " + shlex.join(sys.argv[1:] if argv is None else list(argv))
    settings = Settings(
        sizes=args.sizes,
        latency_ms=args.latency_ms,
        concurrency=args.concurrency,
        baseline_runs=args.baseline_runs,
        baseline_max_size=args.baseline_max_size,
        serve_events=args.serve_events,
        serve_seconds=args.serve_seconds,
        serve_connections=args.serve_connections,
        command=command,
    )
    keep_loopback_direct()

    if args.work_dir is not None:
        run = run_benchmark(settings, args.work_dir)
    else:
        with tempfile.TemporaryDirectory(prefix="calsync-bench-") as work_dir:
            run = run_benchmark(settings, Path(work_dir))

    print(render_text(run))
    if args.markdown is not None:
        write_markdown(args.markdown, run)
        print(f"wrote {args.markdown}")
    return 0


def keep_loopback_direct() -> None:
    """Make every child's requests go straight to loopback, whatever proxy the environment names."""
    for name in PROXY_VARIABLES:
        os.environ.pop(name, None)
    os.environ["NO_PROXY"] = "127.0.0.1,localhost"


def run_benchmark(settings: Settings, work_dir: Path) -> BenchmarkRun:
    """Run every size, then the serving measurement, and return the figures."""
    started = time.perf_counter()
    run = BenchmarkRun(
        settings=settings,
        machine=machine_description(),
        date=datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC"),
    )
    for size in settings.sizes:
        size_started = time.perf_counter()
        scenarios, baseline = bench_size(size, settings, work_dir / f"bookings-{size}")
        run.scenarios += scenarios
        if baseline is not None:
            run.baselines.append(baseline)
        run.size_seconds[size] = time.perf_counter() - size_started

    if settings.serve_events > 0:
        serving_started = time.perf_counter()
        config_path = serving_state(settings, work_dir)
        progress(f"serving a {settings.serve_events:,}-event feed")
        run.serving = measure_serving(config_path, settings.serve_seconds, settings.serve_connections)
        run.serving_seconds = time.perf_counter() - serving_started
    run.total_seconds = time.perf_counter() - started
    return run


def bench_size(size: int, settings: Settings, directory: Path) -> tuple[list[ScenarioResult], BaselineResult | None]:
    """Measure the three syncs and the hand-written script at one size, against one sandbox."""
    # Enough server threads for calsync's or the null client's requests, with room for one of each at once.
    threads = 2 * settings.concurrency + 4
    progress(f"{size:,} bookings: starting the sandbox")
    with SandboxProcess(size, settings.latency_ms, threads) as sandbox:
        config_path = write_config(directory, sandbox.base_url, sandbox.secret, settings.concurrency)
        scenarios = [
            measure_scenario(sandbox, config_path, settings, FIRST_SYNC),
            measure_scenario(sandbox, config_path, settings, NO_CHANGES),
        ]
        changed = sandbox.change_share(CHANGED_SHARE)
        scenarios.append(measure_scenario(sandbox, config_path, settings, CHANGED, changed))

        baseline = None
        if settings.baseline_runs > 0 and size <= settings.baseline_max_size:
            baseline = measure_baseline(sandbox, directory, settings.baseline_runs)
    return scenarios, baseline


def measure_scenario(
    sandbox: SandboxProcess, config_path: Path, settings: Settings, scenario: str, changed: int = 0
) -> ScenarioResult:
    """Run one calsync sync in a child process, then the null client's replay of its requests."""
    from calsync.config import load_config
    from calsync.engine import refresh_budget

    progress(f"{sandbox.count:,} bookings, {scenario}: calsync")
    sandbox.reset_counts()
    cpu_before = sandbox.cpu_seconds()
    measurement = run_in_child(sync_once, str(config_path))
    sandbox_cpu = sandbox.cpu_seconds() - cpu_before
    counts = sandbox.request_counts()
    requests_to_send = replay_from_log(sandbox.request_log())
    check_log_complete(counts, len(requests_to_send.list_targets), len(requests_to_send.details_targets))

    progress(f"{sandbox.count:,} bookings, {scenario}: null client")
    sandbox.reset_counts()
    null_seconds = run_in_child(replay, sandbox.base_url, sandbox.secret, requests_to_send, settings.concurrency)
    check_same_requests(counts, sandbox.request_counts())

    stats = measurement.stats
    return ScenarioResult(
        size=sandbox.count,
        scenario=scenario,
        changed=changed,
        list_requests=counts["list"],
        details_requests=counts["details"],
        events=sum(stats["events"].values()),
        seconds=measurement.seconds,
        null_seconds=null_seconds,
        render_seconds=stats["render_seconds"],
        full_render_seconds=measurement.full_render_seconds,
        peak_rss=measurement.peak_rss,
        sandbox_cpu_seconds=sandbox_cpu,
        refresh_budget=refresh_budget(sandbox.count, load_config(str(config_path), env={})),
    )


def check_log_complete(counts: dict[str, int], list_logged: int, details_logged: int) -> None:
    if (list_logged, details_logged) != (counts["list"], counts["details"]):
        raise RuntimeError(
            f"the sandbox logged {list_logged} list and {details_logged} details requests but counted "
            f"{counts['list']} and {counts['details']}; the null client cannot replay them"
        )


def check_same_requests(calsync_counts: dict[str, int], null_counts: dict[str, int]) -> None:
    if calsync_counts != null_counts:
        raise RuntimeError(f"the null client sent {null_counts} requests but calsync sent {calsync_counts}")


def measure_baseline(sandbox: SandboxProcess, directory: Path, runs: int) -> BaselineResult:
    """Run the hand-written script ``runs`` times, each in a fresh process."""
    run_seconds = []
    events = 0
    for number in range(1, runs + 1):
        progress(f"{sandbox.count:,} bookings: hand-written script, run {number} of {runs}")
        sandbox.reset_counts()
        seconds, events = run_in_child(timed_baseline, sandbox.base_url, sandbox.secret, str(directory / "baseline.ics"))
        run_seconds.append(seconds)
    counts = sandbox.request_counts()
    return BaselineResult(sandbox.count, run_seconds, counts["list"], counts["details"], events)


def timed_baseline(base_url: str, secret: str, output: str) -> tuple[float, int]:
    """Return the wall seconds and the event count of one run of the hand-written script."""
    started = time.perf_counter()
    events = baseline_sync(base_url, secret, output)
    return time.perf_counter() - started, events


def serving_state(settings: Settings, work_dir: Path) -> Path:
    """Return the config of a synced state with ``serve_events`` bookings, syncing one at no latency if needed."""
    directory = work_dir / f"bookings-{settings.serve_events}"
    config_path = directory / "calsync.toml"
    if config_path.exists():
        return config_path

    progress(f"{settings.serve_events:,} bookings: syncing a feed to serve")
    with SandboxProcess(settings.serve_events, 0.0, 2 * settings.concurrency + 4) as sandbox:
        config_path = write_config(directory, sandbox.base_url, sandbox.secret, settings.concurrency)
        run_in_child(sync_once, str(config_path))
    return config_path


def write_config(directory: Path, base_url: str, secret: str, concurrency: int) -> Path:
    """Write the calsync config of one size: one feed that shows every booking, past or future."""
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / "calsync.toml"
    path.write_text(
        f"""[cashfin]
base_url = "{base_url}"
client_secret = "{secret}"
timeout = "30s"
page_size = 100
concurrency = {concurrency}

[sync]
state_dir = "{(directory / "state").as_posix()}"
interval = "15m"
details_max_age = "24h"

[calendar]
uid_domain = "benchmark.calsync.invalid"

[[feeds]]
name = "bookings"
title = "Bookings"
token = "{FEED_TOKEN}"
past_days = 36500
""",
        encoding="utf-8",
    )
    return path


def progress(message: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


if __name__ == "__main__":
    sys.exit(main())
