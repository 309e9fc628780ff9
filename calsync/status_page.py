"""HTML of the status page and its login page, with the stylesheet, the copy script and their CSP.

Every value from a booking, the config or an error message goes through
``html.escape`` before it reaches the markup, because booking titles can
contain markup such as ``<script>``. The stylesheet and the one small script
are inline, and ``CONTENT_SECURITY_POLICY`` allows exactly those two by
their SHA-256 hashes and nothing else. The page works without JavaScript:
the script only adds "Copy" buttons next to the feed URL fields, which are
read-only text fields that can be selected by hand.
"""

from __future__ import annotations

import base64
import hashlib
from datetime import date, datetime
from html import escape
from zoneinfo import ZoneInfo

from calsync import __version__
from calsync.durations import format_duration
from calsync.feeds import (
    ENDED,
    REMOVED,
    STATUS_FILTERED,
    TYPE_FILTERED,
    UNMAPPABLE,
    WITHOUT_DETAILS,
)
from calsync.status_chart import (
    NARROW_LABEL_SIZE,
    NARROW_MARK_SIZE,
    render_chart,
    render_legend,
)
from calsync.status_report import (
    AgendaDay,
    AgendaEvent,
    FeedCoverage,
    FeedSummary,
    RunSummary,
    StatusReport,
    format_age,
    format_size,
    format_time,
)
from calsync.store import TRIGGER_COMMAND, TRIGGER_MANUAL

