"""Run one benchmark step in a fresh process, with its own interpreter, GIL and peak memory."""

from __future__ import annotations

import multiprocessing
import resource
from collections.abc import Callable
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path
from typing import Any, TypeVar

# Spawned children start from a clean interpreter; forking a process that runs threads is unsafe.
SPAWN = multiprocessing.get_context("spawn")

Result = TypeVar("Result")


def run_in_child(function: Callable[..., Result], *args: Any) -> Result:
    """Call ``function(*args)`` in a new process and return its result; both must be picklable."""
    with ProcessPoolExecutor(max_workers=1, mp_context=SPAWN) as executor:
        return executor.submit(function, *args).result()


def peak_rss_bytes() -> int:
    """Return the peak resident set size of this process in bytes (``VmHWM`` on Linux)."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024
    except OSError:
        pass
    # Linux reports ru_maxrss in KiB; this fallback is only for systems without /proc.
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
