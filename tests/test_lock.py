"""The cross-process sync lock."""

import subprocess
import sys

import pytest

from calsync.errors import LockHeldError
from calsync.lock import LOCK_FILE, sync_lock

HOLD_LOCK = """
import sys, time
from pathlib import Path
from calsync.lock import sync_lock
with sync_lock(Path(sys.argv[1])):
    print("locked", flush=True)
    time.sleep(30)
"""


def test_lock_released_after_block(tmp_path):
    with sync_lock(tmp_path):
        pass

    with sync_lock(tmp_path, wait=0):
        pass


def test_second_process_gets_lock_held_error(tmp_path):
    holder = subprocess.Popen([sys.executable, "-c", HOLD_LOCK, str(tmp_path)], stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "locked"

        with pytest.raises(LockHeldError) as raised:
            with sync_lock(tmp_path, wait=0.3):
                pass

        assert f"pid {holder.pid}" in raised.value.holder
        assert str(tmp_path / LOCK_FILE) in str(raised.value)
    finally:
        holder.kill()
        holder.wait()


def test_lock_freed_when_holder_killed(tmp_path):
    holder = subprocess.Popen([sys.executable, "-c", HOLD_LOCK, str(tmp_path)], stdout=subprocess.PIPE, text=True)
    assert holder.stdout.readline().strip() == "locked"
    holder.kill()
    holder.wait()

    with sync_lock(tmp_path, wait=0):
        pass
