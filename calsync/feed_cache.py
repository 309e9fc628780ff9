"""The last good bytes of each published feed file, held in memory for the feed server.

Each request costs one ``stat`` of the feed file. The file is read again only
when its identity (device, inode, size, modification time) changes, as it
does when ``calsync.feeds.publish`` renames a new file over it from this
process or from a ``calsync sync`` run by cron. A file that disappears or
cannot be read leaves the last loaded version in service.
"""

from __future__ import annotations

import gzip
import logging
import os
import threading
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from calsync.config import FeedSettings
from calsync.feeds import feed_path
from calsync.http_conditional import strong_etag

log = logging.getLogger(__name__)

FileId = tuple[int, int, int, int]


@dataclass(frozen=True)
class Representation:
    """The bytes of one form of a feed (plain or gzip) and its entity-tag."""

    data: bytes
    etag: str


@dataclass(frozen=True)
class FeedVersion:
    """One version of a feed file: its bytes, their gzip form and the file's identity.

    ``mtime`` is the file's modification time in Unix seconds. ``gzip`` is
    None unless the feed has ``gzip = true``. It is compressed once per
    version, with a zero timestamp, so equal bytes always compress to equal bytes.
    """

    plain: Representation
    gzip: Representation | None
    mtime: float
    file_id: FileId


class FeedFile:
    """The cached version of one feed file. ``current`` is safe to call from many threads."""

    def __init__(self, path: Path, compress: bool) -> None:
        self.path = path
        self.compress = compress
        self._version: FeedVersion | None = None
        self._load_lock = threading.Lock()
        self._reported_problem: str | None = None

    def current(self) -> FeedVersion | None:
        """Return the newest readable version, or None when the file has never been read."""
        try:
            status = os.stat(self.path)
        except OSError as error:
            self._report_problem(error)
            return self._version

        version = self._version
        if version is not None and version.file_id == _file_id(status):
            return version

        # One thread reads a changed file, and the others wait for it and then return its result.
        with self._load_lock:
            version = self._version
            if version is not None and version.file_id == _file_id(status):
                return version
            return self._load()

    def _load(self) -> FeedVersion | None:
        try:
            with open(self.path, "rb") as file:
                # The identity comes from the open file, so it always matches the bytes read,
                # even when another rename replaces the path in between.
                status = os.fstat(file.fileno())
                data = file.read()
        except OSError as error:
            self._report_problem(error)
            return self._version

        version = self._build_version(data, status)
        self._version = version
        self._reported_problem = None
        log.info("feed file %s loaded: %d bytes, ETag %s", self.path, len(data), version.plain.etag)
        return version

    def _build_version(self, data: bytes, status: os.stat_result) -> FeedVersion:
        plain = Representation(data, strong_etag(data))
        compressed = None
        if self.compress:
            # RFC 9110 requires a content-encoded representation to have its own strong ETag.
            compressed = Representation(gzip.compress(data, mtime=0), strong_etag(data, "-gzip"))
        return FeedVersion(plain=plain, gzip=compressed, mtime=status.st_mtime, file_id=_file_id(status))

    def _report_problem(self, error: OSError) -> None:
        """Log each new problem with the file once, until a load succeeds again.

        A file that has never been published is normal before the first sync, so it is not logged.
        """
        if isinstance(error, FileNotFoundError) and self._version is None:
            return
        problem = f"{type(error).__name__}: {error.strerror or error}"
        if problem == self._reported_problem:
            return

        self._reported_problem = problem
        if self._version is None:
            log.error("cannot read feed file %s: %s", self.path, problem)
        else:
            log.error("cannot read feed file %s, serving the copy loaded before: %s", self.path, problem)


class FeedCache:
    """The ``FeedFile`` of every configured feed, by feed name."""

    def __init__(self, state_dir: Path, feeds: Iterable[FeedSettings]) -> None:
        self._files = {feed.name: FeedFile(feed_path(state_dir, feed.name), feed.gzip) for feed in feeds}

    def get(self, name: str) -> FeedVersion | None:
        """Return the newest readable version of feed ``name``, or None if it is unknown or never published."""
        file = self._files.get(name)
        return file.current() if file is not None else None


def _file_id(status: os.stat_result) -> FileId:
    return (status.st_dev, status.st_ino, status.st_size, status.st_mtime_ns)
