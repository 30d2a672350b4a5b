"""pacs.index.log_syncs: writers share syncs of the write-ahead log, and none reports a commit
before a sync that began after it has ended."""

from __future__ import annotations

import multiprocessing
import os
import threading
import time
from pathlib import Path

import pytest

from pacs.index import log_syncs
from pacs.index.log_syncs import SharedLogSyncs
from pacs.index.writer_lock import WriterLock

FORK = multiprocessing.get_context("fork")


class SlowSyncs:
    """os.fdatasync, slowed down, noting for each sync the commits counted when it began."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch, counters: SharedLogSyncs, seconds: float) -> None:
        self.counters = counters
        self.seconds = seconds
        self.ended: list[int] = []  # commits counted when each ended sync began
        self._lock = threading.Lock()
        self._real = os.fdatasync
        monkeypatch.setattr(os, "fdatasync", self)

    def __call__(self, fd: int) -> None:
        began_after = self.counters.written()
        time.sleep(self.seconds)
        self._real(fd)
        with self._lock:
            self.ended.append(began_after)

    def covered(self, number: int) -> bool:
        with self._lock:
            return any(began >= number for began in self.ended)


def _lock(tmp_path: Path) -> WriterLock:
    wal = tmp_path / "index.db-wal"
    wal.write_bytes(b"")
    lock = WriterLock(tmp_path / "index.db.writer-lock", timeout=10, wal=wal, database=tmp_path / "index.db")
    assert lock.syncs is not None
    return lock


def _write(lock: WriterLock) -> int:
    """One turn that appends to the log; the commit's number."""
    assert lock.wal is not None and lock.syncs is not None
    with lock.deferring() as pending:
        with lock.held():
            with open(lock.wal, "ab") as log:
                log.write(b"frame")
    assert pending.number is not None
    pending.wait()
    return pending.number


def test_a_sync_covers_every_commit_written_before_it_began(tmp_path: Path,
                                                           monkeypatch: pytest.MonkeyPatch) -> None:
    lock = _lock(tmp_path)
    assert lock.syncs is not None
    syncs = SlowSyncs(monkeypatch, lock.syncs, 0)
    with lock.deferring() as first, lock.held():
        pass
    with lock.deferring() as second, lock.held():
        pass
    assert (first.number, second.number) == (1, 2) and syncs.ended == []
    second.wait()
    first.wait()  # covered by the sync the second began
    assert syncs.ended == [2]
    with lock.held():  # a turn without deferring syncs before it returns
        pass
    assert syncs.ended == [2, 3]
    lock.sync()  # nothing written since
    assert len(syncs.ended) == 2
    assert lock.syncs.counters == tmp_path / "index.db-log-syncs"


