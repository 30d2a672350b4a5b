"""`minipacs user ...`, `minipacs token ...`, `minipacs audit ...` and the first start of
`minipacs serve`, as an operator runs them: separate processes on SQLite in a temp data folder,
checked against a running server where a credential must stop (or start) working."""

from __future__ import annotations

import getpass
import json
import os
import re
import subprocess
import sys
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from contextlib import AbstractContextManager
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import pytest
from starlette.testclient import TestClient

from pacs.app import build_app
from pacs.audit.trail import AuditEvent
from pacs.config import Settings
from pacs.errors import NotAuthenticated
from pacs.index.audit import AuditFilter, AuditRepository
from pacs.index.database import open_engine
from pacs.security.authn import CACHE_SECONDS
from pacs.services import Services
from tests.support.dimse import write_files
from tests.support.factories import make_ct, stow_body
from tests.support.server import running_server

PASSWORD = "correct-horse-battery"
NO_DICOM = {"MINIPACS_DICOM_ENABLED": "off", "MINIPACS_HL7_PORT": "off"}  # these servers need no DICOM port
DICOM_JSON = {"Accept": "application/dicom+json"}


@pytest.fixture
def settings(tmp_path: Path) -> Settings:
    return Settings.from_mapping({"data_dir": tmp_path / "data"})


@pytest.fixture
def env(settings: Settings) -> dict[str, str]:
    base = {k: v for k, v in os.environ.items() if not k.startswith("MINIPACS_")}
    return {**base, "MINIPACS_DATA_DIR": str(settings.data_dir)}


def minipacs(
    env: dict[str, str], *args: str, password: str | None = None, stdin: str = ""
) -> subprocess.CompletedProcess[str]:
    """`python -m pacs.cli ARGS`; a new password (if any) in MINIPACS_NEW_PASSWORD; stdin a pipe."""
    extra = {} if password is None else {"MINIPACS_NEW_PASSWORD": password}
    return subprocess.run(
        [sys.executable, "-m", "pacs.cli", *args], env={**env, **extra}, input=stdin, capture_output=True,
        text=True, timeout=60, check=False,
    )


def in_parallel(*calls: Callable[[], subprocess.CompletedProcess[str]]) -> list[subprocess.CompletedProcess[str]]:
    """Independent commands at once (each process spends most of its time importing)."""
    with ThreadPoolExecutor(max_workers=len(calls)) as pool:
        return [future.result() for future in [pool.submit(call) for call in calls]]


def ok(result: subprocess.CompletedProcess[str]) -> str:
    assert result.returncode == 0, f"exit {result.returncode}\n{result.stdout}\n{result.stderr}"
    assert "minipacs.audit" not in result.stderr  # audited in the database, not echoed on the terminal
    return result.stdout


def refused(result: subprocess.CompletedProcess[str], message: str) -> None:
    """A clear one-line complaint on stderr, a non-zero exit, no traceback."""
    assert result.returncode != 0, result.stdout
    assert f"minipacs: {message}" in result.stderr, result.stderr
    assert "Traceback" not in result.stderr + result.stdout


def users(env: dict[str, str]) -> dict[str, list[str]]:
    """`user list` as {name: [role, state, ...]}."""
    return {line.split()[0]: line.split()[1:] for line in ok(minipacs(env, "user", "list")).splitlines()}


def tokens(env: dict[str, str]) -> dict[str, list[str]]:
    """`token list` as {id: [user, state, "until", date, scopes, label...]}."""
    return {line.split()[0]: line.split()[1:] for line in ok(minipacs(env, "token", "list")).splitlines()}


def wait_for_status(url: str, secret: str, expected: int, timeout: float = CACHE_SECONDS + 5) -> None:
    """Poll until the token gets `expected`: a server trusts a checked token for CACHE_SECONDS."""
    deadline = time.monotonic() + timeout
    while (status := me(url, secret).status_code) != expected:
        assert time.monotonic() < deadline, f"still {status}, not {expected}, after {timeout} s"
        time.sleep(0.2)


