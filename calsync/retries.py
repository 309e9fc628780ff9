"""Retries of transient API failures: bounded per request, and a back-off shared by a pool of workers.

``BoundedRetry`` is urllib3's ``Retry`` with a budget of seconds on top of
its count. The client keeps one per request, calls ``increment`` after each
transient failure and takes the wait before the next attempt from it.

``PoolBackoff`` is shared by every worker of one client. A 429 pauses the
whole pool for the response's ``Retry-After`` (or an exponential backoff
without one) and halves the number of requests allowed in flight. Each run
of successes as long as that limit raises it by one again, up to the pool's
size. This is additive increase and multiplicative decrease, as in TCP
congestion control. When 429s go on past the retry budget in count or in
seconds with no success in between, the pool gives up and sends nothing
more.
"""

from __future__ import annotations

import logging
import threading
import time
from typing import Any

from urllib3.exceptions import InvalidHeader, MaxRetryError
from urllib3.response import BaseHTTPResponse
from urllib3.util.retry import Retry

log = logging.getLogger(__name__)


class BoundedRetry(Retry):
    """urllib3's ``Retry`` with a budget of seconds on top of its counts.

    The clock starts at the first failure of a request. Once the budget is
    spent no further attempt is made, and no single wait (backoff or
    ``Retry-After``) runs past the budget's end.
    """

    def __init__(self, *args: Any, budget: float = 60.0, started: float | None = None, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.budget = budget
        self.started = started

    def new(self, **kw: Any) -> BoundedRetry:
        kw.setdefault("budget", self.budget)
        kw.setdefault("started", self.started if self.started is not None else time.monotonic())
        return super().new(**kw)

    def remaining(self) -> float:
        """Return the seconds left in the budget; the whole budget before the first failure."""
        if self.started is None:
            return self.budget
        return self.budget - (time.monotonic() - self.started)

    def deadline(self) -> float | None:
        """Return the ``time.monotonic()`` value at which the budget ends, or None before the first failure."""
        if self.started is None:
            return None
        return self.started + self.budget

    def is_exhausted(self) -> bool:
        return super().is_exhausted() or self.remaining() <= 0

    def get_backoff_time(self) -> float:
        return max(0.0, min(super().get_backoff_time(), self.remaining()))

    def parse_retry_after(self, retry_after: str) -> float:
        return max(0.0, min(super().parse_retry_after(retry_after), self.remaining()))

    def next_delay(self, response: BaseHTTPResponse | None) -> float | None:
        """Return the seconds to wait before the next attempt, or None to give up now.

        A ``Retry-After`` header sets the wait. When it requests a longer wait
        than the budget has left, the retry would come too late to be allowed,
        so this returns None. Without the header the wait is the exponential
        backoff.
        """
        retry_after = _header_seconds(self, response)
        if retry_after is None:
            return self.get_backoff_time()
        if retry_after > self.remaining():
            return None
        return retry_after


def _header_seconds(retry: Retry, response: BaseHTTPResponse | None) -> float | None:
    """Return the uncapped ``Retry-After`` of ``response`` in seconds, or None if it has none or an invalid one."""
    if response is None or not retry.respect_retry_after_header:
        return None
    header = response.headers.get("Retry-After")
    if header is None:
        return None
    try:
        return Retry.parse_retry_after(retry, header)
    except InvalidHeader:
        log.warning("ignoring invalid Retry-After header %r", header)
        return None


class PoolBackoff:
    """The pause and the limit on requests in flight that every worker of one client obeys.

    Each attempt calls ``acquire`` first and ``release`` after. An attempt
    that gets a 429 response calls ``record_rate_limit`` with the epoch that
    ``acquire`` returned. The epoch counts the 429s the pool has reacted to,
    so the 429s of requests that were already in flight when the pool paused
    do not shrink it again. ``policy`` bounds the run of such reactions with
    no success in between, in count and in seconds, as it bounds the retries
    of one request.
    """

    def __init__(self, size: int, policy: BoundedRetry) -> None:
        self.size = max(1, size)
        self.limit = self.size
        self.gave_up = False
        self.rate_limit_events = 0
        self._policy = policy
        self._run = policy
        self._condition = threading.Condition()
        self._in_flight = 0
        self._paused = False
        self._epoch = 0
        self._successes = 0

    def acquire(self, deadline: float | None = None, probe: bool = False) -> int | None:
        """Wait until the pool is not paused and has a free slot; return the current epoch.

        ``probe`` is for the worker that paused the pool: its retry goes out
        while the pause lasts, and the pool resumes when that worker calls
        ``resume``. Returns None without taking a slot when the pool gave up,
        or when ``deadline`` (a ``time.monotonic()`` value) passes first.
        """
        with self._condition:
            while True:
                if self.gave_up:
                    return None
                if (probe or not self._paused) and self._in_flight < self.limit:
                    self._in_flight += 1
                    return self._epoch

                timeout = None
                if deadline is not None:
                    timeout = deadline - time.monotonic()
                    if timeout <= 0:
                        return None
                self._condition.wait(timeout)

    def release(self) -> None:
        """Free the slot taken by ``acquire``."""
        with self._condition:
            self._in_flight -= 1
            self._condition.notify()

    def record_success(self) -> None:
        """End the run of 429s and, after as many successes as the limit, raise the limit by one."""
        with self._condition:
            self._run = self._policy
            self._successes += 1
            if self._successes >= self.limit and self.limit < self.size:
                self.limit += 1
                self._successes = 0
                self._condition.notify()

    def record_rate_limit(self, epoch: int, url: str, response: BaseHTTPResponse) -> float:
        """React to a 429 on an attempt sent in ``epoch`` and return the seconds to pause.

        When the pause is above 0 the pool is paused, and the caller owns
        the pause: it sleeps that long outside any slot, sends its retry
        with ``acquire(probe=True)`` and calls ``resume`` once that retry
        gets a response, unless the response is another 429 that pauses the
        pool again. A 429 of an earlier epoch belongs to a reaction already under
        way and returns 0. When the run of 429s exceeds the policy, the pool
        gives up, every waiting request returns from ``acquire`` with None,
        and this returns 0.
        """
        with self._condition:
            if epoch != self._epoch or self.gave_up:
                return 0.0
            self._epoch += 1
            self.rate_limit_events += 1
            self._successes = 0
            self.limit = max(1, self.limit // 2)
            try:
                self._run = self._run.increment("GET", url, response=response)
            except MaxRetryError:
                self._give_up(url, len(self._run.history) + 1)
                return 0.0

            retry_after = _header_seconds(self._run, response)
            if retry_after is None:
                pause = self._run.get_backoff_time()
            else:
                pause = max(0.0, min(retry_after, self._run.remaining()))
            self._paused = pause > 0
            log.warning(
                "rate limited (HTTP 429) on GET %s: pausing all requests for %.2f s, at most %d in flight after",
                _strip_query(url), pause, self.limit,
            )
            return pause

    def resume(self) -> None:
        """End the pause that ``record_rate_limit`` started, so that every worker may send again."""
        with self._condition:
            self._paused = False
            self._condition.notify_all()

    def _give_up(self, url: str, in_a_row: int) -> None:
        self.gave_up = True
        self._paused = False
        self._condition.notify_all()
        log.error(
            "rate limited (HTTP 429) on GET %s %d times in a row without a success, past the retry budget; "
            "sending no more requests",
            _strip_query(url), in_a_row,
        )


def _strip_query(url: str) -> str:
    return url.split("?", 1)[0]