STYLESHEET = """
:root { color-scheme: light; --text: #1a1a1a; --muted: #555; --line: #d0d0d0; --accent: #1f4e8c; }
* { box-sizing: border-box; }
[hidden] { display: none !important; }
body { margin: 0; font: 16px/1.5 system-ui, -apple-system, "Segoe UI", Roboto, sans-serif; color: var(--text);
  background: #f6f7f9; overflow-wrap: anywhere; }
header, main { max-width: 64rem; margin: 0 auto; padding: 0 1rem; }
header { display: flex; flex-wrap: wrap; align-items: baseline; justify-content: space-between; gap: .5rem; }
h1 { font-size: 1.5rem; margin: 1rem 0 .25rem; }
h2 { font-size: 1.2rem; margin: 0 0 .5rem; }
h3 { font-size: 1.05rem; margin: 0 0 .25rem; }
section, .card { background: #fff; border: 1px solid var(--line); border-radius: 8px; padding: 1rem;
  margin: 0 0 1rem; }
.card > :first-child { margin-top: 0; }
.card > :last-child { margin-bottom: 0; }
a { color: var(--accent); }
.muted { color: var(--muted); }
.health-ok { border-left: 6px solid #1e7b34; }
.health-warning { border-left: 6px solid #9a6200; background: #fffaf0; }
.health-error { border-left: 6px solid #b00020; background: #fff5f5; }
.level { font-weight: 700; }
.notice { border-left: 6px solid var(--accent); }
button, .button { display: inline-block; font: inherit; padding: .45rem .9rem; border-radius: 6px;
  border: 1px solid var(--accent); background: var(--accent); color: #fff; text-decoration: none;
  cursor: pointer; margin: 0 .25rem .4rem 0; }
.button.secondary, button.secondary { background: #fff; color: var(--accent); }
button:focus-visible, .button:focus-visible, input:focus-visible { outline: 3px solid #f0b400; outline-offset: 2px; }
.inline { display: inline; }
.feeds { display: grid; gap: 1rem; grid-template-columns: repeat(auto-fit, minmax(min(100%, 22rem), 1fr)); }
.feeds .card { margin: 0; }
dl { display: grid; grid-template-columns: max-content 1fr; gap: .1rem 1rem; margin: .5rem 0; }
dt { color: var(--muted); }
dd { margin: 0; }
label { display: block; font-weight: 600; margin: .5rem 0 .25rem; }
input[type=text], input[type=password] { width: 100%; font: inherit; padding: .4rem; border: 1px solid #767676;
  border-radius: 4px; }
.copy { display: flex; gap: .4rem; align-items: center; }
.copy input { flex: 1 1 auto; min-width: 0; }
.copy button { margin: 0; flex: none; }
.chart { width: 100%; height: auto; max-width: 48rem; display: block; margin: 0 0 .75rem; }
.chart-legend { display: flex; flex-wrap: wrap; gap: .1rem 1.25rem; margin: 0 0 .25rem; font-size: .9rem; }
.swatch { vertical-align: -1px; }
.failure-mark { color: #b00020; font-weight: 700; }
.table-wrap { overflow-x: auto; }
table { border-collapse: collapse; width: 100%; font-size: .95rem; }
caption { text-align: left; color: var(--muted); padding-bottom: .25rem; }
th, td { text-align: left; padding: .3rem .5rem; border-bottom: 1px solid var(--line); vertical-align: top; }
td.number, th.number { text-align: right; font-variant-numeric: tabular-nums; }
tr.failed td { background: #fff5f5; }
.outcome-failed { color: #b00020; font-weight: 700; }
.outcome-success { color: #1e7b34; }
tr.detail td { font-size: .9rem; border-bottom: 2px solid var(--line); }
@media (max-width: 40rem) {
  #history thead { position: absolute; width: 1px; height: 1px; overflow: hidden; clip-path: inset(50%); }
  #history tr, #history td { display: block; }
  #history tr { border-bottom: 1px solid var(--line); padding: .3rem 0; }
  #history td { border: 0; padding: .05rem .5rem; text-align: left; }
  #history td[data-label]::before { content: attr(data-label) ": "; color: var(--muted); }
}
.agenda { list-style: none; padding: 0; margin: 0; }
.agenda > li { margin: 0 0 .75rem; }
.agenda ul { margin: .25rem 0 0; padding-left: 1.25rem; }
.cancelled .summary { text-decoration: line-through; }
.login { max-width: 26rem; }
footer { max-width: 64rem; margin: 0 auto 2rem; padding: 0 1rem; color: var(--muted); font-size: .9rem; }
""" + (
    # The chart scales with its width, so its text shrinks with the screen; these sizes are in its user units.
    f"@media (max-width: 40rem) {{ .chart .label {{ font-size: {NARROW_LABEL_SIZE}px; }} "
    f".chart .mark {{ font-size: {NARROW_MARK_SIZE}px; }} }}\n"
)

COPY_SCRIPT = """
document.querySelectorAll("button[data-copy]").forEach(function (button) {
  var field = document.getElementById(button.getAttribute("data-copy"));
  var status = document.getElementById(button.getAttribute("data-status"));
  button.hidden = false;
  button.addEventListener("click", function () {
    field.select();
    var done = function () { status.textContent = "Copied"; };
    if (navigator.clipboard && window.isSecureContext) {
      navigator.clipboard.writeText(field.value).then(done, function () { document.execCommand("copy"); done(); });
    } else {
      document.execCommand("copy");
      done();
    }
  });
});
"""


def _csp_hash(source: str) -> str:
    digest = hashlib.sha256(source.encode("utf-8")).digest()
    return "'sha256-" + base64.b64encode(digest).decode("ascii") + "'"


CONTENT_SECURITY_POLICY = (
    f"default-src 'none'; style-src {_csp_hash(STYLESHEET)}; script-src {_csp_hash(COPY_SCRIPT)}; "
    "img-src 'self'; form-action 'self'; frame-ancestors 'none'; base-uri 'none'"
)

