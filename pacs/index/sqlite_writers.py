"""SQLite write transactions queued on a lock file, across threads and processes.

Several worker processes write to one SQLite index. SQLite's own busy handler makes a writer
that finds the write lock taken sleep 1, 2, 5, 10, 15... ms between tries, so under concurrent
ingest the cores sat idle while commits of a millisecond came and went. Here a writer first
takes an exclusive flock on a lock file beside the database (released by the kernel if its
process dies), retrying every tenth of a millisecond to a few, then BEGIN IMMEDIATE, which
then rarely waits; COMMIT or ROLLBACK gives the lock back.
"""

from __future__ import annotations

import fcntl
import os
import sqlite3
import time
from typing import Any

WAIT_SECONDS = 30.0  # as long as SQLite's busy timeout: then "database is locked"
_FIRST_PAUSE, _LONGEST_PAUSE = 0.0001, 0.002


class QueuedWriterConnection(sqlite3.Connection):
    """A sqlite3 connection (pass as ``factory``) whose ``begin_write`` queues on the lock file."""

    def __init__(self, database: Any, *args: Any, **kwargs: Any) -> None:
        super().__init__(database, *args, **kwargs)
        path = os.fspath(database) if isinstance(database, (str, bytes, os.PathLike)) else ""
        in_memory = not path or path == ":memory:" or str(path).startswith("file:")
        self._lock_fd = None if in_memory else os.open(f"{os.fsdecode(path)}-writers.lock", os.O_RDWR | os.O_CREAT, 0o600)
        self._holding = False

    def begin_write(self) -> None:
        """BEGIN IMMEDIATE, once this connection's turn to write has come."""
        if self._lock_fd is not None and not self._holding:
            _lock(self._lock_fd)
            self._holding = True
        try:
            self.execute("BEGIN IMMEDIATE")
        except BaseException:
            self._release()
            raise

    def commit(self) -> None:
        try:
            super().commit()
        finally:
            self._release()

    def rollback(self) -> None:
        try:
            super().rollback()
        finally:
            self._release()

    def close(self) -> None:
        try:
            super().close()
        finally:
            self._release()
            if self._lock_fd is not None:
                os.close(self._lock_fd)
                self._lock_fd = None

    def __del__(self) -> None:
        # A connection dropped without close() (sqlite3 closes its database then, not our file).
        if getattr(self, "_lock_fd", None) is not None:
            os.close(self._lock_fd)  # closing the file also drops a lock still held on it
            self._lock_fd = None

    def _release(self) -> None:
        if self._holding and self._lock_fd is not None:
            self._holding = False
            fcntl.flock(self._lock_fd, fcntl.LOCK_UN)


def _lock(fd: int) -> None:
    deadline = time.monotonic() + WAIT_SECONDS
    pause = _FIRST_PAUSE
    while True:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            return
        except BlockingIOError:
            if time.monotonic() > deadline:
                raise sqlite3.OperationalError("database is locked: another writer kept it too long") from None
        time.sleep(pause)
        pause = min(pause * 2, _LONGEST_PAUSE)
