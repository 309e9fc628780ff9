"""Ways for tests to make file writes fail for real: another user, a full or read-only file system.

Root ignores file permissions, so a test that needs "Permission denied"
runs calsync as an unprivileged user through ``setpriv`` (util-linux). That
user needs an interpreter outside root's private directories, and reaches
calsync and its dependencies through ``PYTHONPATH``. A full or read-only file
system is a small tmpfs mounted over a directory, which needs root with
CAP_SYS_ADMIN. Each helper skips the test, with the reason, where this
machine cannot provide it.
"""

from __future__ import annotations

import errno
import os
import shutil
import stat
import subprocess
import sys
import sysconfig
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

from tests.helpers import environment_without_calsync

ROOT = Path(__file__).resolve().parent.parent
SETPRIV = shutil.which("setpriv")
RUNNING_AS_ROOT = os.name == "posix" and os.geteuid() == 0
# The user and group "nobody" and "nogroup" on Debian and most Linux systems.
UNPRIVILEGED_ID = 65534


class Runner:
    """Builds the command line and environment that run ``calsync`` as a chosen user.

    With ``unprivileged`` false, calsync runs as this process does. Otherwise
    it runs as ``UNPRIVILEGED_ID`` when this process is root, and as this
    process's own (already unprivileged) user when it is not.
    """

    def __init__(self, unprivileged: bool) -> None:
        self.switch_user = unprivileged and RUNNING_AS_ROOT
        self.python = sys.executable
        if self.switch_user:
            python, reason = _python_for_other_users()
            if python is None:
                pytest.skip(reason)
            self.python = python

    def command(self, *arguments: str) -> list[str]:
        command = [self.python, "-m", "calsync", *arguments]
        if not self.switch_user:
            return command
        ids = [f"--reuid={UNPRIVILEGED_ID}", f"--regid={UNPRIVILEGED_ID}", "--clear-groups"]
        return [str(SETPRIV), *ids, "--", *command]

    def environment(self) -> dict[str, str]:
        environment = environment_without_calsync()
        if self.switch_user:
            paths = [str(ROOT), *_dependency_paths()]
            environment["PYTHONPATH"] = os.pathsep.join(paths)
            environment["PYTHONDONTWRITEBYTECODE"] = "1"
        return environment

    def give(self, path: Path) -> None:
        """Make ``path`` belong to the user that calsync runs as."""
        if self.switch_user:
            os.chown(path, UNPRIVILEGED_ID, UNPRIVILEGED_ID)


def _python_for_other_users() -> tuple[str | None, str]:
    """Return an interpreter of this Python version that the unprivileged user can run, or None and why not."""
    if SETPRIV is None:
        return None, "runs as root and needs setpriv (util-linux) to run calsync as an unprivileged user"
    for path in (ROOT, *_dependency_paths()):
        if not _searchable_by_anyone(Path(path)):
            return None, f"{path} is not readable by an unprivileged user"

    version = f"{sys.version_info.major}.{sys.version_info.minor}"
    candidates = [getattr(sys, "_base_executable", sys.executable), f"/usr/bin/python{version}",
                  f"/usr/local/bin/python{version}", "/usr/bin/python3", "/usr/local/bin/python3"]
    check = f"import sys; sys.exit(sys.version_info[:2] != {tuple(sys.version_info[:2])})"
    for candidate in candidates:
        if not _runnable_by_anyone(Path(candidate)):
            continue
        completed = subprocess.run([candidate, "-c", check], capture_output=True, timeout=60, check=False)
        if completed.returncode == 0:
            return candidate, ""
    return None, f"needs a Python {version} that an unprivileged user can run"


def _dependency_paths() -> list[str]:
    paths = sysconfig.get_paths()
    return sorted({paths["purelib"], paths["platlib"]})


def _searchable_by_anyone(path: Path) -> bool:
    return all(directory.stat().st_mode & stat.S_IXOTH for directory in (path, *path.parents))


def _runnable_by_anyone(executable: Path) -> bool:
    if not executable.exists():
        return False
    real = executable.resolve()
    return bool(real.stat().st_mode & stat.S_IXOTH) and _searchable_by_anyone(real.parent)


@contextmanager
def shared_directory() -> Iterator[Path]:
    """Create a temporary directory that every user can enter; remove it afterwards.

    pytest's own temporary directories are private to their owner, so an
    unprivileged user could not reach a state directory inside them.
    """
    directory = Path(tempfile.mkdtemp(prefix="calsync-shared-"))
    try:
        directory.chmod(0o755)
        yield directory
    finally:
        shutil.rmtree(directory, ignore_errors=True)


# Small file systems.


@contextmanager
def tmpfs_mounted(directory: Path, size_kib: int) -> Iterator[None]:
    """Mount a tmpfs of ``size_kib`` KiB over ``directory`` for the block; skip the test where mount fails."""
    if not RUNNING_AS_ROOT or shutil.which("mount") is None:
        pytest.skip("mounting a tmpfs needs root and the mount command")
    completed = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", f"size={size_kib}k,mode=0755", "tmpfs", str(directory)],
        capture_output=True, text=True, timeout=30, check=False,
    )
    if completed.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here (needs CAP_SYS_ADMIN): {completed.stderr.strip()}")
    try:
        yield
    finally:
        _unmount(directory)


def _unmount(directory: Path) -> None:
    completed = subprocess.run(["umount", str(directory)], capture_output=True, text=True, timeout=30, check=False)
    if completed.returncode != 0:
        # A process that still has a file open there keeps the mount busy; detach it instead.
        subprocess.run(["umount", "-l", str(directory)], capture_output=True, timeout=30, check=True)


def remount(directory: Path, mode: str) -> None:
    """Remount the tmpfs at ``directory`` read-only (``ro``) or read-write (``rw``)."""
    subprocess.run(
        ["mount", "-o", f"remount,{mode}", str(directory)], capture_output=True, text=True, timeout=30, check=True
    )


def fill(directory: Path) -> Path:
    """Write a file into ``directory`` until its file system is full; return the file's path."""
    filler = directory / "filler"
    chunk = b"\0" * 4096
    # Unbuffered writes, so that no buffered rest is written again, and fails again, on close.
    descriptor = os.open(filler, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
    try:
        while True:
            os.write(descriptor, chunk)
    except OSError as error:
        if error.errno != errno.ENOSPC:
            raise
    finally:
        os.close(descriptor)
    return filler
