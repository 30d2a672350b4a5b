"""Shared fixtures. `backend` runs a test on both index+storage pairs:
SQLite + folder, and PostgreSQL (a fresh database cloned per test) + S3 (moto server)."""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from starlette.testclient import TestClient

from pacs.app import build_app
from pacs.config import Settings
from pacs.services import Services
from tests.support import postgres
from tests.support.s3server import running_s3_server, s3_test_env

BACKENDS = ["sqlite-fs", "postgres-s3"]


@pytest.fixture(scope="session")
def s3_endpoint() -> Iterator[str]:
    os.environ.update(s3_test_env())  # boto3 in this process signs with the fake keys
    with running_s3_server() as endpoint:
        yield endpoint


@pytest.fixture(scope="session")
def pg_template() -> Iterator[str]:
    if not postgres.available():
        pytest.fail("PostgreSQL is not reachable at 127.0.0.1:5432 (see README: running the tests)")
    with postgres.template_database() as name:
        yield name


def make_settings(kind: str, tmp_path: Path, request: pytest.FixtureRequest, **extra: object) -> Iterator[Settings]:
    base: dict[str, object] = {"data_dir": tmp_path / "data", **extra}
    if kind == "sqlite-fs":
        yield Settings.from_mapping(base)
        return
    endpoint = request.getfixturevalue("s3_endpoint")
    template = request.getfixturevalue("pg_template")
    with postgres.cloned_database(template) as dbname:
        yield Settings.from_mapping(
            {
                **base,
                "database_url": postgres.sqlalchemy_url(dbname),
                "storage_url": f"s3://t-{uuid.uuid4().hex[:16]}/archive",
                "s3_endpoint_url": endpoint,
                "s3_region": "us-east-1",
            }
        )


@pytest.fixture(params=BACKENDS)
def settings(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Settings]:
    yield from make_settings(request.param, tmp_path, request)


@pytest.fixture
def sqlite_settings(tmp_path: Path) -> Settings:
    return Settings.from_mapping({"data_dir": tmp_path / "data"})


@pytest.fixture
def services(settings: Settings) -> Iterator[Services]:
    built = Services.build(settings)
    try:
        yield built
    finally:
        built.close()


def bearer_headers(services: Services, role: str = "admin", username: str | None = None, **user: str) -> dict[str, str]:
    """An Authorization header for a new user of `role` (with an API token, no password)."""
    name = username or f"{role}-{uuid.uuid4().hex[:8]}"
    services.accounts.add_user(name, role, **user)
    return {"Authorization": f"Bearer {services.accounts.issue_token(name).secret}"}


@pytest.fixture
def client(services: Services) -> Iterator[TestClient]:
    """A DICOMweb client authenticated as an administrator."""
    app = build_app(services.settings, services)
    with TestClient(app, headers=bearer_headers(services, username="tester")) as test_client:
        yield test_client
