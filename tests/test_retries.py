"""The retry policy and the pool back-off on their own, without HTTP."""

import threading
import time

from urllib3.response import HTTPResponse

from calsync.retries import BoundedRetry, PoolBackoff

URL = "http://127.0.0.1:9/business/booking/details/a"


def policy(retries: int = 4, budget: float = 60.0) -> BoundedRetry:
    return BoundedRetry(total=retries, backoff_factor=0.01, respect_retry_after_header=True, budget=budget)


def too_many_requests(retry_after: str | None = "0") -> HTTPResponse:
    headers = {"Retry-After": retry_after} if retry_after is not None else {}
    return HTTPResponse(body=b"", status=429, headers=headers)


def test_rate_limit_halves_limit_once_per_epoch():
    backoff = PoolBackoff(8, policy())
    epochs = [backoff.acquire() for _ in range(3)]

    backoff.record_rate_limit(epochs[0], URL, too_many_requests())
    backoff.record_rate_limit(epochs[1], URL, too_many_requests())

    # The second 429 was sent before the pool reacted to the first, so it does not halve again.
    assert backoff.limit == 4
    assert backoff.rate_limit_events == 1


def test_successes_raise_limit_by_one():
    backoff = PoolBackoff(8, policy())
    backoff.record_rate_limit(backoff.acquire(), URL, too_many_requests())
    backoff.release()

    for _ in range(3):
        backoff.record_success()
    assert backoff.limit == 4
    backoff.record_success()
    assert backoff.limit == 5


def test_limit_never_below_one_or_above_size():
    backoff = PoolBackoff(2, policy(retries=10))
    for _ in range(4):
        epoch = backoff.acquire()
        backoff.release()
        backoff.record_rate_limit(epoch, URL, too_many_requests())
    assert backoff.limit == 1

    for _ in range(20):
        backoff.record_success()
    assert backoff.limit == 2


def test_retry_after_sets_pause_capped_by_budget():
    backoff = PoolBackoff(4, policy(budget=5.0))

    pause = backoff.record_rate_limit(backoff.acquire(), URL, too_many_requests("3600"))

    assert 4.0 < pause <= 5.0


def test_pause_without_retry_after_grows():
    backoff = PoolBackoff(4, BoundedRetry(total=10, backoff_factor=0.5, budget=60.0))
    pauses = []
    for _ in range(3):
        epoch = backoff.acquire()
        backoff.release()
        pauses.append(backoff.record_rate_limit(epoch, URL, too_many_requests(None)))
        backoff.resume()

    # urllib3's backoff: none before the first retry, then backoff_factor * 2 ** (n - 1).
    assert pauses == [0.0, 1.0, 2.0]


def test_paused_pool_blocks_others_but_not_probe():
    backoff = PoolBackoff(4, policy())
    epoch = backoff.acquire()
    backoff.release()
    backoff.record_rate_limit(epoch, URL, too_many_requests("30"))
    acquired = threading.Event()

    def other_worker() -> None:
        if backoff.acquire() is not None:
            acquired.set()
            backoff.release()

    worker = threading.Thread(target=other_worker)
    worker.start()

    assert backoff.acquire(probe=True) is not None
    backoff.release()
    assert not acquired.is_set()
    backoff.resume()
    worker.join(5)
    assert acquired.is_set()


def test_deadline_ends_wait_for_paused_pool():
    backoff = PoolBackoff(4, policy())
    backoff.record_rate_limit(backoff.acquire(), URL, too_many_requests("30"))
    backoff.release()

    assert backoff.acquire(deadline=time.monotonic() + 0.05) is None


def test_gives_up_after_run_of_rate_limits():
    backoff = PoolBackoff(4, policy(retries=2))
    waiting: list[int | None] = []
    for _ in range(2):
        epoch = backoff.acquire()
        backoff.release()
        backoff.record_rate_limit(epoch, URL, too_many_requests())
    assert not backoff.gave_up

    # The limit is down to 1 and taken, so the waiter blocks until the pool gives up.
    epoch = backoff.acquire()
    waiter = threading.Thread(target=lambda: waiting.append(backoff.acquire()))
    waiter.start()
    backoff.record_rate_limit(epoch, URL, too_many_requests())
    waiter.join(5)

    assert backoff.gave_up
    assert waiting == [None]
    assert backoff.acquire() is None


def test_success_resets_run_of_rate_limits():
    backoff = PoolBackoff(4, policy(retries=1))
    for _ in range(5):
        epoch = backoff.acquire()
        backoff.release()
        backoff.record_rate_limit(epoch, URL, too_many_requests())
        backoff.record_success()

    assert not backoff.gave_up
