"""An inline SVG chart of recent syncs: changes as bars, duration as a line, failures as marks.

The chart uses presentation attributes rather than ``style`` attributes, so
the page's Content-Security-Policy needs no ``'unsafe-inline'`` for it. It
carries a title and a text summary for screen readers; the history table
beside it has the same numbers.
"""

from __future__ import annotations

from collections.abc import Sequence
from html import escape

from calsync.status_report import RunSummary

WIDTH = 600
HEIGHT = 180
# Room for the axis labels on the left and right, the legend on top and the failure marks below.
LEFT, RIGHT, TOP, BOTTOM = 44, 44, 28, 22
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

    parts = [
        f'<svg class="chart" viewBox="0 0 {WIDTH} {HEIGHT}" role="img" '
        'aria-labelledby="chart-title chart-summary" xmlns="http://www.w3.org/2000/svg">',
        '<title id="chart-title">Changes and duration of recent syncs</title>',
        f'<desc id="chart-summary">{escape(_summary(ordered, max_changes, max_seconds))}</desc>',
        *_axes(plot_width, plot_height, max_changes, max_seconds),
        *_bars(ordered, slot, plot_height, max_changes),
        _duration_line(ordered, slot, plot_height, max_seconds),
        *_failure_marks(ordered, slot),
        *_legend(),
        "</svg>",
    ]
    return "\n".join(part for part in parts if part)


def _changes(run: RunSummary) -> int:
    return run.added + run.changed + run.removed


def _summary(ordered: list[RunSummary], max_changes: int, max_seconds: float) -> str:
    failed = sum(1 for run in ordered if run.outcome == "failed")
    return (
        f"{len(ordered)} syncs, oldest on the left. At most {max_changes} changes and at most "
        f"{max_seconds:.2f} seconds in one sync. {failed} failed."
    )


def _axes(plot_width: float, plot_height: float, max_changes: int, max_seconds: float) -> list[str]:
    bottom = TOP + plot_height
    return [
        f'<line x1="{LEFT}" y1="{bottom}" x2="{LEFT + plot_width}" y2="{bottom}" stroke="{AXIS_COLOR}"/>',
        f'<text x="{LEFT - 4}" y="{TOP + 4}" text-anchor="end" font-size="11" fill="{CHANGES_COLOR}">'
        f"{max_changes}</text>",
        f'<text x="{LEFT - 4}" y="{bottom}" text-anchor="end" font-size="11" fill="{CHANGES_COLOR}">0</text>',
        f'<text x="{LEFT + plot_width + 4}" y="{TOP + 4}" font-size="11" fill="{DURATION_COLOR}">'
        f"{max_seconds:.1f}s</text>",
        f'<text x="{LEFT + plot_width + 4}" y="{bottom}" font-size="11" fill="{DURATION_COLOR}">0s</text>',
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


def _duration_line(ordered: list[RunSummary], slot: float, plot_height: float, max_seconds: float) -> str:
    points = []
    for index, run in enumerate(ordered):
        x = LEFT + index * slot + slot / 2
        y = TOP + plot_height - plot_height * (run.seconds or 0.0) / max_seconds
        points.append(f"{x:.1f},{y:.1f}")
    if len(points) == 1:
        x, y = points[0].split(",")
        return f'<circle cx="{x}" cy="{y}" r="3" fill="{DURATION_COLOR}"/>'
    return f'<polyline points="{" ".join(points)}" fill="none" stroke="{DURATION_COLOR}" stroke-width="2"/>'


def _failure_marks(ordered: list[RunSummary], slot: float) -> list[str]:
    marks = []
    y = HEIGHT - BOTTOM + 14
    for index, run in enumerate(ordered):
        if run.outcome == "failed":
            x = LEFT + index * slot + slot / 2
            marks.append(f'<text x="{x:.1f}" y="{y}" text-anchor="middle" font-size="13" '
                         f'font-weight="bold" fill="{FAILURE_COLOR}">✕</text>')
    return marks


def _legend() -> list[str]:
    return [
        f'<rect x="{LEFT}" y="6" width="12" height="12" fill="{CHANGES_COLOR}"/>',
        f'<text x="{LEFT + 16}" y="16" font-size="12" fill="#1a1a1a">changes (added + changed + removed)</text>',
        f'<line x1="{LEFT + 300}" y1="12" x2="{LEFT + 318}" y2="12" stroke="{DURATION_COLOR}" stroke-width="2"/>',
        f'<text x="{LEFT + 322}" y="16" font-size="12" fill="#1a1a1a">duration</text>',
        f'<text x="{LEFT + 390}" y="16" font-size="12" font-weight="bold" fill="{FAILURE_COLOR}">✕</text>',
        f'<text x="{LEFT + 404}" y="16" font-size="12" fill="#1a1a1a">failed</text>',
    ]
