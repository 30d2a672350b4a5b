"""Engine creation and transaction helpers for SQLite and PostgreSQL."""

from __future__ import annotations

import time
from collections.abc import Iterator
from contextlib import AbstractContextManager, contextmanager, nullcontext
from contextvars import ContextVar
from pathlib import Path
from typing import Any
from weakref import WeakKeyDictionary

from sqlalchemy import Connection, Engine, create_engine, event
from sqlalchemy.exc import DBAPIError, DisconnectionError, OperationalError

from pacs.errors import DatabaseUnavailable
from pacs.index.writer_lock import PendingSync, WriterLock

IDLE_PING_SECONDS = 10.0
SQLITE_BUSY_SECONDS = 30

_writer_locks: WeakKeyDictionary[Engine, WriterLock] = WeakKeyDictionary()


def open_engine(url: str, *, pool_size: int = 10) -> Engine:
    if url.startswith("sqlite"):
        return _sqlite_engine(url)
    engine = create_engine(url, pool_size=pool_size, max_overflow=20, connect_args={"connect_timeout": 10})
    _ping_idle_connections(engine)
    return engine


def _ping_idle_connections(engine: Engine) -> None:
    """A pooled connection that sat unused may have been closed by the server (a restart, an
    idle timeout): it is tested before use, and replaced if dead. Only after IDLE_PING_SECONDS
    of idleness - SQLAlchemy's pool_pre_ping would add a round trip to every transaction."""

    @event.listens_for(engine, "checkin")
    def _mark_idle(dbapi_conn: Any, record: Any) -> None:
        record.info["idle_since"] = time.monotonic()

    @event.listens_for(engine, "checkout")
    def _ping(dbapi_conn: Any, record: Any, proxy: Any) -> None:
        if time.monotonic() - record.info.get("idle_since", time.monotonic()) < IDLE_PING_SECONDS:
            return
        try:
            cursor = dbapi_conn.cursor()
            cursor.execute("SELECT 1")
            cursor.close()
            dbapi_conn.rollback()
        except Exception as exc:  # any failure means this connection is unusable
            raise DisconnectionError(f"pooled connection is dead: {exc}") from exc


def _sqlite_engine(url: str) -> Engine:
    path = url.split("///", 1)[-1]
    on_disk = bool(path) and path != ":memory:"
    if on_disk:
        Path(path).parent.mkdir(parents=True, exist_ok=True)
    engine = create_engine(url, connect_args={"check_same_thread": False, "timeout": SQLITE_BUSY_SECONDS})
    if on_disk:
        _writer_locks[engine] = WriterLock(
            Path(f"{path}.writer-lock"), SQLITE_BUSY_SECONDS, Path(f"{path}-wal"), database=Path(path)
        )

    @event.listens_for(engine, "connect")
    def _on_connect(dbapi_conn: Any, _record: Any) -> None:
        # Let SQLAlchemy's "begin" event issue BEGIN itself (pysqlite's implicit BEGIN is
        # deferred, and a deferred reader that later writes can fail with SQLITE_BUSY at once).
        dbapi_conn.isolation_level = None
        cursor = dbapi_conn.cursor()
        cursor.execute("PRAGMA journal_mode=WAL")
        # A committed transaction must survive power loss, as a success status promises. With
        # NORMAL, SQLite does not sync the WAL at each commit: on a database file, the writer syncs
        # it after its turn, before returning (writer_lock); in memory there is nothing to sync.
        cursor.execute("PRAGMA synchronous=NORMAL" if on_disk else "PRAGMA synchronous=FULL")
        cursor.execute("PRAGMA foreign_keys=ON")
        cursor.execute(f"PRAGMA busy_timeout={SQLITE_BUSY_SECONDS * 1000}")
        # DICOM matching is case sensitive except for person names (normalised columns).
        cursor.execute("PRAGMA case_sensitive_like=ON")
        cursor.close()

    @event.listens_for(engine, "begin")
    def _on_begin(conn: Connection) -> None:
        writing = conn.get_execution_options().get("sqlite_write", False)
        conn.exec_driver_sql("BEGIN IMMEDIATE" if writing else "BEGIN")

    return engine


# The transaction of the unit of work this thread is in, if any (see unit_of_work).
_unit: ContextVar[Connection | None] = ContextVar("unit_of_work", default=None)


@contextmanager
def unit_of_work(engine: Engine) -> Iterator[Connection]:
    """One write transaction for everything done in this thread until the block ends: the
    read_transaction and write_transaction blocks of any repository on this engine join it
    instead of committing on their own, so several repositories' changes commit (or roll back,
    on any exception) together, with one commit."""
    if _joined(engine) is not None:
        raise RuntimeError("units of work do not nest")
    with write_transaction(engine) as conn:
        token = _unit.set(conn)
        try:
            yield conn
        finally:
            _unit.reset(token)


def _joined(engine: Engine) -> Connection | None:
    conn = _unit.get()
    return conn if conn is not None and conn.engine is engine else None


def make_durable(engine: Engine) -> None:
    """Sync what any writer has committed so far (on SQLite; PostgreSQL commits durably): for a
    reader about to report as stored something another writer may have committed a moment ago."""
    lock = _writer_locks.get(engine)
    if lock is not None:
        lock.sync()


def syncing_later(engine: Engine) -> AbstractContextManager[PendingSync | None]:
    """Write transactions this thread runs within the block return before their commit is
    synced; the caller calls ``wait()`` on what the block yields (None: nothing to sync, as on
    PostgreSQL, which commits durably) before it reports them."""
    lock = _writer_locks.get(engine)
    return lock.deferring() if lock is not None else nullcontext(None)


def writer_turn(engine: Engine) -> AbstractContextManager[None]:
    """Held around a write transaction on a SQLite file: the writers of every process take turns
    (see writer_lock); nothing to wait for elsewhere."""
    lock = _writer_locks.get(engine)
    return lock.held() if lock is not None else nullcontext()


@contextmanager
def write_transaction(engine: Engine) -> Iterator[Connection]:
    """A transaction that will write: on SQLite it takes the write lock up front."""
    joined = _joined(engine)
    if joined is not None:
        yield joined
        return
    try:
        with writer_turn(engine), engine.connect() as conn:
            conn = conn.execution_options(sqlite_write=True)
            with conn.begin():
                yield conn
    except OperationalError as exc:
        raise DatabaseUnavailable(f"database unavailable: {_short(exc)}") from exc


@contextmanager
def read_transaction(engine: Engine) -> Iterator[Connection]:
    joined = _joined(engine)
    if joined is not None:  # inside a unit of work: read what it wrote
        yield joined
        return
    try:
        with engine.connect() as conn:
            with conn.begin():
                yield conn
    except OperationalError as exc:
        raise DatabaseUnavailable(f"database unavailable: {_short(exc)}") from exc


def _short(exc: DBAPIError) -> str:
    return str(exc.orig).splitlines()[0] if exc.orig else str(exc).splitlines()[0]
