"""One calsync sync, run in a child process so that its peak memory is its own."""

from __future__ import annotations

import logging
import time
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from benchmarks.child_process import peak_rss_bytes


@dataclass
class SyncMeasurement:
    """Wall seconds of ``SyncEngine.run``, its stats, its peak RSS, and a full render of the same state."""

    seconds: float
    peak_rss: int
    full_render_seconds: float
    stats: dict[str, Any] = field(default_factory=dict)


def sync_once(config_path: str) -> SyncMeasurement:
    """Run one sync with the config at ``config_path``; its imports happen before the clock starts."""
    from calsync.config import load_config
    from calsync.engine import SyncEngine

    # The sandbox data set contains bookings that the mapping warns about on every render, by design.
    logging.basicConfig(level=logging.ERROR, format="calsync: %(levelname)s %(name)s: %(message)s")
    config = load_config(config_path, env={})
    engine = SyncEngine(config)

    started = time.perf_counter()
    result = engine.run()
    seconds = time.perf_counter() - started

    # Read before the full render below, which loads every booking again.
    peak = peak_rss_bytes()
    return SyncMeasurement(
        seconds=seconds,
        peak_rss=peak,
        full_render_seconds=full_render_seconds(config),
        stats=asdict(result.stats),
    )


def full_render_seconds(config: Any) -> float:
    """Return the seconds that rendering every feed from all stored bookings takes, without any cache."""
    from calsync.feeds import render_feed
    from calsync.store import StateStore

    with StateStore.open_in(Path(config.sync.state_dir)) as store:
        bookings = list(store.bookings().values())
    now = datetime.now(UTC)

    started = time.perf_counter()
    for feed in config.feeds:
        render_feed(config, feed, bookings, now)
    return time.perf_counter() - started