QUEUED_NOTICE = (
    "You requested a sync at {time}. It runs in the background and has not finished yet: reload this page "
    "in a few seconds to see it in the history."
)
REFUSED_NOTICE = "The daemon is shutting down, so it did not queue the sync."
TRIGGER_LABELS = {TRIGGER_MANUAL: "manual", TRIGGER_COMMAND: "calsync sync"}
# The feed card's text for the stored bookings a feed leaves out, keyed by the reasons of calsync.feeds.
EXCLUSION_TEXTS = {
    WITHOUT_DETAILS: "{count} have no details yet",
    REMOVED: "{count} were removed in Cashfin",
    STATUS_FILTERED: "{count} have a status not in statuses",
    TYPE_FILTERED: "{count} have a type not in types",
    ENDED: "{count} ended more than {past_days} days ago (past_days)",
    UNMAPPABLE: "{count} could not be turned into events (the log names them)",
}
HISTORY_COLUMNS = ("Started", "Duration", "Requests", "Added", "Changed", "Removed", "Outcome")


def render_status_page(report: StatusReport, csrf_token: str, *, can_sync: bool, notice: str | None = None) -> str:
    """Return the whole status page for a logged-in operator, with ``notice`` above the Sync now button."""
    body = [
        _header(csrf_token),
        "<main>",
        _health(report),
        _sync_controls(report, csrf_token, can_sync, notice),
        _feeds(report),
        _history(report),
        _agenda(report),
        "</main>",
        _footer(report),
        f"<script>{COPY_SCRIPT}</script>",
    ]
    return _document("calsync status", body)


def queued_notice(requested_at: datetime, timezone: ZoneInfo) -> str:
    """Return the notice for a sync requested at ``requested_at`` that has not finished yet."""
    return QUEUED_NOTICE.format(time=format_time(requested_at, timezone))


def render_login_page(message: str | None = None) -> str:
    """Return the login form, with an error message after a failed attempt."""
    alert = f'<p role="alert" class="health-error card">{escape(message)}</p>' if message else ""
    body = [
        '<main class="login">',
        "<h1>calsync status</h1>",
        alert,
        '<form method="post" action="/login" class="card">',
        # Chromium logs a warning for a password form without a username field, and password managers name
        # the saved entry after it. The server ignores the field.
        '<input type="text" name="username" value="admin" autocomplete="username" hidden>',
        '<label for="token">Admin token</label>',
        '<input id="token" name="token" type="password" autocomplete="current-password" required>',
        '<p class="muted">The admin token is <code>server.admin_token</code> in the calsync configuration.</p>',
        "<button type=\"submit\">Log in</button>",
        "</form>",
        "</main>",
    ]
    return _document("Log in · calsync status", body)


def render_message_page(title: str, message: str) -> str:
    """Return a short page with one message and a link to the login form, for rejected form posts."""
    body = [
        '<main class="login">',
        f"<h1>{escape(title)}</h1>",
        f'<p class="card">{escape(message)}</p>',
        '<p><a href="/login">Log in</a></p>',
        "</main>",
    ]
    return _document(f"{title} · calsync status", body)


def _document(title: str, body: list[str]) -> str:
    return "\n".join([
        "<!doctype html>",
        '<html lang="en">',
        "<head>",
        '<meta charset="utf-8">',
        '<meta name="viewport" content="width=device-width, initial-scale=1">',
        f"<title>{escape(title)}</title>",
        f"<style>{STYLESHEET}</style>",
        "</head>",
        "<body>",
        *[part for part in body if part],
        "</body>",
        "</html>",
        "",
    ])


def _footer(report: StatusReport) -> str:
    generated = format_time(report.generated_at, report.timezone)
    zone = f"{report.timezone.key} ({report.generated_at.astimezone(report.timezone):%Z})"
    return (
        f"<footer>calsync {escape(__version__)} · page generated {escape(generated)} · "
        f"times in the business time zone, {escape(zone)}</footer>"
    )


def _header(csrf_token: str) -> str:
    return (
        "<header><h1>calsync status</h1>"
        '<form method="post" action="/logout" class="inline">'
        f'<input type="hidden" name="csrf_token" value="{escape(csrf_token)}">'
        '<button type="submit" class="secondary">Log out</button></form></header>'
    )


