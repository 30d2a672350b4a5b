"""The HL7 message log over HTTP on both backends: what admins see (filters, paging, the raw
message), who is refused, bad parameters, and the audit records of each read."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime, timedelta

import pytest
from jsonschema import Draft202012Validator
from starlette.testclient import TestClient

from pacs.app import build_app
from pacs.index.audit import AuditFilter
from pacs.services import Services
from tests.conftest import bearer_headers
from tests.support.hl7 import MllpClient, message, new_order, pid, running_hl7_listener

SENT = {
    "LOG-1": new_order("LOG-1", "P-1", patient_id="PAT-1"),
    "LOG-2": new_order("LOG-2", "P-2", patient_id="PAT-2", modality="XX"),
    "LOG-3": message("ADT^A08^ADT_A01", "LOG-3", pid("PAT-1", name="Doe^Janet")),
}


@pytest.fixture
def api(services: Services) -> Iterator[tuple[TestClient, dict[str, dict[str, str]]]]:
    with running_hl7_listener(services) as listener, MllpClient(listener.port) as client:
        for sent in SENT.values():
            client.exchange(sent)
        client.send_raw(b"junk outside a block")
        assert client.closed_by_server()
    headers = {role: bearer_headers(services, role) for role in ("admin", "technologist", "radiologist")}
    headers["provider"] = bearer_headers(services, "provider", provider_name="Smith^John")
    with TestClient(build_app(services.settings, services)) as http:
        yield http, headers


def test_admins_list_and_read_the_log(services: Services, api: tuple[TestClient, dict[str, dict[str, str]]]) -> None:
    http, headers = api
    admin = headers["admin"]
    listed = http.get("/api/hl7/messages", headers=admin)
    assert listed.status_code == 200, listed.text
    entries = listed.json()
    assert [(e["control_id"], e["message_type"], e["ack_code"]) for e in entries] == [
        (None, None, "none"), ("LOG-3", "ADT^A08", "AA"), ("LOG-2", "ORM^O01", "AE"), ("LOG-1", "ORM^O01", "AA"),
    ]
    assert all("raw" not in e for e in entries)
    first = entries[3]
    assert first["outcome"].startswith("NW: created ORD-") and first["order_id"] is not None
    assert (first["sending_application"], first["sending_facility"], first["duplicate"]) == ("RIS", "HOSP", False)
    assert first["peer"].startswith("127.0.0.1:") and first["size"] == len(SENT["LOG-1"])
    assert "modality" in entries[2]["outcome"]

    one = http.get(f"/api/hl7/messages/{first['id']}", headers=admin)
    assert one.status_code == 200
    assert one.json()["raw"] == SENT["LOG-1"]
    assert {k: v for k, v in one.json().items() if k != "raw"} == first

    def ids(**params: str) -> list[str | None]:
        answer = http.get("/api/hl7/messages", params=params, headers=admin)
        assert answer.status_code == 200, answer.text
        return [e["control_id"] for e in answer.json()]

    assert ids(type="ORM^O01") == ["LOG-2", "LOG-1"]
    assert ids(ack_code="ae") == ["LOG-2"]
    assert ids(ack_code="none") == [None]
    for entry in entries:  # each entry's ack_code is a value the filter takes and selects it by
        assert entry["control_id"] in ids(ack_code=entry["ack_code"])
    assert ids(control_id="LOG-3") == ["LOG-3"]
    assert ids(limit="2", offset="1") == ["LOG-3", "LOG-2"]
    now = datetime.now(UTC)
    assert len(ids(received_from=(now - timedelta(hours=1)).isoformat())) == 4
    assert ids(received_to=(now - timedelta(hours=1)).isoformat()) == []

    services.audit.flush()
    reads = services.audit.search(AuditFilter(actor=_name(services, admin), action="read"))
    assert sum(r["count"] for r in reads) == 13  # the list, the message, eleven filtered lists
    assert any(r["patient_id"] == "PAT-1" and "hl7_log" in r["detail"] for r in reads)


def test_entries_match_the_openapi_schema(api: tuple[TestClient, dict[str, dict[str, str]]]) -> None:
    http, headers = api
    components = http.get("/api/openapi.json").json()["components"]
    entries = http.get("/api/hl7/messages", headers=headers["admin"]).json()
    Draft202012Validator({"$ref": "#/components/schemas/Hl7MessageList", "components": components}).validate(entries)
    one = http.get(f"/api/hl7/messages/{entries[0]['id']}", headers=headers["admin"]).json()
    Draft202012Validator({"$ref": "#/components/schemas/Hl7Message", "components": components}).validate(one)
    assert one["ack_code"] == "none"


def _name(services: Services, headers: dict[str, str]) -> str:
    secret = headers["Authorization"].removeprefix("Bearer ")
    return services.authenticator.bearer(secret, "127.0.0.1").name


def test_other_roles_are_refused(services: Services, api: tuple[TestClient, dict[str, dict[str, str]]]) -> None:
    http, headers = api
    for role in ("technologist", "radiologist", "provider"):
        for path in ("/api/hl7/messages", "/api/hl7/messages/1"):
            refused = http.get(path, headers=headers[role])
            assert refused.status_code == 403, (role, path)
            assert "RIS" not in refused.text
    assert http.get("/api/hl7/messages").status_code == 401
    services.audit.flush()
    denied = services.audit.search(AuditFilter(outcome="denied"))
    assert {r["actor_role"]: r["count"] for r in denied} == {"technologist": 2, "radiologist": 2, "provider": 2}


BAD_REQUESTS = [
    ("/api/hl7/messages?ack_code=XX", 400, "ack_code"),
    ("/api/hl7/messages?limit=-1", 400, "non-negative"),
    ("/api/hl7/messages?received_from=yesterday", 400, "received_from"),
    ("/api/hl7/messages/abc", 400, "numbers"),
    ("/api/hl7/messages/999999", 404, "no HL7 message 999999"),
]


def test_bad_requests(api: tuple[TestClient, dict[str, dict[str, str]]]) -> None:
    http, headers = api
    for path, status, words in BAD_REQUESTS:
        answer = http.get(path, headers=headers["admin"])
        assert answer.status_code == status, (path, answer.text)
        assert words in answer.json()["error"]
