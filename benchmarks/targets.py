"""The performance targets, checked against the figures of one run."""

from __future__ import annotations

import math
from dataclasses import dataclass

from benchmarks.results import CHANGED, FIRST_SYNC, NO_CHANGES, BenchmarkRun

REFERENCE_SIZE = 10_000
LARGE_SIZE = 100_000
REFERENCE_LATENCY_MS = 20.0
REFERENCE_CONCURRENCY = 8
PAGE_SIZE = 100
MAX_FIRST_RATIO = 1.3
MAX_INCREMENTAL_RATIO = 1.5
MAX_RENDER_SHARE = 0.10
MAX_PEAK_RSS_BYTES = 500 * 10**6
MIN_NO_CHANGE_SPEEDUP = 100.0
MIN_FIRST_SPEEDUP = 5.0
MAX_SMALL_SIZES_SECONDS = 600.0
SMALL_SIZES = (1_000, 10_000)


@dataclass(frozen=True)
class TargetCheck:
    """One target, what this run measured for it, and whether it was met (None when not measured)."""

    target: str
    measured: str
    met: bool | None


def check_targets(run: BenchmarkRun) -> list[TargetCheck]:
    """Check every target that the run's sizes cover; the others are listed as not measured."""
    return [
        _first_sync(run),
        _no_changes(run),
        _changed(run),
        _render_share(run),
        _large_peak_rss(run),
        _large_ratio(run),
        _speedup(run, NO_CHANGES, MIN_NO_CHANGE_SPEEDUP),
        _speedup(run, FIRST_SYNC, MIN_FIRST_SPEEDUP),
        _duration(run),
    ]


def settings_note(run: BenchmarkRun) -> str:
    """Return a warning when the run's latency or concurrency differ from those the targets assume, else ''."""
    settings = run.settings
    if settings.latency_ms == REFERENCE_LATENCY_MS and settings.concurrency == REFERENCE_CONCURRENCY:
        return ""
    return (
        f"The targets assume {REFERENCE_LATENCY_MS:g} ms latency and concurrency {REFERENCE_CONCURRENCY}; "
        f"this run used {settings.latency_ms:g} ms and {settings.concurrency}."
    )


def _pages(size: int) -> int:
    return math.ceil(size / PAGE_SIZE)


def _not_measured(target: str, size: int) -> TargetCheck:
    return TargetCheck(target, f"not measured: no run at {size:,} bookings", None)


def _first_sync(run: BenchmarkRun) -> TargetCheck:
    target = (
        f"First sync, {REFERENCE_SIZE:,} bookings: {_pages(REFERENCE_SIZE)} list and {REFERENCE_SIZE:,} "
        f"details requests, within {MAX_FIRST_RATIO}x of the null client"
    )
    result = run.scenario(REFERENCE_SIZE, FIRST_SYNC)
    if result is None:
        return _not_measured(target, REFERENCE_SIZE)
    met = (
        result.list_requests == _pages(result.size)
        and result.details_requests == result.size
        and result.ratio <= MAX_FIRST_RATIO
    )
    return TargetCheck(target, _requests_and_ratio(result.list_requests, result.details_requests, result.ratio), met)


def _no_changes(run: BenchmarkRun) -> TargetCheck:
    target = (
        f"No-change sync, {REFERENCE_SIZE:,} bookings: no details requests beyond the refresh budget, "
        f"{_pages(REFERENCE_SIZE)} list requests, within {MAX_INCREMENTAL_RATIO}x of the null client"
    )
    result = run.scenario(REFERENCE_SIZE, NO_CHANGES)
    if result is None:
        return _not_measured(target, REFERENCE_SIZE)
    met = (
        result.list_requests == _pages(result.size)
        and result.details_requests <= result.refresh_budget
        and result.ratio <= MAX_INCREMENTAL_RATIO
    )
    measured = _requests_and_ratio(result.list_requests, result.details_requests, result.ratio)
    return TargetCheck(target, f"{measured} (refresh budget {result.refresh_budget})", met)


