"""Fresh PostgreSQL databases on the local server for tests.

A template database is migrated once per run; each test clones it (CREATE DATABASE ... TEMPLATE),
which is much faster than migrating from scratch every time.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator
from contextlib import contextmanager

import psycopg

ADMIN_DSN = os.environ.get("MINIPACS_TEST_PG_DSN", "host=127.0.0.1 port=5432 user=postgres dbname=postgres")


def sqlalchemy_url(dbname: str) -> str:
    params = dict(item.split("=", 1) for item in ADMIN_DSN.split())
    auth = params.get("user", "postgres") + (f":{params['password']}" if "password" in params else "")
    return f"postgresql+psycopg://{auth}@{params.get('host', '127.0.0.1')}:{params.get('port', '5432')}/{dbname}"


def _admin() -> psycopg.Connection:
    return psycopg.connect(ADMIN_DSN, autocommit=True, connect_timeout=5)


def available() -> bool:
    try:
        with _admin():
            return True
    except psycopg.OperationalError:
        return False


@contextmanager
def template_database() -> Iterator[str]:
    """A migrated database to clone; dropped at the end."""
    from pacs.index.database import open_engine
    from pacs.index.migrate import upgrade_database

    name = f"minipacs_tpl_{os.getpid()}_{uuid.uuid4().hex[:6]}"
    with _admin() as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    try:
        engine = open_engine(sqlalchemy_url(name))
        upgrade_database(engine)
        engine.dispose()
        yield name
    finally:
        drop_database(name)


@contextmanager
def cloned_database(template: str) -> Iterator[str]:
    name = f"minipacs_test_{uuid.uuid4().hex[:12]}"
    with _admin() as conn:
        conn.execute(f'CREATE DATABASE "{name}" TEMPLATE "{template}"')
    try:
        yield name
    finally:
        drop_database(name)


def drop_database(name: str) -> None:
    with _admin() as conn:
        conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
