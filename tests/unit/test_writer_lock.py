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
