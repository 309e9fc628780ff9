"""The Prometheus metrics, read back through prometheus_client's own text parser."""

from __future__ import annotations

from datetime import UTC, datetime

from prometheus_client import CONTENT_TYPE_LATEST
from prometheus_client.parser import text_string_to_metric_families

from calsync.engine import SyncStats
from calsync.metrics import Metrics, api_request_counts, count_bookings_by_status
from calsync.store import StoredBooking

FINISHED = datetime(2026, 1, 15, 8, 0, 30, tzinfo=UTC)


def samples(metrics: Metrics) -> dict[tuple[str, frozenset[tuple[str, str]]], float]:
    """Parse ``metrics.render()`` into {(sample name, labels): value}."""
    body, _ = metrics.render()
    parsed = {}
    for family in text_string_to_metric_families(body.decode("utf-8")):
        for sample in family.samples:
            parsed[(sample.name, frozenset(sample.labels.items()))] = sample.value
    return parsed


def value(metrics: Metrics, name: str, **labels: str) -> float | None:
    return samples(metrics).get((name, frozenset(labels.items())))


def example_stats() -> SyncStats:
    return SyncStats(
        seconds=1.5,
        api_requests={"list 200": 3, "details 200": 10, "details 404": 1},
        events={"bookings": 12, "public": 7},
    )


def test_fresh_metrics_show_zero_runs() -> None:
    metrics = Metrics()

    assert value(metrics, "calsync_sync_runs_total", outcome="success") == 0
    assert value(metrics, "calsync_sync_runs_total", outcome="failed") == 0
    assert value(metrics, "calsync_sync_duration_seconds_count") == 0
    assert value(metrics, "calsync_last_success_timestamp_seconds") == 0


def test_render_returns_prometheus_content_type() -> None:
    body, content_type = Metrics().render()

    assert content_type == CONTENT_TYPE_LATEST
    assert b"# TYPE calsync_sync_runs_total counter" in body


def test_instances_have_separate_registries() -> None:
    first = Metrics()
    second = Metrics()

    first.observe_feed_request(200)

    assert value(first, "calsync_feed_requests_total", code="200") == 1
    assert value(second, "calsync_feed_requests_total", code="200") is None


def test_success_records_every_series() -> None:
    metrics = Metrics()

    metrics.observe_sync_success(example_stats(), {"scheduled": 4, "completed": 2}, FINISHED)

    assert value(metrics, "calsync_sync_runs_total", outcome="success") == 1
    assert value(metrics, "calsync_sync_runs_total", outcome="failed") == 0
    assert value(metrics, "calsync_sync_duration_seconds_count") == 1
    assert value(metrics, "calsync_sync_duration_seconds_sum") == 1.5
    assert value(metrics, "calsync_sync_duration_seconds_bucket", le="1.0") == 0
    assert value(metrics, "calsync_sync_duration_seconds_bucket", le="2.5") == 1
    assert value(metrics, "calsync_last_success_timestamp_seconds") == FINISHED.timestamp()
    assert value(metrics, "calsync_bookings", status="scheduled") == 4
    assert value(metrics, "calsync_bookings", status="completed") == 2
    assert value(metrics, "calsync_api_requests_total", endpoint="list", status="200") == 3
    assert value(metrics, "calsync_api_requests_total", endpoint="details", status="200") == 10
    assert value(metrics, "calsync_api_requests_total", endpoint="details", status="404") == 1
    assert value(metrics, "calsync_feed_events", feed="bookings") == 12
    assert value(metrics, "calsync_feed_events", feed="public") == 7


def test_api_requests_add_up_across_syncs() -> None:
    metrics = Metrics()

    metrics.observe_sync_success(example_stats(), {}, FINISHED)
    metrics.observe_sync_success(example_stats(), {}, FINISHED)

    assert value(metrics, "calsync_api_requests_total", endpoint="list", status="200") == 6
    assert value(metrics, "calsync_sync_runs_total", outcome="success") == 2


def test_booking_status_missing_later_drops_to_zero() -> None:
    metrics = Metrics()

    metrics.observe_sync_success(example_stats(), {"scheduled": 4, "cancelled": 1}, FINISHED)
    metrics.observe_sync_success(example_stats(), {"scheduled": 5}, FINISHED)

    assert value(metrics, "calsync_bookings", status="scheduled") == 5
    assert value(metrics, "calsync_bookings", status="cancelled") == 0


def test_failure_records_duration_and_requests() -> None:
    metrics = Metrics()

    metrics.observe_sync_failure(12.0, {("list", "error"): 2, ("list", "503"): 1, ("details", "200"): 0})

    assert value(metrics, "calsync_sync_runs_total", outcome="failed") == 1
    assert value(metrics, "calsync_sync_runs_total", outcome="success") == 0
    assert value(metrics, "calsync_sync_duration_seconds_count") == 1
    assert value(metrics, "calsync_sync_duration_seconds_sum") == 12.0
    assert value(metrics, "calsync_api_requests_total", endpoint="list", status="error") == 2
    assert value(metrics, "calsync_api_requests_total", endpoint="list", status="503") == 1
    assert value(metrics, "calsync_api_requests_total", endpoint="details", status="200") is None
    assert value(metrics, "calsync_last_success_timestamp_seconds") == 0


def test_feed_requests_counted_by_code() -> None:
    metrics = Metrics()

    for code in (200, 200, 304, 404):
        metrics.observe_feed_request(code)

    assert value(metrics, "calsync_feed_requests_total", code="200") == 2
    assert value(metrics, "calsync_feed_requests_total", code="304") == 1
    assert value(metrics, "calsync_feed_requests_total", code="404") == 1


def test_api_request_counts_split_keys() -> None:
    counts = api_request_counts({"list 200": 3, "details error": 2, "odd": 1})

    assert counts == {("list", "200"): 3, ("details", "error"): 2, ("odd", "unknown"): 1}


def stored(booking_id: str, status: str | None, removed: bool = False) -> StoredBooking:
    row = {"_id": booking_id} if status is None else {"_id": booking_id, "status": status}
    return StoredBooking(
        id=booking_id,
        row=row,
        fingerprint="",
        significant="",
        first_seen=FINISHED,
        last_seen=FINISHED,
        removed_at=FINISHED if removed else None,
    )


def test_count_bookings_by_status_skips_removed() -> None:
    bookings = [
        stored("a", "scheduled"),
        stored("b", "scheduled"),
        stored("c", "cancelled"),
        stored("d", "completed", removed=True),
        stored("e", None),
    ]

    assert count_bookings_by_status(bookings) == {"scheduled": 2, "cancelled": 1, "unknown": 1}
