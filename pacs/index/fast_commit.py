"""The common case of indexing new instances, in plain SQL on the driver's own connection.

Nearly every instance that arrives is new and belongs to a series the index already holds
(every instance of a series but the first). For a batch of those, the work is one SELECT of the
series and one INSERT per instance; going through SQLAlchemy's statement machinery for them
costs several times the statements themselves. This path runs exactly those statements and
nothing else. Whenever a batch holds anything else - a series not yet indexed, a series filed
under another study, an instance already stored - it rolls back and says so, and the general
path in repository.py indexes the batch, with all its rules.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from typing import Any

from sqlalchemy import Engine

from pacs.errors import DatabaseUnavailable
from pacs.index.database import writer_turn
from pacs.index.schema import instances

_FIND_SERIES = (
    "SELECT series.pk, studies.study_instance_uid FROM series JOIN studies ON series.study_pk = studies.pk "
    "WHERE series.series_instance_uid = :series_uid"
)
_INSERT = (
    "INSERT INTO instances ({columns}) VALUES ({values}) "
    "ON CONFLICT (sop_instance_uid) DO NOTHING RETURNING pk"
)


class FastCommit:
    """Commits batches of new instances of known series; ``commit`` returns False (and leaves
    nothing behind) for a batch that needs the general path."""

    def __init__(self, engine: Engine) -> None:
        self.engine = engine
        self.dialect = engine.dialect.name
        self.usable = self.dialect in ("sqlite", "postgresql")
        self._inserts: dict[tuple[str, ...], str] = {}
        self._find_series = self._sql(_FIND_SERIES)

    def commit(self, rows: Sequence[tuple[str, str, dict[str, Any]]]) -> bool:
        """``rows``: (series UID, study UID, instance column values without series_pk) per
        instance. True when all were indexed in one committed transaction."""
        if not self.usable:
            return False
        with writer_turn(self.engine):
            return self._commit(rows)

    def _commit(self, rows: Sequence[tuple[str, str, dict[str, Any]]]) -> bool:
        dbapi = self.engine.dialect.dbapi
        connection = self.engine.raw_connection()
        try:
            cursor = connection.cursor()
            try:
                if self.dialect == "sqlite":
                    cursor.execute("BEGIN IMMEDIATE")  # the write lock up front (see database.py)
                if not self._insert_all(cursor, rows):
                    connection.rollback()
                    return False
                connection.commit()
                return True
            finally:
                cursor.close()
        except dbapi.OperationalError as exc:  # type: ignore[union-attr]
            _rollback(connection)
            raise DatabaseUnavailable(f"database unavailable: {str(exc).splitlines()[0]}") from exc
        except dbapi.Error:  # type: ignore[union-attr]
            _rollback(connection)  # e.g. the series vanished meanwhile: the general path decides
            return False
        finally:
            connection.close()

    def _insert_all(self, cursor: Any, rows: Sequence[tuple[str, str, dict[str, Any]]]) -> bool:
        series_pks: dict[str, int] = {}
        for series_uid, study_uid, values in rows:
            pk = series_pks.get(series_uid)
            if pk is None:
                cursor.execute(self._find_series, {"series_uid": series_uid})
                found = cursor.fetchone()
                if found is None or found[1] != study_uid:
                    return False  # a new series, or one of another study
                pk = series_pks[series_uid] = int(found[0])
            cursor.execute(self._insert_for(tuple(values)), {**values, "series_pk": pk})
            if cursor.fetchone() is None:
                return False  # already stored: the duplicate policy decides
        return True

    def _insert_for(self, keys: tuple[str, ...]) -> str:
        sql = self._inserts.get(keys)
        if sql is None:
            columns = ("series_pk", *keys)
            unknown = [c for c in columns if c not in instances.c]
            if unknown:
                raise ValueError(f"not columns of instances: {unknown}")
            sql = self._sql(_INSERT.format(columns=", ".join(columns), values=", ".join(f":{c}" for c in columns)))
            self._inserts[keys] = sql
        return sql

    def _sql(self, text: str) -> str:
        """Named parameters in the driver's style: :name (sqlite3), %(name)s (psycopg)."""
        if self.dialect == "postgresql":
            return re.sub(r":([a-z0-9_]+)", r"%(\1)s", text)
        return text


def _rollback(connection: Any) -> None:
    try:
        connection.rollback()
    except Exception:  # the connection may be gone; the pool discards it
        pass
