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
during that sync instead of after it, and writers share syncs (log_syncs). A commit is durable
once the WAL holding it is synced; if a checkpoint moved it on meanwhile, SQLite synced the WAL
before and the database after that checkpoint (the guarantees of synchronous=NORMAL in WAL mode).
A caller may also take the sync upon itself (``deferring``), to let others write meanwhile.
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
from pacs.index.log_syncs import SharedLogSyncs, at_fork_reset, sync_log

FIRST_PAUSE = 0.00005
LONGEST_PAUSE = 0.0002


class PendingSync:
    """The turns a thread took while deferring their sync; ``wait`` makes them durable."""

    def __init__(self, lock: WriterLock) -> None:
        self._lock = lock
        self.turns = 0
        self.number: int | None = None  # the last commit's number, where writers share syncs

    def note(self, number: int | None) -> None:
        self.turns += 1
        if number is not None:
            self.number = number if self.number is None else max(self.number, number)

    def wait(self) -> None:
        if self.turns:
            self._lock.sync_turn(self.number)


class WriterLock:
    def __init__(self, path: Path, timeout: float, wal: Path | None = None, *, database: Path | None = None) -> None:
        self.path = path
        self.timeout = timeout
        self.wal = wal  # the write-ahead log to sync after each turn
        self.syncs = SharedLogSyncs.for_database(database, wal) if wal is not None and database is not None else None
        self._fd: int | None = None
        self._reset()
        # A forked worker must not share the parent's open file (flock belongs to the open
        # file, so parent and child would both "hold" it) nor a thread lock held at the fork.
        # Held weakly: a lock nobody uses any more is collected, and its descriptor closed.
        at_fork_reset(self)

    def _reset(self) -> None:
        self._threads = threading.Lock()
        self._fd = None
        self._owner = threading.local()

    def __del__(self) -> None:
        if self._fd is not None:
            os.close(self._fd)

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
        number: int | None = None
        try:
            fd = self._file()
            self._take(fd, deadline)
            self._owner.depth = 1
            try:
                yield
            finally:
                self._owner.depth = 0
                try:
                    if self.syncs is not None:
                        number = self.syncs.committed()  # counted while the turn is still held
                finally:
                    fcntl.flock(fd, fcntl.LOCK_UN)
        finally:
            self._threads.release()
        pending: PendingSync | None = getattr(self._owner, "pending", None)
        if pending is not None:
            pending.note(number)  # its caller syncs it
        else:
            self.sync_turn(number)

    @contextmanager
    def deferring(self) -> Iterator[PendingSync]:
        """Turns this thread takes within the block end without their sync: the caller makes
        them durable with the PendingSync's ``wait`` before it reports them, and may first let
        others write (group commit hands on to the next group meanwhile)."""
        previous = getattr(self._owner, "pending", None)
        pending = self._owner.pending = PendingSync(self)
        try:
            yield pending
        finally:
            self._owner.pending = previous

    def sync_turn(self, number: int | None) -> None:
        """Make a turn's commit durable: commit ``number`` where writers share syncs."""
        if self.wal is None:
            return
        if self.syncs is None or number is None:
            sync_log(self.wal)
        else:
            self.syncs.sync_through(number)

    def sync(self) -> None:
        """Make every commit written so far, by any writer, durable."""
        if self.wal is None:
            return
        if self.syncs is None:
            sync_log(self.wal)
        else:
            self.syncs.sync_through(self.syncs.written())

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
