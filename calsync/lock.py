"""The sync lock: one sync at a time per ``state_dir``, across processes.

An advisory ``flock`` on ``state_dir/sync.lock``. The kernel releases it when
the holder exits, even on SIGKILL, so a crash never leaves a stale lock. The
holder writes its pid, host name and start time into the file so that a
waiting process can name the holder.
"""

from __future__ import annotations

import fcntl
import logging
import os
import socket
import time
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from pathlib import Path

from calsync.errors import LockHeldError, StateError

log = logging.getLogger(__name__)

LOCK_FILE = "sync.lock"
POLL_SECONDS = 0.1


@contextmanager
def sync_lock(state_dir: Path, wait: float = 5.0) -> Iterator[None]:
    """Hold the sync lock for the block, waiting up to ``wait`` seconds for it.

    Raise ``LockHeldError`` naming the holder when the wait runs out.
    """
    path = state_dir / LOCK_FILE
    try:
        state_dir.mkdir(parents=True, exist_ok=True)
        descriptor = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    except OSError as error:
        raise StateError(str(path), f"cannot open the lock file: {error.strerror or error}") from error

    try:
        _acquire(descriptor, path, wait)
        _write_holder(descriptor)
        try:
            yield
        finally:
            # An empty file shows the next waiter that the process holding the lock then is not calsync.
            os.ftruncate(descriptor, 0)
    finally:
        os.close(descriptor)


def _acquire(descriptor: int, path: Path, wait: float) -> None:
    deadline = time.monotonic() + wait
    while True:
        try:
            fcntl.flock(descriptor, fcntl.LOCK_EX | fcntl.LOCK_NB)
            return
        except BlockingIOError:
            if time.monotonic() >= deadline:
                raise LockHeldError(str(path), _read_holder(path)) from None
            time.sleep(POLL_SECONDS)


def _write_holder(descriptor: int) -> None:
    started = datetime.now(UTC).isoformat(timespec="seconds")
    text = f"pid {os.getpid()} on {socket.gethostname()} since {started}\n"
    os.ftruncate(descriptor, 0)
    os.pwrite(descriptor, text.encode(), 0)


def _read_holder(path: Path) -> str:
    try:
        return path.read_text(encoding="utf-8", errors="replace").strip()[:200]
    except OSError:
        return ""
