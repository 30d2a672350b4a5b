"""pacs.index.writer_lock: SQLite writers of several processes take turns on a lock file."""

from __future__ import annotations

import multiprocessing
import os
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

from pacs.errors import DatabaseUnavailable
from pacs.index.writer_lock import WriterLock

FORK = multiprocessing.get_context("fork")


def _hold_for(path: str, seconds: float, held: multiprocessing.synchronize.Event) -> None:
    with WriterLock(Path(path), timeout=5).held():
        held.set()
        time.sleep(seconds)


@contextmanager
def _held_elsewhere(path: Path, seconds: float) -> Iterator[None]:
    """Another process holds the lock at ``path`` for ``seconds`` from when this block starts."""
    held = FORK.Event()
    other = FORK.Process(target=_hold_for, args=(str(path), seconds, held))
    other.start()
    assert held.wait(10)
    yield
    other.join(10)


def test_a_writer_waits_for_another_process_and_gets_its_turn_as_soon_as_released(tmp_path: Path) -> None:
    path = tmp_path / "index.db.writer-lock"
    with _held_elsewhere(path, 0.3):
        began = time.monotonic()
        with WriterLock(path, timeout=5).held():
            waited = time.monotonic() - began
    assert 0.15 < waited < 1.0


def test_the_wait_is_bounded(tmp_path: Path) -> None:
    path = tmp_path / "index.db.writer-lock"
    with _held_elsewhere(path, 2.0):
        began = time.monotonic()
        with pytest.raises(DatabaseUnavailable, match="no turn to write"), WriterLock(path, timeout=0.2).held():
            pass
        assert time.monotonic() - began < 1.5


def _try_in_child(lock: WriterLock, result: multiprocessing.queues.Queue) -> None:  # type: ignore[type-arg]
    try:
        with lock.held():
            result.put("took it")
    except DatabaseUnavailable:
        result.put("refused")


def test_a_forked_worker_does_not_share_its_parents_turn(tmp_path: Path) -> None:
    """flock belongs to the open file: a child using the parent's descriptor would 'hold' the
    lock the parent holds, and both would write at once."""
    lock = WriterLock(tmp_path / "index.db.writer-lock", timeout=0.3)
    result = FORK.Queue()
    with lock.held():
        child = FORK.Process(target=_try_in_child, args=(lock, result))
        child.start()
        answer = result.get(timeout=10)
        child.join(10)
    assert answer == "refused"
    child = FORK.Process(target=_try_in_child, args=(lock, result))
    child.start()
    assert result.get(timeout=10) == "took it"
    child.join(10)


def test_threads_take_turns_and_a_holder_may_nest(tmp_path: Path) -> None:
    lock = WriterLock(tmp_path / "index.db.writer-lock", timeout=5)
    inside = 0
    most = 0
    guard = threading.Lock()

    def write() -> None:
        nonlocal inside, most
        for _ in range(50):
            with lock.held(), lock.held():  # e.g. a transaction helper inside another: no self-deadlock
                with guard:
                    inside += 1
                    most = max(most, inside)
                time.sleep(0.0005)
                with guard:
                    inside -= 1

    threads = [threading.Thread(target=write) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(30)
    assert most == 1
    assert os.path.exists(tmp_path / "index.db.writer-lock")


def test_the_log_is_synced_after_the_turn_is_handed_on_and_before_the_writer_returns(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A commit is durable before its writer's caller hears of it, and the next writer does
    not wait for that sync: when the log is synced, the lock file is free for another taker."""
    import fcntl

    path, wal = tmp_path / "index.db.writer-lock", tmp_path / "index.db-wal"
    wal.write_bytes(b"frames")
    lock = WriterLock(path, timeout=5, wal=wal)
    synced: list[tuple[int, bool]] = []
    real_fdatasync = os.fdatasync

    def watched(fd: int) -> None:
        probe = os.open(path, os.O_RDWR)
        try:
            fcntl.flock(probe, fcntl.LOCK_EX | fcntl.LOCK_NB)  # raises while the writer holds its turn
            fcntl.flock(probe, fcntl.LOCK_UN)
            free = True
        except BlockingIOError:
            free = False
        finally:
            os.close(probe)
        synced.append((os.fstat(fd).st_ino, free))
        real_fdatasync(fd)

    monkeypatch.setattr(os, "fdatasync", watched)
    with lock.held():
        with lock.held():  # a nested turn syncs nothing of its own
            pass
        assert synced == []
    assert synced == [(wal.stat().st_ino, True)]

    wal.unlink()  # checkpointed into the database and removed: nothing left to sync
    with lock.held():
        pass
    assert len(synced) == 1


def test_sqlite_defers_the_commit_sync_to_the_writer(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Each write transaction on a database file ends with one sync of its log, by the writer."""
    from sqlalchemy import text

    from pacs.index.database import make_durable, open_engine, syncing_later, write_transaction

    engine = open_engine(f"sqlite:///{tmp_path / 'index.db'}")
    try:
        with engine.connect() as conn:
            assert conn.exec_driver_sql("PRAGMA synchronous").scalar() == 1  # NORMAL
        with write_transaction(engine) as conn:
            conn.execute(text("CREATE TABLE t (x INTEGER)"))
        synced: list[str] = []
        real_fdatasync = os.fdatasync

        def watched(fd: int) -> None:
            synced.append(os.readlink(f"/proc/self/fd/{fd}"))
            real_fdatasync(fd)

        monkeypatch.setattr(os, "fdatasync", watched)
        with write_transaction(engine) as conn:
            conn.execute(text("INSERT INTO t VALUES (1)"))
        assert [Path(p).name for p in synced] == ["index.db-wal"]
        make_durable(engine)  # everything committed is synced already
        assert len(synced) == 1
        with syncing_later(engine) as pending:  # a writer that has not synced its commit yet
            with write_transaction(engine) as conn:
                conn.execute(text("INSERT INTO t VALUES (2)"))
        assert len(synced) == 1
        make_durable(engine)  # a reader about to report what that writer committed
        assert len(synced) == 2
        assert pending is not None
        pending.wait()  # synced already by the reader
        assert len(synced) == 2
    finally:
        engine.dispose()
