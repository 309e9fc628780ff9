"""The benchmark's code paths at a tiny size and no latency; no assertion here is about time."""


import pytest

from benchmarks.null_client import replay_from_log
from benchmarks.report import RESULTS_END, RESULTS_START, render_text, write_markdown
from benchmarks.results import (
    CHANGED,
    FIRST_SYNC,
    NO_CHANGES,
    BenchmarkRun,
    ScenarioResult,
    Settings,
)
from benchmarks.serve_bench import generate_load
from benchmarks.sync_bench import PROXY_VARIABLES, parse_args, run_benchmark
from benchmarks.targets import check_targets
from calsync.wsgi import make_server, server_url, start_server_thread, stop_server

SIZE = 200


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory):
    settings = Settings(
        sizes=[SIZE],
        latency_ms=0.0,
        concurrency=4,
        baseline_runs=1,
        baseline_max_size=SIZE,
        serve_events=SIZE,
        serve_seconds=1.0,
        serve_connections=2,
        command="python -m benchmarks.sync_bench --sizes 200",
    )
    # The children inherit the environment, so proxy variables must be gone before they start.
    with pytest.MonkeyPatch.context() as patch:
        for name in PROXY_VARIABLES:
            patch.delenv(name, raising=False)
        patch.setenv("NO_PROXY", "127.0.0.1,localhost")
        yield run_benchmark(settings, tmp_path_factory.mktemp("bench"))


def test_scenarios_count_requests(tiny_run):
    first = tiny_run.scenario(SIZE, FIRST_SYNC)
    steady = tiny_run.scenario(SIZE, NO_CHANGES)
    changed = tiny_run.scenario(SIZE, CHANGED)

    assert (first.list_requests, first.details_requests) == (2, SIZE)
    assert (steady.list_requests, steady.details_requests) == (2, 0)
    assert changed.changed == 2
    assert (changed.list_requests, changed.details_requests) == (2, 2)


def test_scenarios_record_measurements(tiny_run):
    for result in tiny_run.scenarios:
        assert result.null_seconds > 0
        assert result.full_render_seconds > 0
        assert result.peak_rss > 10**6
        assert result.refresh_budget >= 1


def test_baseline_fetches_every_booking(tiny_run):
    baseline = tiny_run.baseline(SIZE)

    assert baseline.events == SIZE
    assert baseline.list_requests == 2
    assert baseline.details_requests == SIZE
    assert len(baseline.run_seconds) == 1


def test_serving_measures_each_server(tiny_run):
    servers = {result.server for result in tiny_run.serving}
    statuses = {(result.server, result.status) for result in tiny_run.serving}

    assert "calsync (waitress)" in servers
    assert "python http.server" in servers
    assert ("calsync (waitress)", 304) in statuses
    assert all(result.requests_per_second > 0 for result in tiny_run.serving)


def test_text_report_lists_targets(tiny_run):
    text = render_text(tiny_run)

    assert "null client" in text
    assert "not measured: no run at 10,000 bookings" in text
    assert "this run used 0 ms and 4" in text


def test_markdown_keeps_text_outside_markers(tiny_run, tmp_path):
    page = tmp_path / "benchmarks.md"
    page.write_text(f"# Benchmarks\n\nAnalysis by hand.\n\n{RESULTS_START}\nold figures\n{RESULTS_END}\n\nMore notes.\n")

    write_markdown(page, tiny_run)
    write_markdown(page, tiny_run)

    text = page.read_text()
    assert text.startswith("# Benchmarks\n\nAnalysis by hand.\n")
    assert text.endswith("\nMore notes.\n")
    assert "old figures" not in text
    assert text.count(RESULTS_START) == 1
    assert "`python -m benchmarks.sync_bench --sizes 200`" in text
    assert "| 200 | first sync | 2 | 200 | 200 |" in text


def test_markdown_creates_missing_page(tiny_run, tmp_path):
    page = tmp_path / "docs" / "benchmarks.md"

    write_markdown(page, tiny_run)

    text = page.read_text()
    assert text.startswith("# Benchmarks\n")
    assert RESULTS_END in text


def test_replay_orders_pages_first():
    log = [
        ("GET", "/business/booking/list?page=3&limit=100"),
        ("GET", "/business/booking/list?page=1&limit=100"),
        ("GET", "/business/booking/details/b"),
        ("GET", "/business/booking/list?page=2&limit=100"),
        ("GET", "/business/booking/details/a"),
        ("GET", "/elsewhere"),
    ]

    replay = replay_from_log(log)

    assert replay.list_targets == [
        "/business/booking/list?page=1&limit=100",
        "/business/booking/list?page=2&limit=100",
        "/business/booking/list?page=3&limit=100",
    ]
    assert replay.details_targets == ["/business/booking/details/b", "/business/booking/details/a"]


def test_python_load_generator_counts_requests():
    def app(environ, start_response):
        start_response("200 OK", [("Content-Type", "text/plain"), ("Content-Length", "2")])
        return [b"ok"]

    server = make_server(app, "127.0.0.1", 0)
    start_server_thread(server)
    try:
        rate = generate_load(server_url(server) + "/", {}, 0.3, 2)
    finally:
        stop_server(server)

    assert rate > 0


@pytest.mark.parametrize("sizes", ["0", "ten", "1000,-5"])
def test_invalid_sizes_rejected(sizes):
    with pytest.raises(SystemExit):
        parse_args(["--sizes", sizes])


def scenario(size: int, name: str, **figures) -> ScenarioResult:
    values = dict(
        size=size, scenario=name, changed=0, list_requests=size // 100, details_requests=0, events=size,
        seconds=1.0, null_seconds=1.0, render_seconds=0.1, full_render_seconds=4.0, peak_rss=10**8,
        sandbox_cpu_seconds=0.1, refresh_budget=105,
    )
    values.update(figures)
    return ScenarioResult(**values)


def test_targets_judged_from_figures(tiny_run):
    run = BenchmarkRun(settings=tiny_run.settings, machine={}, date="")
    run.scenarios = [
        scenario(10_000, FIRST_SYNC, details_requests=10_000, seconds=13.0, null_seconds=10.0),
        scenario(10_000, NO_CHANGES, details_requests=105, seconds=1.6, null_seconds=1.0),
        scenario(10_000, CHANGED, changed=100, details_requests=100, render_seconds=0.5, full_render_seconds=4.0),
    ]
    run.size_seconds = {1_000: 30.0, 10_000: 500.0}
    run.serving_seconds = 80.0

    verdicts = {check.target.split(":")[0]: check.met for check in check_targets(run)}

    assert verdicts["First sync, 10,000 bookings"] is True
    assert verdicts["No-change sync, 10,000 bookings"] is False
    assert verdicts["Sync after 1% changed, 10,000 bookings"] is True
    assert verdicts["Render after 1% changed, 10,000 bookings"] is False
    assert verdicts["Full sync of 100,000 bookings"] is None
    assert verdicts["The benchmark at 1,000 and 10,000 bookings"] is False