def me(url: str, secret: str) -> httpx.Response:
    return httpx.get(f"{url}/api/me", headers={"Authorization": f"Bearer {secret}"}, timeout=10)


# ---- users ----------------------------------------------------------------------------------


def test_user_commands(env: dict[str, str], settings: Settings) -> None:
    assert ok(minipacs(env, "user", "add", "alice", "--role", "radiologist", password=PASSWORD)) == \
        "added alice (radiologist)\n"
    added = in_parallel(
        lambda: minipacs(env, "user", "add", "bob", "--role", "technologist", stdin=PASSWORD + "\n"),  # a pipe
        lambda: minipacs(env, "user", "add", "carol", "--role", "provider", "--provider-name", "Smith^John",
                         password=PASSWORD),
        lambda: minipacs(env, "user", "add", "robot", "--role", "integration", "--no-password"),
    )
    assert [ok(result) for result in added] == [
        "added bob (technologist)\n", "added carol (provider)\n", "added robot (integration)\n",
    ]
    assert users(env) == {
        "alice": ["radiologist", "active"], "bob": ["technologist", "active"],
        "carol": ["provider", "active", "refers", "as", "SMITH^JOHN"], "robot": ["integration", "active"],
    }

    errors = in_parallel(
        lambda: minipacs(env, "user", "add", "dave", "--role", "janitor", password=PASSWORD),
        lambda: minipacs(env, "user", "add", "no spaces!", "--role", "admin", password=PASSWORD),
        lambda: minipacs(env, "user", "add", "erin", "--role", "admin", password="short"),
        lambda: minipacs(env, "user", "add", "frank", "--role", "provider", password=PASSWORD),
        lambda: minipacs(env, "user", "add", "alice", "--role", "admin", password=PASSWORD),
        lambda: minipacs(env, "user", "set-role", "alice", "provider"),
        lambda: minipacs(env, "user", "set-role", "alice", "janitor"),
        lambda: minipacs(env, "user", "set-password", "bob", password="short"),
        lambda: minipacs(env, "user", "disable", "nobody"),
    )
    messages = [
        "unknown role 'janitor'; one of admin, radiologist, technologist, provider, integration",
        "user names are 1 to 64 letters",
        "passwords have at least 8 characters",
        "a provider needs the referring physician name",
        "user alice already exists",
        "a provider needs the referring physician name",
        "unknown role 'janitor'",
        "passwords have at least 8 characters",
        "no user nobody",
    ]
    for result, message in zip(errors, messages, strict=True):
        refused(result, message)

    changes = in_parallel(
        lambda: minipacs(env, "user", "set-role", "alice", "provider", "--provider-name", "Jones^Ann"),
        lambda: minipacs(env, "user", "set-role", "carol", "technologist"),
        lambda: minipacs(env, "user", "set-password", "bob", password="a-new-secret-1"),
        lambda: minipacs(env, "user", "disable", "robot"),
    )
    assert [ok(result) for result in changes] == [
        "alice is now provider\n", "carol is now technologist\n", "password of bob changed\n", "disabled robot\n",
    ]
    assert users(env) == {
        "alice": ["provider", "active", "refers", "as", "JONES^ANN"], "bob": ["technologist", "active"],
        "carol": ["technologist", "active"], "robot": ["integration", "disabled"],  # no link once not a provider
    }

    services = Services.build(settings)
    try:
        check = services.authenticator.check_password
        with pytest.raises(NotAuthenticated):
            check("bob", PASSWORD, "192.0.2.1")
        assert check("bob", "a-new-secret-1", "192.0.2.1").username == "bob"
        assert check("alice", PASSWORD, "192.0.2.1").role == "provider"  # alice's password is unchanged
        assert services.accounts.repository.user("robot").password_hash is None
    finally:
        services.close()