def _health(report: StatusReport) -> str:
    health = report.health
    label = {"ok": "OK", "warning": "Warning", "error": "Problem"}[health.level]
    facts = "".join(f"<li>{escape(fact)}</li>" for fact in health.facts)
    fix = f"<p><strong>What to do:</strong> {escape(health.fix)}</p>" if health.fix else ""
    return (
        f'<section class="health health-{health.level}" aria-labelledby="health-heading">'
        f'<h2 id="health-heading"><span class="level">{label}:</span> {escape(health.headline)}</h2>'
        f"<ul>{facts}</ul>{fix}</section>"
    )


def _sync_controls(report: StatusReport, csrf_token: str, can_sync: bool, notice: str | None) -> str:
    parts = ['<section aria-labelledby="sync-heading"><h2 id="sync-heading">Sync</h2>']
    if notice:
        parts.append(f'<p class="notice card" role="status">{escape(notice)}</p>')
    state = "A sync is running now." if report.sync_running else "No sync is running."
    parts.append(f"<p>{state} Syncs run every {escape(format_duration(report.interval))}.</p>")
    if can_sync:
        parts.append(
            '<form method="post" action="/sync">'
            f'<input type="hidden" name="csrf_token" value="{escape(csrf_token)}">'
            '<button type="submit">Sync now</button></form>'
        )
    else:
        parts.append('<p class="muted">Syncing on request is available only under <code>calsync serve</code>.</p>')
    parts.append("</section>")
    return "".join(parts)


# Feeds.


def _feeds(report: StatusReport) -> str:
    cards = "".join(_feed_card(feed, report) for feed in report.feeds)
    return (
        '<section aria-labelledby="feeds-heading"><h2 id="feeds-heading">Feeds</h2>'
        f'{_link_warning(report.link_problems)}<div class="feeds">{cards}</div></section>'
    )


def _link_warning(problems: list[str]) -> str:
    """Explain why the Google Calendar and Outlook buttons cannot work with the current server.public_url."""
    if not problems:
        return ""
    items = "".join(f"<li>{escape(problem)}.</li>" for problem in problems)
    return (
        '<div class="card health-warning" role="note"><p><strong>The Google Calendar and Outlook buttons '
        "cannot work with this address.</strong> Google Calendar and Outlook fetch feeds from their own "
        "servers, which cannot reach it:</p>"
        f"<ul>{items}</ul><p>Set server.public_url to the https address at which the internet reaches this "
        "server, for example through a reverse proxy.</p></div>"
    )


def _feed_card(feed: FeedSummary, report: StatusReport) -> str:
    field_id = f"url-{feed.name}"
    status_id = f"copied-{feed.name}"
    access = "public: no token needed" if feed.public else "private: the URL contains its token"
    return "".join([
        f'<article class="card" aria-labelledby="feed-{escape(feed.name)}">',
        f'<h3 id="feed-{escape(feed.name)}">{escape(feed.title)} <span class="muted">({escape(feed.name)})</span></h3>',
        "<dl>",
        _term("Events", "not published yet" if feed.events is None else str(feed.events)),
        _term("By status", _status_counts(feed.by_status)),
        _term("Bookings", _coverage(feed.coverage, feed.past_days)) if feed.coverage else "",
        _term("Size", "–" if feed.size is None else format_size(feed.size)),
        _term("Last published", _published(feed, report)),
        _term("Access", access),
        "</dl>",
        f'<label for="{escape(field_id)}">Feed URL</label>',
        '<div class="copy">',
        f'<input type="text" id="{escape(field_id)}" value="{escape(feed.links.url)}" readonly>',
        f'<button type="button" class="secondary" data-copy="{escape(field_id)}" '
        f'data-status="{escape(status_id)}" hidden>Copy</button>',
        f'<span id="{escape(status_id)}" role="status" class="muted"></span>',
        "</div>",
        "<p>",
        _link_button(feed.links.google, f"Add {feed.title} to Google Calendar", "Google Calendar"),
        _link_button(feed.links.outlook_personal, f"Add {feed.title} to Outlook.com", "Outlook.com"),
        _link_button(feed.links.outlook_work, f"Add {feed.title} to Outlook for work or school", "Outlook (work)"),
        _link_button(feed.links.webcal, f"Add {feed.title} to Apple Calendar", "Apple Calendar"),
        "</p>",
        "</article>",
    ])


