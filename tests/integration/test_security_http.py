"""HTTP security on both backends: who may call what (one table), provider scoping, sessions
with CSRF, token expiry and revocation, lockout after failed logins, the admin API, and the
audit trail of every access (including refused ones), append-only in the database."""

from __future__ import annotations

import base64
import json
import logging
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import timedelta

import pytest
from pydicom.dataset import Dataset
from sqlalchemy import text
from starlette.testclient import TestClient

from pacs.app import build_app
from pacs.audit import trail as audit_trail
from pacs.audit.trail import Action, AuditEvent, Outcome
from pacs.index.accounts import utcnow
from pacs.index.audit import AuditFilter
from pacs.security.credentials import new_secret, secret_hash
from pacs.services import Services
from tests.support.factories import make_ct, make_series, stow_body

PASSWORD = "a long enough password"


@dataclass
class Archive:
    services: Services
    client: TestClient  # no credentials of its own
    mine: list[Dataset]  # a study of an order DOC^OWN (the provider) placed
    theirs: list[Dataset]  # a study of someone else's order
    credentials: dict[str, dict[str, str]]  # credential name -> headers

    def audit(self, **where: object) -> list[dict[str, object]]:
        return self.services.audit.search(AuditFilter(**where))  # type: ignore[arg-type]