def test_disable_enable_and_tokens_against_a_running_server(env: dict[str, str], settings: Settings) -> None:
    ok(minipacs(env, "user", "add", "tech", "--role", "technologist", password=PASSWORD))
    robot_added, tech = in_parallel(
        lambda: minipacs(env, "user", "add", "robot", "--role", "integration", "--no-password"),
        lambda: minipacs(env, "token", "create", "tech", "--label", "workstation"),
    )
    ok(robot_added)
    unscoped, robot = in_parallel(
        lambda: minipacs(env, "token", "create", "robot"),
        lambda: minipacs(env, "token", "create", "robot", "--scope", "store", "--label", "modality bridge"),
    )
    refused(unscoped, "integration accounts get only the scopes their token names: give --scope")
    tech_secret, robot_secret = ok(tech).strip(), ok(robot).strip()
    for result, secret in ((tech, tech_secret), (robot, robot_secret)):
        assert re.fullmatch(r"mpt_\S+", secret), result.stdout  # only the secret on stdout
        assert "shown only now" in result.stderr
    listed = tokens(env)
    by_user = {fields[0]: (pk, fields) for pk, fields in listed.items()}
    assert set(by_user) == {"tech", "robot"}
    _, tech_fields = by_user["tech"]
    robot_id, robot_fields = by_user["robot"]
    assert tech_fields[1] == "active" and "scopes=(role)" in tech_fields and tech_fields[-1] == "workstation"
    assert robot_fields[1] == "active" and "scopes=store" in robot_fields
    assert " ".join(robot_fields).endswith("modality bridge")
    assert tech_secret not in " ".join(" ".join(f) for f in listed.values())

    with running_server(settings, extra_env=NO_DICOM) as url:
        answer = me(url, tech_secret)
        assert answer.status_code == 200, answer.text
        assert (answer.json()["user"], answer.json()["role"]) == ("tech", "technologist")
        assert httpx.get(f"{url}/dicom-web/studies", headers={**DICOM_JSON, "Authorization": f"Bearer {tech_secret}"}
                         ).status_code == 200
        # The integration token can store and nothing else.
        robot_auth = {"Authorization": f"Bearer {robot_secret}"}
        assert me(url, robot_secret).json()["permissions"] == ["store"]
        body, content_type = stow_body([make_ct(16)])
        stored = httpx.post(f"{url}/dicom-web/studies", content=body, timeout=30,
                            headers={**robot_auth, "Content-Type": content_type, **DICOM_JSON})
        assert stored.status_code == 200, stored.text
        assert httpx.get(f"{url}/dicom-web/studies", headers={**DICOM_JSON, **robot_auth}).status_code == 403

        disabled, revoked = in_parallel(
            lambda: minipacs(env, "user", "disable", "tech"),
            lambda: minipacs(env, "token", "revoke", robot_id),
        )
        assert ok(disabled) == "disabled tech\n"
        assert ok(revoked) == f"revoked token {robot_id}\n"
        wait_for_status(url, tech_secret, 401)
        wait_for_status(url, robot_secret, 401)
        listed_users, listed_tokens, again = in_parallel(
            lambda: minipacs(env, "user", "list"),
            lambda: minipacs(env, "token", "list"),
            lambda: minipacs(env, "token", "revoke", robot_id),
        )
        assert [line.split() for line in ok(listed_users).splitlines()] == [
            ["robot", "integration", "active"], ["tech", "technologist", "disabled"],
        ]
        states = {line.split()[0]: line.split()[2] for line in ok(listed_tokens).splitlines()}
        assert states[robot_id] == "revoked"
        refused(again, f"no active token {robot_id}")

        assert ok(minipacs(env, "user", "enable", "tech")) == "enabled tech\n"
        wait_for_status(url, tech_secret, 200)
        assert users(env)["tech"] == ["technologist", "active"]
        assert me(url, robot_secret).status_code == 401  # a revoked token stays revoked


