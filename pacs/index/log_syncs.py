"""Writers of one SQLite file, in every process, share the syncs of its write-ahead log.

A commit is durable once a sync of the log has begun after the commit was written (on
synchronous=NORMAL SQLite writes the log and leaves the sync to us, see writer_lock). With one
sync per commit, concurrent writers paid one disk flush each, and each flush is a round trip to
the disk. Here the writers count their commits, and note the count a sync covers when it begins
and when it ends, in a few bytes of shared memory. A writer whose commit is covered by a sync
already running waits for that sync; one that finds a sync running that began before its commit
waits for it to end, then syncs for itself and for everyone who committed meanwhile.

The counters live in a small file beside the database, mapped into memory by every writer. They
speak of commits waiting in the machine's memory, so they are only good until it restarts: the
file carries the boot ID of the machine that wrote it, and counting starts afresh after a boot.
Where there is no boot ID to read (not Linux), each writer syncs for itself.
"""

from __future__ import annotations

import fcntl
import mmap
import os
import struct
import threading
import time
import uuid
import weakref
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

BOOT_ID = Path("/proc/sys/kernel/random/boot_id")
_BOOT = struct.Struct("<16s")  # the boot ID of the machine whose commits the counters count
_COUNTERS = struct.Struct("<QQQ")  # commits written, covered by the latest sync begun, by the latest ended
_SIZE = _BOOT.size + _COUNTERS.size
WRITTEN, BEGUN, SYNCED = 0, 1, 2
FIRST_PAUSE = 0.00005
LONGEST_PAUSE = 0.0002
# A sync begun by a process that died before it ended would hold the others forever: past this
# long, a writer syncs for itself.
WAIT_LIMIT = 0.05


class SharedLogSyncs:
    """The log syncs of the database at ``database`` (log file ``wal``), shared by its writers."""

    def __init__(self, wal: Path, counters: Path, boot: bytes) -> None:
        self.wal = wal
        self.counters = counters
        self.boot = boot
        self._fd: int | None = None
        self._map: mmap.mmap | None = None
        self._reset()
        # A forked worker opens its own descriptor: flock belongs to the open file. Held weakly,
        # so that counters nobody uses any more are collected and their descriptor closed.
        at_fork_reset(self)

    @classmethod
    def for_database(cls, database: Path, wal: Path) -> SharedLogSyncs | None:
        """The shared counters of ``database``, or None where they cannot be kept (each
        commit is then synced by its writer)."""
        try:
            boot = uuid.UUID(BOOT_ID.read_text().strip()).bytes
        except (OSError, ValueError):
            return None
        syncs = cls(wal, Path(f"{database}-log-syncs"), boot)
        try:
            syncs.written()
        except OSError:
            return None
        return syncs

    def _reset(self) -> None:
        """Fresh locks and no descriptor (a forked child leaves the parent's to the parent)."""
        self._threads = threading.Lock()
        self._ended = threading.Condition(threading.Lock())  # notified when a sync of this process ends
        self._fd = None
        self._map = None

    def __del__(self) -> None:
        if self._map is not None:
            self._map.close()
        if self._fd is not None:
            os.close(self._fd)

    def written(self) -> int:
        """How many commits have been written so far."""
        with self._counters() as values:
            return values[WRITTEN]

    def committed(self) -> int:
        """Count a commit just written; called within the writer's turn. Its number."""
        with self._counters() as values:
            values[WRITTEN] += 1
            return values[WRITTEN]

    def sync_through(self, number: int) -> None:
        """Return once commit ``number`` and every one before it are durable."""
        pause = FIRST_PAUSE
        deadline = time.monotonic() + WAIT_LIMIT
        while True:
            with self._counters() as values:
                if values[SYNCED] >= number:
                    return
                running = values[BEGUN] > values[SYNCED]
                if not running or time.monotonic() > deadline:
                    covered = values[WRITTEN]
                    values[BEGUN] = max(values[BEGUN], covered)
                    break
            # A sync is running: it covers this commit, or the next one will.
            with self._ended:
                self._ended.wait(pause)
            pause = min(pause * 2, LONGEST_PAUSE)
        try:
            sync_log(self.wal)
        except BaseException:
            self._ended_sync(None)  # the others stop waiting for it; its writer hears of the failure
            raise
        self._ended_sync(covered)

    def _ended_sync(self, covered: int | None) -> None:
        with self._counters() as values:
            if covered is None:  # failed: no sync is taken for running any more
                values[BEGUN] = values[SYNCED]
            else:
                values[SYNCED] = max(values[SYNCED], covered)
                values[BEGUN] = max(values[BEGUN], values[SYNCED])
        with self._ended:
            self._ended.notify_all()

    @contextmanager
    def _counters(self) -> Iterator[list[int]]:
        with self._threads:
            fd, shared = self._open()
            fcntl.flock(fd, fcntl.LOCK_EX)
            try:
                if _BOOT.unpack_from(shared)[0] != self.boot:  # new, or counted before a restart
                    _COUNTERS.pack_into(shared, _BOOT.size, 0, 0, 0)
                    _BOOT.pack_into(shared, 0, self.boot)
                values = list(_COUNTERS.unpack_from(shared, _BOOT.size))
                before = tuple(values)
                yield values
                if tuple(values) != before:
                    _COUNTERS.pack_into(shared, _BOOT.size, *values)
            finally:
                fcntl.flock(fd, fcntl.LOCK_UN)

    def _open(self) -> tuple[int, mmap.mmap]:
        if self._fd is None or self._map is None:
            fd = os.open(self.counters, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
            try:
                if os.fstat(fd).st_size < _SIZE:
                    os.ftruncate(fd, _SIZE)  # zeros; a concurrent opener does the same
                self._map = mmap.mmap(fd, _SIZE)
            except BaseException:
                os.close(fd)
                raise
            self._fd = fd
        return self._fd, self._map


def at_fork_reset(owner: Any) -> None:
    """Call ``owner._reset()`` in a forked child, without keeping ``owner`` alive."""
    ref = weakref.ref(owner)

    def reset() -> None:
        alive = ref()
        if alive is not None:
            alive._reset()

    os.register_at_fork(after_in_child=reset)


def sync_log(wal: Path) -> None:
    """Sync the write-ahead log: every commit written to it so far becomes durable. A missing
    log was checkpointed into the (synced) database and removed."""
    try:
        fd = os.open(wal, os.O_RDONLY | os.O_CLOEXEC)
    except FileNotFoundError:
        return
    try:
        os.fdatasync(fd)
    finally:
        os.close(fd)
