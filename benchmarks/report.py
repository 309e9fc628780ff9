"""Tables of one benchmark run, as text for the terminal and as the Markdown of docs/benchmarks.md."""

from __future__ import annotations

import os
import platform
from pathlib import Path

from benchmarks.results import BenchmarkRun
from benchmarks.targets import TargetCheck, check_targets, settings_note

RESULTS_START = "<!-- benchmark results: written by benchmarks/sync_bench.py --markdown; edits here are replaced -->"
RESULTS_END = "<!-- end of benchmark results -->"

PAGE_INTRO = """# Benchmarks

`benchmarks/sync_bench.py` measures calsync against the sandbox Cashfin API
with a fixed latency per response, and compares each sync with a null
client that sends the same requests and parses nothing.
"""

Table = tuple[list[str], list[list[str]]]


def machine_description() -> dict[str, str]:
    """Return the CPU model, core count, memory, Python version and operating system of this machine."""
    return {
        "CPU": _cpu_model(),
        "cores": str(os.cpu_count()),
        "memory": _memory(),
        "Python": f"{platform.python_implementation()} {platform.python_version()}",
        "OS": f"{_os_name()}, kernel {platform.release()}",
    }


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def _memory() -> str:
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal:"):
                return f"{int(line.split()[1]) / 2**20:.1f} GiB"
    except OSError:
        pass
    return "unknown"


def _os_name() -> str:
    try:
        for line in Path("/etc/os-release").read_text().splitlines():
            if line.startswith("PRETTY_NAME="):
                return line.split("=", 1)[1].strip('"')
    except OSError:
        pass
    return platform.system()


# --- Tables --------------------------------------------------------------------


def sync_table(run: BenchmarkRun) -> Table:
    headers = [
        "bookings", "sync", "list req.", "details req.", "events", "calsync s", "null client s", "ratio",
        "render s", "full render s", "peak RSS MB", "sandbox CPU s",
    ]
    rows = [
        [
            f"{result.size:,}", result.scenario, str(result.list_requests), f"{result.details_requests:,}",
            f"{result.events:,}", f"{result.seconds:.2f}", f"{result.null_seconds:.2f}", f"{result.ratio:.2f}x",
            f"{result.render_seconds:.3f}", f"{result.full_render_seconds:.3f}", f"{result.peak_rss / 10**6:.0f}",
            f"{result.sandbox_cpu_seconds:.2f}",
        ]
        for result in run.scenarios
    ]
    return headers, rows


def baseline_table(run: BenchmarkRun) -> Table:
    headers = [
        "bookings", "list req.", "details req.", "script s", "calsync first sync s", "speed-up",
        "calsync no-change s", "speed-up",
    ]
    rows = []
    for baseline in run.baselines:
        first = run.scenario(baseline.size, "first sync")
        steady = run.scenario(baseline.size, "no changes")
        row = [
            f"{baseline.size:,}", str(baseline.list_requests), f"{baseline.details_requests:,}",
            " / ".join(f"{seconds:.1f}" for seconds in baseline.run_seconds),
        ]
        for result in (first, steady):
            row += [f"{result.seconds:.2f}", f"{baseline.seconds / result.seconds:.1f}x"] if result else ["", ""]
        rows.append(row)
    return headers, rows


def serving_table(run: BenchmarkRun) -> Table:
    headers = ["server", "request", "status", "requests/s", "MB/s", "load tool"]
    rows = [
        [
            result.server, result.request, str(result.status), f"{result.requests_per_second:,.0f}",
            f"{result.requests_per_second * result.bytes_per_response / 10**6:,.0f}", result.tool,
        ]
        for result in run.serving
    ]
    return headers, rows


def target_table(checks: list[TargetCheck]) -> Table:
    headers = ["target", "measured", "result"]
    rows = [[check.target, check.measured, _verdict(check.met)] for check in checks]
    return headers, rows


def _verdict(met: bool | None) -> str:
    if met is None:
        return "not measured"
    return "met" if met else "missed"


# --- Text ----------------------------------------------------------------------


