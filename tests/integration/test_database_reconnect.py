"""Pooled PostgreSQL connections the server closed meanwhile (a restart, an idle timeout) are
replaced before use: the next request works instead of failing once per dead connection."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import psycopg
import pytest

from pacs.index import database
from pacs.services import Services
from tests.conftest import make_settings
from tests.support import postgres
from tests.support.factories import make_ct, to_bytes


@pytest.fixture
def pg_services(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Services]:
    for settings in make_settings("postgres-s3", tmp_path, request):
        services = Services.build(settings)
        try:
            yield services
        finally:
            services.close()


def kill_connections(services: Services) -> int:
    with psycopg.connect(postgres.ADMIN_DSN, autocommit=True) as admin:
        rows = admin.execute(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = %s AND pid <> pg_backend_pid()",
            (services.engine.url.database,),
        ).fetchall()
    return len(rows)


def test_dead_pooled_connections_are_replaced(pg_services: Services, monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setattr(database, "IDLE_PING_SECONDS", 0.0)  # every checkout counts as idle
    pg_services.index.counts()  # a pooled connection now exists
    assert kill_connections(pg_services) >= 1
    assert pg_services.index.counts()["instances"] == 0  # no error: the dead connection was replaced
    path = tmp_path / "ct.dcm"
    path.write_bytes(to_bytes(make_ct(8)))
    kill_connections(pg_services)
    report = pg_services.ingest.store_file(path)  # the plain-SQL commit path checks out too
    assert report.ok, report.error
    assert pg_services.index.counts()["instances"] == 1
