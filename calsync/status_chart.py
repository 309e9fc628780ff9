"""An inline SVG chart of recent syncs: changes as bars, duration as a line, failures as marks.

The chart uses presentation attributes rather than ``style`` attributes, so
the page's Content-Security-Policy needs no ``'unsafe-inline'`` for it. It
carries a title and a text summary for screen readers; the history table
beside it has the same numbers. Its legend is HTML (``render_legend``), so
that it wraps on a narrow screen. The page's stylesheet enlarges the axis
labels there, because the SVG shrinks with the screen; the margins leave
room for labels of ``NARROW_LABEL_SIZE`` user units.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from html import escape

from calsync.status_report import RunSummary

WIDTH = 600
HEIGHT = 170
# Font sizes in user units: on a wide screen, and as the page's stylesheet sets them on a narrow one.
LABEL_SIZE = 11
NARROW_LABEL_SIZE = 22
MARK_SIZE = 13
NARROW_MARK_SIZE = 18
# Room for the axis labels on the left and right, the top label and the failure marks below.
LEFT, RIGHT, TOP, BOTTOM = 68, 68, 18, 30
CHANGES_COLOR = "#5b7fb5"
DURATION_COLOR = "#a3471f"
FAILURE_COLOR = "#b00020"
AXIS_COLOR = "#6b6b6b"


def render_chart(runs: Sequence[RunSummary]) -> str:
    """Return an ``<svg>`` element for ``runs``, given newest first as the history lists them, or "" without runs."""
    if not runs:
        return ""
    ordered = list(reversed(runs))
    plot_width = WIDTH - LEFT - RIGHT
    plot_height = HEIGHT - TOP - BOTTOM
    slot = plot_width / len(ordered)
    max_changes = max(1, max(_changes(run) for run in ordered))
    max_seconds = max(0.001, max(run.seconds or 0.0 for run in ordered))
    # The duration axis ends at a round value at or above the longest sync, so that its label is exact.
    axis_seconds = nice_ceiling(max_seconds)

    parts = [
        f'<svg class="chart" viewBox="0 0 {WIDTH} {HEIGHT}" role="img" '
        'aria-labelledby="chart-title chart-summary" xmlns="http://www.w3.org/2000/svg">',
        '<title id="chart-title">Changes and duration of recent syncs</title>',
        f'<desc id="chart-summary">{escape(_summary(ordered, max_changes, max_seconds))}</desc>',
        *_axes(plot_width, plot_height, max_changes, axis_seconds),
        *_bars(ordered, slot, plot_height, max_changes),
        _duration_line(ordered, slot, plot_height, axis_seconds),
        *_failure_marks(ordered, slot),
        "</svg>",
    ]
    return "\n".join(part for part in parts if part)


def render_legend() -> str:
    """Return the chart's legend as an HTML paragraph, with small SVG swatches in the chart's colours."""
    changes = f'<rect width="12" height="12" fill="{CHANGES_COLOR}"/>'
    duration = f'<line x1="0" y1="6" x2="12" y2="6" stroke="{DURATION_COLOR}" stroke-width="2"/>'
    return (
        '<p class="chart-legend">'
        f"<span>{_swatch(changes)} changes (added + changed + removed)</span> "
        f"<span>{_swatch(duration)} duration</span> "
        f'<span><span class="failure-mark">✕</span> failed</span></p>'
    )


def _swatch(shape: str) -> str:
    return f'<svg class="swatch" viewBox="0 0 12 12" width="12" height="12" aria-hidden="true">{shape}</svg>'


def nice_ceiling(value: float) -> float:
    """Round a positive ``value`` up to 1, 2, 2.5 or 5 times a power of ten, such as 1.65 up to 2."""
    power = 10.0 ** math.floor(math.log10(value))
    for step in (1, 2, 2.5, 5, 10):
        # round() drops the float error of step * power, such as 0.30000000000000004.
        ceiling = round(step * power, 12)
        if ceiling >= value:
            return ceiling
    return round(10 * power, 12)


def _changes(run: RunSummary) -> int:
    return run.added + run.changed + run.removed


def _summary(ordered: list[RunSummary], max_changes: int, max_seconds: float) -> str:
    failed = sum(1 for run in ordered if run.outcome == "failed")
    return (
        f"{len(ordered)} syncs, oldest on the left. At most {max_changes} changes and at most "
        f"{max_seconds:.2f} seconds in one sync. {failed} failed."
    )


def _axes(plot_width: float, plot_height: float, max_changes: int, axis_seconds: float) -> list[str]:
    bottom = TOP + plot_height
    left = f'x="{LEFT - 4}" text-anchor="end" font-size="{LABEL_SIZE}" fill="{CHANGES_COLOR}"'
    right = f'x="{LEFT + plot_width + 4}" font-size="{LABEL_SIZE}" fill="{DURATION_COLOR}"'
    return [
        f'<line x1="{LEFT}" y1="{bottom}" x2="{LEFT + plot_width}" y2="{bottom}" stroke="{AXIS_COLOR}"/>',
        f'<text class="label" y="{TOP + 4}" {left}>{max_changes}</text>',
        f'<text class="label" y="{bottom}" {left}>0</text>',
        f'<text class="label" y="{TOP + 4}" {right}>{axis_seconds:g}s</text>',
        f'<text class="label" y="{bottom}" {right}>0s</text>',
    ]


def _bars(ordered: list[RunSummary], slot: float, plot_height: float, max_changes: int) -> list[str]:
    bars = []
    bar_width = max(1.0, slot * 0.6)
    for index, run in enumerate(ordered):
        height = plot_height * _changes(run) / max_changes
        x = LEFT + index * slot + (slot - bar_width) / 2
        y = TOP + plot_height - height
        bars.append(
            f'<rect x="{x:.1f}" y="{y:.1f}" width="{bar_width:.1f}" height="{height:.1f}" fill="{CHANGES_COLOR}"/>'
        )
    return bars


def _duration_line(ordered: list[RunSummary], slot: float, plot_height: float, axis_seconds: float) -> str:
    points = []
    for index, run in enumerate(ordered):
        x = LEFT + index * slot + slot / 2
        y = TOP + plot_height - plot_height * (run.seconds or 0.0) / axis_seconds
        points.append(f"{x:.1f},{y:.1f}")
    if len(points) == 1:
        x, y = points[0].split(",")
        return f'<circle cx="{x}" cy="{y}" r="3" fill="{DURATION_COLOR}"/>'
    return f'<polyline points="{" ".join(points)}" fill="none" stroke="{DURATION_COLOR}" stroke-width="2"/>'


def _failure_marks(ordered: list[RunSummary], slot: float) -> list[str]:
    marks = []
    y = HEIGHT - BOTTOM + 20
    for index, run in enumerate(ordered):
        if run.outcome == "failed":
            x = LEFT + index * slot + slot / 2
            marks.append(f'<text class="mark" x="{x:.1f}" y="{y}" text-anchor="middle" font-size="{MARK_SIZE}" '
                         f'font-weight="bold" fill="{FAILURE_COLOR}">✕</text>')
    return marks