def _changed(run: BenchmarkRun) -> TargetCheck:
    target = (
        f"Sync after 1% changed, {REFERENCE_SIZE:,} bookings: details requests equal to the changed "
        f"bookings (plus the refresh budget), within {MAX_INCREMENTAL_RATIO}x of the null client"
    )
    result = run.scenario(REFERENCE_SIZE, CHANGED)
    if result is None:
        return _not_measured(target, REFERENCE_SIZE)
    met = (
        result.changed <= result.details_requests <= result.changed + result.refresh_budget
        and result.ratio <= MAX_INCREMENTAL_RATIO
    )
    measured = _requests_and_ratio(result.list_requests, result.details_requests, result.ratio)
    return TargetCheck(target, f"{measured}, {result.changed} changed", met)


def _render_share(run: BenchmarkRun) -> TargetCheck:
    target = f"Render after 1% changed, {REFERENCE_SIZE:,} bookings: under {MAX_RENDER_SHARE:.0%} of a full render"
    result = run.scenario(REFERENCE_SIZE, CHANGED)
    if result is None:
        return _not_measured(target, REFERENCE_SIZE)
    share = result.render_seconds / result.full_render_seconds if result.full_render_seconds > 0 else float("inf")
    measured = f"{result.render_seconds:.3f} s of {result.full_render_seconds:.3f} s ({share:.1%})"
    return TargetCheck(target, measured, share < MAX_RENDER_SHARE)


def _large_peak_rss(run: BenchmarkRun) -> TargetCheck:
    target = f"Full sync of {LARGE_SIZE:,} bookings: peak RSS under {MAX_PEAK_RSS_BYTES / 10**6:.0f} MB"
    result = run.scenario(LARGE_SIZE, FIRST_SYNC)
    if result is None:
        return _not_measured(target, LARGE_SIZE)
    return TargetCheck(target, f"{result.peak_rss / 10**6:.0f} MB", result.peak_rss < MAX_PEAK_RSS_BYTES)


def _large_ratio(run: BenchmarkRun) -> TargetCheck:
    target = f"No-change sync of {LARGE_SIZE:,} bookings: ratio to the null client no worse than at {REFERENCE_SIZE:,}"
    large = run.scenario(LARGE_SIZE, NO_CHANGES)
    reference = run.scenario(REFERENCE_SIZE, NO_CHANGES)
    if large is None or reference is None:
        return _not_measured(target, LARGE_SIZE if large is None else REFERENCE_SIZE)
    measured = f"{large.ratio:.2f}x at {LARGE_SIZE:,}, {reference.ratio:.2f}x at {REFERENCE_SIZE:,}"
    return TargetCheck(target, measured, large.ratio <= reference.ratio)


def _speedup(run: BenchmarkRun, scenario: str, minimum: float) -> TargetCheck:
    target = f"Against the hand-written script, {REFERENCE_SIZE:,} bookings: at least {minimum:.0f}x faster ({scenario})"
    result = run.scenario(REFERENCE_SIZE, scenario)
    baseline = run.baseline(REFERENCE_SIZE)
    if result is None or baseline is None:
        return _not_measured(target, REFERENCE_SIZE)
    speedup = baseline.seconds / result.seconds
    measured = f"{speedup:.1f}x ({baseline.seconds:.1f} s against {result.seconds:.2f} s)"
    return TargetCheck(target, measured, speedup >= minimum)


def _duration(run: BenchmarkRun) -> TargetCheck:
    target = f"The benchmark at 1,000 and 10,000 bookings: under {MAX_SMALL_SIZES_SECONDS / 60:.0f} minutes"
    if not set(SMALL_SIZES) <= set(run.size_seconds):
        return TargetCheck(target, "not measured: no run at both sizes", None)
    # The serving part counts too, because it runs by default.
    seconds = sum(run.size_seconds[size] for size in SMALL_SIZES) + run.serving_seconds
    return TargetCheck(target, f"{seconds / 60:.1f} minutes", seconds < MAX_SMALL_SIZES_SECONDS)


def _requests_and_ratio(list_requests: int, details_requests: int, ratio: float) -> str:
    return f"{list_requests} list, {details_requests:,} details, {ratio:.2f}x"