def test_concurrent_writers_share_syncs_and_each_waits_for_its_own(tmp_path: Path,
                                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    lock = _lock(tmp_path)
    assert lock.syncs is not None
    syncs = SlowSyncs(monkeypatch, lock.syncs, 0.01)
    early: list[int] = []

    def writer() -> None:
        for _ in range(10):
            number = _write(lock)
            if not syncs.covered(number):
                early.append(number)

    threads = [threading.Thread(target=writer) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)
    assert early == []  # no writer went on before a sync that covers its commit had ended
    assert lock.syncs.written() == 40
    assert len(syncs.ended) < 30  # shared: about one sync for every two or more commits


def _write_in_child(lock: WriterLock, count: int, ready: multiprocessing.synchronize.Barrier,
                    results: multiprocessing.queues.Queue) -> None:  # type: ignore[type-arg]
    assert lock.syncs is not None
    syncs: list[int] = []
    real = os.fdatasync

    def counted(fd: int) -> None:
        syncs.append(fd)
        time.sleep(0.01)
        real(fd)

    os.fdatasync = counted  # type: ignore[assignment]
    ready.wait(10)
    for _ in range(count):
        _write(lock)
    results.put(len(syncs))


def test_writers_in_other_processes_share_syncs(tmp_path: Path) -> None:
    lock = _lock(tmp_path)
    ready = FORK.Barrier(2)
    results = FORK.Queue()
    children = [FORK.Process(target=_write_in_child, args=(lock, 15, ready, results)) for _ in range(2)]
    for child in children:
        child.start()
    counts = [results.get(timeout=60) for _ in children]
    for child in children:
        child.join(10)
    assert lock.syncs is not None and lock.syncs.written() == 30
    assert sum(counts) < 28, counts


def test_a_sync_a_dead_writer_left_unfinished_holds_the_others_only_briefly(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    lock = _lock(tmp_path)
    assert lock.syncs is not None
    syncs = SlowSyncs(monkeypatch, lock.syncs, 0)
    with lock.syncs._counters() as values:  # a sync of commits 1-5 began and never ended
        values[log_syncs.WRITTEN] = values[log_syncs.BEGUN] = 5
    began = time.monotonic()
    number = _write(lock)
    waited = time.monotonic() - began
    assert number == 6 and syncs.ended == [6]
    assert log_syncs.WAIT_LIMIT * 0.8 <= waited < 2.0
    began = time.monotonic()
    _write(lock)
    assert time.monotonic() - began < log_syncs.WAIT_LIMIT  # the counters are sound again


def test_counts_from_before_the_machine_restarted_are_forgotten(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Counters the file kept from an earlier boot speak of commits long gone (and a crash may
    have left them half written): a commit made now must not pass for synced because of them."""
    earlier = SharedLogSyncs(tmp_path / "index.db-wal", tmp_path / "index.db-log-syncs", b"another boot 123")
    with earlier._counters() as values:
        values[:] = [0, 500, 500]
    lock = _lock(tmp_path)
    assert lock.syncs is not None
    syncs = SlowSyncs(monkeypatch, lock.syncs, 0)
    assert _write(lock) == 1
    assert syncs.ended == [1]


def test_without_a_boot_id_every_turn_syncs(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(log_syncs, "BOOT_ID", tmp_path / "none")
    wal = tmp_path / "index.db-wal"
    wal.write_bytes(b"")
    lock = WriterLock(tmp_path / "index.db.writer-lock", timeout=10, wal=wal, database=tmp_path / "index.db")
    assert lock.syncs is None
    synced: list[int] = []
    real = os.fdatasync
    monkeypatch.setattr(os, "fdatasync", lambda fd: (synced.append(fd), real(fd)))
    for _ in range(3):
        with lock.held():
            pass
    with lock.deferring() as pending, lock.held():
        pass
    assert len(synced) == 3
    pending.wait()
    assert len(synced) == 4


def test_a_failed_sync_reaches_its_writer_and_frees_the_others(tmp_path: Path,
                                                               monkeypatch: pytest.MonkeyPatch) -> None:
    lock = _lock(tmp_path)
    assert lock.syncs is not None

    def failing(fd: int) -> None:
        raise OSError(5, "Input/output error")

    monkeypatch.setattr(os, "fdatasync", failing)
    with pytest.raises(OSError, match="Input/output"), lock.held():
        pass
    monkeypatch.undo()
    began = time.monotonic()
    with lock.held():
        pass
    assert time.monotonic() - began < log_syncs.WAIT_LIMIT  # nobody waits for the failed sync
    with lock.syncs._counters() as values:
        assert values[log_syncs.SYNCED] == values[log_syncs.WRITTEN] == 2


def test_engines_no_longer_used_give_back_their_descriptors(tmp_path: Path) -> None:
    """A process that opens many databases over its life (a test run, an admin tool) must not
    keep a lock file and a counters file open for each: past 1024 descriptors select() fails."""
    import gc

    from sqlalchemy import text

    from pacs.index.database import open_engine, write_transaction

    def open_descriptors() -> int:
        return len(os.listdir("/proc/self/fd"))

    def use_one(n: int) -> None:
        engine = open_engine(f"sqlite:///{tmp_path / f'index{n}.db'}")
        with write_transaction(engine) as conn:
            conn.execute(text("CREATE TABLE t (x INTEGER)"))
        engine.dispose()

    use_one(0)
    gc.collect()
    before = open_descriptors()
    for n in range(1, 41):
        use_one(n)
    gc.collect()
    assert open_descriptors() - before < 10