def _basic(user: str, password: str) -> dict[str, str]:
    return {"Authorization": "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode()}


def _bearer(secret: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {secret}"}


def _store(services: Services, datasets: list[Dataset]) -> None:
    for ds in datasets:
        path = services.settings.data_dir / f"{ds.SOPInstanceUID}.dcm"
        ds.save_as(path, enforce_file_format=True)
        report = services.ingest.store_file(path, consume=True)
        assert report.ok, report.error


@pytest.fixture
def archive(services: Services) -> Iterator[Archive]:
    # Providers see the studies linked to their orders: each study arrives with its order's accession number.
    own, other = (
        services.orders.create({"patient_id": pid, "patient_name": name, "modality": "CT", "ordering_provider": doc},
                               created_by="desk")
        for pid, name, doc in (("PID-MINE", "Mine^Patient", "Doc^Own"), ("PID-THEIRS", "Their^Patient", "Other^Doc"))
    )
    mine = make_series(2, PatientID="PID-MINE", PatientName="Mine^Patient", ReferringPhysicianName="Doc^Own",
                       AccessionNumber=own.accession_number)
    theirs = make_series(2, PatientID="PID-THEIRS", PatientName="Their^Patient", ReferringPhysicianName="Doc^Own",
                         AccessionNumber=other.accession_number)  # naming DOC^OWN does not make it theirs
    _store(services, mine + theirs)
    accounts = services.accounts
    credentials: dict[str, dict[str, str]] = {"none": {}, "wrong": _bearer(new_secret("mpt_"))}
    for role in ("admin", "radiologist", "technologist"):
        accounts.add_user(role, role, PASSWORD)
        credentials[role] = _bearer(accounts.issue_token(role).secret)
    accounts.add_user("provider", "provider", PASSWORD, provider_name="doc^own^^")
    credentials["provider"] = _bearer(accounts.issue_token("provider").secret)
    accounts.add_user("hl7engine", "integration")
    credentials["integration:store"] = _bearer(accounts.issue_token("hl7engine", scopes="store").secret)
    # An expired token: issued, then its expiry moved into the past.
    expired = new_secret("mpt_")
    user = accounts.repository.user("admin")
    accounts.repository.add_token(
        user, secret_hash(expired), kind="api", label="old", scopes="", expires_at=utcnow() - timedelta(minutes=1)
    )
    credentials["expired"] = _bearer(expired)
    credentials["basic:radiologist"] = _basic("radiologist", PASSWORD)
    with TestClient(build_app(services.settings, services)) as client:
        yield Archive(services, client, mine, theirs, credentials)


def _paths(archive: Archive) -> dict[str, tuple[str, str]]:
    theirs = archive.theirs[0]
    study = f"/dicom-web/studies/{theirs.StudyInstanceUID}"
    instance = f"{study}/series/{theirs.SeriesInstanceUID}/instances/{theirs.SOPInstanceUID}"
    return {
        "health": ("GET", "/health"),
        "search": ("GET", "/dicom-web/studies"),
        "series search": ("GET", "/dicom-web/series"),
        "metadata": ("GET", f"{study}/metadata"),
        "retrieve": ("GET", instance),
        "frames": ("GET", f"{instance}/frames/1"),
        "bulk": ("GET", f"{instance}/bulk/7FE00010"),
        "rendered": ("GET", f"{instance}/rendered"),
        "thumbnail": ("GET", f"{study}/thumbnail"),
        "wado-uri": ("GET", f"/wado?requestType=WADO&studyUID={theirs.StudyInstanceUID}"
                            f"&seriesUID={theirs.SeriesInstanceUID}&objectUID={theirs.SOPInstanceUID}"),
        "store": ("POST", "/dicom-web/studies"),
        "delete": ("DELETE", study),
        "users": ("GET", "/api/users"),
        "add user": ("POST", "/api/users"),
        "aes": ("GET", "/api/aes"),
        "audit": ("GET", "/api/audit"),
        "me": ("GET", "/api/me"),
    }


# Expected HTTP status per credential (rows) and endpoint (columns). The study the read and
# delete columns address is not of the provider's orders: for them it does not exist (404).
ENDPOINTS = ["health", "search", "series search", "metadata", "retrieve", "frames", "bulk", "rendered", "thumbnail",
             "wado-uri", "store", "delete", "users", "add user", "aes", "audit", "me"]
MATRIX: dict[str, list[int]] = {
    #                   health search series meta retr frames bulk rend thumb wado store delete users add aes audit me
    "none":              [200, 401, 401, 401, 401, 401, 401, 401, 401, 401, 401, 401, 401, 401, 401, 401, 401],
    "wrong":             [200, 401, 401, 401, 401, 401, 401, 401, 401, 401, 401, 401, 401, 401, 401, 401, 401],
    "expired":           [200, 401, 401, 401, 401, 401, 401, 401, 401, 401, 401, 401, 401, 401, 401, 401, 401],
    "admin":             [200, 200, 200, 200, 200, 200, 200, 200, 200, 200, 200, 204, 200, 201, 200, 200, 200],
    "radiologist":       [200, 200, 200, 200, 200, 200, 200, 200, 200, 200, 403, 403, 403, 403, 403, 403, 200],
    "basic:radiologist": [200, 200, 200, 200, 200, 200, 200, 200, 200, 200, 403, 403, 403, 403, 403, 403, 200],
    "technologist":      [200, 200, 200, 200, 200, 200, 200, 200, 200, 200, 200, 204, 403, 403, 403, 403, 200],
    "provider":          [200, 200, 200, 404, 404, 404, 404, 404, 404, 404, 403, 403, 403, 403, 403, 403, 200],
    "integration:store": [200, 403, 403, 403, 403, 403, 403, 403, 403, 403, 200, 403, 403, 403, 403, 403, 200],
}


@pytest.mark.parametrize("credential", list(MATRIX))
def test_access_matrix(archive: Archive, credential: str) -> None:
    paths = _paths(archive)
    headers = archive.credentials[credential]
    seen = []
    for endpoint in ENDPOINTS:
        method, path = paths[endpoint]
        kwargs: dict[str, object] = {"headers": dict(headers)}
        if endpoint == "store":
            body, content_type = stow_body([make_ct()])
            kwargs = {"headers": {**headers, "Content-Type": content_type}, "content": body}
        elif endpoint == "add user":
            kwargs["json"] = {"username": f"new-{credential.replace(':', '-')}", "role": "radiologist"}
        elif endpoint == "frames":
            kwargs["headers"] = {**headers, "Accept": "multipart/related; type=application/octet-stream"}
        if endpoint == "delete":  # stored again each time: an allowed delete must find it
            _store(archive.services, archive.theirs)
        response = archive.client.request(method, path, **kwargs)  # type: ignore[arg-type]
        seen.append(response.status_code)
        if response.status_code == 401:
            assert response.headers["www-authenticate"].startswith("Bearer")
        assert response.status_code != 500, (endpoint, response.text)
    assert dict(zip(ENDPOINTS, seen, strict=True)) == dict(zip(ENDPOINTS, MATRIX[credential], strict=True))


# ---- what a 403 says -----------------------------------------------------------------------

# A refusal names the permission missing, as the role table, the OpenAPI document and
# `token create --scope` name it; never an internal operation.
REFUSALS = [
    ("provider", "GET", "/api/reconciliation/studies", "provider (provider) lacks the permission write-orders"),
    ("radiologist", "GET", "/api/hl7/messages", "radiologist (radiologist) lacks the permission read-audit"),
    ("technologist", "PUT", "/api/reference/modalities/OT",
     "technologist (technologist) lacks the permission manage-reference"),
    ("technologist", "GET", "/api/aes", "technologist (technologist) lacks the permission manage-aes"),
    ("integration:store", "GET", "/dicom-web/studies", "hl7engine (integration): this token lacks the scope read"),
    ("radiologist:read-orders", "GET", "/dicom-web/studies",
     "radiologist (radiologist): this token lacks the scope read"),
]


def test_refusals_name_the_missing_permission(archive: Archive) -> None:
    secret = archive.services.accounts.issue_token("radiologist", scopes="read-orders").secret
    archive.credentials["radiologist:read-orders"] = _bearer(secret)
    admin = archive.credentials["admin"]
    for credential, method, path, message in REFUSALS:
        answer = archive.client.request(method, path, headers=archive.credentials[credential],
                                        json={"display_name": "Other"} if method == "PUT" else None)
        assert (answer.status_code, answer.json()["error"]) == (403, message)
        scope = message.rsplit(" ", 1)[1]  # a word `token create --scope` takes
        issued = archive.client.post("/api/users/hl7engine/tokens", json={"scopes": scope}, headers=admin)
        assert issued.status_code == 201, issued.text


def test_openapi_permissions_are_token_scopes(archive: Archive) -> None:
    """Every x-minipacs-permission is a scope a token may name (admins' tokens: all of them)."""
    document = archive.client.get("/api/openapi.json").json()
    named = {operation["x-minipacs-permission"] for methods in document["paths"].values()
             for operation in methods.values() if operation.get("x-minipacs-permission")}
    assert {"write-orders", "read-audit", "manage-aes", "manage-reference"} <= named
    admin = archive.credentials["admin"]
    issued = archive.client.post("/api/me/tokens", json={"scopes": ",".join(sorted(named))}, headers=admin)
    assert issued.status_code == 201, issued.text
    listed = archive.client.get("/api/users/admin/tokens", headers=admin).json()
    assert set(next(t for t in listed if t["id"] == issued.json()["id"])["scopes"]) == named
    reference = document["paths"]["/api/reference/modalities/{code}"]["put"]
    assert reference["x-minipacs-permission"] == "manage-reference"


# ---- provider scoping ----------------------------------------------------------------------


def test_provider_sees_only_studies_of_their_orders(archive: Archive) -> None:
    get = archive.client.get
    headers = archive.credentials["provider"]
    mine, theirs = archive.mine[0], archive.theirs[0]

    def uids(response: object) -> set[str]:
        return {item["0020000D"]["Value"][0] for item in response.json()}  # type: ignore[attr-defined]

    assert uids(get("/dicom-web/studies", headers=headers)) == {mine.StudyInstanceUID}
    assert uids(get("/dicom-web/series", headers=headers)) == {mine.StudyInstanceUID}
    assert uids(get("/dicom-web/instances", headers=headers)) == {mine.StudyInstanceUID}
    assert get("/dicom-web/studies", params={"StudyInstanceUID": theirs.StudyInstanceUID}, headers=headers).json() == []
    assert get("/dicom-web/studies", params={"PatientID": "PID-THEIRS"}, headers=headers).json() == []
    assert get(f"/dicom-web/studies/{theirs.StudyInstanceUID}/series", headers=headers).status_code == 404
    assert get(f"/dicom-web/studies/{theirs.StudyInstanceUID}/instances", headers=headers).status_code == 404
    assert get(f"/dicom-web/studies/{theirs.StudyInstanceUID}", headers=headers).status_code == 404
    # Their own study is fully readable.
    assert len(get(f"/dicom-web/studies/{mine.StudyInstanceUID}/metadata", headers=headers).json()) == 2
    frames = get(
        f"/dicom-web/studies/{mine.StudyInstanceUID}/series/{mine.SeriesInstanceUID}/instances/{mine.SOPInstanceUID}"
        "/frames/1",
        headers={**headers, "Accept": "multipart/related; type=application/octet-stream"},
    )
    assert frames.status_code == 200 and mine.PixelData in frames.content
    # Everyone else sees both.
    assert len(uids(get("/dicom-web/studies", headers=archive.credentials["radiologist"]))) == 2


def test_provider_link_follows_a_role_change(archive: Archive) -> None:
    """A provider re-linked to another physician sees the studies of that physician's orders at once."""
    archive.services.accounts.set_role("provider", "provider", "OTHER^DOC")
    found = archive.client.get("/dicom-web/studies", headers=archive.credentials["provider"]).json()
    assert [f["0020000D"]["Value"][0] for f in found] == [archive.theirs[0].StudyInstanceUID]


# ---- sessions ------------------------------------------------------------------------------


def test_login_session_with_csrf_and_logout(archive: Archive) -> None:
    client = archive.client
    refused = client.post("/api/login", json={"username": "technologist", "password": "nope"})
    assert refused.status_code == 401
    login = client.post("/api/login", json={"username": "technologist", "password": PASSWORD})
    assert login.status_code == 200
    csrf = login.json()["csrf_token"]
    cookie = login.headers.get_list("set-cookie")
    session_cookie = next(c for c in cookie if c.startswith("minipacs_session="))
    assert "HttpOnly" in session_cookie and "SameSite=lax" in session_cookie
    assert client.get("/api/me").json()["user"] == "technologist"  # the cookie alone suffices for reads
    assert client.get("/dicom-web/studies").status_code == 200

    body, content_type = stow_body([make_ct()])
    no_csrf = client.post("/dicom-web/studies", content=body, headers={"Content-Type": content_type})
    assert no_csrf.status_code == 403 and "csrf" in no_csrf.json()["error"].lower()
    wrong = client.post("/dicom-web/studies", content=body, headers={"Content-Type": content_type,
                                                                       "X-CSRF-Token": "0" * 64})
    assert wrong.status_code == 403
    ok = client.post("/dicom-web/studies", content=body, headers={"Content-Type": content_type, "X-CSRF-Token": csrf})
    assert ok.status_code == 200

    assert client.post("/api/logout", headers={"X-CSRF-Token": csrf}).status_code == 204
    client.cookies.set("minipacs_session", session_cookie.split(";")[0].split("=", 1)[1])
    assert client.get("/dicom-web/studies").status_code == 401  # the session ended on the server too


def test_login_accepts_a_form_and_sets_secure_cookies_when_asked(services: Services) -> None:
    services.accounts.add_user("reader", "radiologist", PASSWORD)
    settings = services.settings.replace(cookie_secure="on")
    with TestClient(build_app(settings, services)) as client:
        login = client.post("/api/login", data={"username": "reader", "password": PASSWORD})
        assert login.status_code == 200
        assert all("Secure" in c for c in login.headers.get_list("set-cookie"))
        assert client.get("/login").status_code == 200  # the login page is public
        assert "password" in client.get("/login").text


def test_disabled_user_and_revoked_token_stop_at_once(archive: Archive) -> None:
    accounts, get = archive.services.accounts, archive.client.get
    issued = accounts.issue_token("radiologist", label="script")
    headers = _bearer(issued.secret)
    assert get("/dicom-web/studies", headers=headers).status_code == 200
    accounts.revoke_token(issued.pk)
    assert get("/dicom-web/studies", headers=headers).status_code == 401
    assert get("/dicom-web/studies", headers=archive.credentials["basic:radiologist"]).status_code == 200
    accounts.set_disabled("radiologist", True)
    assert get("/dicom-web/studies", headers=archive.credentials["radiologist"]).status_code == 401
    assert get("/dicom-web/studies", headers=archive.credentials["basic:radiologist"]).status_code == 401


def test_malformed_credentials_are_401_not_500(archive: Archive) -> None:
    for value in ("Basic !!!", "Basic " + base64.b64encode(b"no-colon").decode(), "Digest abc", "Bearer", "Negotiate x"):
        response = archive.client.get("/dicom-web/studies", headers={"Authorization": value})
        assert response.status_code == 401, value
    response = archive.client.get("/dicom-web/studies", headers={"Cookie": 'minipacs_session="unterminated'})
    assert response.status_code == 401


# ---- brute force ---------------------------------------------------------------------------


def test_repeated_failed_logins_lock_the_account(archive: Archive) -> None:
    client, limit = archive.client, archive.services.settings.login_max_failures
    for _ in range(limit):
        assert client.post("/api/login", json={"username": "admin", "password": "guess"}).status_code == 401
    locked = client.post("/api/login", json={"username": "admin", "password": PASSWORD})
    assert locked.status_code == 429
    assert int(locked.headers["retry-after"]) > 0
    # HTTP Basic is held to the same lockout.
    assert client.get("/dicom-web/studies", headers=_basic("admin", PASSWORD)).status_code == 429
    # Other accounts are not locked by it (the address allows more failures than one account).
    assert client.post("/api/login", json={"username": "technologist", "password": PASSWORD}).status_code == 200
    # Locks are per account name whatever its case.
    assert client.post("/api/login", json={"username": "ADMIN", "password": PASSWORD}).status_code == 429


def test_repeated_failures_from_one_address_lock_the_address(archive: Archive) -> None:
    client = archive.client
    settings = archive.services.settings
    attempts = settings.login_max_failures * 4
    for i in range(attempts):
        response = client.post("/api/login", json={"username": f"nobody{i}", "password": "guess"})
        assert response.status_code == 401
    assert client.post("/api/login", json={"username": "radiologist", "password": PASSWORD}).status_code == 429


# ---- admin API -----------------------------------------------------------------------------


def test_admin_manages_users_and_tokens_over_http(archive: Archive) -> None:
    client, admin = archive.client, archive.credentials["admin"]
    created = client.post("/api/users", headers=admin, json={"username": "dr.who", "role": "radiologist",
                                                              "password": PASSWORD})
    assert created.status_code == 201 and created.json()["role"] == "radiologist"
    assert client.post("/api/users", headers=admin, json={"username": "dr.who", "role": "radiologist"}).status_code == 409
    assert client.post("/api/users", headers=admin, json={"username": "x", "role": "king"}).status_code == 400
    assert client.post("/api/users", headers=admin, json={"username": "p", "role": "provider"}).status_code == 400
    assert client.post("/api/users", headers=admin, json={"username": "s", "role": "admin",
                                                          "password": "short"}).status_code == 400
    assert client.post("/api/users", headers=admin, content=b"{not json").status_code == 400
    assert "dr.who" in [u["username"] for u in client.get("/api/users", headers=admin).json()]

    token = client.post("/api/users/dr.who/tokens", headers=admin, json={"label": "viewer", "days": 2}).json()
    assert client.get("/api/me", headers=_bearer(token["token"])).json()["role"] == "radiologist"
    listed = client.get("/api/users/dr.who/tokens", headers=admin).json()
    assert [t["label"] for t in listed] == ["viewer"] and "token" not in listed[0]  # the secret is never shown again

    changed = client.patch("/api/users/dr.who", headers=admin, json={"role": "technologist"})
    assert changed.json()["role"] == "technologist"
    assert client.get("/api/me", headers=_bearer(token["token"])).json()["role"] == "technologist"
    assert client.patch("/api/users/dr.who", headers=admin, json={"disabled": True}).json()["disabled"] is True
    assert client.get("/api/me", headers=_bearer(token["token"])).status_code == 401
    client.patch("/api/users/dr.who", headers=admin, json={"disabled": False})
    assert client.delete(f"/api/tokens/{token['id']}", headers=admin).status_code == 204
    assert client.get("/api/me", headers=_bearer(token["token"])).status_code == 401
    assert client.delete(f"/api/tokens/{token['id']}", headers=admin).status_code == 404
    assert client.patch("/api/users/nobody", headers=admin, json={"disabled": True}).status_code == 404

    # Anyone may make tokens for themselves, never wider than their role.
    own = client.post("/api/me/tokens", headers=archive.credentials["radiologist"], json={"scopes": "read,store"})
    assert own.status_code == 201
    assert client.get("/api/me", headers=_bearer(own.json()["token"])).json()["permissions"] == ["read"]

    ae = client.post("/api/aes", headers=admin, json={"ae_title": "CT1", "host": "10.0.0.9", "port": 104,
                                                      "access": "store"})
    assert ae.status_code == 201
    assert {"ae_title": "CT1", "host": "10.0.0.9", "port": 104, "role": "technologist", "access": "store"} in (
        client.get("/api/aes", headers=admin).json()
    )
    assert client.post("/api/aes", headers=admin, json={"ae_title": "X", "host": "h", "port": 1,
                                                        "access": "root"}).status_code == 400
    assert client.delete("/api/aes/CT1", headers=admin).status_code == 204


def test_integration_accounts_need_scopes(archive: Archive) -> None:
    response = archive.client.post("/api/users/hl7engine/tokens", headers=archive.credentials["admin"], json={})
    assert response.status_code == 400 and "scope" in response.json()["error"]


# ---- the audit trail -----------------------------------------------------------------------


def test_every_kind_of_access_is_audited(archive: Archive) -> None:
    client, creds = archive.client, archive.credentials
    mine, theirs = archive.mine[0], archive.theirs[0]
    client.get("/dicom-web/studies", params={"PatientName": "Mine*"}, headers=creds["radiologist"])
    client.get(f"/dicom-web/studies/{mine.StudyInstanceUID}/metadata", headers=creds["radiologist"])
    body, content_type = stow_body(make_series(3, PatientID="PID-NEW"))
    client.post("/dicom-web/studies", content=body, headers={**creds["technologist"], "Content-Type": content_type})
    client.delete(f"/dicom-web/studies/{theirs.StudyInstanceUID}", headers=creds["technologist"])
    client.post("/dicom-web/studies", content=body, headers={**creds["radiologist"], "Content-Type": content_type})
    client.get(f"/dicom-web/studies/{theirs.StudyInstanceUID}/metadata", headers=creds["provider"])
    client.get("/dicom-web/studies", headers=creds["wrong"])
    client.post("/api/login", json={"username": "admin", "password": "guess"})
    client.post("/api/login", json={"username": "admin", "password": PASSWORD})

    rows = archive.audit(limit=100)
    summary = {(r["actor"], r["action"], r["outcome"], r["status"], r["patient_id"], r["study_uid"]) for r in rows}
    assert ("radiologist", "search", "success", 200, None, None) in summary
    assert ("radiologist", "read", "success", 200, "PID-MINE", mine.StudyInstanceUID) in summary
    assert ("technologist", "delete", "success", 204, "PID-THEIRS", theirs.StudyInstanceUID) in summary
    assert any(r["actor"] == "provider" and r["outcome"] == "failure" and r["status"] == 404 for r in rows)
    assert any(r["actor"] == "anonymous" and r["outcome"] == "unauthenticated" and r["action"] == "search" for r in rows)
    assert any(r["actor"] == "admin" and r["action"] == "login" and r["outcome"] == "unauthenticated" for r in rows)
    assert any(r["actor"] == "admin" and r["action"] == "login" and r["outcome"] == "success" for r in rows)
    stored = [r for r in rows if r["action"] == "store" and r["outcome"] == "success"]
    assert len(stored) == 1 and stored[0]["patient_id"] == "PID-NEW"
    assert json.loads(str(stored[0]["detail"]))["instances"] == 3
    searched = next(r for r in rows if r["action"] == "search" and r["actor"] == "radiologist")
    assert json.loads(str(searched["detail"]))["query"] == {"PatientName": "Mine*"}
    assert all(r["channel"] == "http" and r["source"] == "testclient" for r in rows)
    denied = [r for r in rows if r["actor"] == "radiologist" and r["action"] == "store"]
    assert [(r["outcome"], r["status"]) for r in denied] == [("denied", 403)]


def test_audit_api_filters(archive: Archive) -> None:
    client, creds = archive.client, archive.credentials
    mine = archive.mine[0]
    client.get(f"/dicom-web/studies/{mine.StudyInstanceUID}/metadata", headers=creds["radiologist"])
    client.get(f"/dicom-web/studies/{mine.StudyInstanceUID}/metadata", headers=creds["technologist"])
    admin = creds["admin"]
    by_user = client.get("/api/audit", params={"user": "radiologist"}, headers=admin).json()
    assert by_user and {r["actor"] for r in by_user} == {"radiologist"}
    by_patient = client.get("/api/audit", params={"patient": "PID-MINE"}, headers=admin).json()
    assert {r["actor"] for r in by_patient} == {"radiologist", "technologist"}
    by_study = client.get("/api/audit", params={"study": mine.StudyInstanceUID, "action": "read"}, headers=admin).json()
    assert len(by_study) == 2
    future = (utcnow() + timedelta(hours=1)).isoformat()
    assert client.get("/api/audit", params={"since": future}, headers=admin).json() == []
    assert client.get("/api/audit", params={"since": "yesterday"}, headers=admin).status_code == 400
    assert client.get("/api/audit", params={"limit": "-1"}, headers=admin).status_code == 400
    # Reading the audit trail is itself audited.
    assert client.get("/api/audit", params={"action": "audit"}, headers=admin).json()


def test_repeated_reads_fold_into_one_row(archive: Archive) -> None:
    mine = archive.mine[0]
    path = f"/dicom-web/studies/{mine.StudyInstanceUID}/series/{mine.SeriesInstanceUID}/instances/{mine.SOPInstanceUID}"
    headers = {**archive.credentials["radiologist"], "Accept": "multipart/related; type=application/octet-stream"}
    for _ in range(20):
        assert archive.client.get(f"{path}/frames/1", headers=headers).status_code == 200
    rows = archive.audit(actor="radiologist", action="read")
    assert sum(int(r["count"]) for r in rows) == 20  # type: ignore[call-overload]
    assert len(rows) < 20


def test_events_of_one_batch_window_are_written_together(archive: Archive, monkeypatch: pytest.MonkeyPatch) -> None:
    trail = archive.services.audit
    assert trail.flush()
    batches: list[int] = []
    append = trail.repository.append

    def counted(rows: list[dict[str, object]]) -> None:
        batches.append(len(rows))
        append(rows)

    monkeypatch.setattr(trail.repository, "append", counted)
    monkeypatch.setattr(audit_trail, "_BATCH_SECONDS", 60.0)  # only flush can end this window in time
    for n in range(30):  # distinct actors: nothing folds
        trail.record(AuditEvent.of(None, "http", Action.READ, Outcome.SUCCESS, actor=f"batch-{n}"))
    assert trail.flush(timeout=20)
    assert batches == [30]
    assert len(archive.audit(actor="batch-7")) == 1


def test_audit_trail_is_append_only(archive: Archive) -> None:
    archive.client.get("/dicom-web/studies", headers=archive.credentials["radiologist"])
    archive.services.audit.flush()
    engine = archive.services.engine
    with pytest.raises(Exception, match="append-only"):
        with engine.begin() as conn:
            conn.execute(text("UPDATE audit_events SET actor = 'someone else'"))
    with pytest.raises(Exception, match="retention"):
        with engine.begin() as conn:
            conn.execute(text("DELETE FROM audit_events"))
    assert archive.audit(actor="radiologist")


def test_retention_purges_only_old_events(archive: Archive) -> None:
    archive.client.get("/dicom-web/studies", headers=archive.credentials["radiologist"])
    archive.services.audit.flush()
    old = utcnow() - timedelta(days=40)
    with archive.services.engine.begin() as conn:
        conn.execute(
            text("INSERT INTO audit_events (occurred_at, channel, actor, action, outcome) "
                 "VALUES (:at, 'http', 'ancient', 'read', 'success')"),
            {"at": old},
        )
    trail = archive.services.audit
    trail.retention_days = 30
    assert trail.apply_retention() == 1
    assert archive.audit(actor="ancient") == []
    assert archive.audit(actor="radiologist")


def test_no_phi_in_application_logs(archive: Archive, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)
    creds = archive.credentials
    secret = make_ct(PatientName="Secretname^Jane", PatientID="PID-SECRET-77", PatientBirthDate="19010203")
    body, content_type = stow_body([secret])
    archive.client.post("/dicom-web/studies", content=body, headers={**creds["technologist"], "Content-Type": content_type})
    archive.client.get("/dicom-web/studies", params={"PatientName": "Secretname*", "PatientID": "PID-SECRET-77",
                                                     "PatientBirthDate": "19010203"}, headers=creds["radiologist"])
    archive.client.get("/dicom-web/studies", params={"PatientID": "PID-SECRET-77"}, headers=creds["wrong"])
    bad = archive.client.get("/dicom-web/studies", params={"PatientBirthDate": "19010203-19000101"},
                             headers=creds["radiologist"])
    assert bad.status_code == 400 and "19010203" in bad.json()["error"]  # the caller is told, the log is not
    archive.services.audit.flush()
    # Everything the server side logged (httpx's lines are the test client's own).
    logged = "\n".join(r.getMessage() for r in caplog.records if not r.name.startswith(("httpx", "httpcore")))
    assert '"action":"search"' in logged  # audit events are logged, without their PHI
    for phi in ("Secretname", "SECRETNAME", "PID-SECRET-77", "19010203"):
        assert phi not in logged
    # ... while the audit trail itself has them.
    rows = archive.audit(patient_id="PID-SECRET-77")
    assert rows and rows[0]["action"] == "store"


def test_authentication_off_lets_everyone_in_and_still_audits(services: Services) -> None:
    settings = services.settings.replace(auth="off")
    with TestClient(build_app(settings, services)) as client:
        assert client.get("/dicom-web/studies").status_code == 200
        assert client.get("/api/users").status_code == 200
    rows = services.audit.search(AuditFilter(actor="anonymous"))
    assert {r["action"] for r in rows} >= {"search", "admin"}
