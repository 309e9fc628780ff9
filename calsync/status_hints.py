"""The advice that the status page gives an operator after a failed sync.

``ERROR_HINTS`` gives the next step for each error class that ends a sync.
``failure_hint`` picks the hint for the newest failed run. An incomplete
listing once is expected, because bookings can change while calsync pages
through them. When the last ``REPEATS_FOR_SUPPORT`` syncs all failed that
way, that explanation no longer fits, so the hint turns into what to report
to Cashfin support, with the numbers of the newest of those syncs.
"""

from __future__ import annotations

import re
from zoneinfo import ZoneInfo

from calsync.cashfin import LIST_PATH
from calsync.store import RunRecord

LISTING_INCOMPLETE = "ListingIncompleteError"
# Failed syncs in a row with an incomplete listing after which the page stops calling it a one-off.
REPEATS_FOR_SUPPORT = 3

# The operator's next step after a failed sync, keyed by the class name of the error that ended it.
ERROR_HINTS = {
    "AuthenticationError": (
        "Cashfin rejected the client secret. Check cashfin.client_secret (or CASHFIN_CLIENT_SECRET, or the file "
        "named by cashfin.client_secret_file), then run 'calsync check' to test it with one request."
    ),
    "TransportError": (
        "calsync got no response from Cashfin. Check cashfin.base_url and that this host can reach it "
        "(DNS, firewall, proxy). The next sync tries again."
    ),
    "ApiError": (
        "Cashfin responded with an error or a body that is not the expected JSON. The message shows what came "
        "back. If it repeats, check cashfin.base_url and whether Cashfin reports an outage."
    ),
    "NotFoundError": (
        "Cashfin returned 404 for a request that should exist. Check that cashfin.base_url points at the "
        "Cashfin API and not at another server."
    ),
    "ListingIncompleteError": (
        "The booking list did not add up to the pagination.total that Cashfin reported, so calsync published "
        "nothing rather than drop events, and subscribers keep the last good feeds. Bookings changing during "
        "the listing cause this once, and the next sync usually succeeds. If it fails the same way "
        f"{REPEATS_FOR_SUPPORT} times in a row, this page says what to report to Cashfin support."
    ),
    "PublishError": (
        "calsync could not write the feed file named in the message. Check free disk space and that the "
        "calsync user may write to sync.state_dir. Subscribers keep getting the previous file."
    ),
    "StateError": (
        "calsync could not use its state database. The message names the file and the problem, such as a "
        "full disk or missing write permission on sync.state_dir."
    ),
    "CorruptStateError": (
        "The state database is damaged. The next sync moves it aside and rebuilds it from Cashfin."
    ),
    "SyncCancelledError": "The daemon was shutting down, so this sync stopped before publishing. Nothing is wrong.",
}
UNKNOWN_ERROR_HINT = (
    "calsync does not know this error. Its log has the full message and, for an unexpected error, a traceback."
)
LOCK_HINT = (
    "Another process holds the sync lock of sync.state_dir: usually a 'calsync sync' started by cron next to "
    "this daemon, or one that hangs. Stop the other process, or remove the cron job, since the daemon syncs "
    "on its own."
)

# The start of the listing problem that calsync.cashfin records for a page request that failed.
_FAILED_PAGE = re.compile(r"page \d+ failed")
KEEPS_SERVING = "Meanwhile calsync keeps serving the feeds of the last good sync and deletes no event."


def hint_for(error_type: str | None) -> str:
    """Return the generic next step for a failed run whose error has class name ``error_type``."""
    return ERROR_HINTS.get(error_type or "", UNKNOWN_ERROR_HINT)


def failure_hint(decisive: list[RunRecord], timezone: ZoneInfo) -> str:
    """Return the next step for the newest of ``decisive``, the failed runs and successes, newest first.

    It is the support request of ``listing_support_advice`` after
    ``REPEATS_FOR_SUPPORT`` incomplete listings in a row, else the hint for
    the newest run's error class.
    """
    streak = listing_failure_streak(decisive)
    if streak >= REPEATS_FOR_SUPPORT:
        return listing_support_advice(decisive[0], streak, timezone)
    return hint_for(decisive[0].error_type if decisive else None)


def listing_failure_streak(decisive: list[RunRecord]) -> int:
    """Count the newest runs of ``decisive`` (newest first) that all failed with an incomplete listing."""
    streak = 0
    for run in decisive:
        if run.outcome != "failed" or run.error_type != LISTING_INCOMPLETE:
            break
        streak += 1
    return streak


def listing_support_advice(run: RunRecord, streak: int, timezone: ZoneInfo) -> str:
    """Say that ``streak`` incomplete listings in a row are no one-off, and what to give Cashfin support.

    The numbers come from ``run``'s stats. Runs stored by older calsync
    versions lack them, so the advice then points at the error message,
    which contains pagination.total and the unique bookings received.
    """
    when = run.started_at.astimezone(timezone).strftime("%Y-%m-%d %H:%M %Z")
    opening = f"This is not a one-off: the last {streak} syncs all found the booking list incomplete."
    stats = run.stats
    problems = [str(problem) for problem in stats.get("listing_problems", [])]
    page_size = int(stats.get("page_size", 0))
    request = f"GET {LIST_PATH}?limit={page_size}" if page_size else f"GET {LIST_PATH}"

    failed_pages = [problem for problem in problems if _FAILED_PAGE.match(problem)]
    if failed_pages:
        return (
            f"{opening} Requests for pages of it failed each time: {'; '.join(failed_pages)}. If that error "
            f"came from Cashfin, give Cashfin support the request ({request}), the page numbers and the time "
            f"of the sync, {when}. If there was no response, check that this host can reach cashfin.base_url. "
            f"{KEEPS_SERVING}"
        )

    cause = (
        "Cashfin's pagination is inconsistent, for example pagination.total is larger than the rows its pages "
        "return, or rows repeat across pages."
    )
    if "listing_total" in stats:
        numbers = (
            f"Give Cashfin support these numbers from the sync at {when}: {request} reported pagination.total "
            f"{int(stats['listing_total'])}, and its {int(stats.get('pages', 0))} page(s) returned "
            f"{int(stats.get('listing_received', 0))} unique bookings."
        )
    else:
        numbers = (
            f"Give Cashfin support the numbers in the error message (pagination.total and the unique bookings "
            f"received), the request ({request}) and the time of the sync, {when}."
        )
    return f"{opening} {cause} {numbers} {KEEPS_SERVING}"