# ---- the audit trail ------------------------------------------------------------------------


def audit(env: dict[str, str], *filters: str) -> list[dict[str, Any]]:
    return [json.loads(line) for line in ok(minipacs(env, "audit", "search", "--json", *filters)).splitlines()]


def test_audit_search(env: dict[str, str], settings: Settings, tmp_path: Path) -> None:
    first, second = make_ct(16, PatientID="P-AUD-1"), make_ct(16, PatientID="P-AUD-2")
    write_files([first, second], tmp_path / "import")
    ok(minipacs(env, "import", "--quiet", str(tmp_path / "import")))
    operator = f"cli:{getpass.getuser()}"
    split = datetime.now(UTC)

    services = Services.build(settings)
    try:
        services.accounts.add_user("viewer", "radiologist")
        secret = services.accounts.issue_token("viewer").secret
        with TestClient(build_app(settings, services), headers={"Authorization": f"Bearer {secret}"}) as client:
            found = client.get("/dicom-web/studies", params={"PatientID": "P-AUD-1"}, headers=DICOM_JSON)
            assert found.status_code == 200 and len(found.json()) == 1
            assert client.get(f"/dicom-web/studies/{first.StudyInstanceUID}/metadata").status_code == 200
    finally:
        services.close()  # writes what is pending

    everything = audit(env)
    summary = [(r["actor"], r["action"], r["study_uid"], r["patient_id"]) for r in everything]
    assert summary[:2] == [("viewer", "read", first.StudyInstanceUID, "P-AUD-1"), ("viewer", "search", None, None)]
    assert sorted(summary[2:4]) == sorted([(operator, "store", first.StudyInstanceUID, "P-AUD-1"),
                                           (operator, "store", second.StudyInstanceUID, "P-AUD-2")])
    assert len(summary) == 4
    times = [r["occurred_at"] for r in everything]
    assert times == sorted(times, reverse=True), "not newest first"
    search = next(r for r in everything if r["action"] == "search")
    assert search["detail"]["query"] == {"PatientID": "P-AUD-1"} and search["channel"] == "http"
    assert all(r["channel"] == "cli" and r["outcome"] == "success" and r["detail"]["instances"] == 1
               for r in everything if r["action"] == "store")

    by_user, by_study, by_patient, by_action, since, text, bad = in_parallel(
        lambda: minipacs(env, "audit", "search", "--json", "--user", "viewer"),
        lambda: minipacs(env, "audit", "search", "--json", "--study", first.StudyInstanceUID),
        lambda: minipacs(env, "audit", "search", "--json", "--patient", "P-AUD-2"),
        lambda: minipacs(env, "audit", "search", "--json", "--action", "store"),
        lambda: minipacs(env, "audit", "search", "--json", "--since", split.isoformat(), "--patient", "P-AUD-1"),
        lambda: minipacs(env, "audit", "search", "--patient", "P-AUD-2"),
        lambda: minipacs(env, "audit", "search", "--since", "yesterday"),
    )

    def rows(result: subprocess.CompletedProcess[str]) -> list[tuple[str, str, str | None]]:
        return [(r["actor"], r["action"], r["study_uid"]) for r in map(json.loads, ok(result).splitlines())]

    assert rows(by_user) == [("viewer", "read", first.StudyInstanceUID), ("viewer", "search", None)]
    assert rows(by_study) == [("viewer", "read", first.StudyInstanceUID), (operator, "store", first.StudyInstanceUID)]
    assert rows(by_patient) == [(operator, "store", second.StudyInstanceUID)]
    assert sorted(rows(by_action)) == sorted([(operator, "store", first.StudyInstanceUID),
                                              (operator, "store", second.StudyInstanceUID)])
    assert rows(since) == [("viewer", "read", first.StudyInstanceUID)]  # the import came before `split`
    [line] = ok(text).splitlines()
    assert line.split()[1:] == [operator, "store", "success", "P-AUD-2", second.StudyInstanceUID, "x1"], line
    assert bad.returncode == 2 and "yesterday" in bad.stderr and "Traceback" not in bad.stderr

    # Reading the trail is itself recorded: each search above that ran (the bad --since did not).
    reads = audit(env, "--action", "admin", "--user", operator)
    assert len(reads) == 7 and all(r["detail"]["operation"] == "audit-search" for r in reads)
    assert json.loads(reads[-1]["detail"]["target"]) == {} and {"user": "viewer"} in [
        json.loads(r["detail"]["target"]) for r in reads]