def _term(name: str, value: str) -> str:
    return f"<dt>{escape(name)}</dt><dd>{escape(value)}</dd>"


def _status_counts(by_status: dict[str, int]) -> str:
    if not by_status:
        return "no events"
    return ", ".join(f"{status} {count}" for status, count in by_status.items())


def _coverage(coverage: FeedCoverage, past_days: int) -> str:
    """Say how many stored bookings the feed showed at the last successful sync, and why it left out the rest."""
    stored = f"{coverage.stored} stored at the last successful sync, {coverage.events} in this feed"
    reasons = [
        EXCLUSION_TEXTS.get(reason, "{count} left out: " + reason).format(count=count, past_days=past_days)
        for reason, count in coverage.excluded.items()
        if count
    ]
    if not reasons:
        return stored
    return f"{stored}. Left out: {'; '.join(reasons)}."


def _published(feed: FeedSummary, report: StatusReport) -> str:
    if feed.published_at is None:
        return "never"
    age = format_age(report.generated_at - feed.published_at)
    return f"{format_time(feed.published_at, report.timezone)} ({age}); the file changes only when its events do"


def _link_button(url: str, label: str, text: str) -> str:
    return f'<a class="button secondary" href="{escape(url)}" aria-label="{escape(label)}">{escape(text)}</a>'


# History.


def _history(report: StatusReport) -> str:
    heading = '<h2 id="history-heading">Sync history</h2>'
    if not report.runs:
        return f'<section aria-labelledby="history-heading">{heading}<p>No sync has run yet.</p></section>'

    header = "".join(
        f'<th scope="col"{_number_class(name)}>{name}</th>' for name in HISTORY_COLUMNS
    )
    rows = "".join(_run_rows(run, report.timezone) for run in report.runs)
    return (
        f'<section aria-labelledby="history-heading">{heading}'
        f"{render_legend()}{render_chart(report.runs)}"
        '<div class="table-wrap"><table id="history">'
        f"<caption>The last {len(report.runs)} syncs, newest first. A failed sync shows its error, or points "
        "to the newer sync with the same error.</caption>"
        f"<thead><tr>{header}</tr></thead><tbody>{rows}</tbody></table></div></section>"
    )


def _number_class(column: str) -> str:
    return ' class="number"' if column in ("Duration", "Requests", "Added", "Changed", "Removed") else ""


def _run_rows(run: RunSummary, timezone: ZoneInfo) -> str:
    duration = "–" if run.seconds is None else f"{run.seconds:.2f} s"
    trigger = TRIGGER_LABELS.get(run.trigger or "")
    started = f' <span class="muted">({escape(trigger)})</span>' if trigger else ""
    # data-label names the column for the narrow layout, which shows each run as a block of labelled lines.
    cells = [
        f'<td data-label="Started"><time datetime="{escape(run.started_at.isoformat())}">'
        f"{escape(format_time(run.started_at, timezone))}</time>{started}</td>",
        f'<td class="number" data-label="Duration">{escape(duration)}</td>',
        f'<td class="number" data-label="Requests">{run.requests}</td>',
        f'<td class="number" data-label="Added">{run.added}</td>',
        f'<td class="number" data-label="Changed">{run.changed}</td>',
        f'<td class="number" data-label="Removed">{run.removed}</td>',
        f'<td data-label="Outcome">{_outcome(run)}</td>',
    ]
    row_class = ' class="failed"' if run.outcome == "failed" else ""
    anchor = f' id="{_run_anchor(run)}"' if run.outcome == "failed" and run.repeat_of is None else ""
    rows = [f"<tr{row_class}{anchor}>{''.join(cells)}</tr>"]
    if run.outcome == "failed":
        rows.append(f'<tr class="detail failed"><td colspan="{len(HISTORY_COLUMNS)}">{_failure(run, timezone)}</td></tr>')
    elif run.warnings:
        items = "".join(f"<li>{escape(warning)}</li>" for warning in run.warnings)
        rows.append(f'<tr class="detail"><td colspan="{len(HISTORY_COLUMNS)}"><ul>{items}</ul></td></tr>')
    return "".join(rows)


