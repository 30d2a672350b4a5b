"""SQLite writers queue on the lock file: one at a time across connections and processes, the
next one going as soon as the lock is given back (commit, rollback, close, or its process dying),
and a writer kept waiting too long told the database is locked."""

from __future__ import annotations

import multiprocessing
import sqlite3
import time
from pathlib import Path

import pytest
from sqlalchemy import text

from pacs.errors import DatabaseUnavailable
from pacs.index import sqlite_writers
from pacs.index.database import open_engine, write_transaction
from pacs.index.sqlite_writers import QueuedWriterConnection


def _connect(path: Path) -> QueuedWriterConnection:
    conn = sqlite3.connect(path, factory=QueuedWriterConnection, isolation_level=None, check_same_thread=False)
    assert isinstance(conn, QueuedWriterConnection)
    conn.execute("PRAGMA journal_mode=WAL")
    conn.execute("PRAGMA busy_timeout=30000")
    return conn


@pytest.fixture
def database(tmp_path: Path) -> Path:
    path = tmp_path / "index.sqlite3"
    with _connect(path) as conn:
        conn.execute("CREATE TABLE log (who TEXT, at REAL)")
    return path


def _hold_then(path: Path, seconds: float, ending: str, ready: multiprocessing.synchronize.Event) -> None:
    conn = _connect(path)
    conn.begin_write()
    conn.execute("INSERT INTO log VALUES ('child', ?)", (time.time(),))
    ready.set()
    time.sleep(seconds)
    if ending == "die":
        import os

        os._exit(0)  # no commit, no close: the kernel drops the lock with the process
    conn.commit()
    conn.close()


@pytest.mark.parametrize("ending", ["commit", "die"])
def test_a_writer_of_another_process_goes_first_then_this_one_at_once(database: Path, ending: str) -> None:
    ready = multiprocessing.get_context("fork").Event()
    child = multiprocessing.get_context("fork").Process(target=_hold_then, args=(database, 0.5, ending, ready))
    child.start()
    try:
        assert ready.wait(10)
        conn = _connect(database)
        began = time.monotonic()
        conn.begin_write()
        waited = time.monotonic() - began
        conn.execute("INSERT INTO log VALUES ('parent', ?)", (time.time(),))
        conn.commit()
        conn.close()
    finally:
        child.join(10)
    assert 0.3 < waited < 5, waited
    with _connect(database) as check:
        rows = check.execute("SELECT who FROM log ORDER BY rowid").fetchall()
    assert rows == ([("child",), ("parent",)] if ending == "commit" else [("parent",)])


def test_commit_rollback_and_close_each_give_the_lock_back(database: Path) -> None:
    first, second = _connect(database), _connect(database)
    for end in (first.commit, first.rollback):
        first.begin_write()
        end()
        second.begin_write()  # would wait out the whole timeout if the lock were kept
        second.commit()
    first.begin_write()
    first.close()
    second.begin_write()
    second.rollback()
    second.close()


def test_a_writer_kept_waiting_too_long_is_told_the_database_is_locked(
    database: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(sqlite_writers, "WAIT_SECONDS", 0.3)
    holder = _connect(database)
    holder.begin_write()
    engine = open_engine(f"sqlite:///{database}")
    try:
        with pytest.raises(DatabaseUnavailable, match="locked"):
            with write_transaction(engine) as conn:
                conn.execute(text("INSERT INTO log VALUES ('late', 0)"))
        holder.commit()
        with write_transaction(engine) as conn:  # and goes once the holder is done
            conn.execute(text("INSERT INTO log VALUES ('late', 0)"))
    finally:
        holder.close()
        engine.dispose()


def test_the_engine_queues_its_writers(tmp_path: Path) -> None:
    engine = open_engine(f"sqlite:///{tmp_path / 'index.sqlite3'}")
    try:
        with write_transaction(engine) as conn:
            conn.execute(text("CREATE TABLE t (x INTEGER)"))
            assert conn.connection.dbapi_connection._holding  # type: ignore[union-attr]
        assert (tmp_path / "index.sqlite3-writers.lock").exists()
    finally:
        engine.dispose()