# ---- the first start of `minipacs serve` ----------------------------------------------------


def serve(settings: Settings, log: Path, **extra: str) -> AbstractContextManager[str]:
    """`minipacs serve` (HTTP only) writing its output to `log`; the context yields its URL."""
    return running_server(settings, log_path=log, extra_env={**NO_DICOM, **extra})


def test_first_start_prints_the_admin_password_once(settings: Settings, tmp_path: Path) -> None:
    with serve(settings, tmp_path / "first.log") as url:
        output = (tmp_path / "first.log").read_text()
        [password] = re.findall(r"User: admin  Password: (\S+)", output)
        assert httpx.get(f"{url}/dicom-web/studies", headers=DICOM_JSON).status_code == 401
        answer = httpx.get(f"{url}/api/me", auth=("admin", password))
        assert answer.status_code == 200 and answer.json()["role"] == "admin"
        assert "authentication is OFF" not in output and "ALLOWLIST is off" not in output

    with serve(settings, tmp_path / "second.log") as url:
        output = (tmp_path / "second.log").read_text()
        assert "Password" not in output and password not in output
        assert httpx.get(f"{url}/api/me", auth=("admin", password)).status_code == 200


def test_authentication_off_warns_and_opens_the_archive(tmp_path: Path) -> None:
    settings = Settings.from_mapping({"data_dir": tmp_path / "open"})
    with serve(settings, tmp_path / "open.log", MINIPACS_AUTH="off") as url:
        output = (tmp_path / "open.log").read_text()
        assert "WARNING: authentication is OFF" in output
        assert "Password" not in output
        studies = httpx.get(f"{url}/dicom-web/studies", headers=DICOM_JSON)
        assert studies.status_code == 200 and studies.json() == []
        assert httpx.get(f"{url}/api/me").json()["user"] == "anonymous"


# ---- purging the audit trail and an empty password -------------------------------------------


def test_audit_purge_removes_and_reports_events_past_retention(env: dict[str, str], settings: Settings) -> None:
    services = Services.build(settings)
    try:
        old = datetime.now(UTC) - timedelta(days=settings.audit_retention_days + 1)
        services.audit.record(AuditEvent("http", "ancient", "admin", "", "read", "success", occurred_at=old))
        services.audit.record(AuditEvent("http", "recent", "admin", "", "read", "success"))
        assert [r["actor"] for r in services.audit.search(AuditFilter())] == ["recent", "ancient"]
    finally:
        services.close()
    purged = minipacs(env, "audit", "purge")
    repository = AuditRepository(open_engine(settings.effective_database_url))  # opening it purges nothing
    try:
        assert [r["actor"] for r in repository.search(AuditFilter())] == ["recent"]
    finally:
        repository.engine.dispose()
    assert ok(purged) == f"removed 1 audit event(s) older than {settings.audit_retention_days} days\n"


def test_empty_password_is_refused_not_taken_for_none(env: dict[str, str]) -> None:
    """A script that pipes an empty line (or nothing) must not get an account without a password:
    a token-only account is asked for with --no-password."""
    result = minipacs(env, "user", "add", "quiet", "--role", "admin", stdin="\n")
    refused(result, "passwords have at least 8 characters")
    assert "quiet" not in users(env)

