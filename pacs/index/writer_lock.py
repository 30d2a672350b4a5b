"""SQLite writers of all worker processes take turns on a lock file, handed over within 0.2 ms.

SQLite lets one connection write at a time. A writer that finds the database locked sleeps in
SQLite's busy handler (1, 2, 5, 10, 15... ms) before trying again, so with two workers ingesting
the lock sat idle while the next writer slept, and a writer could lose the race several times in
a row: waits of 20 to 50 ms were seen under concurrent C-STORE. Writers now first take an flock
of a file beside the database, retried every 50 to 200 us, and meet SQLite's own lock free.
Threads of one process queue on a plain lock before that, so only one of them polls.

The wait is bounded like SQLite's busy timeout: after ``timeout`` seconds the writer gives up
(DatabaseUnavailable), so a stuck writer elsewhere cannot hang this one.

The write-ahead log is synced after the turn, not within it. SQLite runs with synchronous=NORMAL
(a commit is written to the WAL but not synced), and a writer syncs the WAL file once it has
handed the turn on, before its caller learns of the commit: the next writer's statements run
during that sync instead of after it, and syncs of several writers overlap. A commit is durable
once the WAL holding it is synced; if a checkpoint moved it on meanwhile, SQLite synced the WAL
before and the database after that checkpoint (the guarantees of synchronous=NORMAL in WAL mode).
"""

from __future__ import annotations

import fcntl
import os
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from pacs.errors import DatabaseUnavailable

FIRST_PAUSE = 0.00005
LONGEST_PAUSE = 0.0002


class WriterLock:
    def __init__(self, path: Path, timeout: float, wal: Path | None = None) -> None:
        self.path = path
        self.timeout = timeout
        self.wal = wal  # the write-ahead log to sync after each turn
        self._reset()
        # A forked worker must not share the parent's open file (flock belongs to the open
        # file, so parent and child would both "hold" it) nor a thread lock held at the fork.
        os.register_at_fork(after_in_child=self._reset)

    def _reset(self) -> None:
        self._threads = threading.Lock()
        self._fd: int | None = None
        self._owner = threading.local()

    @contextmanager
    def held(self) -> Iterator[None]:
        if getattr(self._owner, "depth", 0):  # this thread holds it already: one lock, one turn
            self._owner.depth += 1
            try:
                yield
            finally:
                self._owner.depth -= 1
            return
        deadline = time.monotonic() + self.timeout
        if not self._threads.acquire(timeout=self.timeout):
            raise DatabaseUnavailable("database unavailable: another writer in this process holds the database")
        try:
            fd = self._file()
            self._take(fd, deadline)
            self._owner.depth = 1
            try:
                yield
            finally:
                self._owner.depth = 0
                fcntl.flock(fd, fcntl.LOCK_UN)
        finally:
            self._threads.release()
        self.sync()

    def sync(self) -> None:
        """Make every commit written so far durable: sync the write-ahead log. A missing log
        was checkpointed into the (synced) database and removed."""
        if self.wal is None:
            return
        try:
            fd = os.open(self.wal, os.O_RDONLY | os.O_CLOEXEC)
        except FileNotFoundError:
            return
        try:
            os.fdatasync(fd)
        finally:
            os.close(fd)

    def _file(self) -> int:
        if self._fd is None:
            self._fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
        return self._fd

    def _take(self, fd: int, deadline: float) -> None:
        pause = FIRST_PAUSE
        while True:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                return
            except BlockingIOError:
                if time.monotonic() > deadline:
                    raise DatabaseUnavailable(
                        f"database unavailable: no turn to write within {self.timeout:.0f} s"
                    ) from None
                time.sleep(pause)
                pause = min(pause * 2, LONGEST_PAUSE)