def render_text(run: BenchmarkRun) -> str:
    """Return the whole run as plain-text tables."""
    sections = [
        "Sync (seconds are wall time; ratio = calsync / null client)",
        _text_table(*sync_table(run)),
        "Hand-written script (no state, so every run does the work of a first sync)",
        _text_table(*baseline_table(run)),
        f"Serving a {run.settings.serve_events:,}-event feed",
        _text_table(*serving_table(run)),
        "Targets",
        _text_table(*target_table(check_targets(run))),
    ]
    note = settings_note(run)
    if note:
        sections.append(note)
    sections.append(f"Time: {_durations(run)}")
    return "\n\n".join(sections) + "\n"


def _durations(run: BenchmarkRun) -> str:
    parts = [f"{size:,} bookings {seconds:.0f} s" for size, seconds in run.size_seconds.items()]
    if run.serving_seconds:
        parts.append(f"serving {run.serving_seconds:.0f} s")
    parts.append(f"total {run.total_seconds:.0f} s")
    return ", ".join(parts)


def _text_table(headers: list[str], rows: list[list[str]]) -> str:
    if not rows:
        return "(none)"
    widths = [max(len(cell) for cell in column) for column in zip(headers, *rows)]
    lines = [headers, ["-" * width for width in widths], *rows]
    return "\n".join("  ".join(cell.ljust(width) for cell, width in zip(line, widths)).rstrip() for line in lines)


# --- Markdown ------------------------------------------------------------------


def render_markdown(run: BenchmarkRun) -> str:
    """Return the generated part of docs/benchmarks.md, between the result markers."""
    settings = run.settings
    machine = ", ".join(f"{name}: {value}" for name, value in run.machine.items())
    lines = [
        RESULTS_START,
        "",
        "## Latest run",
        "",
        f"- Command: `{settings.command}`",
        f"- Date: {run.date}",
        f"- Machine: {machine}",
        f"- Settings: {settings.latency_ms:g} ms latency per response, concurrency {settings.concurrency}, "
        f"sizes {', '.join(f'{size:,}' for size in settings.sizes)}, "
        f"{settings.baseline_runs} run(s) of the hand-written script up to {settings.baseline_max_size:,} bookings",
        f"- Time: {_durations(run)}",
        "",
        "### Sync",
        "",
        "Seconds are wall time, and the ratio is calsync's time over the null client's. The sandbox counts the "
        "requests. Render seconds are the engine's, and full render seconds those of rendering every stored "
        "booking once more without any cache. Peak RSS is that of the process that ran the sync.",
        "",
        _markdown_table(*sync_table(run)),
        "",
        "### Hand-written script",
        "",
        "The script keeps no state, so each run does the same work, and its time stands for both its first "
        "and its no-change sync.",
        "",
        _markdown_table(*baseline_table(run)),
        "",
        f"### Serving a {settings.serve_events:,}-event feed",
        "",
        f"{settings.serve_connections} connections for {settings.serve_seconds:g} s per row, on loopback.",
        "",
        _markdown_table(*serving_table(run)),
        "",
        "### Targets",
        "",
        _markdown_table(*target_table(check_targets(run))),
        "",
    ]
    note = settings_note(run)
    if note:
        lines += [note, ""]
    lines.append(RESULTS_END)
    return "\n".join(lines) + "\n"


def write_markdown(path: Path, run: BenchmarkRun) -> None:
    """Replace the results between the markers of ``path``, or write a new page when it has none."""
    results = render_markdown(run)
    try:
        page = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        page = PAGE_INTRO + "\n" + RESULTS_START + "\n" + RESULTS_END + "\n"

    start = page.find(RESULTS_START)
    end = page.find(RESULTS_END)
    if start == -1 or end == -1 or end < start:
        page = page.rstrip("\n") + "\n\n" + results
    else:
        after = page[end + len(RESULTS_END) :].removeprefix("\n")
        page = page[:start] + results + after
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(page, encoding="utf-8")


def _markdown_table(headers: list[str], rows: list[list[str]]) -> str:
    if not rows:
        return "(none)"
    lines = ["| " + " | ".join(headers) + " |", "|" + "---|" * len(headers)]
    lines += ["| " + " | ".join(row) + " |" for row in rows]
    return "\n".join(lines)