def _failure(run: RunSummary, timezone: ZoneInfo) -> str:
    """Show the error and what to do, or one line that points at the newer run with the same error."""
    if run.repeat_of is not None:
        newer = run.repeat_of
        return (
            f'Same error as the failed sync at <a href="#{_run_anchor(newer)}">'
            f"{escape(format_time(newer.started_at, timezone))}</a> above."
        )
    error_type = f"{run.error_type}: " if run.error_type else ""
    return (
        f"<strong>Error:</strong> {escape(error_type + (run.error or 'no message'))}"
        f"<br><strong>What to do:</strong> {escape(run.hint or '')}"
    )


def _run_anchor(run: RunSummary) -> str:
    """Return the id of a run's table row. A run not read from the store has no id, so its start time is used."""
    return f"run-{run.id}" if run.id is not None else f"run-{run.started_at.timestamp():.0f}"


def _outcome(run: RunSummary) -> str:
    if run.outcome == "failed":
        return '<span class="outcome-failed">failed</span>'
    if run.outcome != "success":
        return escape(run.outcome)
    published = f"published {', '.join(run.published)}" if run.published else "no feed changed"
    return f'<span class="outcome-success">success</span> <span class="muted">({escape(published)})</span>'


# Agenda.


def _agenda(report: StatusReport) -> str:
    title = report.agenda_feed or "the first feed"
    heading = f'<h2 id="agenda-heading">Next 14 days in {escape(title)}</h2>'
    intro = (
        '<p class="muted">What subscribers of this feed see, read from the published file. '
        "Compare it with the bookings in Cashfin.</p>"
    )
    if not report.agenda:
        return f'<section aria-labelledby="agenda-heading">{heading}{intro}<p>No events in the next 14 days.</p></section>'
    days = "".join(_agenda_day(day) for day in report.agenda)
    return f'<section aria-labelledby="agenda-heading">{heading}{intro}<ol class="agenda">{days}</ol></section>'


def _agenda_day(day: AgendaDay) -> str:
    events = "".join(_agenda_event(event) for event in day.events)
    label = day.day.strftime("%A %d %B %Y")
    return f'<li><h3><time datetime="{day.day.isoformat()}">{escape(label)}</time></h3><ul>{events}</ul></li>'


def _agenda_event(event: AgendaEvent) -> str:
    when = "all day" if event.all_day else _time_range(event.start, event.end)
    location = f' <span class="muted">· {escape(event.location)}</span>' if event.location else ""
    cancelled = " (cancelled)" if event.cancelled else ""
    item_class = ' class="cancelled"' if event.cancelled else ""
    return (
        f"<li{item_class}>{escape(when)} <span class=\"summary\">{escape(event.summary)}</span>"
        f"{escape(cancelled)}{location}</li>"
    )


def _time_range(start: datetime | date, end: datetime | date | None) -> str:
    if not isinstance(start, datetime):
        return "all day"
    if not isinstance(end, datetime):
        return start.strftime("%H:%M")
    if end.date() != start.date():
        return f"{start:%H:%M} – {end:%d %b %H:%M}"
    return f"{start:%H:%M} – {end:%H:%M}"
